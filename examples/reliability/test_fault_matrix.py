"""The vLLM-Omni fault-injection matrix (shared/seed/fault-injection-matrix.txt) as a pytest suite,
with the rows beyond it (abnormal input, test_input_row).

    pytest examples/reliability                                   # against the built-in testbed
    pytest examples/reliability --omnitrace-serve 'vllm serve Qwen/Qwen3-Omni-30B-A3B-Instruct --omni --port {port}'
    pytest examples/reliability --omnitrace-serve 'scripts/vllm-serve.sh {port}' \
        --omnitrace-max-tokens 400 --omnitrace-ignore-eos     # real vLLM on the CPU (make vllm)
    sudo omnitrace record -o run.jsonl -- pytest examples/reliability && omnitrace verify run.jsonl

The assertions here are the upstream suite's coarse ones (a 0.5 s health poll, psutil liveness);
the verdicts that count come from `omnitrace verify` over the recording, which measures each rule
from the kernel's and the GPU's events. Each test is tied to its matrix row by the marker, so the
row's thresholds apply to both.
"""
from __future__ import annotations

import pytest

from omnitrace.inject import probes
from omnitrace.verify.matrix import load_matrix

MATRIX = load_matrix(None)


def rows(fault: str):
    """The rows of one fault kind: "oom", "input" (abnormal input) or "signal" (the rest)."""
    kind = {"oom": "oom", "input": "input"}
    return [pytest.param(row, id=row.id, marks=pytest.mark.omnitrace(row=row.id))
            for row in MATRIX.rows if kind.get(row.fault, "signal") == fault]


def failed(result) -> bool:
    """What the probes count as failed, and a stream cut short (load's own end reason)."""
    return probes.failed(result) or result.end_reason == "truncated"


@pytest.mark.parametrize("row", rows("signal"))
def test_signal_row(row, omnitrace_server, omnitrace_inject, omnitrace_load):
    limits = row.thresholds
    load = None
    if row.load:
        load = omnitrace_load(kind="mix", rate=4, requests=12, concurrency=8)
        assert load.wait_in_flight(30), "no request was in flight before the fault"

    fault = omnitrace_inject.signal(row.target, row.fault)
    assert fault.pids, f"{row.target}: nothing was signalled"

    if row.target in ("serve", "all"):
        # the API is down at once (each poll is a recorded span: service-unavailable's evidence)
        assert omnitrace_server.wait_unavailable(limits["unavailable_s"]), \
            f"/health still 200 {limits['unavailable_s']:g} s after {row.fault} to {row.target}"
        # serve is gone, and with it every stage: no residue (upstream polls 0.5 s until the limit)
        assert omnitrace_server.wait_gone(limits["residue_s"]), \
            f"processes left {limits['residue_s']:g} s after {row.fault}: {omnitrace_server.alive()}"
    else:
        # a worker died: the server stays up but must say so
        assert omnitrace_server.wait_unavailable(limits["unavailable_s"]), \
            f"/health still 200 {limits['unavailable_s']:g} s after {row.fault} to a worker"
        gone = [pid for pid in fault.pids if pid in omnitrace_server.alive()]
        assert not gone, f"signalled worker(s) still running: {gone}"

    if load is not None:
        assert load.wait_done(120), "load requests still open 120 s after the fault"
        assert any(failed(r) for r in load.results), "no in-flight request failed"
        slow = [r for r in load.results if failed(r) and r.duration_s > 20]
        assert not slow, f"requests that failed only after 20 s: {slow}"


@pytest.mark.parametrize("row", rows("oom"))
def test_oom_row(row, omnitrace_server, omnitrace_inject):
    from omnitrace.inject.probes import probe

    if not omnitrace_server.holds_gpu():
        pytest.skip("not applicable: the server's tree holds no GPU memory (a CPU build), so a "
                    "GPU memory hog cannot starve it")
    omnitrace_inject.oom(ratio=0.92)
    assert omnitrace_server.wait_unavailable(row.thresholds["oom_health_s"]), \
        "/health still 200 with the GPU full"
    for kind in ("chat", "speech"):
        (result,) = probe(omnitrace_server.url, kind, model=omnitrace_server.model,
                          timeout_s=row.thresholds["oom_s"])
        assert result.status is not None and result.status >= 500, \
            f"{kind} under OOM answered {result.status or result.end_reason}, expected >= 500"
        assert result.openai_error, f"{kind} under OOM: the error body is not OpenAI-shaped"
    assert omnitrace_server.alive(), "the whole server exited under OOM (#4285)"


@pytest.mark.parametrize("row", rows("input"))
def test_input_row(row, omnitrace_server, omnitrace_inject):
    """Beyond the seed matrix (vllm-omni tests/dfx/reliability): a bad request gets a 4xx with an
    OpenAI error body, the server lives on, and the next valid request succeeds."""
    limits = row.thresholds
    tree = omnitrace_server.tree_pids()
    answer = omnitrace_inject.input(row.input, timeout_s=limits["input_recovery_s"])
    assert answer.status is not None and 400 <= answer.status < 500, \
        f"{row.input}: answered {answer.status or answer.end_reason}, expected a 4xx"
    assert answer.duration_s <= limits["input_answer_s"], f"{row.input}: answered too late"
    assert answer.openai_error, f"{row.input}: the error body is not OpenAI-shaped"
    assert omnitrace_server.health() == 200, f"/health not 200 after {row.input}"
    recovered, found = omnitrace_inject.recovery(row.recovery_keyword, limits["input_recovery_s"])
    assert recovered.end_reason == "completed", f"recovery: {recovered.status or recovered.end_reason}"
    assert found is not False, f"the recovery answer lacks {row.recovery_keyword!r}"
    gone = sorted(set(tree) - set(omnitrace_server.alive()))
    assert not gone, f"processes of the tree gone after {row.input}: {gone}"
