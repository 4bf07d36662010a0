"""Scoring an archive with real local Spark, a real Keras model and real Parquet tables."""
import datetime
import io
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pyarrow.parquet as pq
import pytest
from PIL import Image

import commitcrash
from doctext import all_docs
from conftest import make_cfg, publish_untrained_model
from lesionspark.core.classes import CLASSES
from lesionspark.imaging.images import decode_resize
from lesionspark.modeling.models import preprocess
from lesionspark.store import runlog
from lesionspark.score.driver import score

pytestmark = pytest.mark.spark
SIZE = 32


def _jpeg(img, fmt="JPEG"):
    buf = io.BytesIO()
    img.save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archive(synth_small, genuine_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("archive")
    a = base / "archive"
    gen = sorted(Path(synth_small["images"][0]).glob("*.jpg"))[:40]
    for i, p in enumerate(gen):
        sub = a / f"2026-11-{i % 3 + 1:02d}" / ("ward B" if i % 2 else "wardA")
        sub.mkdir(parents=True, exist_ok=True)
        name = p.name if i % 5 else p.stem + ".JPG"  # upper-case extensions count
        shutil.copy(p, sub / name)
    shutil.copytree(genuine_dir / "images", a / "genuine")
    (a / "odd names").mkdir()
    shutil.copy(gen[0], a / "odd names" / "dermatoscopie été #1.jpeg")  # same content, second path
    Image.new("RGB", (80, 60), (150, 90, 70)).save(a / "odd names" / "lesion.PNG")
    bad = a / "bad"
    bad.mkdir()
    (bad / "empty.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not an image")
    full = gen[1].read_bytes()
    (bad / "truncated.jpg").write_bytes(full[: len(full) // 3])
    (bad / "random.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    (bad / "huge.png").write_bytes(_jpeg(Image.fromarray(
        np.random.default_rng(1).integers(0, 255, (700, 700, 3), dtype=np.uint8)), "PNG"))
    (bad / "notes.txt").write_text("a note beside the images: read like every file, and rejected")
    # every file is listed, whatever its extension; 6 are not images and 1 repeats a content: n_images - 7 scored
    n_images = sum(1 for p in a.rglob("*") if p.is_file())
    return a, n_images


@pytest.fixture(scope="module")
def scored(spark, archive, tmp_path_factory):
    a, n_images = archive
    root = tmp_path_factory.mktemp("score-root")
    model, card = publish_untrained_model(root)
    cfg = make_cfg(root, score__archive=str(a), score__model="cnn", archive__max_file_bytes=1_000_000)
    first = score(spark, cfg, run_id="r1")
    return cfg, root, model, card, first, n_images


def _table(root, name):
    return pq.read_table(str(root / "tables" / name)).to_pandas()


def test_counts_add_up_and_rejects_have_reasons(scored):
    cfg, root, model, card, first, n_images = scored
    assert first["listed"] == n_images
    assert first["scored"] + first["rejected"] + first["skipped"] == first["listed"]
    rejects = _table(root, "score_rejects")
    by_name = {os.path.basename(p): r for p, r in zip(rejects["image_path"], rejects["reason"])}
    assert by_name == {"empty.jpg": "empty_file", "text.jpg": "not_an_image",
                       "truncated.jpg": "truncated_or_corrupt", "random.jpg": "not_an_image",
                       "huge.png": "file_too_large", "notes.txt": "not_an_image"}
    assert rejects["detail"].notna().all()
    assert first["scored"] == n_images - 6 - 1  # six files that are not images, one duplicate content
    assert first["skipped"] == 1


def test_predictions_are_complete_and_match_model_predict(scored, archive):
    cfg, root, model, card, first, n_images = scored
    preds = _table(root, "predictions")
    assert len(preds) == first["scored"] and preds["image_sha256"].is_unique
    probs = np.stack(preds["probabilities"].to_numpy())
    assert probs.shape[1] == 7 and np.allclose(probs.sum(1), 1, atol=1e-5)
    assert (preds["predicted_dx"] == [CLASSES[i] for i in probs.argmax(1)]).all()
    assert np.allclose(preds["confidence"], probs.max(1))
    assert np.allclose(preds["malignant_probability"], probs[:, [0, 1, 4]].sum(1))
    # one date per run, the date of its scored_at (a run at 23:59 is checked after midnight)
    assert set(preds["scored_date"].astype(str)) == {str(pd.Timestamp(preds["scored_at"].iloc[0]).date())}
    assert abs((datetime.datetime.utcnow().date() - pd.Timestamp(preds["scored_at"].iloc[0]).date()).days) <= 1
    sample = preds.sample(8, random_state=0)
    images = np.stack([decode_resize(Path(p.replace("file:", "")).read_bytes(), SIZE, "squash")
                       for p in sample["image_path"]])
    expected = model.predict(preprocess("scale_0_1", images.astype(np.float32)), verbose=0)
    assert np.allclose(np.stack(sample["probabilities"].to_numpy()), expected, atol=1e-5)


def test_duplicate_content_is_scored_once_and_both_paths_are_recorded(spark, scored):
    from lesionspark.sql.query import register
    cfg, root, model, card, first, n_images = scored
    register(spark, str(root))
    dup = spark.sql("""SELECT image_sha256, count(*) n FROM predictions_by_path
                       GROUP BY image_sha256 HAVING n > 1""").collect()
    assert len(dup) == 1 and dup[0]["n"] == 2
    paths = [r.image_path for r in spark.sql(
        f"SELECT image_path FROM predictions_by_path WHERE image_sha256 = '{dup[0]['image_sha256']}'").collect()]
    assert any("été" in p for p in paths)


def test_rerun_scores_nothing_and_new_files_are_picked_up(spark, scored, archive, synth_small):
    cfg, root, model, card, first, n_images = scored
    a, _ = archive
    index_rows = len(_table(root, "score_files"))
    again = score(spark, cfg, run_id="r2")
    # the file over archive.max_file_bytes was never read nor hashed: judged again from its size, unread
    assert again["scored"] == 0 and again["new_files"] == 1 and again["rejected"] == 1
    assert again["skipped"] == again["listed"] - 1 == n_images - 1
    assert again["read"] == 1 and len(_table(root, "score_files")) == index_rows  # the 0-byte file too
    new = sorted(Path(synth_small["images"][0]).glob("*.jpg"))[50:53]
    (a / "2026-11-04").mkdir()
    for p in new:
        shutil.copy(p, a / "2026-11-04" / p.name)
    third = score(spark, cfg, run_id="r3")
    assert third["new_files"] == 3 + 1 and third["scored"] == 3 and third["listed"] == n_images + 3
    preds = _table(root, "predictions")
    assert preds["image_sha256"].is_unique and len(preds) == first["scored"] + 3
    for p in new:
        (a / "2026-11-04" / p.name).unlink()
    (a / "2026-11-04").rmdir()


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_a_killed_run_rerun_leaves_one_prediction_per_key(spark, archive, tmp_path):
    a, n_images = archive
    model, card = publish_untrained_model(tmp_path)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn:v1", archive__max_file_bytes=1_000_000,
                   spark__master="local[2]", score__lease_ttl_s=8, score__lease_wait_s=60)
    conf = tmp_path / "c.yaml"
    conf.write_text(cfg.to_yaml())
    staging = tmp_path / "tables" / "_staging"
    cmd = [str(Path(sys.executable).parent / "lesionspark"), "score", "--conf", str(conf),
           "spark.conf.spark.ui.showConsoleProgress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not (staging.exists() and any(staging.rglob("*.parquet"))):
            assert proc.poll() is None, "the run finished before it could be killed"
            time.sleep(0.05)
    finally:
        for pid in [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    assert not (tmp_path / "tables" / "predictions").exists()  # nothing half-committed
    rerun = score(spark, cfg, run_id="after-kill")  # waits for the killed run's lease to expire
    preds = _table(tmp_path, "predictions")
    assert len(preds) == rerun["scored"] == n_images - 7 and preds["image_sha256"].is_unique
    assert not staging.exists() or not any(staging.iterdir())
    runs = {r["run_id"]: r for r in runlog.read(str(tmp_path))}
    assert runs["after-kill"]["status"] == "succeeded"
    (killed,) = [r for k, r in runs.items() if k != "after-kill"]
    assert killed["status"] == "killed" and "after-kill" in killed["error"]


def test_hashed_paths_and_no_paths_in_logs(spark, archive, tmp_path, caplog):
    a, n_images = archive
    publish_untrained_model(tmp_path)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn", score__hash_paths=True,
                   score__path_salt="s3cret", archive__max_file_bytes=1_000_000)
    with caplog.at_level("INFO"):
        result = score(spark, cfg)
    preds = _table(tmp_path, "predictions")
    assert preds["image_path"].str.fullmatch(r"[0-9a-f]{64}").all() and result["scored"] == len(preds)
    assert "ward" not in caplog.text and "ISIC_" not in caplog.text


def test_missing_model_or_archive_exit_2(tmp_path, archive):
    from lesionspark.cli import main
    a, _ = archive
    assert main(["score", "--root", str(tmp_path), "--archive", str(a), "--model", "nope"]) == 2
    publish_untrained_model(tmp_path)
    assert main(["score", "--root", str(tmp_path), "--archive", str(tmp_path / "missing"), "--model", "cnn"]) == 2
    # a model version folder named by its URI: a model published under another root (HDFS, for an S3 root)
    from lesionspark.store.registry import resolve_model
    card, model_uri = resolve_model("s3a://elsewhere/root", str(tmp_path / "models" / "cnn" / "v1") + "/")
    assert (card["name"], card["version"]) == ("cnn", "v1") and model_uri.endswith("/models/cnn/v1/model.keras")
    assert main(["score", "--root", str(tmp_path), "--archive", str(a), "--model", str(tmp_path / "nowhere")]) == 2
    (tmp_path / "models" / "cnn" / "v1" / "model_card.json").write_text("{broken")
    assert main(["score", "--root", str(tmp_path), "--archive", str(a), "--model", "cnn:v1"]) == 2


def test_readme_queries_run(spark, scored):
    """The SQL examples in the docs run against a scored storage root."""
    import re
    from lesionspark.sql.query import register
    cfg, root, model, card, first, n_images = scored
    register(spark, str(root))
    readme = all_docs()
    block = next(b for b in re.findall(r"```sql\n(.*?)```", readme, re.S) if "last night's runs" in b)
    code = "\n".join(l for l in block.splitlines() if not l.strip().startswith("--"))
    statements = [s.strip() for s in code.split(";") if s.strip()]
    assert len(statements) == 4
    for sql in statements:
        spark.sql(sql.replace("<v1>", card["version"]).replace("<v2>", card["version"])).collect()
    # the run's own date, not current_date(): a run at 23:59 is queried after midnight
    day = spark.sql("SELECT max(scored_date) d FROM predictions").collect()[0].d
    assert abs((datetime.date.today() - day).days) <= 1
    triage = spark.sql(f"SELECT count(*) c FROM predictions WHERE scored_date = DATE'{day}'").collect()[0].c
    assert triage >= first["scored"]


def test_run_rows_and_review_flags_with_the_default_threshold(scored):
    cfg, root, model, card, first, n_images = scored
    preds = _table(root, "predictions")
    assert (preds["review_flag"] == (preds["malignant_probability"] >= 0.5)).all()
    preds = preds[preds["run_id"] == "r1"]
    run = {r["run_id"]: r for r in runlog.read(str(root))}["r1"]
    assert run["status"] == "succeeded" and run["threshold_source"] == "default" and run["review_threshold"] == 0.5
    assert (run["listed"], run["scored"], run["rejected"], run["skipped"]) == \
        (first["listed"], first["scored"], first["rejected"], first["skipped"])
    by_class = dict(run["predicted_by_class"])
    assert sum(by_class.values()) == first["scored"]
    assert by_class == preds["predicted_dx"].value_counts().reindex(CLASSES, fill_value=0).to_dict()
    assert run["mean_confidence"] == pytest.approx(preds["confidence"].mean())
    assert run["flagged"] == preds["review_flag"].sum() and run["drift_psi"] is None  # card has no reference


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_card_threshold_drift_exit_3_and_dry_run(spark, archive, tmp_path):
    from lesionspark.cli import main
    from lesionspark.modeling.monitor import psi, shares
    a, n_images = archive
    # A reference that says the model predicts almost only nv, so this untrained model drifts.
    ref = {"split": "val", "n": 500, "predicted_share": {c: (0.94 if c == "nv" else 0.01) for c in CLASSES},
           "mean_confidence": 0.8, "low_confidence": 0.5, "low_confidence_share": 0.1}
    publish_untrained_model(tmp_path, operating_threshold={"value": 0.3, "split": "val", "target_sensitivity": 0.95},
                            reference=ref)
    args = ["score", "--root", str(tmp_path), "--archive", str(a), "--model", "cnn", "archive.max_file_bytes=1000000"]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(args + ["--dry-run"]) == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written, not even a lease
    assert main(args + ["score.drift_min_images=1", "score.fail_on_drift=true"]) == 3
    preds = _table(tmp_path, "predictions")  # committed before the drift exit
    assert len(preds) == n_images - 7 and (preds["review_flag"] == (preds["malignant_probability"] >= 0.3)).all()
    (run,) = runlog.read(str(tmp_path))
    assert run["status"] == "succeeded" and run["drift_alert"] and run["threshold_source"] == "model_card:val@sens0.95"
    expected = psi(ref["predicted_share"], shares(preds["predicted_dx"].value_counts().to_dict(), CLASSES))
    assert run["drift_psi"] == pytest.approx(expected) and run["drift_psi"] > 0.2


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_overlapping_runs_leave_one_prediction_per_key(archive, tmp_path):
    """Three `lesionspark score` processes on one root at once. While the root is held, the one
    with no patience exits 75 naming the holder; the two that wait race for it when it is released."""
    from lesionspark.store.lease import Lease
    a, n_images = archive
    publish_untrained_model(tmp_path)
    base = [str(Path(sys.executable).parent / "lesionspark"), "score", "--root", str(tmp_path), "--archive", str(a),
            "--model", "cnn", "archive.max_file_bytes=1000000", "spark.master=local[1]",
            "spark.conf.spark.ui.showConsoleProgress=false", "spark.conf.spark.ui.enabled=false"]
    blocker = Lease(str(tmp_path / "tables" / "_lease"), "maintenance-window", ttl_s=60).acquire()
    try:
        procs = [subprocess.Popen(base + ["--wait", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        impatient = subprocess.run(base + ["--wait", "0"], capture_output=True, text=True, timeout=300)
    finally:
        blocker.release()
    outs = [p.communicate(timeout=400) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
    assert impatient.returncode == 75 and "being scored by run maintenance-window" in impatient.stderr
    preds = _table(tmp_path, "predictions")
    assert len(preds) == n_images - 7 and preds["image_sha256"].is_unique
    statuses = sorted(r["status"] for r in runlog.read(str(tmp_path)))
    assert statuses == ["locked", "succeeded", "succeeded"]


def test_readme_morning_queries_run(spark, scored):
    """The operator's score_runs queries in the docs run and see the runs."""
    import re
    from lesionspark.sql.query import register
    cfg, root, model, card, first, n_images = scored
    assert "score_runs" in register(spark, str(root))
    readme = all_docs()
    block = next(b for b in re.findall(r"```sql\n(.*?)```", readme, re.S) if "FROM score_runs" in b)
    code = "\n".join(l for l in block.splitlines() if not l.strip().startswith("--"))
    results = [spark.sql(s).collect() for s in code.split(";") if s.strip()]
    assert len(results) == 4
    assert {r.run_id for r in results[0]} >= {"r1"} and all(r.status == "succeeded" for r in results[0])


@pytest.mark.slow  # a second process or a whole extra run: the full suite, not the inner loop
def test_a_run_that_loses_the_lease_commits_nothing_and_says_fenced(spark, archive, tmp_path, monkeypatch):
    """The commit is fenced: the lease is checked before every move, and a run that lost it moves
    nothing more, records ``fenced`` and exits 4; the next run scores everything once."""
    from lesionspark.store import lease as lease_mod
    from lesionspark.score.driver import ScoreFenced
    a, n_images = archive
    publish_untrained_model(tmp_path)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn:v1", archive__max_file_bytes=1_000_000,
                   score__explain_flagged=True, evaluate__default_threshold=0.0,  # every image flagged
                   score__lease_ttl_s=8, score__lease_wait_s=30)  # the fenced run does not release its lease

    def lost(self):
        raise lease_mod.LeaseLost("run intruder took over the lease (generation 9)")
    real = lease_mod.Lease.check
    monkeypatch.setattr(lease_mod.Lease, "check", lost)
    with pytest.raises(ScoreFenced, match="intruder") as exc:
        score(spark, cfg, run_id="fenced-run")
    assert exc.value.exit_code == 4
    assert not (tmp_path / "tables" / "predictions").exists() and not (tmp_path / "tables" / "score_files").exists()
    assert not (tmp_path / "explanations").exists()  # overlays (patient images) are staged with the run
    assert {r["run_id"]: r["status"] for r in runlog.read(str(tmp_path))} == {"fenced-run": "fenced"}
    monkeypatch.setattr(lease_mod.Lease, "check", real)
    after = score(spark, cfg, run_id="after-fence")
    preds = _table(tmp_path, "predictions")
    assert len(preds) == after["scored"] == n_images - 7 and preds["image_sha256"].is_unique
    overlays = {p.name for p in (tmp_path / "explanations" / "cnn" / "v1" / "flagged").iterdir()}
    assert overlays == {f"{p.rsplit('/', 1)[1]}" for p in preds["explanation_path"].dropna()}


@pytest.mark.slow  # a rerun for each crash point: the full suite, not the inner loop
def test_a_commit_stopped_before_any_move_is_finished_by_the_next_run(spark, genuine_dir, tmp_path, monkeypatch):
    """A run staged and stopped at its commit; its commit then replayed from a copy of that state
    and stopped before each of its moves in turn (``commitcrash.replay``): every image ends with
    exactly one prediction or one reject for the model version, and the tables hold what a run that
    was never stopped leaves. Moved file by file, as on object stores (a kill inside a partition);
    moved by partition directories, on a real NameNode: tests/test_hdfs.py."""
    a = tmp_path / "archive"  # small: every kind of row, each rerun quick
    (a / "day2").mkdir(parents=True)
    genuine = sorted((genuine_dir / "images").glob("*.jpg"))[:3]
    for p in genuine:
        shutil.copy(p, a / p.name)
    shutil.copy(genuine[0], a / "day2" / "again.jpg")  # a second path of one content
    (a / "day2" / "broken.jpg").write_bytes(b"not a jpeg")
    n_images = 5
    base = tmp_path / "staged"
    publish_untrained_model(base)

    def cfg(root):
        return make_cfg(root, score__archive=str(a), score__model="cnn:v1", archive__max_file_bytes=1_000_000)

    def copy(point):
        shutil.copytree(base, tmp_path / f"crash-{point}", symlinks=True)
        return str(tmp_path / f"crash-{point}")
    commitcrash.stop_at_commit(spark, cfg(base), monkeypatch)
    assert (base / "tables" / "_staging" / "stopped" / "predictions").is_dir()
    point, results = commitcrash.replay(spark, copy, cfg, per_file=True)
    assert point >= 4  # before the first move, the rejects, the index and the predictions
    partitions = list((base / "tables" / "_staging" / "stopped").rglob("run_id=*"))
    # every file was a crash point, some of them inside a partition
    assert any(len([f for f in p.iterdir() if f.is_file()]) > 1 for p in partitions)
    assert point > 1 + len(partitions)
    assert len(set(results)) == 1, results  # every stopped commit ends as the whole one does
    assert sum(results[0]) == n_images - 1  # one content has two paths


def test_a_run_that_died_after_its_commit_is_reaped_as_committed(tmp_path):
    import datetime as dt
    runlog.write(str(tmp_path), "died-late", {"status": "running", "started_at": dt.datetime.now(dt.timezone.utc)})
    runlog.write(str(tmp_path), "died-early", {"status": "running", "started_at": dt.datetime.now(dt.timezone.utc)})
    (tmp_path / "tables" / "score_files" / "run_id=died-late").mkdir(parents=True)
    runlog.reap(str(tmp_path), "now")
    status = {r["run_id"]: r["status"] for r in runlog.read(str(tmp_path))}
    assert status == {"died-late": "committed", "died-early": "killed"}


def test_a_hostile_model_folder_is_refused_with_exit_2_not_a_hang(tmp_path, archive):
    """A model named by its folder's URI can be anywhere: a FIFO under the card's or the model's
    name, a link loop, or a card that is not an object ends as a clear refusal, never a hang."""
    import os
    from lesionspark.cli import main
    from lesionspark.store.registry import ModelError, resolve_model
    a, _ = archive
    publish_untrained_model(tmp_path / "good")
    good = tmp_path / "good" / "models" / "cnn" / "v1"
    for name, make in (("fifo-card", lambda d: os.mkfifo(d / "model_card.json")),
                       ("loop-card", lambda d: os.symlink(d / "model_card.json", d / "model_card.json")),
                       ("list-card", lambda d: (d / "model_card.json").write_text("[1, 2]")),
                       ("fifo-model", lambda d: os.mkfifo(d / "model.keras")),
                       ("dir-model", lambda d: (d / "model.keras").mkdir())):
        d = tmp_path / name
        shutil.copytree(good, d)
        (d / ("model.keras" if name.endswith("model") else "model_card.json")).unlink()  # replaced by:
        make(d)
        with pytest.raises(ModelError):
            resolve_model(str(tmp_path), str(d))
    assert main(["score", "--root", str(tmp_path / "root"), "--archive", str(a),
                 "--model", str(tmp_path / "fifo-card")]) == 2
    # the registry's ``latest`` is a shared file too: a FIFO, or a name that leaves the registry
    latest = tmp_path / "good" / "models" / "cnn" / "latest"
    for make in (lambda: os.mkfifo(latest), lambda: latest.write_text("../../../good/models/cnn/v1")):
        latest.unlink()
        make()
        with pytest.raises(ModelError, match="latest"):
            resolve_model(str(tmp_path / "good"), "cnn")


@pytest.mark.slow  # a scoring run in its own process
def test_sigterm_ends_the_run_as_failed_and_releases_the_lease(archive, tmp_path):
    """A scheduler's timeout sends SIGTERM: the run row says failed (not running) and the lease is
    free at once, not after its ttl."""
    from lesionspark.store.lease import Lease
    a, _ = archive
    publish_untrained_model(tmp_path)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn:v1", spark__master="local[1]",
                   score__lease_ttl_s=600)
    conf = tmp_path / "c.yaml"
    conf.write_text(cfg.to_yaml())
    cmd = [str(Path(sys.executable).parent / "lesionspark"), "score", "--conf", str(conf),
           "spark.conf.spark.ui.showConsoleProgress=false"]
    # stderr to a file, and the wait on the run's own process: a JVM it started, still starting when the
    # signal came, may hold a pipe open after the run has exited
    log = tmp_path / "stderr.log"
    with open(log, "wb") as err_out:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err_out, start_new_session=True)
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not any(r.get("status") == "running" for r in runlog.read(str(tmp_path))):
            assert proc.poll() is None, "the run finished before it could be stopped"
            time.sleep(0.2)
        time.sleep(2)  # into the Spark work
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=120)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # whatever of the run's process group is left
        except ProcessLookupError:
            pass
    err = log.read_text(errors="replace")
    assert proc.returncode == 143, err[-3000:]
    rows = runlog.read(str(tmp_path))
    assert [r["status"] for r in rows] == ["failed"] and "SIGTERM" in rows[0]["error"]
    with Lease(str(tmp_path / "tables" / "_lease"), "next", wait_s=0):  # free now, not in 600 s
        pass


def test_a_reject_by_a_limit_is_decided_again_when_the_limit_is_raised(spark, genuine_dir, tmp_path):
    a = tmp_path / "archive"
    a.mkdir()
    for p in sorted((genuine_dir / "images").glob("*.jpg"))[:2]:
        shutil.copy(p, a / p.name)  # 600x450: 270,000 pixels
    publish_untrained_model(tmp_path)
    cfg = make_cfg(tmp_path, score__archive=str(a), score__model="cnn:v1", limits__max_image_pixels=100_000)
    first = score(spark, cfg, run_id="tight")
    assert first["rejected_by_reason"] == {"too_many_pixels": 2}
    rejects = _table(tmp_path, "score_rejects")
    assert set(rejects["limits"]) == {"max_image_pixels=100000,max_decoded_bytes=268435456"}
    again = score(spark, cfg, run_id="same")
    assert again["read"] == 0 and again["rejected"] == 0  # decided while the limits stand
    raised = score(spark, cfg.with_overrides({"limits.max_image_pixels": 40_000_000}), run_id="raised")
    assert raised["read"] == 2 and raised["scored"] == 2
    assert len(_table(tmp_path, "predictions")) == 2


def test_the_contracts_doc_names_every_column_score_writes(scored):
    """docs/contracts.md is the reference for readers of the root: every column of score's tables
    is named in its table's entry there."""
    cfg, root, model, card, first, n_images = scored
    doc = (Path(__file__).parents[1] / "docs" / "contracts.md").read_text()
    for table in ("predictions", "score_rejects", "score_files", "score_runs"):
        entry = doc.split(f"**`{table}`**", 1)[1].split("\n- **", 1)[0]
        columns = pq.read_table(str(root / "tables" / table)).column_names
        missing = [c for c in columns if f"`{c}`" not in entry and f"{c}," not in entry and f" {c}`" not in entry]
        assert not missing, (table, missing)
