"""The balance stage on real local Spark over an ingested (generated + genuine) dataset."""
import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from lesionspark.store import storage
from lesionspark.balance.driver import balance
from lesionspark.core.classes import LABEL_OF

pytestmark = pytest.mark.spark


def _rows(url):
    from petastorm import make_reader
    with make_reader(url, num_epochs=1, reader_pool_type="dummy", shuffle_row_groups=False) as reader:
        return list(reader)


def test_smote_hits_targets_exactly_and_records_lineage(spark, ingested_small):
    cfg, manifest, layout = ingested_small
    before = {k: v for k, v in manifest["counts"]["by_split"]["train"]["per_class"].items() if v}
    summary = balance(spark, cfg.with_overrides({"balance.method": "smote"}), run_id="b1")
    majority = max(before.values())
    assert summary["before"] == before
    assert summary["after"] == {dx: majority for dx in before}
    rows = _rows(layout.balanced("ham10000", "smote") + "/train")
    assert len(rows) == majority * len(before)
    originals = {r.image_id: r for r in _rows(layout.split("ham10000", "train"))}
    kept = [r for r in rows if not r.synthetic]
    assert sorted(r.image_id for r in kept) == sorted(originals)
    synthetic = [r for r in rows if r.synthetic]
    assert len({r.image_id for r in synthetic}) == len(synthetic)
    for r in synthetic:
        a, b = r.parents.split(",")
        pa, pb = originals[a], originals[b]
        assert pa.dx == pb.dx == r.dx and r.label == LABEL_OF[r.dx] and a != b
        lam = float(r.source.rsplit("@", 1)[1])
        assert 0 <= lam < 1
        expected = pa.image.astype(float) + lam * (pb.image.astype(float) - pa.image.astype(float))
        assert np.abs(expected - r.image).max() < 1.0 + 1e-3
        assert r.image.dtype == np.uint8 and r.image.shape == (32, 32, 3)
    # val and test are never touched or copied
    assert not storage.exists(layout.balanced("ham10000", "smote") + "/val")


def test_oversample_ratio_target_and_copies(spark, ingested_small):
    cfg, manifest, layout = ingested_small
    summary = balance(spark, cfg.with_overrides({"balance.method": "oversample", "balance.target": "ratio",
                                                 "balance.ratio": 0.5}))
    majority = max(summary["before"].values())
    for dx, n in summary["before"].items():
        assert summary["after"][dx] == max(n, round(0.5 * majority))
    rows = _rows(layout.balanced("ham10000", "oversample") + "/train")
    originals = {r.image_id: r.image for r in rows if not r.synthetic}
    for r in rows:
        if r.synthetic:
            assert np.array_equal(r.image, originals[r.parents])


def test_weights_write_no_rows(spark, ingested_small):
    cfg, manifest, layout = ingested_small
    summary = balance(spark, cfg.with_overrides({"balance.method": "weights"}))
    uri = layout.balanced("ham10000", "weights")
    assert not storage.exists(uri + "/train")
    weights = storage.read_json(uri + "/class_weights.json")
    labels = sorted(summary["before"], key=LABEL_OF.get)
    y = np.repeat([LABEL_OF[d] for d in labels], [summary["before"][d] for d in labels])
    expected = compute_class_weight("balanced", classes=np.unique(y), y=y)
    assert np.allclose([weights[d] for d in labels], expected)
    assert weights["nv"] < 1 < weights[min(summary["before"], key=summary["before"].get)]


def test_rerun_replaces_output(spark, ingested_small):
    cfg, manifest, layout = ingested_small
    c = cfg.with_overrides({"balance.method": "none"})
    first = balance(spark, c)
    second = balance(spark, c)
    assert first["after"] == second["after"] == first["before"]
    assert len(_rows(layout.balanced("ham10000", "none") + "/train")) == sum(first["before"].values())


def test_balance_without_ingest_is_a_clear_error(tmp_path):
    from lesionspark.cli import main
    assert main(["balance", "--root", str(tmp_path), "--name", "nothing"]) == 2
