#!/usr/bin/env bash
# Installs what omnitrace needs on a Debian machine, idempotently:
#   - Debian: python3-bpfcc (bcc's Python module and libbcc), bpftrace (a cross-check), and kernel
#     headers for bcc's compiler. When the running kernel ships none, Debian's linux-headers-amd64 is
#     linked in as a stand-in: omnitrace's BPF programs read only tracepoint arguments and helpers,
#     never kernel struct layouts, so a different header version compiles them correctly.
#   - tracefs mounted at /sys/kernel/tracing.
#   - podman (with runc, netavark) for the container tests, configured by scripts/containers.conf,
#     and the local image scripts/container-image.sh builds. podman, not docker.io: podman is
#     daemonless, so a container's conmon, runtime and processes are forked by the command that
#     runs it, and the recorder, which follows that command's tree, sees them; docker.io needs
#     dockerd, whose containers descend from the daemon (docs/containers.md).
#   - Python: a virtualenv at .venv with omnitrace (editable) and its dependencies; bcc is linked
#     into it from Debian's dist-packages (PyPI's "bcc" is an unrelated project).
# Without root it skips the system part and says so; the venv is still made.
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "setup: $*" >&2; }

system_part() {
  local need=()
  [ -d /usr/lib/python3/dist-packages/bcc ] || need+=(python3-bpfcc)
  command -v bpftrace >/dev/null || need+=(bpftrace)
  local kdir=/lib/modules/$(uname -r)
  if [ ! -e "$kdir/build/include" ] && ! ls -d /usr/src/linux-headers-*-amd64 >/dev/null 2>&1; then
    if ! apt-get install -y -qq --dry-run "linux-headers-$(uname -r)" >/dev/null 2>&1; then
      need+=(linux-headers-amd64)
    else
      need+=("linux-headers-$(uname -r)")
    fi
  fi
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  if [ ! -e "$kdir/build/include" ]; then
    local hdr common
    hdr=$(ls -d /usr/src/linux-headers-*-amd64 | sort -V | tail -1)
    common=$(ls -d /usr/src/linux-headers-*-common | sort -V | tail -1)
    log "no headers for kernel $(uname -r): using $hdr as a stand-in"
    mkdir -p "$kdir"
    ln -sfn "$hdr" "$kdir/build"
    ln -sfn "$common" "$kdir/source"
  fi
  mountpoint -q /sys/kernel/tracing || mount -t tracefs nodev /sys/kernel/tracing || log "could not mount tracefs"
  container_part
}

container_part() {
  local need=()
  command -v podman >/dev/null || need+=(podman)
  command -v runc >/dev/null || need+=(runc)
  command -v netavark >/dev/null || [ -x /usr/lib/podman/netavark ] || need+=(netavark aardvark-dns)
  command -v iptables >/dev/null || need+=(iptables)   # netavark's port mapping
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq   # a machine with the rest installed may have no package lists left
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  fi
  local nofile nproc conf=/etc/containers/containers.conf.d/50-omnitrace.conf
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] || [ "$nofile" -gt 1048576 ] && nofile=1048576
  nproc=$(ulimit -Hu); [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ] && nproc=32768
  mkdir -p "$(dirname "$conf")"
  sed -e "s/@NOFILE@/$nofile/g" -e "s/@NPROC@/$nproc/g" scripts/containers.conf > "$conf.new"
  mv "$conf.new" "$conf"
  scripts/container-image.sh
}

venv_part() {
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    log "creating .venv with $py"
    "$py" -m venv .venv
  fi
  local stamp=.venv/.omnitrace-installed
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    log "installing Python dependencies into .venv"
    .venv/bin/pip install -q --upgrade pip >/dev/null
    .venv/bin/pip install -q -e '.[dev,supervise]'   # supervise: supervisord, for recovery rows
    touch "$stamp"
  fi
  local site
  site=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  if [ -d /usr/lib/python3/dist-packages/bcc ] && [ ! -e "$site/bcc" ]; then
    ln -sfn /usr/lib/python3/dist-packages/bcc "$site/bcc"
  fi
}

if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  system_part
else
  log "not root on Debian: skipping system packages (BPF tracing will fall back to procfs)"
fi
venv_part
# Extra Debian tools some tests use (real Prometheus, Chromium); installed on request.
if [ "${OMNITRACE_EXTRAS:-}" != "" ] && [ "$(id -u)" = 0 ]; then
  missing=()
  for p in $OMNITRACE_EXTRAS; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  if [ ${#missing[@]} -gt 0 ]; then
    log "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi
.venv/bin/python -c 'import bcc' 2>/dev/null && log "bcc importable from .venv" || log "bcc NOT importable from .venv"
