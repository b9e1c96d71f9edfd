#!/bin/bash
# What the health prober costs the server it watches: CPU seconds the idle testbed's whole tree
# spends in 30 s (imports and start-up included: the 0 Hz line is that baseline), per probe rate.
#     bench/probe_cost.sh [RATE ...]        (default: 0 5 20 50; run from the repository root)
set -e
PY=.venv/bin/python
for rate in ${@:-0 5 20 50}; do
  port=$($PY -c "from omnitrace.inject.server import free_port; print(free_port())")
  OMNITRACE_SIM_GPU=$(mktemp -d) $PY -m omnitrace.cli record -o /dev/null --gpu off --no-otlp \
    --health-rate "$rate" --health-url "http://127.0.0.1:$port/health" -- \
    /usr/bin/time -f "rate $rate Hz: user %U s, sys %S s (testbed tree, 30 s idle)" \
    timeout -s INT 30 $PY -m omnitrace.cli testbed serve --port "$port" 2>&1 | grep "^rate"
done
