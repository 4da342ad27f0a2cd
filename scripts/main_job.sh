#!/usr/bin/env bash
# Dodo's main job end to end, set-up included (venv + install with training extras):
#  1. Box3D over the reference cases shipped in the package: inputs, outputs, conservation errors;
#  2. the training pipeline on synthetic Emu-format data: synth -> preprocess -> train (short)
#     -> evaluate (model beside Box3D) -> export to ONNX;
#  3. the exported model applied by the C++ runtime to a 16^3 grid of moving cells it never saw,
#     its accuracy printed beside Box3D's;
#  4. the shipped default model (a density-residual ensemble trained on Dodo's own QKE-solver data,
#     data/qke) scored on the 32 real Emu runs of tests/data/qke/emu_1d_validation.h5, which it
#     never saw, beside Box3D (`dodo score`: bootstrap intervals, states worse than Box3D, growth
#     rates), then applied by the C++ runtime to the same runs boosted to moving frames.
# Work files go to build/main_job (DODO_MAIN_JOB_DIR).
# Run by another shell (`sh scripts/main_job.sh`: dash stopped at once with "set: Illegal option -o
# pipefail"): run again by bash (outside probe, fresh machine round two).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
venv="${DODO_VENV:-$root/.venv}"
. "$root/scripts/_venv_environment.sh"
use_the_venvs_python_only main_job.sh
# A relative DODO_VENV names a directory under the repository root, where setup_venv.sh makes it:
# kept relative, it named nothing once step 2 changed into the work directory (outside probe, round 24).
case "$venv" in /*) ;; *) venv="$root/$venv" ;; esac
work="${DODO_MAIN_JOB_DIR:-$root/build/main_job}"
# The work directory is emptied below (rm -rf): only one this script made (its mark file), the
# default one, or a new or empty one. DODO_MAIN_JOB_DIR naming a directory of the user's (their
# runs, or the repository as $PWD) deleted it with everything in it (outside probe, round 22).
mark=".dodo-main-job"
if [ -d "$work" ] && [ ! -e "$work/$mark" ] && [ "$(cd "$work" && pwd -P)" != "$(mkdir -p "$root/build" && cd "$root/build" && pwd -P)/main_job" ] &&
   [ -n "$(ls -A "$work")" ]; then
  echo "main_job: DODO_MAIN_JOB_DIR=$work holds files and was not made by scripts/main_job.sh (no $mark in it): it is" \
       "not emptied; give a new or empty directory" >&2
  exit 2
fi
if [ -e "$work" ] && [ ! -d "$work" ]; then
  echo "main_job: DODO_MAIN_JOB_DIR=$work exists and is not a directory: give a new or empty directory" >&2
  exit 2
fi
bash scripts/setup_venv.sh train
dodo="$venv/bin/dodo"

echo "== 1. Box3D on the shipped reference cases"
"$dodo" reference
"$venv/bin/python" -m dodo.test

echo "== 2. Training on synthetic data (Box3D + a known correction), in $work"
rm -rf "$work" && mkdir -p "$work" && touch "$work/$mark" && cd "$work"
"$dodo" synth -o data/synthetic_demo.h5 -n 5000 --seed 0 -q
"$dodo" preprocess --config "$root/training/configs/pre_process_demo.yaml" -q
"$dodo" train --config "$root/training/configs/demo_synthetic.yaml"
"$dodo" evaluate checkpoints/demo/best.pt
"$dodo" export checkpoints/demo/best.pt -o model.onnx

echo "== 3. The exported model through the C++ runtime on a grid of unseen, moving cells"
"$dodo" synth -o data/grid.h5 -n 4096 --seed 1 -q
"$dodo" apply data/grid.h5 --model model.onnx --grid 16x16x16 --max-speed 0.3

echo "== 4. The shipped default model (QKE-trained) on 32 real Emu runs it never saw"
cd "$root"
"$dodo" score default tests/data/qke/emu_1d_validation.h5
"$dodo" apply tests/data/qke/emu_1d_validation.h5 --grid 2x4x4 --max-speed 0.3
