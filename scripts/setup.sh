#!/usr/bin/env bash
# One-command set-up: creates .venv with the pinned stack (requirements/lock.txt), builds Horovod
# from source against it, installs lesionspark in editable mode, and fetches the pinned Java
# artifacts (requirements/jars.txt) with their checksums checked.
# A repeat run with an unchanged lock file reuses the environment and takes a few seconds.
#   LESIONSPARK_VENV   where the environment goes (default: .venv in the repository)
#   PYTHON             the interpreter to build it from (default: python3.11, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
VENV=${LESIONSPARK_VENV:-$ROOT/.venv}
HOROVOD_VERSION=0.28.1
start=$(date +%s)
say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] ERROR: %s\n' "$*" >&2; exit 1; }

# --- prerequisites: say exactly what is missing -------------------------------------------------
PY=${PYTHON:-$(command -v python3.11 || command -v python3 || true)}
[ -n "$PY" ] || die "Python 3.11 not found. Install Python 3.11 (e.g. 'apt-get install python3.11 python3.11-venv') or set PYTHON=/path/to/python3.11."
pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$pyver" = "3.11" ] || die "Python 3.11 is required (TensorFlow 2.15 + Horovod 0.28.1); $PY is $pyver. Set PYTHON=/path/to/python3.11."
if [ -n "${JAVA_HOME:-}" ] && [ -x "$JAVA_HOME/bin/java" ]; then JAVA="$JAVA_HOME/bin/java"; else JAVA=$(command -v java || true); fi
[ -n "$JAVA" ] || die "Java not found. Spark 3.5 needs Java 17 (or 11): 'apt-get install openjdk-17-jre-headless', or set JAVA_HOME."
jver=$("$JAVA" -version 2>&1 | sed -n 's/.*version "\([0-9]*\).*/\1/p' | head -1)
case "$jver" in 11|17) ;; *) die "Java $jver at $JAVA: Spark 3.5 needs Java 17 (or 11). Set JAVA_HOME to a Java 17 installation." ;; esac
command -v g++ >/dev/null || die "No C++ compiler: Horovod is built from source. 'apt-get install g++' (or build-essential)."

# --- reuse the environment when nothing it was built from has changed ----------------------------
stamp_src=$(cat requirements/lock.txt; echo "horovod==$HOROVOD_VERSION"; "$PY" -V 2>&1)
stamp=$(printf '%s' "$stamp_src" | sha256sum | cut -c1-16)
if [ -f "$VENV/.lesionspark-stamp" ] && [ "$(cat "$VENV/.lesionspark-stamp")" = "$stamp" ]; then
  say "environment $VENV is up to date with requirements/lock.txt (stamp $stamp)"
  "$VENV/bin/pip" install -q --no-deps --no-build-isolation -e . >/dev/null
  bash scripts/fetch_jars.sh "$VENV"
  bash scripts/fetch_debs.sh "$VENV"
  say "done in $(( $(date +%s) - start ))s"
  exit 0
fi

say "creating $VENV with $PY ($pyver), Java $jver"
rm -rf "$VENV"
"$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade 'pip==24.3.1' 'setuptools==65.5.0' 'wheel==0.45.1'
say "installing the pinned stack (requirements/lock.txt)"
"$PIP" install -q --progress-bar off -r requirements/lock.txt
say "building horovod $HOROVOD_VERSION from source (TensorFlow + Gloo, no MPI/PyTorch/MXNet; ~3 min on 2 cores)"
hstart=$(date +%s)
HOROVOD_WITH_TENSORFLOW=1 HOROVOD_WITHOUT_PYTORCH=1 HOROVOD_WITHOUT_MXNET=1 HOROVOD_WITH_GLOO=1 \
HOROVOD_WITHOUT_MPI=1 PATH="$VENV/bin:$PATH" \
  "$PIP" install -q --no-build-isolation --no-cache-dir -c requirements/lock.txt "horovod[spark]==$HOROVOD_VERSION"
say "horovod built in $(( $(date +%s) - hstart ))s"
"$PIP" install -q --no-deps --no-build-isolation -e .
"$VENV/bin/python" - <<'PY'
import horovod.tensorflow.keras as hvd, tensorflow as tf, pyspark, pyarrow, petastorm
from horovod.common.util import gloo_built
assert gloo_built(), "horovod was built without Gloo"
print("[setup] check: tensorflow", tf.__version__, "horovod", __import__("horovod").__version__,
      "pyspark", pyspark.__version__, "pyarrow", pyarrow.__version__, "petastorm", petastorm.__version__)
PY
say "fetching the pinned Java artifacts (requirements/jars.txt: Spark's s3a connector, the tests' MiniDFSCluster)"
bash scripts/fetch_jars.sh "$VENV"
say "fetching the pinned Debian packages (requirements/debs.txt: dciodvfy, the DICOM validator the tests run)"
bash scripts/fetch_debs.sh "$VENV"
echo "$stamp" > "$VENV/.lesionspark-stamp"
say "done in $(( $(date +%s) - start ))s. Activate with: source ${VENV#$ROOT/}/bin/activate"
