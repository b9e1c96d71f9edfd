# The two entry points: `make demo` and `make test`. Both install what is missing first.
VENV := .venv
PY := $(VENV)/bin/python
EXTRAS ?= prometheus prometheus-pushgateway chromium

.PHONY: setup demo test bench doctor gpu-check gpu-matrix clean

setup:
	OMNITRACE_EXTRAS="$(EXTRAS)" scripts/setup.sh

demo: setup
	$(PY) -m omnitrace.demo

test: setup
	$(PY) -m pytest -q -p no:cacheprovider tests

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
	rm -rf $(VENV) build *.egg-info

# The whole matrix on a real GPU, correct testbed and defects (see scripts/gpu-matrix.sh).
gpu-matrix:
	scripts/gpu-matrix.sh
