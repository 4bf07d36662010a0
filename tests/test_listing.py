"""Listing in executors (real local Spark, real files) and reading listed files where their rows are."""
import hashlib
import os

import pytest

from lesionspark.store.listing import Reader, list_files

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """Files at the top, in a deep branch (deeper than the driver expands), in folders with spaces
    and accents, a 0-byte file, hidden entries, and a second root."""
    a = tmp_path_factory.mktemp("listing") / "a"
    files = {"top.JPG": b"t" * 10, "ward B/été 1.jpg": b"x" * 20, "y/empty.jpg": b"",
             "d1/d2/d3/d4/d5/d6/deep.png": b"d" * 30, "notes.txt": b"n"}
    for i in range(12):  # 13 folders at depth 3: more than the 8 the driver expands to by default
        files[f"2026/11/{i:02d}/img{i}.jpg"] = bytes([i]) * (100 + i)
    for rel, data in files.items():
        (a / rel).parent.mkdir(parents=True, exist_ok=True)
        (a / rel).write_bytes(data)
    (a / ".hidden").mkdir()
    (a / ".hidden" / "h.jpg").write_bytes(b"h")
    (a / "y" / ".DS_Store").write_bytes(b"m")
    b = a.parent / "b"
    b.mkdir()
    (b / "other.jpg").write_bytes(b"o" * 5)
    return a, b, files


def _rows(df):
    return {r.path: r for r in df.collect()}


def test_every_file_is_listed_once_with_hadoop_paths(spark, tree):
    a, b, files = tree
    rows = _rows(list_files(spark, [str(a), str(b)], min_dirs=2, max_depth=2))
    expected = {f"file:{a}/{rel}" for rel in files} | {f"file:{b}/other.jpg"}
    assert set(rows) == expected  # hidden entries left out, nothing twice, deep branch included
    assert rows[f"file:{a}/y/empty.jpg"].length == 0
    assert all(r.modificationTime is not None for r in rows.values())  # 0-byte files too
    r = rows[f"file:{a}/ward B/été 1.jpg"]
    assert (r.length, r.stem) == (20, "été 1")
    mtime_ms = os.stat(a / "ward B" / "été 1.jpg").st_mtime_ns // 1_000_000
    assert int(r.modificationTime.timestamp() * 1000) == mtime_ms


def test_filters_and_depth_settings_give_the_same_files(spark, tree):
    a, _, files = tree
    regex = {p for p in _rows(list_files(spark, [str(a)], regex=r"\.(jpe?g|png)$"))}
    assert regex == {f"file:{a}/{rel}" for rel in files if not rel.endswith(".txt")}
    glob = {p for p in _rows(list_files(spark, [str(a)], glob="*.jpg"))}
    assert glob == {f"file:{a}/{rel}" for rel in files if rel.endswith(".jpg")}
    for min_dirs, depth in ((100, 10),):  # the whole tree expanded level by level on the driver
        assert set(_rows(list_files(spark, [str(a)], min_dirs=min_dirs, max_depth=depth))) == \
            {f"file:{a}/{rel}" for rel in files}


def test_a_missing_root_is_a_clear_error(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        list_files(spark, [str(tmp_path / "nope")])


def test_reader_reads_hashes_and_rejects_with_reasons(tree):
    a, b, files = tree
    reader = Reader([str(a), str(b)])
    paths = [f"file:{a}/ward B/été 1.jpg", f"file:{a}/top.JPG", f"file:{a}/gone.jpg", f"file:{b}/other.jpg"]
    contents, shas, reasons, details = reader.fetch(paths, [20, 10, 5, 5], 15, "archive.max_file_bytes")
    assert contents[0] is None and reasons[0] == "file_too_large"  # judged by its size: not read,
    assert shas[0] is None  # not hashed (tried again by the next run)
    assert "20 bytes > archive.max_file_bytes=15" in details[0]
    assert contents[1] == b"t" * 10 and shas[1] == hashlib.sha256(b"t" * 10).hexdigest() and reasons[1] is None
    assert (contents[2], shas[2], reasons[2]) == (None, None, "unreadable") and "FileNotFoundError" in details[2]
    assert contents[3] == b"o" * 5


def test_a_latin1_name_and_its_escaped_spelling_list_as_two_files(spark, tmp_path):
    """``M\\xfcller.jpg`` (Latin-1) beside a file literally named ``M%FCller.jpg``: each is listed
    once, under its own spelling, and read as its own bytes."""
    top = tmp_path / "share%41"  # a % in the listed folder itself
    top.mkdir()
    with open(os.fsencode(str(top)) + b"/M\xfcller.jpg", "wb") as fh:
        fh.write(b"latin-1 file")
    (top / "M%FCller.jpg").write_bytes(b"literal percent file")
    (top / "sub%2F").mkdir()
    (top / "sub%2F" / "x.jpg").write_bytes(b"deeper")
    for min_dirs in (1, 64):  # the top listed in the task, or expanded on the driver first
        paths = sorted(r.path for r in list_files(spark, [str(top)], min_dirs=min_dirs).collect())
        assert len(paths) == len(set(paths)) == 3, paths
        contents, _, reasons, _ = Reader([str(top)]).fetch(paths, [100] * 3, 1000, "k")
        assert reasons == [None] * 3
        assert sorted(contents) == [b"deeper", b"latin-1 file", b"literal percent file"]
        by_path = dict(zip(paths, contents))
        assert by_path[f"file:{str(top).replace('%', '%25')}/M%FCller.jpg"] == b"latin-1 file"
        assert by_path[f"file:{str(top).replace('%', '%25')}/M%25FCller.jpg"] == b"literal percent file"


def test_follow_links_never_enters_a_folder_outside_the_archive(spark, tmp_path):
    """A linked folder is entered only where it leads inside the listed folder: a link to a folder
    elsewhere, or to ``/``, is one entry the reader rejects, and nothing under it is listed or read."""
    archive, outside = tmp_path / "archive", tmp_path / "elsewhere"
    (archive / "ward").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret.jpg").write_bytes(b"not the archive's")
    (archive / "ward" / "a.jpg").write_bytes(b"inside")
    os.symlink(outside, archive / "ward" / "ext")
    os.symlink("/", archive / "root")
    os.symlink(archive / "ward", archive / "again")  # inside: entered once
    listed = sorted(r.path for r in list_files(spark, [str(archive)], follow_links=True).collect())
    # ext and root are listed as entries, not entered (ward's file may come twice: again is a link
    # to it inside the archive, listed by another task: one content under two paths)
    assert {p.rsplit("/", 1)[-1] for p in listed} == {"a.jpg", "ext", "root"}, listed
    assert len(listed) <= 5 and all(p.startswith(f"file:{archive}/") for p in listed), listed
    reader = Reader([str(archive)], follow_links=True)
    _, _, reasons, _ = reader.fetch([f"file:{archive}/ward/ext", f"file:{archive}/root",
                                     f"file:{archive}/ward/ext/secret.jpg"], [0, 0, 20], 100, "k")
    assert reasons == ["link_outside_archive"] * 3  # the last: a path through the link, resolved whole


def test_with_follow_links_a_file_that_vanished_is_unreadable_not_a_dangling_link(tmp_path, monkeypatch):
    """Between the lstat and the resolution of its path a regular file can vanish: that is an
    ``unreadable`` file (tried again next run), not a link."""
    from lesionspark.store import listing
    (tmp_path / "a.jpg").write_bytes(b"x")
    real = os.path.realpath

    def vanish(path, strict=False):
        if strict and os.fsdecode(path).endswith("a.jpg"):
            os.remove(tmp_path / "a.jpg")
        return real(path, strict=strict)
    monkeypatch.setattr(listing.os.path, "realpath", vanish)
    _, shas, reasons, _ = Reader([str(tmp_path)], follow_links=True).fetch([f"file:{tmp_path}/a.jpg"], [1], 100, "k")
    assert reasons == ["unreadable"] and shas == [None]
