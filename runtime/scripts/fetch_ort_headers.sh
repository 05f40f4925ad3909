#!/usr/bin/env bash
# Prints the path of an onnxruntime C/C++ include directory, fetching it if needed.
# The onnxruntime wheel ships no headers; Debian trixie's libonnxruntime-dev does. We download
# that .deb with a private apt state (the system's apt setup is left untouched) and unpack it
# into a cache. $PSCOMPRESS_ORT_INCLUDE_DIR short-circuits everything.
set -euo pipefail

if [ -n "${PSCOMPRESS_ORT_INCLUDE_DIR:-}" ]; then
  if [ ! -f "$PSCOMPRESS_ORT_INCLUDE_DIR/onnxruntime_cxx_api.h" ]; then
    echo "PSCOMPRESS_ORT_INCLUDE_DIR=$PSCOMPRESS_ORT_INCLUDE_DIR has no onnxruntime_cxx_api.h" >&2
    exit 1
  fi
  echo "$PSCOMPRESS_ORT_INCLUDE_DIR"
  exit 0
fi

cache="${PSCOMPRESS_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pscompress}/ort-headers"
include="$cache/root/usr/include/onnxruntime"
if [ -f "$include/onnxruntime_cxx_api.h" ]; then
  echo "$include"
  exit 0
fi

apt_dir="$cache/apt"
mkdir -p "$apt_dir/lists/partial" "$apt_dir/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main" \
  > "$apt_dir/sources.list"
opts=(-o "Dir::Etc::sourcelist=$apt_dir/sources.list" -o "Dir::Etc::sourceparts=-"
      -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::Cache::Archives=$apt_dir/archives"
      -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")
echo "fetching onnxruntime headers (Debian trixie libonnxruntime-dev) into $cache" >&2
apt-get -qq "${opts[@]}" update >&2
(cd "$apt_dir" && apt-get -qq "${opts[@]}" download libonnxruntime-dev >&2)
rm -rf "$cache/root.tmp"
dpkg-deb -x "$(ls "$apt_dir"/libonnxruntime-dev_*.deb | head -n1)" "$cache/root.tmp"
rm -rf "$cache/root" && mv "$cache/root.tmp" "$cache/root"
rm -rf "$apt_dir/lists"
test -f "$include/onnxruntime_cxx_api.h"
echo "$include"
