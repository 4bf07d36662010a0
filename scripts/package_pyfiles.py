"""Pack the lesionspark package into a zip for ``spark-submit --py-files`` (a cluster whose Python
environment already has the dependencies: the docker image or a packed venv, see docker/README.md).

    python scripts/package_pyfiles.py            # -> dist/lesionspark-<version>.zip
    spark-submit --py-files dist/lesionspark-0.1.0.zip jobs/ingest.py ...
"""
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def package(out_dir: Path = REPO / "dist") -> Path:
    sys.path.insert(0, str(REPO))
    from lesionspark import __version__
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"lesionspark-{__version__}.zip"
    tmp = target.with_suffix(".zip.tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted((REPO / "lesionspark").rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts:
                zf.write(path, path.relative_to(REPO).as_posix())
    tmp.replace(target)
    return target


if __name__ == "__main__":
    print(package(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "dist"))
