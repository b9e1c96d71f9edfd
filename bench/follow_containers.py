"""`record --follow-containers` figures: of containers a process outside the recorded command
starts (as dockerd or a podman service would), how many are followed, and what is recorded of
the forks inside them.

    sudo .venv/bin/python bench/follow_containers.py [--containers 5] [--forks 200]

The stand-in daemon runs `podman run --rm` of the local image (scripts/container-image.sh) one
after the other; each container's shell (its pid 1) runs `--forks` short-lived children. The
recorded command only waits for the daemon to say it is done. Prints a Markdown table;
docs/containers.md keeps the figures of a run.
"""
from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from omnitrace.events import Fork, ProcSnapshot, Reap  # noqa: E402
from omnitrace.timeline import read_timeline  # noqa: E402

IMAGE = "localhost/omnitrace-host:1"
RECORD = [sys.executable, "-m", "omnitrace.cli", "record", "--no-health", "--no-otlp",
          "--gpu", "off", "--linger", "0", "--follow-containers"]


def daemon_script(containers: int, forks: int, go: Path, done: Path, cids: Path) -> str:
    run_args = subprocess.run([str(REPO / "scripts" / "container-image.sh"), "--run-args",
                               sys.executable], check=True, text=True,
                              capture_output=True).stdout.split()
    inner = f"i=0; while [ $i -lt {forks} ]; do sh -c :; i=$((i+1)); done"
    run = shlex.join(["podman", "run", "--rm", *run_args, IMAGE, "sh", "-c", inner])
    run = run.replace("podman run", f'podman run --cidfile "{cids}/$n"', 1)
    return (f"read _ < {go}; for n in $(seq {containers}); do {run} >/dev/null 2>&1; done; "
            f"echo done > {done}")


def one_run(containers: int, forks: int, work: Path) -> dict:
    go, done, out, cids = work / "go", work / "done", work / "follow.jsonl", work / "cids"
    cids.mkdir()
    for fifo in (go, done):
        fifo.unlink(missing_ok=True)
        subprocess.run(["mkfifo", str(fifo)], check=True)
    daemon = subprocess.Popen(["sh", "-c", daemon_script(containers, forks, go, done, cids)],
                              start_new_session=True)
    t0 = time.monotonic()
    subprocess.run([*RECORD, "-o", str(out), "--", "sh", "-c", f"echo go > {go}; cat {done}"],
                   cwd=REPO, check=True, capture_output=True)
    elapsed = time.monotonic() - t0
    daemon.wait()
    timeline = read_timeline(out)
    ours = [p.read_text().strip() for p in cids.iterdir()]
    # other containers made meanwhile on this machine are followed too: count only ours
    inits = {e.pid for e in timeline.events if isinstance(e, ProcSnapshot) and e.ns_pid == 1
             and any(cid in (e.cgroup or "") for cid in ours)}
    inside = [e for e in timeline.events if isinstance(e, Fork) and not e.thread
              and e.ppid in inits]
    reaped = {e.pid for e in timeline.events if isinstance(e, Reap)}
    kernel = timeline.footer["counters"]["kernel"]
    return {"elapsed_s": elapsed, "followed": len(inits),
            "followed_all": kernel.get("containers_followed", 0),
            "forks_inside": len(inside), "reaped": sum(1 for f in inside if f.pid in reaped),
            "lost": kernel["lost"], "unresolved": kernel.get("unresolved_reaps", 0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--containers", type=int, default=5)
    parser.add_argument("--forks", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as work:
        r = one_run(args.containers, args.forks, Path(work))
    print("| containers started | followed (all made meanwhile) | forks inside (expected) | "
          "reaped | lost | unresolved reaps | time |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    print(f"| {args.containers} | {r['followed']} ({r['followed_all']}) | {r['forks_inside']} "
          f"({args.containers * args.forks}) | {r['reaped']} | {r['lost']} | {r['unresolved']} "
          f"| {r['elapsed_s']:.1f} s |")


if __name__ == "__main__":
    main()
