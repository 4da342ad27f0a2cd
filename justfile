# Task recipes over the `dodo` command line, for those who like `just` (pip install rust-just).
# Every recipe runs one documented command; `just --dry-run RECIPE` shows it without running.
#
#   just setup                                      venv with the test and training extras
#   just synth out=data/synthetic_demo.h5 -n 5000   synthetic Emu-format data
#   just preprocess config=training/configs/pre_process_demo.yaml
#   just train config=training/configs/demo_synthetic.yaml
#   just evaluate checkpoint=checkpoints/demo/best.pt
#   just export checkpoint=checkpoints/demo/best.pt -o model.onnx
#
# The main argument may be given as NAME=VALUE or bare; the rest goes to `dodo` unchanged.
# DODO_VENV picks the virtual environment (default .venv, as the scripts).

set shell := ["bash", "-cu"]
# Arguments reach the commands as "$@", so paths with spaces survive.
set positional-arguments := true

venv := env("DODO_VENV", justfile_directory() / ".venv")
dodo := venv / "bin" / "dodo"

# List the recipes
default:
    @just --justfile {{ quote(justfile()) }} --list

# Install Dodo with the test and training extras in the venv
setup:
    bash scripts/setup_venv.sh test train

# Whole test suite: venv, C/C++ tests (ctest), pytest (extra arguments go to pytest)
test *args:
    bash scripts/test.sh "$@"

# The README's main job, end to end
main-job:
    bash scripts/main_job.sh

# Box3D on the shipped reference cases
reference *args:
    {{ quote(dodo) }} reference "$@"

# Versions and paths of the installation
info *args:
    {{ quote(dodo) }} info "$@"

# Synthetic Emu-format database: just synth out=data/synthetic_demo.h5 -n 5000
synth out=("out=data/synthetic_demo.h5") *args:
    {{ quote(dodo) }} synth -o "${1#out=}" "${@:2}"

# Emu databases -> preprocessed training file
preprocess config=("config=training/configs/pre_process.yaml") *args:
    {{ quote(dodo) }} preprocess --config "${1#config=}" "${@:2}"

# Train the residual model (resumable: --resume checkpoints/.../last.pt)
train config=("config=training/configs/model.yaml") *args:
    {{ quote(dodo) }} train --config "${1#config=}" "${@:2}"

# Model-vs-Box3D metrics of a checkpoint
evaluate checkpoint *args:
    {{ quote(dodo) }} evaluate "${1#checkpoint=}" "${@:2}"

# Checkpoint -> ONNX model package: just export checkpoint=... -o model.onnx
export checkpoint *args:
    {{ quote(dodo) }} export "${1#checkpoint=}" "${@:2}"

# Grid of training runs: just study grid=training/studies/lr_width.yaml
study grid=("grid=training/studies/lr_width.yaml") *args:
    {{ quote(dodo) }} study "${1#grid=}" "${@:2}"

# QKE solver: just simulate out=out.h5 --random 64
simulate out *args:
    {{ quote(dodo) }} simulate "${1#out=}" "${@:2}"

# The closure over a grid of cells of an Emu-format file: just apply data=FILE --grid 8x8x8
apply data *args:
    {{ quote(dodo) }} apply "${1#data=}" "${@:2}"
