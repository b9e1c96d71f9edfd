"""Both pid views downstream of the file: a recording of a container whose processes carry host
pids and namespace pids; show, verify's labels, Perfetto and OTLP must say both, and name the
container. (The recorder side, for real, is tests/test_recorder_cgroup.py.)"""
from __future__ import annotations

import json

import pytest

from omnitrace import events as ev
from omnitrace.export.html import _pid_text
from omnitrace.export.otlp import otlp_requests
from omnitrace.export.perfetto import perfetto_trace
from omnitrace.model import build_model
from omnitrace.show import annotated_views, render_table
from omnitrace.timeline import TimelineWriter, make_header, read_timeline
from omnitrace.view import role_patterns

CID = "c0ffee" * 10 + "abcd"
GROUP = f"/libpod_parent/libpod-{CID}"


@pytest.fixture
def timeline(tmp_path):
    header = make_header([], {"kernel": {"backend": "bcc"}}, recorder_pid=10, attach=[],
                         trace_all=False, cgroup=GROUP, cgroup_pids=[5000],
                         container={"name": "web", "id": CID, "runtime": "podman", "pid": 5000})
    t = header["t0"]
    writer = TimelineWriter(tmp_path / "ctr.jsonl", header)
    writer.extend([
        ev.ProcSnapshot(t=t + 1, pid=5000, ppid=4990, name="server", cmdline=["server"],
                        state="sleeping", create_time=t - 10**9, reason="start", ns_pid=1,
                        cgroup=GROUP),
        ev.Fork(t=t + 2, pid=5001, tid=5001, ppid=5000, comm="server", ns_pid=7),
        ev.SignalGenerate(t=t + 3, sender_pid=4990, sender_tid=4990, sender_comm="runc",
                          target_pid=5001, target_tid=5001, target_comm="server", signal=15),
        ev.Exit(t=t + 4, pid=5001, tid=5001, comm="server"),
        ev.Reap(t=t + 5, reaper=5000, pid=5001, status=15, signal=15),
        ev.ProcSnapshot(t=t + 6, pid=4990, ppid=1, name="conmon", reason="periodic"),
    ])
    writer.close({"t": t + 7, "exit_status": None, "ended_by": "command_exit", "counters": {}})
    return read_timeline(tmp_path / "ctr.jsonl")


def test_processes_carry_both_pids_and_the_container_name(timeline):
    model = build_model(timeline)
    init, child = model.process(5000), model.process(5001)
    assert (init.ns_pid, init.container) == (1, "web")
    assert (child.ns_pid, child.container) == (7, "web")  # a child starts in its parent's group
    assert child.label() == "pid 5001 (ns 7) server"
    assert _pid_text(child) == "5001 (ns 7)"  # the HTML report's process labels
    assert model.process(4990).label() == "pid 4990 conmon"  # outside: one pid, as before


def test_show_json_and_table_say_both(timeline):
    model = build_model(timeline)
    views = {v["pid"]: v for v in annotated_views(model, role_patterns(timeline.header, None, "test"))}
    assert (views[5001]["ns_pid"], views[5001]["container"]) == (7, "web")
    assert (views[4990]["ns_pid"], views[4990]["container"]) == (None, None)
    assert views[5000]["in_recorded_tree"] and views[5001]["in_recorded_tree"]
    assert not views[4990]["in_recorded_tree"]  # the runtime beside the container
    assert "[ns pid 7, container web]" in render_table(list(views.values()))


def test_perfetto_and_otlp_carry_the_namespace_pid(timeline):
    trace = perfetto_trace(timeline)
    names = {e["pid"]: e["args"]["name"] for e in trace["traceEvents"]
             if e.get("name") == "process_name"}
    assert names[5001] == "server (ns pid 7)"
    lifetime = next(e for e in trace["traceEvents"] if e.get("cat") == "process" and e["pid"] == 5001)
    assert (lifetime["args"]["ns_pid"], lifetime["args"]["container"]) == (7, "web")

    traces, logs = otlp_requests(timeline)
    spans = [s for r in traces.resource_spans for sc in r.scope_spans for s in sc.spans]
    attrs = {kv.key: kv.value for kv in next(s for s in spans if s.name == "server"
                                              and any(kv.key == "process.pid"
                                                      and kv.value.int_value == 5001
                                                      for kv in s.attributes)).attributes}
    assert attrs["omnitrace.ns_pid"].int_value == 7
    assert attrs["container.name"].string_value == "web"
    bodies = [r.body.string_value for rl in logs.resource_logs for sl in rl.scope_logs
              for r in sl.log_records]
    assert "SIGTERM sent to pid 5001 (ns 7) by pid 4990 (runc): delivered" in bodies


def test_a_file_without_the_new_fields_reads_as_before(tmp_path):
    """Fields are only added: an older file (no ns_pid, no cgroup) gives null views."""
    header = make_header([], {}, recorder_pid=10, attach=[], trace_all=False)
    lines = [header, {"kind": "fork", "t": header["t0"] + 1, "pid": 7, "tid": 7, "ppid": 10,
                      "comm": "x", "thread": False}]
    path = tmp_path / "old.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    proc = build_model(read_timeline(path)).process(7)
    assert (proc.ns_pid, proc.container, proc.label()) == (None, None, "pid 7 x")
