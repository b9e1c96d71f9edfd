"""A small synthetic recording for the exporter tests, shaped like a 3-stage vllm-omni server:
serve root, resource tracker, three stage engines holding GPU memory, health probes and chat
requests, and two scenarios (SIGKILL a worker; SIGTERM the serve root). Tests that need a real
recording of the testbed use `omnitrace record` instead (see test_export_real.py)."""
from __future__ import annotations

from omnitrace.events import (Exit, ExitGroup, Fork, GpuMemory, GpuProcess, Lost, ProcSnapshot, Reap,
                              Rename, SignalDeliver, SignalGenerate, Span)
from omnitrace.timeline import make_header, write_timeline

MS = 1_000_000
GIB = 1 << 30
T0 = 1_000_000 * MS
SERVE, TRACKER, STAGES = 4100, 4101, (4102, 4103, 4104)
SCENARIOS = ("no-load/sigkill/worker", "no-load/sigterm/serve")


def _span(t, end, name, **attrs):
    return Span(t=t, end=end, name=name, attributes=attrs, source="otlp")


def _mark(t, end, kind, scenario, **attrs):
    return _span(t, end, f"omnitrace.{kind}", **{"omnitrace.mark": kind,
                                                 "omnitrace.scenario": scenario,
                                                 "omnitrace.server.pid": SERVE, **attrs})


def _request(t, ms, path, status=None, error=None):
    attrs = {"http.request.method": "GET" if path == "/health" else "POST", "url.path": path}
    if status is not None:
        attrs["http.response.status_code"] = status
    if error is not None:
        attrs["error.type"] = error
    return _span(t, t + ms * MS if ms is not None else 0, f"{attrs['http.request.method']} {path}", **attrs)


def synthetic_events():
    at = lambda ms: T0 + ms * MS  # noqa: E731
    ev = [ProcSnapshot(t=at(1), pid=SERVE, ppid=1, name="python3", state="running", reason="start",
                       cmdline=["python3", "-m", "vllm_omni", "serve", "--omni"])]
    ev.append(Fork(t=at(5), pid=TRACKER, tid=TRACKER, ppid=SERVE, comm="python3"))
    for i, pid in enumerate(STAGES):
        ev.append(Fork(t=at(10 + i), pid=pid, tid=pid, ppid=SERVE, comm="python3"))
        ev.append(Rename(t=at(20 + i), pid=pid, tid=pid, oldcomm="python3",
                         newcomm="VLLM::StageEngi"))
        ev.append(ProcSnapshot(t=at(21 + i), pid=pid, ppid=SERVE, reason="rename", state="running",
                               name=f"VLLM::StageEngineCoreProc_stage{i}_replica0_DP0"))
        ev.append(GpuProcess(t=at(100 + i), device=0 if i == 0 else 1, pid=pid, used=(i + 1) * GIB))
    ev += [GpuMemory(t=at(100), device=0, used=1 * GIB, total=80 * GIB),
           GpuMemory(t=at(102), device=1, used=5 * GIB, total=80 * GIB)]
    for ms in range(200, 3000, 500):
        ev.append(_request(at(ms), 3, "/health", status=200 if ms < 2200 else 503))
    # scenario 1: SIGKILL stage 0 while a chat request is in flight
    s1, kill1 = at(1000), at(1200)
    victim = STAGES[0]
    ev += [_mark(s1, at(1800), "scenario", SCENARIOS[0]),
           _mark(kill1, kill1 + MS, "fault", SCENARIOS[0], **{"omnitrace.fault.signal": "SIGKILL",
                 "omnitrace.fault.target": "worker", "omnitrace.fault.pids": [victim]}),
           _request(at(1100), 400, "/v1/chat/completions", status=500),
           SignalGenerate(t=kill1, sender_pid=999, sender_tid=999, sender_comm="pytest",
                          target_pid=victim, target_tid=victim, target_comm="VLLM::StageEngi",
                          signal=9, group=True),
           SignalDeliver(t=kill1 + 50_000, pid=victim, tid=victim, signal=9),
           Exit(t=kill1 + 3 * MS, pid=victim, tid=victim, comm="VLLM::StageEngi"),
           Reap(t=kill1 + 4 * MS, reaper=SERVE, pid=victim, status=9, signal=9),
           GpuProcess(t=kill1 + 40 * MS, device=0, pid=victim, used=0),
           GpuMemory(t=kill1 + 40 * MS, device=0, used=0, total=80 * GIB),
           Lost(t=at(1500), source="kernel", count=3, end=at(1501))]
    # scenario 2: SIGTERM the serve root; stages shut down in turn, one chat request hangs
    s2, term = at(2000), at(2100)
    ev += [_mark(s2, at(2900), "scenario", SCENARIOS[1]),
           _mark(term, term + MS, "fault", SCENARIOS[1], **{"omnitrace.fault.signal": "SIGTERM",
                 "omnitrace.fault.target": "serve", "omnitrace.fault.pids": [SERVE]}),
           _request(at(2050), None, "/v1/chat/completions"),
           SignalGenerate(t=term, sender_pid=999, sender_tid=999, sender_comm="pytest",
                          target_pid=SERVE, target_tid=SERVE, target_comm="python3", signal=15,
                          group=True),
           SignalDeliver(t=term + 100_000, pid=SERVE, tid=SERVE, signal=15, disposition="handler")]
    for i, pid in enumerate(STAGES[1:]):
        gone = term + (200 + 100 * i) * MS
        ev += [SignalGenerate(t=gone - 20 * MS, sender_pid=SERVE, sender_tid=SERVE,
                              sender_comm="python3", target_pid=pid, target_tid=pid,
                              target_comm="VLLM::StageEngi", signal=15, group=True),
               SignalDeliver(t=gone - 19 * MS, pid=pid, tid=pid, signal=15, disposition="handler"),
               ExitGroup(t=gone - MS, pid=pid, tid=pid, code=0),
               Exit(t=gone, pid=pid, tid=pid, comm="VLLM::StageEngi"),
               Reap(t=gone + MS, reaper=SERVE, pid=pid, status=0, exit_code=0),
               GpuProcess(t=gone + 30 * MS, device=1, pid=pid, used=0),
               GpuMemory(t=gone + 30 * MS, device=1, used=(3 - i) * GIB if i == 0 else 0,
                         total=80 * GIB)]
    ev += [ExitGroup(t=at(2600), pid=SERVE, tid=SERVE, code=0),
           Exit(t=at(2601), pid=SERVE, tid=SERVE, comm="python3")]
    # the resource tracker is left behind: an orphan
    return sorted(ev, key=lambda e: e.t)


def write_synthetic(path):
    header = make_header(["python3", "-m", "vllm_omni", "serve", "--omni"],
                         {"kernel": {"backend": "bcc"}, "procfs": {}, "gpu": {}, "http": {}})
    header["t0"] = T0
    header["run_id"] = "synthetic-1"
    write_timeline(path, header, synthetic_events(), {"t": T0 + 3000 * MS})
    return path


def test_synthetic_timeline_reads_back(tmp_path):
    from omnitrace.timeline import read_timeline
    timeline = read_timeline(write_synthetic(tmp_path / "run.jsonl"))
    assert not timeline.truncated and len(timeline.events) > 40
