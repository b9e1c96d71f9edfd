#!/usr/bin/env bash
# The GPU proof: record a SIGKILLed and a SIGTERMed GPU memory holder with kernel events and NVML
# together, then print the kill->exit and kill->release latencies and the timeline's size.
#
#   make gpu-check                       # on a GPU machine with the project's .venv
#   source .devbundle-tools/activate.sh .devbundle && scripts/gpu-check.sh   # sealed GPU machine
#
# Env: PYTHON (default .venv/bin/python when present, else python3), GPU_CHECK_GIB (default 8),
# GPU_CHECK_OUT (default out/gpu-check), GPU_CHECK_GPU (default nvml; sim tries it without a GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
out=${GPU_CHECK_OUT:-out/gpu-check}
mkdir -p "$out"
rm -f "$out/timeline.jsonl" "$out/notes.json"
if [ "${GPU_CHECK_GPU:-nvml}" = sim ]; then
  "$PYTHON" -c 'from omnitrace.gpu.sim import ensure_device; ensure_device()'
fi
"$PYTHON" -m omnitrace.cli record -o "$out/timeline.jsonl" --gpu "${GPU_CHECK_GPU:-nvml}" \
  --no-health -- "$PYTHON" scripts/gpu_check.py workload "$out/notes.json" \
  --gib "${GPU_CHECK_GIB:-8}"
"$PYTHON" scripts/gpu_check.py report "$out/timeline.jsonl" "$out/notes.json"
