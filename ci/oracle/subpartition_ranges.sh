#!/usr/bin/env bash
# Regenerates tests/vectors/subpartition_ranges.json with Apache Flink's own classes: compiles
# ci/oracle/SubpartitionRanges.java against Flink's lib/ jars and runs it (see ci/oracle/README.md).
#
#   ci/oracle/subpartition_ranges.sh [OUT.json] [MAX_PARALLELISM]   # defaults: tests/vectors/subpartition_ranges.json, 8
#
# The jars are the Flink oracle's (/work/shared/oracle, its run.sh downloads them into its .cache/);
# they are found, in this order, in
#   $FLINK_LIB                                   a directory holding flink-dist-$FLINK_VERSION.jar
#   $FLINK_ORACLE_DIR/.cache/flink-$FLINK_VERSION  (FLINK_ORACLE_DIR defaults to /work/shared/oracle)
#   $FLINKNET_ORACLE_CACHE/flink-$FLINK_VERSION    (default ${XDG_CACHE_HOME:-~/.cache}/flinknet-oracle),
#     where this script downloads the apache-flink-libraries wheel from PyPI, as the oracle's run.sh
#     does, if none of the above has them.
# Requirements: Java 17 (java, javac); for the download, python3 -m pip and unzip.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
FLINK_VERSION="${FLINK_VERSION:-2.3.0}"
ORACLE_DIR="${FLINK_ORACLE_DIR:-/work/shared/oracle}"
OWN_CACHE="${FLINKNET_ORACLE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/flinknet-oracle}"
OUT="${1:-$ROOT/tests/vectors/subpartition_ranges.json}"
MAX="${2:-8}"

log() { echo "[subpartition_ranges] $*" >&2; }

dist_dir_of() {  # the directory holding flink-dist-$FLINK_VERSION.jar under $1, or nothing
  local jar
  jar="$(find "$1" -name "flink-dist-$FLINK_VERSION.jar" 2>/dev/null | head -1)"
  [ -n "$jar" ] && dirname "$jar"
  return 0
}

LIB="${FLINK_LIB:-}"
[ -n "$LIB" ] || LIB="$(dist_dir_of "$ORACLE_DIR/.cache/flink-$FLINK_VERSION")"
[ -n "$LIB" ] || LIB="$(dist_dir_of "$OWN_CACHE/flink-$FLINK_VERSION")"
if [ -z "$LIB" ]; then
  # same source and layout as the oracle's run.sh (ensure_jars), in our own cache directory
  log "Flink $FLINK_VERSION jars not found; downloading apache-flink-libraries==$FLINK_VERSION from PyPI (~330 MB) into $OWN_CACHE"
  mkdir -p "$OWN_CACHE/dl"
  pkg="$(ls "$OWN_CACHE"/dl/apache_flink_libraries-"$FLINK_VERSION"-*.whl 2>/dev/null | head -1 || true)"
  if [ -z "$pkg" ]; then
    timeout 900 python3 -m pip download --no-deps "apache-flink-libraries==$FLINK_VERSION" -d "$OWN_CACHE/dl" >&2
    pkg="$(ls "$OWN_CACHE"/dl/apache_flink_libraries-"$FLINK_VERSION"-*.whl | head -1)"
  fi
  mkdir -p "$OWN_CACHE/flink-$FLINK_VERSION"
  unzip -q -o "$pkg" 'pyflink/lib/*' -d "$OWN_CACHE/flink-$FLINK_VERSION"
  LIB="$(dist_dir_of "$OWN_CACHE/flink-$FLINK_VERSION")"
fi
[ -n "$LIB" ] && [ -f "$LIB/flink-dist-$FLINK_VERSION.jar" ] || { log "flink-dist-$FLINK_VERSION.jar not found"; exit 1; }
log "Flink jars: $LIB"

CLASSES="$(mktemp -d "${TMPDIR:-/tmp}/subpartition_ranges.XXXXXX")"
trap 'rm -rf "$CLASSES"' EXIT
javac -nowarn -encoding UTF-8 -d "$CLASSES" -cp "$LIB/*" "$HERE/SubpartitionRanges.java" 2>&1 | grep -v '^Note:' >&2 || true
[ -f "$CLASSES/SubpartitionRanges.class" ] || { log "compilation failed"; exit 1; }

# Flink logs at WARN (log4j's default configuration, no file needed)
timeout 600 java -Xmx512m -Dlog4j2.level=WARN -Djava.io.tmpdir="${TMPDIR:-/tmp}" \
  -cp "$CLASSES:$LIB/*" SubpartitionRanges "$OUT" "$MAX"
