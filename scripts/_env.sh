# Sourced by scripts/demo.sh and scripts/test.sh: a project virtualenv with the given extras installed.
# torch is pinned to the CPU wheel first, so nothing lets pip resolve an unpinned (CUDA) torch.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SPORA_VENV:-$ROOT/.venv}"
EXTRAS="$1"
if [ ! -x "$VENV/bin/python" ]; then
  "${PYTHON:-python3}" -m venv "$VENV"  # PYTHON=python3.12 picks the interpreter of a new venv
fi
# shellcheck disable=SC1091
. "$VENV/bin/activate"
STAMP="$VENV/.spora-installed-$EXTRAS"
# Reinstall when the project's metadata or its compiled part changed since the last install.
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ] || [ "$ROOT/setup.py" -nt "$STAMP" ] \
  || [ "$ROOT/scripts/constraints.txt" -nt "$STAMP" ] \
  || [ -n "$(find "$ROOT/spora_zarr" -name '*.c' -newer "$STAMP" -print -quit)" ]; then
  python -m pip install -q --upgrade pip
  python -m pip install -q "torch==2.13.0"
  # The versions the suite was checked with (scripts/constraints.txt): nothing left for pip to resolve.
  python -m pip install -q -c "$ROOT/scripts/constraints.txt" -e "$ROOT[$EXTRAS]"
  touch "$STAMP"
fi
cd "$ROOT"
