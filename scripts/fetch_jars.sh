#!/usr/bin/env bash
# Fetch the Java artifacts of requirements/jars.txt from Maven Central into the environment, each
# checked against its pinned SHA-256, and build the MiniDFSCluster launcher the tests start and the
# read-only SQL parser that `lesionspark serve` loads (lesionspark/sql/jvm/ReadOnlyParser.java).
# Idempotent: a jar already in place with the right checksum is kept.
#   usage: scripts/fetch_jars.sh VENV      (scripts/setup.sh runs it)
#   LESIONSPARK_MAVEN   the repository to fetch from (default: https://repo1.maven.org/maven2)
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:?usage: fetch_jars.sh VENV}
MAVEN=${LESIONSPARK_MAVEN:-https://repo1.maven.org/maven2}
SPARK_JARS=$("$VENV/bin/python" -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')
MINIDFS="$VENV/share/lesionspark/minidfs"
mkdir -p "$MINIDFS"
say() { printf '[setup] %s\n' "$*"; }

source scripts/download.sh

fetch() {  # group:artifact:version sha256 destination-folder
  local coord=$1 sum=$2 dest=$3 g a v file
  IFS=: read -r g a v <<<"$coord"
  file="$a-$v.jar"
  if [ -f "$dest/$file" ] && echo "$sum  $dest/$file" | sha256sum -c --status; then return 0; fi
  download "$MAVEN/${g//.//}/$a/$v/$file" "$sum" "$dest/$file" requirements/jars.txt
  say "fetched $file"
}

while read -r set coord sum; do
  case "$set" in
    s3a) fetch "$coord" "$sum" "$SPARK_JARS" ;;
    minidfs) fetch "$coord" "$sum" "$MINIDFS" ;;
    ''|\#*) ;;
    *) echo "[setup] ERROR: unknown set '$set' in requirements/jars.txt" >&2; exit 1 ;;
  esac
done < <(grep -v '^\s*#' requirements/jars.txt)

# The launcher: compiled against the minicluster and the Hadoop client jars that pyspark ships.
src=tests/minidfs/MiniDfs.java
if [ ! -f "$MINIDFS/classes/MiniDfs.class" ] || [ "$src" -nt "$MINIDFS/classes/MiniDfs.class" ]; then
  JAVAC=${JAVA_HOME:+$JAVA_HOME/bin/}javac
  command -v "$JAVAC" >/dev/null || { echo "[setup] ERROR: javac not found: the tests' HDFS launcher needs a JDK 17 (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
  mkdir -p "$MINIDFS/classes"
  "$JAVAC" -nowarn -d "$MINIDFS/classes" \
    -cp "$MINIDFS/hadoop-client-minicluster-3.3.4.jar:$SPARK_JARS/hadoop-client-api-3.3.4.jar:$SPARK_JARS/hadoop-client-runtime-3.3.4.jar" "$src"
  say "built the MiniDFSCluster launcher ($MINIDFS/classes)"
fi

# The SQL endpoint's read-only parser (lesionspark serve): compiled against the Spark jars pyspark ships.
GUARD="$VENV/share/lesionspark/guard"
src=lesionspark/sql/jvm/ReadOnlyParser.java
if [ ! -f "$GUARD/lesionspark-guard.jar" ] || [ "$src" -nt "$GUARD/lesionspark-guard.jar" ]; then
  JAVAC=${JAVA_HOME:+$JAVA_HOME/bin/}javac
  JAR=${JAVA_HOME:+$JAVA_HOME/bin/}jar
  command -v "$JAVAC" >/dev/null || { echo "[setup] ERROR: javac not found: lesionspark serve's read-only parser needs a JDK 17 (apt-get install openjdk-17-jdk-headless)" >&2; exit 1; }
  rm -rf "$GUARD/classes" && mkdir -p "$GUARD/classes"
  "$JAVAC" -nowarn -d "$GUARD/classes" -cp "$SPARK_JARS/*" "$src"
  "$JAR" cf "$GUARD/lesionspark-guard.jar" -C "$GUARD/classes" .
  chmod 644 "$GUARD/lesionspark-guard.jar"
  say "built the SQL endpoint's read-only parser ($GUARD/lesionspark-guard.jar)"
fi
