#!/usr/bin/env bash
# System packages Dodo builds with on Debian/Ubuntu: a C++17 compiler, Python headers and venv,
# gfortran and pkg-config (Fortran module and examples), and the ONNX Runtime C headers
# (cmake/install_onnxruntime_headers.sh). Installs only what is missing; uses sudo when not root.
# DODO_WITH_MPI=1 adds OpenMPI (openmpi-bin libopenmpi-dev) for the MPI tests and examples (CI sets it).
# Run by another shell (`sh scripts/install_system_deps.sh`: dash stopped at once with "set: Illegal
# option -o pipefail"): run again by bash (outside probe, fresh machine round two).
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
# apt-get's dpkg needs ldconfig and start-stop-daemon, in the sbin directories, which a root shell
# from `su` (without `-`) or a user's PATH lacks: dpkg then refused every install ("2 expected
# programs not found in PATH").
for dir in /usr/local/sbin /usr/sbin /sbin; do
  case ":$PATH:" in *":$dir:"*) ;; *) PATH="$PATH:$dir" ;; esac
done
export PATH
packages=(g++ python3-dev python3-venv gfortran pkg-config)
[ "${DODO_WITH_MPI:-0}" = "1" ] && packages+=(openmpi-bin libopenmpi-dev)
missing=()
for package in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done
# Root only where something is to be installed: a user without sudo whose machine has everything
# (the packages and the header) got "sudo: command not found", exit 127.
as_root() {
  if [ "$(id -u)" -eq 0 ]; then
    "$@"
  elif command -v sudo >/dev/null 2>&1; then
    sudo "$@"
  else
    echo "install_system_deps.sh: installing $missing_text needs root; this user ($(id -un 2>/dev/null || id -u))" \
         "is not root and has no sudo: run this script as root (su - -c 'bash $0'), or have an administrator install them" >&2
    exit 1
  fi
}
header=/usr/include/onnxruntime/onnxruntime_c_api.h
missing_text="${missing[*]}"
[ -f "$header" ] || missing_text="${missing_text:+$missing_text and }ONNX Runtime's C headers (cmake/install_onnxruntime_headers.sh)"
if [ "${#missing[@]}" -eq 0 ]; then
  echo "system packages present: ${packages[*]}"
else
  echo "installing: ${missing[*]}"
  as_root apt-get update -qq
  # (through sudo, its env_reset drops DEBIAN_FRONTEND as before: `sudo env ...` would be refused by
  # a sudoers rule that allows apt-get alone)
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${missing[@]}"
fi
if [ -f "$header" ]; then
  echo "ONNX Runtime headers already present: $header"
else
  as_root bash "$(dirname "$0")/../cmake/install_onnxruntime_headers.sh"
fi
