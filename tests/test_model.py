"""The process model: lifetimes, re-parenting, pid reuse, roles and scenario detection."""
from __future__ import annotations

from omnitrace.model.build import build_model
from omnitrace.model.roles import RolePatterns, assign_roles, find_servers
from omnitrace.model.scenarios import find_scenarios
from omnitrace.model.synthetic import TimelineBuilder, ns

from tests.test_verify_rules import FAULT, HARNESS, INJECTOR, SERVE, TRACKER, WORKERS, server, sigkill_serve


def test_orphan_is_reparented_at_its_parents_exit_and_confirmed_by_procfs():
    model = build_model(sigkill_serve(server(), orphan=True).timeline())
    orphan = model.process(102)
    assert orphan.parent_at(ns(FAULT)) == SERVE
    assert orphan.parent_at(ns(FAULT + 0.5)) == 1
    assert orphan.parents[1].inferred and orphan.parents[1].t == ns(FAULT + 0.001)
    assert orphan.alive_at(ns(40))


def test_reaper_names_the_new_parent_of_an_orphan():
    b = TimelineBuilder()
    b.spawn(5, 1, "subreaper", 0).spawn(6, 5, "parent", 1).spawn(7, 6, "child", 2)
    b.exit(6, 3).exit(7, 4).reap(5, 7, 4.1, code=0)
    child = build_model(b.timeline()).process(7)
    assert child.parent_at(ns(3.5)) == 5 and child.reaped_by == 5
    assert child.exit_status() == (0, None)


def test_a_reused_pid_is_a_new_process():
    b = TimelineBuilder()
    b.spawn(5, 1, "first", 0).exit(5, 1).reap(1, 5, 1.1).spawn(5, 1, "second", 2)
    model = build_model(b.timeline())
    assert model.process(5, ns(0.5)).name == "first"
    assert model.process(5, ns(3)).name == "second"
    assert not model.alive_at(5, ns(1.5)) and model.alive_at(5, ns(2.5))


def test_exit_status_of_an_unreaped_process_comes_from_the_fatal_signal():
    b = TimelineBuilder()
    b.spawn(5, 1, "victim", 0).signal(9, 5, 9, 1.0).exit(5, 1.001)
    assert build_model(b.timeline()).process(5).exit_status() == (None, 9)


def test_roles_from_names_and_gpu_evidence():
    model = build_model(server().timeline())
    servers = find_servers(model, RolePatterns())
    assert [s.pid for s in servers] == [SERVE]
    roles = assign_roles(model, servers[0], RolePatterns())
    assert {p.pid: roles.of(p) for p in roles.tree} == {
        SERVE: "serve", TRACKER: "helper", **{pid: "worker" for pid in WORKERS}}


def test_an_engine_is_a_worker_named_process_whose_children_hold_the_gpu():
    b = TimelineBuilder()
    b.spawn(100, 1, "python3", 0, cmdline=["vllm", " serve ", "x"], ports=[8000])
    b.spawn(101, 100, "VLLM::EngineCore", 1).spawn(102, 101, "VLLM::Worker_TP0", 1.5)
    b.gpu_proc(0, 102, 10, 2)
    model = build_model(b.timeline())
    roles = assign_roles(model, model.process(100), RolePatterns())
    assert roles.of(model.process(101)) == "engine" and roles.of(model.process(102)) == "worker"


def test_real_vllm_roles_on_a_machine_without_gpu():
    """vLLM 0.32's CPU tree (measured): the API server `vllm ... serve`, the resource tracker,
    VLLM::EngineCore and below it VLLM::Worker; no GPU holders, and the seed's `VLLM::` pattern
    matches the engine core too. The engine core orchestrates the worker: it is the engine."""
    b = TimelineBuilder()
    b.spawn(100, 1, "vllm", 0, cmdline=["python3", "/v/bin/vllm", "serve", "/m"], ports=[8000])
    b.spawn(101, 100, "python3", 1, cmdline=["python3", "-B", "-c",
                                            "from multiprocessing.resource_tracker import main"])
    b.spawn(102, 100, "VLLM::EngineCor", 1, cmdline=["VLLM::EngineCore"])
    b.spawn(103, 102, "VLLM::Worker", 2, cmdline=["VLLM::Worker"])
    b.spawn(104, 103, "cc1plus", 3)
    model = build_model(b.timeline())
    for patterns in (RolePatterns(), RolePatterns(worker=["VLLM::Worker"],
                                                  engine=["VLLM::EngineCore"])):
        roles = assign_roles(model, model.process(100), patterns)
        assert {p.pid: roles.of(p) for p in roles.tree} == {
            100: "serve", 101: "helper", 102: "engine", 103: "worker", 104: "other"}


def test_without_marks_a_fatal_signal_from_outside_the_tree_starts_a_scenario():
    b = server()
    b.health(3.0, FAULT, 0.5)
    b.signal(INJECTOR, SERVE, 15, FAULT, disposition="handler")
    b.signal(SERVE, 102, 15, FAULT + 0.5, disposition="handler")   # the server's own: not a fault
    b.exit(102, FAULT + 1, code=143).exit(SERVE, FAULT + 2, code=0)
    scenarios = find_scenarios(build_model(b.timeline(end=200)), RolePatterns(), lambda _: 100)
    assert [(s.id, s.target, s.target_pids, s.origin) for s in scenarios] == [
        ("no-load/sigterm/serve", "serve", [SERVE], "detected")]
    assert scenarios[0].end == ns(FAULT + 100)


def test_signals_close_together_from_one_sender_are_one_kill_all_fault():
    b = server()
    b.request(FAULT - 2, FAULT + 0.1, "chat", error="reset")
    for n, pid in enumerate([SERVE, TRACKER, *WORKERS]):
        b.signal(INJECTOR, pid, 9, FAULT + 0.1 * n)
    (scenario,) = find_scenarios(build_model(b.timeline()), RolePatterns())
    assert scenario.id == "under-load/sigkill/all" and len(scenario.target_pids) == 5


def test_without_marks_a_gpu_hog_outside_the_tree_starts_an_oom_scenario():
    b = server()
    b.spawn(300, HARNESS, "python3", FAULT, cmdline=["python3", "hog.py"])
    b.gpu_proc(0, 300, 59, FAULT + 0.5)
    (scenario,) = find_scenarios(build_model(b.timeline()), RolePatterns())
    assert (scenario.id, scenario.fault_t, scenario.target_pids) == ("oom/gpu-hog", ns(FAULT), [300])


def test_marks_define_the_window_the_fault_and_the_server():
    (scenario,) = find_scenarios(build_model(sigkill_serve(server()).timeline()), RolePatterns())
    assert (scenario.id, scenario.origin, scenario.start, scenario.fault_t, scenario.signal) == (
        "no-load/sigkill/serve", "marks", ns(9.0), ns(FAULT), 9)
    assert scenario.server.pid == SERVE


def test_request_spans_are_not_marks_and_hangs_have_no_end():
    b = TimelineBuilder().request(1, None, "chat").request(2, 2.5, "health", status=503)
    model = build_model(b.timeline())
    assert model.marks == []
    hang, probe = model.requests
    assert hang.end is None and probe.failed and probe.kind == "health"


def test_a_stream_cut_after_its_2xx_headers_is_a_failure_not_a_success():
    from omnitrace.events import Span
    from omnitrace.model.http import request_from_span
    attrs = {"http.request.method": "POST", "url.full": "http://127.0.0.1:8000/v1/chat/completions",
             "http.response.status_code": 200, "error.type": "reset"}
    cut = request_from_span(Span(1, 2, "POST", attrs), 0)
    assert cut.failed and not cut.succeeded and cut.outcome() == "HTTP 200, then error reset"
    assert cut.origin == "http://127.0.0.1:8000"
    bad_request = request_from_span(Span(1, 2, "POST", {**attrs, "http.response.status_code": 400,
                                                          "error.type": "400"}), 0)
    assert not bad_request.failed and not bad_request.succeeded


def test_a_truncated_comm_does_not_hide_the_full_title():
    """A zombie's procfs name and rename events carry only 15 characters of a setproctitle title."""
    from omnitrace.events import ProcSnapshot, Rename
    b = TimelineBuilder()
    b.spawn(200, 1, "VLLM::StageEngineCoreProc_noid_replica0_DP0", 1.0)
    b.add(Rename(ns(1.5), 200, 200, "python3", "VLLM::StageEngi"))
    b.exit(200, 2.0)
    b.add(ProcSnapshot(ns(2.5), 200, 1, "VLLM::StageEngi", [], "zombie"))
    model = build_model(b.timeline())
    assert model.process(200).name == "VLLM::StageEngineCoreProc_noid_replica0_DP0"


def test_gpu_holders_that_are_not_hogs_start_no_oom_scenario():
    """On a shared GPU: a job that held memory before the recording looked, and one that takes a
    small share of what is free, are bystanders; only a holder taking most of the free memory is
    an OOM hog."""
    b = server()
    b.spawn(400, 1, "train.py", 0.5)
    b.gpu_proc(0, 400, 45, 2.0)            # big, but in device 0's first process list: there before
    b.spawn(401, 1, "notebook", FAULT - 3)
    b.gpu_proc(1, 401, 4, FAULT - 2.5)     # 4 of the ~39.5 GiB free on device 1
    assert find_scenarios(build_model(b.timeline()), RolePatterns()) == []
    b.spawn(300, HARNESS, "python3", FAULT, cmdline=["python3", "hog.py"])
    b.gpu_proc(0, 300, 55, FAULT + 0.5)    # 55 of 59.5 GiB free: the hog
    (scenario,) = find_scenarios(build_model(b.timeline()), RolePatterns())
    assert (scenario.id, scenario.target_pids) == ("oom/gpu-hog", [300])


def test_real_vllm_recording_roles_ignore_titles_inherited_at_fork(tmp_path):
    """In the recorded vLLM 0.32 tree the engine core and the worker fork `file`, `sh` and
    `lscpu`, which start with their parent's comm: they are not workers, and the worker (whose
    `sh` child once looked like a worker) is not taken for an engine."""
    import gzip
    from pathlib import Path
    from omnitrace.timeline import read_timeline
    path = tmp_path / "vllm.jsonl"
    path.write_bytes(gzip.decompress((Path(__file__).parent / "data" /
                                      "vllm-sigkill-serve.jsonl.gz").read_bytes()))
    model = build_model(read_timeline(path))
    patterns = RolePatterns(worker=["VLLM::Worker"], engine=["VLLM::EngineCore"])
    (server,) = [s for s in find_servers(model, patterns) if "vllm" in s.name]
    roles = assign_roles(model, server, patterns)
    by_role = {}
    for proc in roles.tree:
        by_role.setdefault(roles.of(proc), []).append(proc.name)
    assert by_role["engine"] == ["VLLM::EngineCore"] and by_role["worker"] == ["VLLM::Worker"]
    assert not {"sh", "file", "lscpu", "uname"} & set(by_role["engine"] + by_role["worker"])
