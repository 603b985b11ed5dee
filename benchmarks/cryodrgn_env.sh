#!/usr/bin/env bash
# Create a separate virtual environment with cryoDRGN 4.3.1 for side-by-side benchmarks.
#
#   bash benchmarks/cryodrgn_env.sh            # -> benchmarks/_venvs/cryodrgn (gitignored)
#
# torch is installed first from the local CPU wheel (torch==2.13.0) so that pip does not pull a
# CUDA build of torch as a cryoDRGN dependency. Re-running is cheap: an existing, working
# environment is left as it is.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="${CRYODRGN_VENV:-$here/_venvs/cryodrgn}"
python="${PYTHON:-python3}"
torch_spec="${TORCH:-torch==2.13.0}"

if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c "import cryodrgn, torch" 2>/dev/null; then
    echo "cryoDRGN venv ready: $venv ($("$venv/bin/python" -c 'import cryodrgn; print(cryodrgn.__version__)'))"
    exit 0
fi
mkdir -p "$(dirname "$venv")"
"$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip setuptools wheel
"$venv/bin/python" -m pip install -q "$torch_spec"
"$venv/bin/python" -m pip install -q "cryodrgn==4.3.1" "$torch_spec"
"$venv/bin/python" -c "import cryodrgn, torch; print('cryoDRGN', cryodrgn.__version__, 'torch', torch.__version__)"
echo "cryoDRGN venv ready: $venv"
