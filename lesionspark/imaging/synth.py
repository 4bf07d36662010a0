"""Generate a HAM10000-shaped dataset: genuine metadata rows, generated images.

Rows are sampled by lesion from the genuine metadata file shipped with lesionspark, so lesion ids,
classes, ages, sites and repeated images per lesion follow the real set. Each image is drawn from
parameters that depend on the class (colour, size, border irregularity, texture, asymmetry) with
wide per-lesion noise, so the classes overlap and a CNN has something to learn but not trivially.
Images of one lesion share the lesion's parameters and differ by pose, lighting and noise, so a
split that leaks lesions across train and test inflates scores, as it does on the real data.

Runs on the driver's machine only (a local process pool, no Spark executors): it makes test and demo inputs.
"""
from __future__ import annotations

import hashlib
import io
import logging
import os
import shutil
from concurrent.futures import ProcessPoolExecutor
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ..core.classes import CLASSES
from ..dataset.metadata import COLUMNS

log = logging.getLogger(__name__)

GENUINE_DIR = resources.files("lesionspark").joinpath("data/ham10000")

# Per class: lesion colour (RGB) and second colour mixed in by texture, mean radius as a fraction
# of the short side, border irregularity, texture strength, asymmetry.
CLASS_STYLE = {
    "akiec": dict(c1=(196, 112, 104), c2=(222, 170, 150), r=0.28, irr=0.10, tex=0.55, asym=0.15),
    "bcc":   dict(c1=(204, 146, 150), c2=(120, 110, 140), r=0.26, irr=0.08, tex=0.45, asym=0.20),
    "bkl":   dict(c1=(168, 126, 92), c2=(120, 84, 60), r=0.32, irr=0.07, tex=0.60, asym=0.10),
    "df":    dict(c1=(160, 112, 92), c2=(226, 206, 196), r=0.20, irr=0.04, tex=0.35, asym=0.05),
    "mel":   dict(c1=(92, 62, 56), c2=(96, 104, 132), r=0.36, irr=0.16, tex=0.70, asym=0.30),
    "nv":    dict(c1=(140, 94, 68), c2=(108, 72, 52), r=0.27, irr=0.04, tex=0.30, asym=0.05),
    "vasc":  dict(c1=(170, 52, 72), c2=(110, 30, 64), r=0.18, irr=0.05, tex=0.45, asym=0.08),
}


def _stable_int(*parts) -> int:
    return int.from_bytes(hashlib.sha256("|".join(map(str, parts)).encode()).digest()[:8], "little")


def lesion_params(lesion_id: str, dx: str, seed: int) -> dict:
    """Everything an image of this lesion inherits; noisy around its class style."""
    rng = np.random.default_rng(_stable_int(seed, "lesion", lesion_id))
    s = CLASS_STYLE[dx]

    def jitter(colour, brightness_sd, channel_sd):
        # A shared brightness factor keeps the hue; small per-channel noise blurs the classes.
        c = np.array(colour, float) * rng.normal(1, brightness_sd) + rng.normal(0, channel_sd, 3)
        return np.clip(c, 0, 255)

    return {
        "skin": jitter((224, 180, 160), 0.07, 5),
        "c1": jitter(s["c1"], 0.15, 9), "c2": jitter(s["c2"], 0.15, 9),
        "radius": float(np.clip(rng.normal(s["r"], 0.06), 0.08, 0.45)),
        "harmonics": rng.normal(0, s["irr"], 6) / np.arange(1, 7) ** 0.5,
        "phases": rng.uniform(0, 2 * np.pi, 6),
        "texture": float(np.clip(rng.normal(s["tex"], 0.15), 0.05, 1.0)),
        "asym": float(np.clip(rng.normal(s["asym"], 0.06), 0, 0.5)),
        "elong": float(rng.uniform(0.8, 1.25)),
        "tex_seed": int(rng.integers(2**31)),
    }


def render(params: dict, image_key: str, seed: int, width: int = 600, height: int = 450, with_mask: bool = False):
    """One image of a lesion, HxWx3 uint8. Drawn at half size, then upscaled (like a camera would).
    ``with_mask``: also the lesion's mask (HxW bool, where the lesion outweighs the skin)."""
    rng = np.random.default_rng(_stable_int(seed, "image", image_key))
    w, h = max(width // 2, 16), max(height // 2, 16)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    short = min(w, h)
    cx = w / 2 + rng.normal(0, 0.04) * w
    cy = h / 2 + rng.normal(0, 0.04) * h
    angle = rng.uniform(0, 2 * np.pi)
    scale = params["radius"] * short * rng.uniform(0.9, 1.1)
    dx, dy = xx - cx, yy - cy
    ca, sa = np.cos(angle), np.sin(angle)
    u = (dx * ca + dy * sa) / params["elong"]
    v = (-dx * sa + dy * ca) * params["elong"]
    r = np.hypot(u, v)
    theta = np.arctan2(v, u)
    k = np.arange(1, 7)[:, None, None]
    wobble = (params["harmonics"][:, None, None] * np.cos(k * theta + params["phases"][:, None, None])).sum(0)
    boundary = scale * (1 + wobble + params["asym"] * np.cos(theta))
    mask = 1 / (1 + np.exp(-(boundary - r) / (1.5 + 2 * params["asym"])))

    # Texture: smooth blotches (same for every image of the lesion, moved with the pose) + fine noise.
    trng = np.random.default_rng(params["tex_seed"])
    coarse = trng.random((12, 12)).astype(np.float32)
    blotch = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize(
        (int(4 * scale) + 2, int(4 * scale) + 2), Image.BICUBIC), np.float32) / 255
    bi = np.clip((u + 2 * scale).astype(int), 0, blotch.shape[1] - 1)
    bj = np.clip((v + 2 * scale).astype(int), 0, blotch.shape[0] - 1)
    mix = np.clip(blotch[bj, bi] * params["texture"] * 1.6 - 0.2, 0, 1)[..., None]
    lesion = params["c1"] * (1 - mix) + params["c2"] * mix
    lesion = lesion * (1 + 0.2 * (r / (boundary + 1e-3)).clip(0, 1)[..., None] ** 2)  # lighter rim

    light = rng.uniform(0.9, 1.08)
    vignette = 1 - 0.35 * (np.hypot((xx - w / 2) / w, (yy - h / 2) / h) * 1.6) ** 3
    img = (params["skin"] * (1 - mask[..., None]) + lesion * mask[..., None]) * light * vignette[..., None]
    img += rng.normal(0, 6, img.shape)
    small = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    full = np.asarray(small.resize((width, height), Image.BICUBIC))
    if not with_mask:
        return full
    m = Image.fromarray((mask * 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    return full, np.asarray(m) >= 128



def genuine_metadata() -> pd.DataFrame:
    with GENUINE_DIR.joinpath("HAM10000_metadata.csv").open() as fh:
        return pd.read_csv(fh, dtype=str, keep_default_na=False)


def genuine_image_ids() -> list[str]:
    return sorted(p.name[:-4] for p in GENUINE_DIR.joinpath("images").iterdir() if p.name.endswith(".jpg"))


def sample_rows(meta: pd.DataFrame, n_images: int, seed: int, exclude_lesions=frozenset(),
                min_per_class: int = 4) -> pd.DataFrame:
    """Whole lesions, per class in the genuine proportions (at least ``min_per_class`` images)."""
    pool = meta[~meta["lesion_id"].isin(exclude_lesions)]
    if n_images >= len(pool):
        return pool.reset_index(drop=True)
    frac = pool["dx"].value_counts(normalize=True)
    rng = np.random.default_rng([seed, 7])
    chosen = []
    for dx in CLASSES:
        rows = pool[pool["dx"] == dx]
        target = max(min_per_class, int(round(n_images * frac.get(dx, 0))))
        lesions = rows["lesion_id"].drop_duplicates().to_numpy()
        rng.shuffle(lesions)
        sizes = rows.groupby("lesion_id").size()
        total, take = 0, []
        for lesion in lesions:
            if total >= target:
                break
            take.append(lesion)
            total += int(sizes[lesion])
        chosen.append(rows[rows["lesion_id"].isin(take)])
    return pd.concat(chosen).sort_values(["lesion_id", "image_id"]).reset_index(drop=True)


def _render_batch(args) -> int:
    rows, out_dir, seed, width, height = args
    for lesion_id, image_id, dx in rows:
        params = lesion_params(lesion_id, dx, seed)
        arr = render(params, image_id, seed, width, height)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, "JPEG", quality=90)
        tmp = os.path.join(out_dir, f".{image_id}.jpg.tmp")
        with open(tmp, "wb") as fh:
            fh.write(buf.getvalue())
        os.replace(tmp, os.path.join(out_dir, f"{image_id}.jpg"))
    return len(rows)


def synth(out: str, n_images: int = 1000, seed: int = 0, width: int = 600, height: int = 450,
          with_genuine: bool = True, workers: int = 0, progress: bool = True) -> dict:
    """Write ``out/HAM10000_metadata.csv``, ``out/images_generated/`` and (``with_genuine``)
    ``out/images_genuine/`` with the 56 genuine JPEGs. Rerunning with the same arguments writes
    the same files. Returns a summary dict."""
    out_path = Path(out)
    gen_dir = out_path / "images_generated"
    gen_dir.mkdir(parents=True, exist_ok=True)
    meta = genuine_metadata()
    real_ids = genuine_image_ids() if with_genuine else []
    real_rows = meta[meta["image_id"].isin(real_ids)]
    rows = sample_rows(meta, n_images, seed, exclude_lesions=frozenset(real_rows["lesion_id"]))
    work = list(zip(rows["lesion_id"], rows["image_id"], rows["dx"]))
    workers = workers or os.cpu_count() or 1
    chunk = max(1, min(64, len(work) // (workers * 4) or 1))
    batches = [(work[i:i + chunk], str(gen_dir), seed, width, height) for i in range(0, len(work), chunk)]
    log.info("synth: rendering %d images (%dx%d) with %d processes into %s", len(work), width, height,
             workers, gen_dir)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(work), unit="img", desc="synth", leave=False)
    if workers == 1:
        for b in batches:
            n = _render_batch(b)
            bar and bar.update(n)
    else:
        with ProcessPoolExecutor(workers) as pool:
            for n in pool.map(_render_batch, batches):
                bar and bar.update(n)
    bar and bar.close()
    if with_genuine:
        real_dir = out_path / "images_genuine"
        real_dir.mkdir(exist_ok=True)
        for image_id in real_ids:
            with GENUINE_DIR.joinpath("images", f"{image_id}.jpg").open("rb") as src, \
                    open(real_dir / f"{image_id}.jpg", "wb") as dst:
                shutil.copyfileobj(src, dst)
    all_rows = pd.concat([rows, real_rows])[list(COLUMNS)]
    tmp = out_path / ".HAM10000_metadata.csv.tmp"
    all_rows.to_csv(tmp, index=False)
    os.replace(tmp, out_path / "HAM10000_metadata.csv")
    (out_path / "README.md").write_text(
        "Generated by `lesionspark synth` (seed %d): metadata rows sampled from the genuine HAM10000 "
        "metadata; images in images_generated/ are GENERATED, not dermatoscopic photographs. "
        "images_genuine/ holds genuine HAM10000 JPEGs (CC BY-NC-SA 4.0, Tschandl et al., "
        "Sci. Data 5, 180161, 2018).\n" % seed)
    counts = all_rows["dx"].value_counts().to_dict()
    return {"out": str(out_path), "generated": len(rows), "genuine": len(real_rows),
            "lesions": int(all_rows["lesion_id"].nunique()), "per_class": counts,
            "metadata": str(out_path / "HAM10000_metadata.csv"),
            "images": [str(gen_dir)] + ([str(out_path / "images_genuine")] if with_genuine else [])}



def synth_from_config(cfg) -> dict:
    """``synth`` with the ``synth.*`` keys of a configuration (the CLI and the demo)."""
    return synth(cfg.get("synth.out"), n_images=int(cfg.get("synth.n_images")), seed=int(cfg.get("synth.seed")),
                 width=int(cfg.get("synth.width")), height=int(cfg.get("synth.height")),
                 with_genuine=bool(cfg.get("synth.with_genuine")), workers=int(cfg.get("synth.workers")))
