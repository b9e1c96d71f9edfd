# The two entry points: `make demo` and `make test`. Both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= prometheus prometheus-pushgateway chromium

.PHONY: setup demo test bench doctor gpu-check gpu-matrix vllm vllm-matrix clean

setup:
	OMNITRACE_EXTRAS="$(EXTRAS)" scripts/setup.sh

demo: setup
	$(PY) -m omnitrace.demo

# The suite includes the real-vLLM lane (tests/test_vllm_real.py), so the engine is installed first.
test: setup vllm
	$(PY) -m pytest -q -p no:cacheprovider tests

# A real vLLM (CPU build) as the system under test: .venv-vllm/ and a tiny local model (no hub).
vllm:
	scripts/vllm-setup.sh

# Every row that applies without a GPU, against real vLLM (docs/vllm-cpu-run/). OUT keeps the files.
VLLM_OUT ?= out/vllm-matrix
vllm-matrix: setup vllm
	$(VENV)/bin/omnitrace matrix run --matrix examples/vllm-cpu/matrix.yaml \
	    --serve 'scripts/vllm-serve.sh {port}' --startup-timeout 400 --out $(VLLM_OUT)

# Figures for docs/performance.md: recorder storms and slowdown (root), 1M-event read and verify.
bench: setup
	$(PY) bench/bench_recorder.py
	$(PY) bench/gen_timeline.py -n 1000000 -o /tmp/omnitrace-bench-1m.jsonl
	$(PY) bench/bench_verify.py /tmp/omnitrace-bench-1m.jsonl
	$(PY) bench/bench_testbed.py

doctor: setup
	$(VENV)/bin/omnitrace doctor

# The GPU proof behind docs/performance.md (needs an NVIDIA GPU; see scripts/gpu-check.sh).
gpu-check:
	scripts/gpu-check.sh

clean:
	rm -rf $(VENV) .venv-vllm .vllm-model build *.egg-info

# The whole matrix on a real GPU, correct testbed and defects (see scripts/gpu-matrix.sh).
gpu-matrix:
	scripts/gpu-matrix.sh
