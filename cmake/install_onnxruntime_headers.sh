#!/usr/bin/env bash
# Installs ONNX Runtime's C API headers (only the headers) so that Dodo's runtime can be built.
#
# Dodo loads libonnxruntime at run time (dlopen), normally the one inside the `onnxruntime`
# Python wheel; building needs only onnxruntime_c_api.h. The C API is backward compatible, so
# headers of version X work with any ONNX Runtime library >= X.
#
# On Debian 13 (trixie) and later this is simply `apt-get install libonnxruntime-dev`.
# On Debian 12 (bookworm) the trixie package is downloaded with a private apt configuration
# (the system's apt sources are left untouched) and only its include/ directory is unpacked.
#
# Usage: install_onnxruntime_headers.sh [PREFIX]   (default PREFIX=/usr; headers land in
#        PREFIX/include/onnxruntime, where Dodo's CMake looks by default). Needs root for /usr.
# Run by another shell (`sh ...`: dash stopped with "set: Illegal option -o pipefail"): bash runs it.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -euo pipefail
# apt-get's dpkg needs ldconfig and start-stop-daemon (sbin), missing from PATH after `su` without `-`.
for dir in /usr/local/sbin /usr/sbin /sbin; do
  case ":$PATH:" in *":$dir:"*) ;; *) PATH="$PATH:$dir" ;; esac
done
export PATH

prefix="${1:-/usr}"
header="$prefix/include/onnxruntime/onnxruntime_c_api.h"
if [ -f "$header" ]; then
  echo "ONNX Runtime headers already present: $header"
  exit 0
fi

if apt-cache show libonnxruntime-dev >/dev/null 2>&1 && [ "$prefix" = /usr ]; then
  apt-get install -y --no-install-recommends libonnxruntime-dev
  exit 0
fi

# The trixie suite from the same Debian mirror this machine's apt already uses (override with
# DODO_DEBIAN_MIRROR): the first configured repository whose release is a plain codename.
mirror="${DODO_DEBIAN_MIRROR:-$(apt-get indextargets --format '$(REPO_URI) $(RELEASE)' 2>/dev/null \
  | awk '$2 !~ /[-\/]/ {print $1; exit}')}"
if [ -z "$mirror" ]; then
  echo "error: no Debian repository configured in apt to fetch libonnxruntime-dev from;" >&2
  echo "       set DODO_DEBIAN_MIRROR to a Debian mirror URI, or set DODO_ONNXRUNTIME_ROOT to an ONNX Runtime release directory" >&2
  exit 1
fi

# Headers for every user of the machine: under root's umask 077 (a hardened root) `mkdir` and `cp`
# made $prefix/include/onnxruntime mode 700 and the headers 600, so another user's build did not find
# onnxruntime_c_api.h and install_system_deps.sh, run by that user, asked for root again (outside
# probe, fresh machine round three).
umask 022
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/parts" "$work/lists/partial" "$work/cache/archives/partial"
cat > "$work/parts/trixie.sources" <<EOF
Types: deb
URIs: $mirror
Suites: trixie
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_private=(-o "Dir::Etc::SourceList=/dev/null" -o "Dir::Etc::SourceParts=$work/parts"
             -o "Dir::State::Lists=$work/lists" -o "Dir::Cache=$work/cache"
             -o "Dir::State::status=/dev/null" -o "APT::Sandbox::User=root")
apt-get "${apt_private[@]}" update -qq
(cd "$work" && apt-get "${apt_private[@]}" download libonnxruntime-dev)
mkdir -p "$prefix/include"
dpkg-deb --fsys-tarfile "$work"/libonnxruntime-dev_*.deb \
  | tar -x -C "$work" ./usr/include/onnxruntime
cp -r "$work/usr/include/onnxruntime" "$prefix/include/"
chmod -R a+rX "$prefix/include/onnxruntime"
echo "installed ONNX Runtime headers into $prefix/include/onnxruntime"
