"""A scoring run stopped at its commit; its commit then replayed from a copy of that state and
stopped before each of its moves in turn (rejects, index, predictions), the next run finishing each
time. Shared by tests/test_score.py (local roots) and tests/test_hdfs.py (the NameNode)."""
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from lesionspark.score import driver as score_mod
from lesionspark.sql.query import register
from lesionspark.store import storage
from lesionspark.store.layout import Layout


class Killed(BaseException):
    """A crash in the middle of the commit (a BaseException: no ``except Exception`` handles it)."""


def stop_at_commit(spark, cfg, monkeypatch) -> None:
    """Score ``cfg`` as run ``stopped``, killed when its staging is complete and its commit starts."""
    def stop(*args, **kwargs):
        raise Killed("killed at the commit")
    monkeypatch.setattr(score_mod, "_commit", stop)
    with pytest.raises(Killed):
        score_mod.score(spark, cfg, run_id="stopped")
    monkeypatch.undo()


def table(root: str, name: str):
    fs, path = storage.filesystem(Layout(root).table(name))
    return pq.read_table(path, filesystem=fs).to_pandas()


def _mkdir(uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.create_dir(path, recursive=True)


def _staged(root: str) -> list:
    fs, path = storage.filesystem(Layout(root).staging())
    return fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))


def replay(spark, copy, cfg_for, per_file: bool) -> tuple[int, list]:
    """For point 1, 2, ...: ``copy(point)`` (a fresh root holding the stopped run's state), its commit
    stopped before move ``point``, then the next run on that root; until a commit finishes. Each
    time every image ends with one prediction or one reject and the staging is empty. Returns the
    number of points and (predictions, rejects) after each."""
    results, point = [], 0
    while True:
        point += 1
        root = copy(point)
        calls = [0]

        def fence():
            calls[0] += 1
            if calls[0] == point:
                raise Killed(f"killed before move {point}")
        try:
            score_mod._commit(storage.normalize_uri(root), "stopped", fence, per_file=per_file)
            finished = True
        except Killed:
            finished = False
            # a kill can also fall between creating a partition's folder and moving the partition in
            _mkdir(f"{Layout(root).table('predictions')}/scored_date=2000-01-01")
        after = score_mod.score(spark, cfg_for(root), run_id="next")
        assert "predictions" in register(spark, root), point
        preds, rejects = table(root, "predictions"), table(root, "score_rejects")
        assert preds["image_sha256"].is_unique and rejects["image_sha256"].dropna().is_unique, point
        assert not _staged(root), point
        results.append((len(preds), len(rejects)))
        if finished:  # the commit had fewer moves than this point
            assert after["scored"] == after["rejected"] == 0  # the next run found everything done
            return point, results
