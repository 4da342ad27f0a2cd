#!/usr/bin/env bash
# Dodo's main job end to end, set-up included: install, then Box3D over the reference cases
# shipped in the package, printed as a table (inputs, outputs, conservation errors).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${DODO_VENV:-$root/.venv}"
bash scripts/setup_venv.sh
"$venv/bin/dodo" reference
"$venv/bin/python" -m dodo.test
