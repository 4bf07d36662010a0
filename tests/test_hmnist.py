"""The Kaggle hmnist pixel CSVs: label map checked by class counts, bad rows rejected."""
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import make_cfg
from lesionspark.ingest.hmnist import GENUINE_COUNTS, check_label_map, parse_header, parse_row
from lesionspark.imaging.images import ImageRejected
from lesionspark.ingest.driver import ingest
from lesionspark.core.classes import HMNIST_LABELS



def write_hmnist_csv(path: str, images: np.ndarray, dx: list[str], grayscale: bool = False) -> None:
    """Write images in the Kaggle ``hmnist_<s>_<s>_{L,RGB}.csv`` layout (pixel columns + label)."""
    code = {v: k for k, v in HMNIST_LABELS.items()}
    n = images.shape[0]
    if grayscale:
        flat = np.asarray([np.asarray(Image.fromarray(im).convert("L")) for im in images]).reshape(n, -1)
    else:
        flat = images.reshape(n, -1)
    df = pd.DataFrame(flat, columns=[f"pixel{i:04d}" for i in range(flat.shape[1])])
    df["label"] = [code[d] for d in dx]
    df.to_csv(path, index=False)


def test_label_map_matches_the_genuine_class_counts(genuine_dir):
    meta = pd.read_csv(genuine_dir / "HAM10000_metadata.csv")
    assert meta["dx"].value_counts().to_dict() == GENUINE_COUNTS
    assert check_label_map(GENUINE_COUNTS) == []
    # seed 003's reading (label 4 = akiec... i.e. a shifted map) is caught by the counts
    wrong = dict(GENUINE_COUNTS, akiec=6705, nv=327)
    assert any("label map" in w for w in check_label_map(wrong))


def test_header_and_rows_rgb_and_grayscale():
    assert parse_header(",".join(f"pixel{i:04d}" for i in range(28 * 28 * 3)) + ",label") == (28, 3)
    assert parse_header(",".join(f"pixel{i:04d}" for i in range(28 * 28)) + ",label") == (28, 1)
    with pytest.raises(ValueError):
        parse_header("a,b,label")
    img, dx = parse_row(",".join(["7"] * 16) + ",4", 4, 1)
    assert dx == "nv" and img.shape == (4, 4, 3) and (img == 7).all()
    for line, code in [(",".join(["7"] * 15) + ",4", "malformed_csv_row"),
                       (",".join(["300"] * 16) + ",4", "pixel_out_of_range"),
                       (",".join(["7"] * 16) + ",9", "unknown_dx")]:
        with pytest.raises(ImageRejected) as exc:
            parse_row(line, 4, 1)
        assert exc.value.code == code


@pytest.mark.spark
def test_hmnist_csv_ingests_with_rejects(spark, synth_small, tmp_path):
    meta = pd.read_csv(synth_small["metadata"]).head(60)
    folders = synth_small["images"]
    images, dx = [], []
    for image_id, d in zip(meta["image_id"], meta["dx"]):
        path = next(p for p in (f"{f}/{image_id}.jpg" for f in folders) if __import__("os").path.exists(p))
        images.append(np.asarray(Image.open(path).convert("RGB").resize((28, 28))))
        dx.append(d)
    csv_path = tmp_path / "hmnist_28_28_RGB.csv"
    write_hmnist_csv(str(csv_path), np.stack(images), dx)
    with open(csv_path, "a") as fh:
        fh.write(",".join(["1"] * 100) + ",4\n")                    # malformed
        fh.write(",".join(["1"] * (28 * 28 * 3)) + ",8\n")          # unknown label
    cfg = make_cfg(tmp_path / "root", ingest__hmnist=str(csv_path), dataset__image_size=28,
                   dataset__name="hmnist")
    manifest = ingest(spark, cfg)
    assert manifest["counts"]["written"] == 60 and manifest["counts"]["rejected"] == 2
    assert manifest["counts"]["rejected_by_reason"] == {"malformed_csv_row": 1, "unknown_dx": 1}
    assert manifest["lesion_grouped"] is False
    per_class = {}
    for split in manifest["counts"]["by_split"].values():
        for k, v in split["per_class"].items():
            per_class[k] = per_class.get(k, 0) + v
    assert {k: v for k, v in per_class.items() if v} == pd.Series(dx).value_counts().to_dict()
    from petastorm import make_reader
    with make_reader(f"file://{tmp_path}/root/datasets/hmnist/train", num_epochs=1, reader_pool_type="dummy",
                     shuffle_row_groups=False) as r:
        rows = list(r)
    assert len(rows) == manifest["counts"]["by_split"]["train"]["total"]
    assert all(row.image.shape == (28, 28, 3) and row.image_id.startswith("hmnist_28_RGB_") for row in rows)
