"""`record --cgroup` figures: how long attaching takes, how soon a member's first fork is on the
timeline, and what is lost of a burst of forks inside the group (in a new pid namespace with
--ns, where every reap is a namespace pid the recorder translates).

    sudo .venv/bin/python bench/cgroup_attach.py [--forks 2000] [--runs 3] [--ns]

A real cgroup v2 group is made for the run and removed after. Prints a Markdown table;
docs/recorder.md keeps the figures of a run.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from omnitrace.record.cgroup import cgroup2_mount  # noqa: E402
from omnitrace.timeline import read_timeline  # noqa: E402

RECORD = [sys.executable, "-m", "omnitrace.cli", "record", "--no-health", "--no-otlp",
          "--gpu", "off", "--linger", "0"]
# The member: "one" forks a child that exits at once and answers its pid; "burst N" forks and
# reaps N children as fast as it can; an empty line ends it.
MEMBER = r"""
import os, sys
for line in sys.stdin:
    words = line.split()
    if not words:
        break
    for _ in range(int(words[1]) if words[0] == "burst" else 1):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
    print(pid, flush=True)
"""
POLL_S = 0.002  # resolution of the on-file latencies


def lines(path: Path) -> list[dict]:
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.split("\n")[:-1]]


def wait_line(path: Path, wanted, recorder: subprocess.Popen) -> tuple[dict, int]:
    """The first matching line, and when it was seen on the file (monotonic ns)."""
    while True:
        for obj in lines(path):
            if wanted(obj):
                return obj, time.monotonic_ns()
        if recorder.poll() is not None:
            raise SystemExit(f"recorder ended early (its stderr: {path.with_suffix('.stderr')})")
        time.sleep(POLL_S)


def start_member(group: Path, ns: bool) -> subprocess.Popen:
    command = [sys.executable, "-c", MEMBER]
    if ns:
        command = ["unshare", "--pid", "--fork", "--mount-proc", *command]

    def join() -> None:
        with open(group / "cgroup.procs", "w") as f:
            f.write(str(os.getpid()))
    return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            preexec_fn=join)


def ask(member: subprocess.Popen, line: str) -> int:
    member.stdin.write(line + "\n")
    member.stdin.flush()
    return int(member.stdout.readline())


def one_run(group: Path, out: Path, forks: int, ns: bool) -> dict:
    out.unlink(missing_ok=True)  # a previous run's header must not pass for this one's
    member = start_member(group, ns)
    ask(member, "one")  # running inside before the recorder starts
    spawned = time.monotonic_ns()
    log = open(out.with_suffix(".stderr"), "w")  # a pipe nobody reads would stall it
    recorder = subprocess.Popen(RECORD + ["-o", str(out), "--cgroup", str(group)], cwd=REPO,
                                stderr=log, text=True)
    header, _ = wait_line(out, lambda o: o.get("kind") == "header", recorder)
    asked = time.monotonic_ns()
    first = ask(member, "one")
    key = "ns_pid" if ns else "pid"
    fork, seen = wait_line(out, lambda o: o.get("kind") == "fork" and o.get(key) == first,
                           recorder)
    ask(member, f"burst {forks}")
    member.stdin.write("\n")
    member.stdin.close()
    member.wait()
    recorder.wait()
    timeline = read_timeline(out)
    members = set(header["cgroup_pids"]) | {e.pid for e in timeline.events
                                            if e.kind == "fork" and e.ns_pid == 1}
    burst = [e for e in timeline.events if e.kind == "fork" and not e.thread
             and e.ppid in members and e.pid != fork["pid"]]
    reaps = {e.pid for e in timeline.events if e.kind == "reap"}
    kernel = timeline.footer["counters"]["kernel"]
    return {"attach_ms": (header["t0"] - spawned) / 1e6,
            "first_kernel_ms": (fork["t"] - asked) / 1e6,
            "first_file_ms": (seen - fork["t"]) / 1e6,
            "forks_recorded": len(burst), "reaps_recorded": sum(e.pid in reaps for e in burst),
            "with_ns_pid": sum(e.ns_pid is not None for e in burst),
            "lost": kernel["lost"], "unresolved": kernel.get("unresolved_reaps", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--forks", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--ns", action="store_true", help="the member is a pid namespace's init")
    args = parser.parse_args()
    mount = cgroup2_mount()
    if os.geteuid() != 0 or mount is None:
        raise SystemExit("needs root and a cgroup v2 hierarchy")
    group = mount / f"omnitrace-bench-{os.getpid()}"
    group.mkdir()
    try:
        runs = [one_run(group, Path(f"/tmp/omnitrace-cgroup-bench-{i}.jsonl"), args.forks, args.ns)
                for i in range(args.runs)]
    finally:
        group.rmdir()
    report(runs, args)


def report(runs: list[dict], args) -> None:
    median = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(f"| what ({args.runs} runs, {'pid namespace' if args.ns else 'host pids'}) "
          f"| median | all runs |")
    print("| --- | --- | --- |")
    rows = [("attach: `record` started to header (filter live, members seeded), ms", "attach_ms"),
            ("first fork after attach: asked to kernel record, ms", "first_kernel_ms"),
            ("first fork: kernel record to the file, ms", "first_file_ms"),
            (f"forks of the {args.forks} burst recorded", "forks_recorded"),
            ("... of which reaped on record (under the host pid)", "reaps_recorded"),
            ("... of which carry a namespace pid", "with_ns_pid"),
            ("kernel events lost", "lost"), ("reaps left unresolved", "unresolved")]
    for title, key in rows:
        values = ", ".join(f"{r[key]:.0f}" if isinstance(r[key], float) else str(r[key])
                           for r in runs)
        print(f"| {title} | {median(key):.0f} | {values} |")


if __name__ == "__main__":
    main()
