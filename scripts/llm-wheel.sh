#!/usr/bin/env bash
# Install llama-cpp-python into a virtualenv from a wheel cache that lives outside the clone.
#
# PyPI has only an sdist of llama-cpp-python (no maintained CPU binary wheel): compiling it takes
# about 8 minutes on 2 cores. So it is built once, portable (GGML_NATIVE=OFF: the baseline
# x86-64 AVX2 set, not this CPU's extensions, so the wheel runs on any such machine), into
# ~/.cache/medserve/wheels (MEDSERVE_WHEEL_CACHE overrides), and every later install (a fresh
# clone, CI on the same machine, `make clean`) takes the cached wheel in seconds. On a machine
# with an empty cache it builds. Safe to run more than once.
#
#   scripts/llm-wheel.sh [PIP]     PIP defaults to .venv/bin/pip
set -euo pipefail

PIP="${1:-.venv/bin/pip}"
VERSION=0.3.36
SPEC="llama-cpp-python==${VERSION}"
CACHE="${MEDSERVE_WHEEL_CACHE:-${HOME}/.cache/medserve/wheels}"
mkdir -p "$CACHE"

install_cached() {
  # --only-binary: take the cached wheel or fail, never fall back to compiling the sdist here.
  "$PIP" install -q --find-links "$CACHE" --only-binary llama-cpp-python "$SPEC"
}

if install_cached 2>/dev/null; then
  exit 0
fi

echo "llm-wheel: building ${SPEC} once into ${CACHE} (about 8 minutes on 2 cores)" >&2
start=$(date +%s)
tmp="$(mktemp -d "${CACHE}/.build.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
# LLAVA_BUILD=OFF: the multimodal (mtmd) library is not used by medserve and costs build time;
# llama_cpp imports it only inside the vision chat handlers.
CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF ${CMAKE_ARGS:-}" \
CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
  "$PIP" wheel -q --no-deps "$SPEC" -w "$tmp"
# Move into place only when complete, so an interrupted build never leaves a broken wheel.
mv "$tmp"/llama_cpp_python-*.whl "$CACHE"/
echo "llm-wheel: built in $(( $(date +%s) - start ))s" >&2
install_cached
