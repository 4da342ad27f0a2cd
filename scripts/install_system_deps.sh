#!/usr/bin/env bash
# System packages Dodo builds with on Debian/Ubuntu: a C++17 compiler, Python headers and venv,
# gfortran and pkg-config (Fortran module and examples), and the ONNX Runtime C headers
# (cmake/install_onnxruntime_headers.sh). Installs only what is missing; uses sudo when not root.
# DODO_WITH_MPI=1 adds OpenMPI (openmpi-bin libopenmpi-dev) for the MPI tests and examples (CI sets it).
set -euo pipefail
packages=(g++ python3-dev python3-venv gfortran pkg-config)
[ "${DODO_WITH_MPI:-0}" = "1" ] && packages+=(openmpi-bin libopenmpi-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
else
  echo "installing: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
$sudo bash "$(dirname "$0")/../cmake/install_onnxruntime_headers.sh"
