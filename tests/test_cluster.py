"""The jobs as cluster users run them: a Spark standalone master and worker on 127.0.0.1 (started
with the ``spark-class`` script pyspark ships), and ``spark-submit --master spark://...`` of every
stage's job with the library shipped as ``--py-files`` (scripts/package_pyfiles.py)."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from lesionspark.store import storage

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _state(ui_port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=5) as r:
        return json.load(r)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    work = tmp_path_factory.mktemp("standalone")
    port, ui = _free_port(), _free_port()
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable,
           "SPARK_LOG_DIR": str(work / "logs"), "SPARK_WORKER_DIR": str(work / "worker")}
    logs = [open(work / "master.log", "w"), open(work / "worker.log", "w")]
    master = subprocess.Popen([str(BIN / "spark-class"), "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                               "--port", str(port), "--webui-port", str(ui)], env=env, stdout=logs[0],
                              stderr=subprocess.STDOUT, start_new_session=True)
    worker = subprocess.Popen([str(BIN / "spark-class"), "org.apache.spark.deploy.worker.Worker",
                               f"spark://127.0.0.1:{port}", "--host", "127.0.0.1", "--cores", "2", "--memory", "8g",
                               "--webui-port", str(_free_port()), "--work-dir", str(work / "worker")],
                              env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if [w for w in _state(ui)["workers"] if w["state"] == "ALIVE"]:
                    break
            except OSError:
                pass
            assert time.time() < deadline, (work / "master.log").read_text()[-2000:] + (work / "worker.log").read_text()[-2000:]
            time.sleep(1)
        yield {"master": f"spark://127.0.0.1:{port}", "ui": ui, "env": env, "work": work}
    finally:
        for p in (worker, master):
            os.killpg(p.pid, signal.SIGTERM)
        for p in (worker, master):
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
        for f in logs:
            f.close()


def _submit(cluster, pyfiles, job, *args, expect: int = 0) -> tuple[str, str]:
    """spark-submit ``jobs/<job>.py`` to the standalone master; (stdout, stderr) once it exited ``expect``."""
    cmd = [str(BIN / "spark-submit"), "--master", cluster["master"], "--py-files", str(pyfiles),
           "--conf", f"spark.pyspark.python={sys.executable}", "--conf", "spark.executor.memory=4g",
           "--conf", "spark.driver.memory=2g", "--conf", "spark.ui.enabled=false",
           str(REPO / "jobs" / f"{job}.py"), *args, "spark.conf.spark.ui.showConsoleProgress=false"]
    # Run from elsewhere than the repository, so that nothing is imported from the working tree.
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cluster["env"], timeout=900, cwd=cluster["work"])
    assert proc.returncode == expect, f"{job}: exit {proc.returncode}\n{(proc.stdout + proc.stderr)[-4000:]}"
    return proc.stdout, proc.stderr


def test_packaged_library_is_self_contained(tmp_path):
    """The --py-files zip imports and finds its default configuration without the source tree
    (``python -S``: no site processing, so not the editable install either)."""
    sys.path.insert(0, str(REPO / "scripts"))
    from package_pyfiles import package
    z = package(tmp_path)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    code = (f"import sys; sys.path[:0] = [{str(z)!r}]; sys.path.append({site!r}); import lesionspark; "
            f"assert lesionspark.__file__.startswith({str(z)!r}), lesionspark.__file__; "
            "from lesionspark.core.config import Config; print(Config.load().get('dataset.name'))")
    r = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "ham10000", r.stderr


def test_every_job_on_a_standalone_cluster(cluster, synth_small, genuine_dir, tmp_path):
    """The README's ``pipeline --conf FILE`` as a spark-submit job (ingest, balance, train, evaluate,
    score in one application), a compare job refused for its local root, then the sql job: each an
    application of the master. (compare itself runs in tests/test_evaluate.py.)
    The conf sets ``balance.method: smote`` and not ``train.balance``: train must use the SMOTE data."""
    sys.path.insert(0, str(REPO / "scripts"))
    from package_pyfiles import package
    pyfiles = package(tmp_path / "dist")
    root = tmp_path / "root"
    conf = tmp_path / "mine.yaml"
    conf.write_text(yaml.safe_dump({
        # one machine: the local root is shared by the driver, executors and ranks, as an NFS mount would be
        "storage": {"root": str(root), "shared_filesystem": True}, "dataset": {"image_size": 32},
        "ingest": {"metadata": synth_small["metadata"], "images": synth_small["images"]},
        "balance": {"method": "smote"},
        "train": {"num_proc": 2, "epochs": 1, "samples_per_epoch": 128, "warmup_epochs": 0, "horovod_verbose": 0},
        "evaluate": {"bootstrap": 20},
        "score": {"archive": str(genuine_dir / "images")}}))

    stdout, _ = _submit(cluster, pyfiles, "pipeline", "--conf", str(conf))
    lines = stdout.splitlines()
    start = len(lines) - 1 - lines[::-1].index("{")  # the job prints its result as indented JSON last
    out = json.loads("\n".join(lines[start:]))
    assert list(out) == ["ingest", "balance", "train", "evaluate", "score"]
    manifest = storage.read_json(str(root / "datasets" / "ham10000" / "manifest.json"))
    assert manifest["counts"]["written"] + manifest["counts"]["rejected"] == manifest["inputs"]["total"]
    assert manifest["counts"]["written"] == synth_small["generated"] + synth_small["genuine"]
    counts = storage.read_json(str(root / "balanced" / "ham10000" / "smote" / "counts.json"))
    assert len(set(counts["after"].values())) == 1
    version = (root / "models" / "cnn" / "latest").read_text().strip()
    card = json.loads((root / "models" / "cnn" / version / "model_card.json").read_text())
    assert card["balance"] == "smote" and card["train_counts"] == counts["after"]
    assert card["workers"] == 2 and card["epochs_run"] == 1 and {r["rank"] for r in card["ranks"]} == {0, 1}
    assert out["evaluate"]["model_version"] == version and out["score"]["model_version"] == version
    assert (root / "reports" / "cnn" / version / "report.md").exists()
    assert out["score"]["scored"] == 56

    shared = "storage.shared_filesystem=true"
    out, err = _submit(cluster, pyfiles, "compare", "--root", str(root), expect=2)  # a local root must be said shared
    assert "each executor would write to its own disk" in out + err  # spark-submit merges the driver's stderr
    stdout, _ = _submit(cluster, pyfiles, "sql", "--root", str(root), "-q",
                        "SELECT count(*) AS n, count(DISTINCT model_version) AS versions FROM predictions", shared)
    assert "56" in stdout.split("versions")[-1]

    # Every one of them ran as an application of the standalone master, not in local mode.
    apps = _state(cluster["ui"])["completedapps"]
    assert len(apps) >= 3, apps
