#!/usr/bin/env bash
# A container image for running omnitrace's testbed (or any server of this machine) in podman,
# built locally with no registry:
#
#   scripts/container-image.sh                 # builds localhost/omnitrace-host:1 unless it exists
#   scripts/container-image.sh --force         # rebuilds it
#   scripts/container-image.sh --run-args [PY] # prints the `podman run` flags that mount what runs
#                                              # and the simulated GPU's ledger (below)
#
# The image is a root skeleton (the merged-/usr symlinks, empty mount points, a few files of /etc)
# of about 1 MiB, imported with `podman import`: the programs come from the host, bind-mounted
# read-only (/usr, the Python installation, this repository and its virtualenv; --run-args prints
# them). Copying the host's /usr (6 GiB here) into an image would take minutes; the mounts take
# none. The container still has its own pid, mount, network, IPC and UTS namespaces and cgroup,
# which is what omnitrace's container support is about.
#
# The simulated GPU: where a recorder on this machine would read it (OMNITRACE_SIM_GPU when set,
# else /dev/shm/omnitrace-sim-gpu when there is no NVIDIA device, as omnitrace.gpu.alloc decides),
# --run-args creates the device and mounts it read-write at the same path with OMNITRACE_SIM_GPU
# set, so the container's stages allocate in the ledger the host's recorder reads (the container's
# own /dev/shm is private). The ledger records namespace pids; readers translate them to host pids.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${OMNITRACE_IMAGE:-localhost/omnitrace-host:1}
log() { echo "container-image: $*" >&2; }

run_args() {
  local py=${1:-.venv/bin/python} repo base prefix
  repo=$(pwd -P)
  read -r base prefix < <("$py" -c 'import os, sys; print(os.path.realpath(sys.base_prefix), sys.prefix)')
  local args=(-v /usr:/usr:ro -v "$repo:$repo:ro" -e "PYTHONPATH=$repo")
  case "$base/" in /usr/*) ;; *) args+=(-v "$base:$base:ro") ;; esac
  case "$prefix/" in "$repo"/*|/usr/*) ;; *) args+=(-v "$prefix:$prefix:ro") ;; esac
  local sim
  sim=$(sim_gpu "$py")
  [ -z "$sim" ] || args+=(-v "$sim:$sim" -e "OMNITRACE_SIM_GPU=$sim")
  echo "${args[@]}"
}

# The simulated GPU's directory, created, when it is what this machine's recorder reads; else ''.
sim_gpu() {
  local dir=${OMNITRACE_SIM_GPU:-}
  [ -n "$dir" ] || [ -e /dev/nvidiactl ] || dir=/dev/shm/omnitrace-sim-gpu
  [ -n "$dir" ] || return 0
  "$1" -c 'import sys
from omnitrace.gpu.sim import ensure_device
try:
    print(ensure_device(sys.argv[1]).resolve())
except OSError as exc:
    sys.exit(f"container-image: --run-args: the simulated GPU {sys.argv[1]}: {exc}")' "$dir"
}

build() {
  local root
  root=$(mktemp -d)
  trap 'rm -rf "$root"' RETURN
  mkdir -p "$root"/{usr,etc,proc,sys,dev,run,tmp,var/tmp,root,work,home}
  chmod 1777 "$root/tmp" "$root/var/tmp"
  for d in bin lib lib64 sbin; do ln -s "usr/$d" "$root/$d"; done   # Debian's merged /usr
  # What the dynamic loader and name lookups read; not the host's secrets (shadow, keys).
  for f in passwd group nsswitch.conf host.conf ld.so.cache ld.so.conf ld.so.conf.d localtime; do
    [ -e "/etc/$f" ] && cp -a "/etc/$f" "$root/etc/"
  done
  tar -C "$root" -c . | podman import --quiet --change 'CMD ["/bin/sh"]' - "$IMAGE" >/dev/null
  log "built $IMAGE"
}

case "${1:-}" in
  --run-args) run_args "${2:-}" ;;
  --force) build ;;
  "") podman image exists "$IMAGE" || build ;;
  *) echo "usage: $0 [--force | --run-args [PYTHON]]" >&2; exit 2 ;;
esac
