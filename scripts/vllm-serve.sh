#!/usr/bin/env bash
# Serve the tiny local model with the real vLLM CPU build (made by `make vllm`) on 127.0.0.1:PORT.
#   scripts/vllm-serve.sh PORT [extra vllm serve flags]
# The environment keeps a 2-core machine with no hub and no GPU workable (docs/vllm-cpu-run/):
# no hub, a 1 GiB KV cache, OpenMP threads bound automatically, loopback for the engine-worker
# queues (without VLLM_HOST_IP vLLM looks up the machine's external address), no usage report.
# exec: the API server is this process, so the matrix's `serve` is vLLM itself, not a shell.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${1:?usage: vllm-serve.sh PORT [vllm serve flags]}
shift
venv=${VLLM_VENV:-$root/.venv-vllm}
model=${VLLM_MODEL_DIR:-$root/.vllm-model/tiny}
[ -x "$venv/bin/vllm" ] || { echo "vllm-serve: no $venv/bin/vllm; run make vllm" >&2; exit 2; }
[ -f "$model/.complete" ] || { echo "vllm-serve: no model in $model; run make vllm" >&2; exit 2; }
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1} \
  VLLM_CPU_OMP_THREADS_BIND=${VLLM_CPU_OMP_THREADS_BIND:-auto} VLLM_HOST_IP=127.0.0.1 \
  VLLM_LOOPBACK_IP=127.0.0.1 VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1
exec "$venv/bin/vllm" serve "$model" --host 127.0.0.1 --port "$port" --served-model-name tiny \
  --max-model-len 2048 --max-num-seqs 4 --dtype bfloat16 --enforce-eager "$@"
