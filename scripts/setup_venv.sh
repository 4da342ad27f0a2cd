#!/usr/bin/env bash
# Creates the virtual environment (DODO_VENV, default .venv) and installs Dodo into it with the
# extras named in the arguments, e.g. `scripts/setup_venv.sh test`. Run by the other scripts.
# Run by another shell (`sh scripts/setup_venv.sh`: dash stopped at once with "set: Illegal option
# -o pipefail"): run again by bash (outside probe, fresh machine round two).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${DODO_VENV:-$root/.venv}"
. "$root/scripts/_venv_environment.sh"
use_the_venvs_python_only setup_venv.sh
python="${PYTHON:-python3}"
# A venv whose Python does not run (another machine's, a link to a removed interpreter: `venv` then
# stopped at "[Errno 2] No such file or directory: .../bin/python3") is the user's to remove: said,
# not deleted. One without pip (`python3 -m venv` stopped by Ctrl-C while ensurepip ran) is
# completed in place by `venv` again: every later run stopped at "No module named pip".
if { [ -e "$venv/bin/python" ] || [ -L "$venv/bin/python" ]; } && ! "$venv/bin/python" -c '' >/dev/null 2>&1; then
  echo "setup_venv.sh: $venv/bin/python does not run (a virtual environment of another machine or of a removed" \
       "Python?): remove $venv, or set DODO_VENV to another directory" >&2
  exit 1
fi
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -m pip --version >/dev/null 2>&1; then
  "$python" -m venv "$venv"
fi
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
