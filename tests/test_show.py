"""`omnitrace show`: the table a person reads (one line per signal, roles, the recorded tree
only) and the --json contract (docs/timeline-format.md: fields are added, never changed), on a
real vLLM recording, on a real testbed recording and on small hand-made ones."""
from __future__ import annotations

import json
import re

import pytest

from omnitrace.cli import main
from omnitrace.events import (Exit, ExitGroup, Fork, ProcSnapshot, Reap, SignalDeliver,
                              SignalGenerate)
from omnitrace.model import build_model
from omnitrace.show import processes_view
from omnitrace.timeline import make_header, read_timeline, write_timeline
from omnitrace.verify.matrix import header_entry, load_matrix

MATRIX_VLLM = "examples/vllm-cpu/matrix.yaml"
# The real vLLM recording's pids (tests/data/vllm-sigkill-serve.jsonl.gz)
RECORDER, DRIVER, SERVE, TRACKER, ENGINE, WORKER = 9567, 9711, 9776, 10380, 10381, 10784
CONTRACT = ("pid", "ppid", "name", "cmdline", "start", "exit", "exit_code", "exit_signal",
            "reaped_by", "reparented_to", "signals_received")


def show(capsys, *args: str) -> str:
    assert main(["show", *map(str, args)]) == 0
    return capsys.readouterr().out


def row(table: str, pid: int) -> str:
    return next(line for line in table.splitlines() if re.match(rf"\s*{pid}\s", line))


def role(table: str, pid: int) -> str:
    """The ROLE column of pid's row (STATUS may be two words: 'exit 0')."""
    return row(table, pid)[56:].split()[0]


def signal_lines(table: str, pid: int) -> list[str]:
    """The '<-' lines under pid's row."""
    lines = table.splitlines()
    start = lines.index(row(table, pid)) + 1
    found = []
    for line in lines[start:]:
        if "<-" not in line:
            break
        found.append(line)
    return found


# --- real vLLM ------------------------------------------------------------------------------------
def test_each_signal_is_one_line_with_the_threads_it_reached(vllm_sigkill_serve, capsys):
    table = show(capsys, vllm_sigkill_serve)
    assert "pid 0" not in table
    kills = {pid: [line for line in signal_lines(table, pid) if "SIGKILL" in line]
             for pid in (SERVE, ENGINE, WORKER)}
    assert all(len(lines) == 1 for lines in kills.values()), kills
    assert kills[SERVE][0].endswith(f"SIGKILL from pid {DRIVER} python3 (default), "
                                    "delivered to 10 threads")
    assert "delivered to 47 threads" in kills[WORKER][0]
    # a run of SIGCHLDs from the children is one line, naming them
    assert [line for line in signal_lines(table, SERVE) if "SIGCHLD" in line] == [
        "                             +2.169s  <- SIGCHLD ×3 from pids 9777 10089 10340 "
        "(1 handler, 2 not delivered)"]


def test_the_table_is_the_recorded_tree_with_roles_and_fits_a_screen(vllm_sigkill_serve, capsys):
    table = show(capsys, vllm_sigkill_serve, "--matrix", MATRIX_VLLM)
    assert len(table.splitlines()) <= 40
    assert not any(re.match(rf"\s*{RECORDER}\s", line) for line in table.splitlines())
    assert table.splitlines()[-1] == (f"(1 process outside the recorded tree not shown: "
                                      f"pid {RECORDER}; --all shows them)")
    assert row(table, SERVE)[56:].split() == ["server", "vllm"]
    assert row(table, ENGINE)[56:].split()[:2] == ["engine", "VLLM::EngineCore"]
    assert role(table, TRACKER) == "helper"
    assert "multiprocessing.resource_tracker" in row(table, TRACKER)
    assert role(table, WORKER) == "worker"
    assert role(table, DRIVER) == "-"          # the scenario driver is no server's


def test_the_table_names_the_window_the_orphans_and_what_came_after(vllm_sigkill_serve, capsys):
    table = show(capsys, vllm_sigkill_serve, "--matrix", MATRIX_VLLM)
    assert table.splitlines()[0] == ("scenario no-load/sigkill/serve: window +2.143s to "
                                     f"+143.780s; SIGKILL -> serve {SERVE} at +103.692s")
    # the engine core was orphaned by the fault, the worker only when the runner killed its parent
    assert row(table, ENGINE).endswith(f"(orphan: re-parented to {DRIVER} at +103.692s)")
    assert row(table, WORKER).endswith(f"(orphan: re-parented to {DRIVER} at +146.794s  "
                                       "[after the window])")
    [kill] = [line for line in signal_lines(table, ENGINE) if "SIGKILL" in line]
    assert kill.endswith("delivered to 16 threads  [after the window]")


def test_all_lists_the_recorder_too(vllm_sigkill_serve, capsys):
    table = show(capsys, vllm_sigkill_serve, "--all")
    assert re.match(rf"\s*{RECORDER}\s", table.splitlines()[2])   # under the window and header lines
    assert "outside the recorded tree" not in table


def test_json_keeps_every_field_and_adds_roles_tree_and_grouped_signals(vllm_sigkill_serve, capsys):
    views = json.loads(show(capsys, vllm_sigkill_serve, "--json", "--matrix", MATRIX_VLLM))
    before = processes_view(build_model(read_timeline(vllm_sigkill_serve)))
    assert [{k: v[k] for k in CONTRACT} for v in views] == before
    by_pid = {v["pid"]: v for v in views}
    assert by_pid[RECORDER]["in_recorded_tree"] is False and by_pid[RECORDER]["role"] is None
    assert by_pid[SERVE]["in_recorded_tree"] is True and by_pid[SERVE]["role"] == "server"
    assert by_pid[ENGINE]["reparented_to"] == DRIVER
    assert by_pid[ENGINE]["reparented_at"] == pytest.approx(103.692, abs=0.001)
    # signals_received still lists every delivery (the kernel's ones from pid 0) ...
    worker = by_pid[WORKER]
    assert sum(s["signal"] == "SIGKILL" for s in worker["signals_received"]) == 47
    # ... signals has the SIGKILL once, with the driver as its sender
    [kill] = [s for s in worker["signals"] if s["signal"] == "SIGKILL"]
    assert kill == {"signal": "SIGKILL", "sender_pid": DRIVER, "sender_comm": "python3",
                    "by_kernel": False, "time": kill["time"], "disposition": "default",
                    "threads": 47}


# --- hand-made ------------------------------------------------------------------------------------
def _write(path, header_extra=None, *events):
    header = {**make_header(["app"], {"kernel": {}}), "t0": 0, "recorder_pid": 100,
              **(header_extra or {})}
    write_timeline(path, header, list(events), {"t": 10_000})
    return path


def test_the_kernel_ending_the_other_threads_at_exit_is_named_as_such(tmp_path, capsys):
    """exit_group(0) in a process with threads: the kernel delivers SIGKILL to each other thread,
    with no sender. One line, from the kernel; the reap says it exited 0."""
    path = _write(tmp_path / "exit.jsonl", None,
                  Fork(t=10, pid=200, tid=200, ppid=100, comm="app"),
                  ExitGroup(t=500, pid=200, tid=200, code=0),
                  *[SignalDeliver(t=501 + n, pid=200, tid=201 + n, signal=9) for n in range(3)],
                  Exit(t=600, pid=200, tid=200, comm="app"),
                  Reap(t=700, reaper=100, pid=200, status=0, exit_code=0))
    table = show(capsys, path)
    assert "exit 0" in row(table, 200)
    assert signal_lines(table, 200) == [
        "                             +0.000s  <- SIGKILL from the kernel to 3 threads (default): "
        "the group's exit"]
    [kill] = json.loads(show(capsys, path, "--json"))[0]["signals"]
    assert kill["by_kernel"] is True and kill["threads"] == 3


def test_an_attached_recording_shows_the_attached_tree_and_everything_with_all(tmp_path, capsys):
    """--attach 300: 300 and what it forked are the tree; 999, seen only as a signal's target,
    is not; a --all recording has no outside."""
    events = [ProcSnapshot(t=5, pid=300, ppid=1, name="app", state="running", reason="start"),
              Fork(t=10, pid=301, tid=301, ppid=300, comm="child"),
              SignalGenerate(t=20, sender_pid=300, sender_tid=300, sender_comm="app",
                             target_pid=999, target_tid=999, target_comm="other", signal=15)]
    attached = _write(tmp_path / "attach.jsonl", {"attach": [300], "command": []}, *events)
    views = {v["pid"]: v for v in json.loads(show(capsys, attached, "--json"))}
    assert {pid: v["in_recorded_tree"] for pid, v in views.items()} == {
        300: True, 301: True, 999: False}
    table = show(capsys, attached).splitlines()
    assert not any(re.match(r"\s*999\s", line) for line in table)
    assert table[-1].startswith("(1 process outside the recorded tree not shown: pid 999;")
    everything = _write(tmp_path / "all.jsonl", {"trace_all": True, "command": []}, *events)
    assert all(v["in_recorded_tree"] for v in json.loads(show(capsys, everything, "--json")))


@pytest.mark.parametrize("named_by", ["option", "header"])
def test_roles_come_from_the_matrix_given_or_carried_by_the_recording(tmp_path, capsys, named_by):
    matrix = tmp_path / "m.yaml"
    matrix.write_text("extends: vllm-omni\nmatrix: mine\npatterns:\n  serve: [mysrv]\n"
                      "  worker: [mywork]\n")
    header = {"matrix": header_entry(load_matrix(matrix))} if named_by == "header" else None
    path = _write(tmp_path / "roles.jsonl", header,
                  Fork(t=10, pid=200, tid=200, ppid=100, comm="mysrv"),
                  Fork(t=20, pid=201, tid=201, ppid=200, comm="mywork"),
                  Fork(t=30, pid=202, tid=202, ppid=200, comm="uname"))
    args = ["--matrix", str(matrix)] if named_by == "option" else []
    table = show(capsys, path, *args)
    assert [role(table, pid) for pid in (200, 201, 202)] == ["server", "worker", "helper"]


# --- the testbed, recorded for real ---------------------------------------------------------------
@pytest.mark.slow
def test_testbed_orphans_are_shown_re_parented_and_the_driver_is_no_server(testbed_sigkill_serve,
                                                                            capsys):
    path, _ = testbed_sigkill_serve
    views = {v["pid"]: v for v in json.loads(show(capsys, path, "--json"))}
    fault = next(e for e in read_timeline(path).events
                 if e.kind == "span" and e.attributes.get("omnitrace.mark") == "fault")
    server = int(fault.attributes["omnitrace.server.pid"])
    driver = views[server]["ppid"]
    assert views[server]["role"] == "server" and views[driver]["role"] is None
    stages = [v for v in views.values() if v["role"] == "worker"]
    assert len(stages) == 3 and all(v["reparented_to"] == driver for v in stages)
    table = show(capsys, path)
    [kill] = [line for line in signal_lines(table, server) if "SIGKILL" in line]
    assert f"from pid {driver}" in kill
    assert "outside the recorded tree not shown" in table.splitlines()[-1]
