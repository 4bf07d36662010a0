"""Real Horovod (Gloo) workers launched by local Spark, reading real Petastorm data."""
import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import psutil
import pytest

from lesionspark.store import storage
from lesionspark.train.driver import sharding, train

pytestmark = [pytest.mark.spark, pytest.mark.slow]
FAST = {"model.params": {"filters": [8, 16, 16], "dense": 32}, "train.batch_size": 16,
        "train.balance": "none", "train.num_proc": 2, "train.warmup_epochs": 1, "train.patience": 10,
        "train.learning_rate": 0.003, "train.horovod_verbose": 0}
SWA = {"train.select": "swa", "train.swa_epochs": 3}  # the killed and resumed run: a weight mean across the kill


def _kill_mid_run(cfg, run_id: str, run_dir: Path, tmp_path: Path) -> int:
    """``lesionspark train`` in its own process, killed (SIGKILL, Horovod ranks included) once its
    checkpoint says 2 epochs are done; the epoch the checkpoint holds."""
    conf = tmp_path / "run.yaml"
    conf.write_text(cfg.with_overrides({**FAST, **SWA, "train.epochs": 4, "train.sleep_after_epoch": 3,
                                        "spark.master": "local[2]"}).to_yaml())
    cmd = [str(Path(sys.executable).parent / "lesionspark"), "train", "--conf", str(conf), "--run-id", run_id,
           "spark.conf.spark.ui.showConsoleProgress=false"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            state = run_dir / "state.json"
            if state.exists() and storage.read_json(str(state))["epoch"] >= 2:
                break
            assert proc.poll() is None, "the training run ended before it could be killed"
            time.sleep(0.5)
        else:
            pytest.fail("no checkpoint after 300 s")
    finally:
        family = [proc.pid] + [c.pid for c in psutil.Process(proc.pid).children(recursive=True)]
        for pid in family:  # the whole tree, Horovod ranks included, as a crash would
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()
    return storage.read_json(str(run_dir / "state.json"))["epoch"]


@pytest.fixture(scope="module")
def trained(spark, ingested_small, tmp_path_factory):
    """One 4-epoch run on 2 ranks, killed after its second checkpoint and resumed: the lockstep,
    history and card tests read the finished run, the resume test what happened in between."""
    cfg, manifest, layout = ingested_small
    run_id = "t-two-ranks"
    run_dir = Path(layout.root.replace("file://", "")) / "runs" / run_id
    epoch_at_kill = _kill_mid_run(cfg, run_id, run_dir, tmp_path_factory.mktemp("killed"))
    published_before = (run_dir.parent.parent / "models" / "cnn" / run_id).exists()
    card = train(spark, cfg.with_overrides({**FAST, **SWA, "train.epochs": 4}), run_id=run_id)
    return cfg, layout, card, epoch_at_kill, published_before


def test_two_ranks_train_in_lockstep(trained):
    cfg, layout, card, epoch_at_kill, _ = trained
    ranks = card["ranks"]
    assert [r["rank"] for r in ranks] == [0, 1] and card["workers"] == 2
    assert all(r["epochs_run"] == 4 - epoch_at_kill and r["steps_per_epoch"] > 0 for r in ranks)
    assert ranks[0]["trainable_sha256"] == ranks[1]["trainable_sha256"]  # allreduce kept them identical
    assert ranks[0]["non_trainable_sha256"] == ranks[1]["non_trainable_sha256"]  # batch-norm stats synced
    assert card["threads_per_worker"] == 1  # 2 workers on 2 cores: no oversubscription


def test_loss_goes_down_and_history_is_complete(trained):
    """The history spans the run before the kill and after the resume."""
    cfg, layout, card, _, _ = trained
    model_dir = Path(layout.root.replace("file://", "")) / "models" / "cnn" / card["version"]
    history = storage.read_json(str(model_dir / "history.json"))
    for key in ("loss", "accuracy", "macro_recall", "val_loss", "val_accuracy", "val_macro_recall"):
        assert len(history[key]) == 4, key
    assert history["loss"][-1] < history["loss"][0]
    # lr_scaling none: Adam's 0.003 after the warm-up, then cosine decay to the last epoch
    assert history["lr"][1] == pytest.approx(0.003, rel=1e-3)
    assert history["lr"][3] < history["lr"][2] < history["lr"][1]


def test_learning_rate_rules():
    from lesionspark.train.executor import cosine_rate, scaled_learning_rate
    assert scaled_learning_rate(0.001, 4, "linear") == pytest.approx(0.004)
    assert scaled_learning_rate(0.001, 4, "sqrt") == pytest.approx(0.002)
    assert scaled_learning_rate(0.001, 4, "none") == pytest.approx(0.001)
    with pytest.raises(ValueError, match="lr_scaling"):
        scaled_learning_rate(0.001, 4, "cubic")
    rates = [cosine_rate(0.01, e, 2, 10) for e in range(2, 10)]
    assert rates[0] == pytest.approx(0.01, rel=1e-3) and all(a > b for a, b in zip(rates, rates[1:]))
    assert rates[-1] < 0.001


def test_model_and_card_are_written(trained):
    import tensorflow as tf
    cfg, layout, card, _, _ = trained
    base = Path(layout.root.replace("file://", "")) / "models" / "cnn"
    assert (base / "latest").read_text() == card["version"]
    saved = storage.read_json(str(base / card["version"] / "model_card.json"))
    for key in ("name", "version", "architecture", "classes", "image_size", "preprocessing", "balance",
                "dataset_fingerprint", "hyperparameters", "epochs_run", "workers", "metrics", "created_at",
                "versions"):
        assert key in saved, key
    assert saved["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert 0 <= saved["metrics"]["val"]["balanced_accuracy"] <= 1
    totals = storage.read_json(layout.manifest(cfg.get("dataset.name")))["counts"]["by_split"]
    for split in ("val", "test"):  # each rank scored its shard; together every row exactly once
        assert saved["metrics"][split]["n"] == totals[split]["total"], split
    model = tf.keras.models.load_model(str(base / card["version"] / "model.keras"), compile=False)
    probs = model.predict(np.zeros((2, 32, 32, 3), np.float32), verbose=0)
    assert probs.shape == (2, 7) and np.allclose(probs.sum(1), 1, atol=1e-5)


def test_selection_rules_and_the_val_split_they_need(caplog):
    """Which epochs a model keeps under each ``train.select``; the default does not pick on val; a
    pick on val warns when a val class is too thin for the monitor to mean anything."""
    from types import SimpleNamespace
    from lesionspark.core.config import Config
    from lesionspark.train.driver import MIN_VAL_IMAGES, selection, thin_val_classes
    spec = SimpleNamespace(select="best", monitor="val_macro_recall", epochs=8, swa_epochs=3)
    assert selection(spec, 8, {"epoch": 4, "value": 0.7}) == {"rule": "best", "monitor": "val_macro_recall",
                                                              "epochs": [5]}
    assert selection(SimpleNamespace(**{**vars(spec), "select": "last"}), 8, None) == {"rule": "last", "epochs": [8]}
    assert selection(SimpleNamespace(**{**vars(spec), "select": "swa"}), 8, None) == {"rule": "swa", "epochs": [6, 7, 8]}
    # the demo's val split (157 images): 1 df and 3 vasc move a balanced-accuracy monitor by up to 0.14
    demo_val = {"counts": {"by_split": {"val": {"per_class": {"akiec": 5, "bcc": 8, "bkl": 17, "df": 1, "mel": 18,
                                                              "nv": 105, "vasc": 3}}}}}
    assert thin_val_classes(demo_val) == {"akiec": 5, "bcc": 8, "bkl": 17, "df": 1, "mel": 18, "vasc": 3}
    assert MIN_VAL_IMAGES >= 30
    assert Config.load().get("train.select") != "best"  # the default keeps weights that do not depend on val


def test_sharding_plan():
    assert sharding(8, 2) == "row_groups" and sharding(3, 2) == "hash"


def test_a_killed_run_resumes_from_its_checkpoint(trained):
    cfg, layout, card, epoch_at_kill, published_before = trained
    assert 2 <= epoch_at_kill < 4
    assert not published_before  # nothing published by the killed run
    assert all(r["initial_epoch"] == epoch_at_kill for r in card["ranks"])
    assert card["epochs_run"] == 4  # the history spans the run before and after the crash
    assert all(r["epochs_run"] == 4 - epoch_at_kill for r in card["ranks"])
    # train.select: swa: the mean of epochs 2 to 4 spans the kill, the resumed run starting from the
    # mean through its last recorded epoch; each rank ended holding that mean
    assert card["selection"] == {"rule": "swa", "epochs": [2, 3, 4]}
    run_dir = Path(layout.root.replace("file://", "")) / "runs" / card["run_id"]
    assert sorted(p.name for p in run_dir.glob("swa-*.npz")) == ["swa-003.npz", "swa-004.npz"]
    with np.load(run_dir / "swa-004.npz", allow_pickle=False) as saved:
        assert int(saved["n"]) == 3


def test_binary_mode_with_focal_loss_and_class_weights_on_an_efficientnet(spark, ingested_small):
    """One rank, and the second backbone: EfficientNet-B0 (weights=None, mode=finetune) trained
    through Horovod, binary, with focal loss and class weights. Two-rank lockstep of a backbone is
    the ResNet50 test's; the synchronisation it relies on does not depend on the architecture."""
    cfg, manifest, layout = ingested_small
    card = train(spark, cfg.with_overrides({
        **FAST, "train.epochs": 1, "train.samples_per_epoch": 64, "train.mode": "binary", "train.num_proc": 1,
        "train.loss": "focal", "train.balance": "weights", "train.augment": {"enabled": False}, "train.bn_batches": 2,
        "model.arch": "efficientnet", "model.params": {"variant": "B0", "mode": "finetune"},
        "model.name": "efficientnet-binary"}), run_id="t-binary")
    assert card["classes"] == ["benign", "malignant"] and card["mode"] == "binary"
    assert card["architecture"] == "efficientnet" and card["epochs_run"] == 1
    weights = card["hyperparameters"]["class_weight"]
    assert set(weights) == {0, 1} and weights[1] > 1 > weights[0]  # malignant is the minority
    assert card["hyperparameters"]["loss"] == "focal"
    assert card["metrics"]["test"]["n"] == manifest["counts"]["by_split"]["test"]["total"]


def test_a_resnet50_with_metadata_trains_from_random_init_on_two_workers(spark, ingested_small):
    """weights=None with mode=finetune: the whole backbone trains (batch-norm too), in lockstep; with
    model.metadata the ranks read age, sex and site with the images (training, PreciseBN, sharded
    validation, final metrics) and the published model takes both inputs."""
    from lesionspark.dataset.clinical import ENCODING, width
    cfg, manifest, layout = ingested_small
    card = train(spark, cfg.with_overrides({
        **FAST, "model.arch": "resnet50", "model.params": {"mode": "finetune"}, "train.epochs": 1,
        "train.samples_per_epoch": 64, "train.augment": {"enabled": False}, "train.bn_batches": 2,
        "model.name": "resnet50-scratch", "model.metadata": ["sex", "age", "localization"]}), run_id="t-resnet50")
    assert card["architecture"] == "resnet50"
    assert (card["metadata"], card["metadata_encoding"]) == (["age", "sex", "localization"], ENCODING)
    assert card["ranks"][0]["trainable_sha256"] == card["ranks"][1]["trainable_sha256"]
    assert card["ranks"][0]["non_trainable_sha256"] == card["ranks"][1]["non_trainable_sha256"]
    assert card["epochs_run"] == 1
    assert card["metrics"]["test"]["n"] == manifest["counts"]["by_split"]["test"]["total"]
    saved = Path(layout.root.replace("file://", "")) / "models" / "resnet50-scratch" / card["version"] / "model.keras"
    with zipfile.ZipFile(saved) as z:  # the saved graph's inputs, read without rebuilding ResNet50
        layers = json.loads(z.read("config.json"))["config"]["layers"]
    inputs = {l["name"]: l["config"]["batch_input_shape"] for l in layers if l["class_name"] == "InputLayer"}
    assert inputs == {"image": [None, 32, 32, 3], "metadata": [None, width(card["metadata"])]}


def test_deterministic_training_gives_the_same_weights_for_the_same_seed(spark, ingested_small):
    """train.deterministic: one decoding thread, TensorFlow's deterministic ops, a batch-norm sample from
    a reader of its own, val read in file order; ingest writes rows in a fixed order. Two ranks, two
    runs. The digest is checked against the published model's weights (it is of the trained weights)
    and against the same seed's initial weights (training moved them)."""
    import tensorflow as tf
    from lesionspark.modeling.models import build
    from lesionspark.train.executor import digest
    cfg, manifest, layout = ingested_small
    run = {**FAST, "train.epochs": 1, "train.samples_per_epoch": 64, "train.deterministic": True,
           "train.bn_batches": 2, "model.name": "cnn-det", "train.seed": 5}
    cards = [train(spark, cfg.with_overrides(run)) for _ in range(2)]
    digests = [c["ranks"][0]["trainable_sha256"] for c in cards]
    assert digests[0] == digests[1]
    saved = Path(layout.root.replace("file://", "")) / "models" / "cnn-det" / cards[1]["version"] / "model.keras"
    assert digest(tf.keras.models.load_model(str(saved), compile=False).trainable_weights) == digests[1]
    tf.keras.utils.set_random_seed(5)
    initial = build("cnn", 32, 7, FAST["model.params"])
    assert digest(initial.trainable_weights) != digests[1]
