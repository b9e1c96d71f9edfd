#!/usr/bin/env bash
# The whole matrix on a real GPU (issue 8): the testbed holds real CUDA memory (torch), the recorder
# samples NVML and traces the kernel with bcc, the OOM hog allocates real CUDA memory. Runs the
# correct testbed on every row, then each defect on the rows it breaks; keeps the verdict tables,
# the figures beside their thresholds and one HTML report under OUT (default out/gpu-matrix).
#
#   make gpu-matrix                                               # a GPU machine with .venv
#   source .devbundle-tools/activate.sh .devbundle && PYTHON=python3 scripts/gpu-matrix.sh
#
# Env: PYTHON, GPU_MATRIX_OUT, GPU_MATRIX_MEM (per stage, default 8GiB), GPU_MATRIX_PARTS
# (default "correct orphan-stages slow-release exit-on-oom recovery orphan-keeps-device
# abnormal-input"; the recovery parts need supervisord: pip install 'omnitrace[supervise]').
set -uo pipefail
cd "$(dirname "$0")/.."
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset OMNITRACE_SIM_GPU   # real memory: the stages and the hog use CUDA through torch
out=${GPU_MATRIX_OUT:-out/gpu-matrix}
mem=${GPU_MATRIX_MEM:-8GiB}
parts=${GPU_MATRIX_PARTS:-correct orphan-stages slow-release exit-on-oom recovery orphan-keeps-device abnormal-input}
mkdir -p "$out"
serve="$PYTHON -m omnitrace.cli testbed serve --port {port} --gpu-mem-per-stage $mem"

run_part() {  # name, extra serve flags, matrix run args...
  local name=$1 flags=$2; shift 2
  echo "== $name" >&2
  local start=$SECONDS
  "$PYTHON" -m omnitrace.cli matrix run --serve "$serve $flags" --out "$out/$name" "$@" \
    > "$out/$name.txt" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$out/summary.txt" >&2
  [ -f "$out/$name/report.json" ] && "$PYTHON" scripts/gpu_matrix_figures.py \
    "$out/$name/report.json" "$name (matrix run exit $rc)" >> "$out/figures.md"
}

for part in $parts; do
  case $part in
    correct) run_part correct "" ;;
    orphan-stages) run_part orphan-stages "--defect orphan-stages" --scenarios '*/sigkill/serve' ;;
    # "released quickly" made a number: the short-window matrix asks for GPU memory back in 2 s
    slow-release) run_part slow-release "--defect slow-release" \
        --matrix tests/data/short-windows.yaml --scenarios '*/sigkill/serve' ;;
    exit-on-oom) run_part exit-on-oom "--defect exit-on-oom" --scenarios 'oom/*' ;;
    # beyond the seed: old-incarnation-gone's "none holds GPU memory" with real CUDA memory, and a
    # restart that cannot get its memory because the old stages still hold it
    recovery) run_part recovery "" --scenarios 'recovery/*' ;;
    # 2 GiB stages: stage 0 takes 85 % of the device, and on one 80 GiB card 3 x 8 GiB beside
    # it did not fit (the server never started)
    orphan-keeps-device) run_part orphan-keeps-device "--defect orphan-keeps-device --gpu-mem-per-stage 2GiB" \
        --matrix tests/data/short-windows.yaml --scenarios 'recovery/sigkill/serve' ;;
    abnormal-input) run_part abnormal-input "" --scenarios 'abnormal-input/*' ;;
  esac
done
first=$(ls "$out"/correct/*.jsonl 2>/dev/null | grep sigkill | head -1)
[ -n "$first" ] && "$PYTHON" -m omnitrace.cli report "$first" -o "$out/report.html" >&2
cat "$out/summary.txt"
