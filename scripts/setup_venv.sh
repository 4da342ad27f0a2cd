#!/usr/bin/env bash
# Creates the virtual environment (DODO_VENV, default .venv) and installs Dodo into it with the
# extras named in the arguments, e.g. `scripts/setup_venv.sh test`. Sourced by the other scripts.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DODO_VENV:-$root/.venv}"
python="${PYTHON:-python3}"
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip
extras="$(IFS=,; echo "$*")"
# Training extras: take torch first, pinned (DODO_TORCH_SPEC), so that pip does not pick a
# multi-GB CUDA build where a CPU build is what the tests and the demo need.
case ",$extras," in
  *,train,*) "$venv/bin/python" -m pip install --quiet "${DODO_TORCH_SPEC:-torch==2.13.0}" ;;
esac
target="$root"
[ -n "$extras" ] && target="$root[$extras]"
"$venv/bin/python" -m pip install --quiet "$target"
echo "dodo installed in $venv ($("$venv/bin/python" -c 'import dodo; print(dodo.__version__)'))"
