"""The truthful verdict of each rule of a row, from tests/corpus/truth.py's measurements alone.

Times are seconds after the fault. Each rule reads its claim as the matrix states it
(docs/verify.md), with "before" and "stays" taken literally: a change needs the state before the
fault (a 2xx /health), and "stays unavailable" means no 2xx answer from the first failure to the
end of the row's window. `n/a` is a claim that cannot hold or fail on this server (no request was
in flight at the fault; the tree never held device memory): the only truthful verdict for it is
inconclusive.
"""
from __future__ import annotations

import signal

PASS, FAIL, NA = "pass", "fail", "n/a"
FAILED_ENDS = ("5xx", "reset", "refused", "closed", "truncated")


def verdict(value: str, why: str) -> dict:
    return {"verdict": value, "why": why}


def derive(m: dict, row, patterns) -> dict:
    facts = Facts(m, row, patterns)
    checks = {"target-exits": facts.target_exits, "graceful-shutdown": facts.graceful,
              "cleanup-order": facts.cleanup_order, "no-residue": facts.no_residue,
              "no-zombies": facts.no_zombies, "gpu-released": facts.gpu_released,
              "service-unavailable": facts.service_unavailable,
              "inflight-fail-fast": facts.inflight, "stop-accepting": facts.stop_accepting}
    return {rule: checks[rule]() for rule in row.rules if rule in checks}


class Facts:
    def __init__(self, m: dict, row, patterns):
        self.m, self.row, self.patterns = m, row, patterns
        self.limit = row.thresholds
        self.members = {p["pid"]: p for p in m["members"]}
        self.window = m["window_s"]
        self.signum = signal.Signals[row.fault].value

    def exit_of(self, pid: int) -> float | None:
        return self.members[pid]["exit_t"] if pid in self.members else None

    def target_exits(self) -> dict:
        late = {pid: self.exit_of(pid) for pid in self.m["targets"]
                if self.exit_of(pid) is None or self.exit_of(pid) > self.limit["exit_s"]}
        if late:
            return verdict(FAIL, f"not exited within {self.limit['exit_s']} s: {late} "
                                 f"(None: still running at window end {self.window} s)")
        return verdict(PASS, f"every target exited: {self.exits(self.m['targets'])}")

    def graceful(self) -> dict:
        root = self.m["root"]
        for pid in self.m["targets"]:
            how = self.m["dispositions"].get(str(pid))
            if how not in ("caught", "blocked"):   # blocked: read by sigwait/signalfd
                return verdict(FAIL, f"pid {pid}: signal {how}, no handler ran")
            exited = self.exit_of(pid)
            if exited is None or exited > self.limit["exit_s"]:
                return verdict(FAIL, f"pid {pid}: handler ran, exit at {exited} s, limit "
                                     f"{self.limit['exit_s']} s")
            if pid == root and self.m["root_status"] not in ({"exit": 0},
                                                             {"exit": 128 + self.signum}):
                return verdict(FAIL, f"root exited {self.m['root_status']}")
        # a caught signal cannot kill: a non-root target that caught it exited by itself
        return verdict(PASS, f"caught (or read by sigwait) and exited by itself in time: "
                             f"{self.exits(self.m['targets'])}, "
                             f"root status {self.m['root_status']}")

    def cleanup_order(self) -> dict:
        root = self.m["root"]
        root_exit = self.exit_of(root)
        children = [p for p in self.members.values() if p["ppid"] == root and p["seen_t"] <= 0]
        if self.signum == signal.SIGKILL:
            follow = self.limit["child_follow_s"]
            late = {c["pid"]: c["exit_t"] for c in children
                    if c["exit_t"] is None or c["exit_t"] - (root_exit or 0) > follow}
            if late:
                return verdict(FAIL, f"children not gone within {follow} s of the server: {late}")
            return verdict(PASS, f"server exit {root_exit}, children {self.exits(children)}")
        workers = [c for c in self.members.values() if c["seen_t"] <= 0 and c["pid"] != root
                   and self.patterns.is_worker(c["cmdline"])]
        if root_exit is None:
            return verdict(FAIL, "the server never exited in the window: no cleanup happened")
        after = {w["pid"]: w["exit_t"] for w in workers
                 if w["exit_t"] is None or w["exit_t"] > root_exit}
        if after:
            return verdict(FAIL, f"workers exited after the server ({root_exit} s): {after}")
        return verdict(PASS, f"server exit {root_exit} s after workers {self.exits(workers)}")

    def no_residue(self) -> dict:
        alive = self.m["checkpoint_alive"]
        at = min(self.limit["residue_s"], self.window)
        if alive:
            names = {pid: self.members[pid]["cmdline"][:60] for pid in alive}
            return verdict(FAIL, f"alive at +{at} s: {names}")
        return verdict(PASS, f"nothing of the tree alive at +{at} s")

    def no_zombies(self) -> dict:
        zombies = [pid for pid in self.m["checkpoint_zombies"]
                   if (self.exit_of(pid) or 0) < min(self.limit["residue_s"], self.window) - 0.5]
        if zombies:
            return verdict(FAIL, f"unreaped at the checkpoint: {zombies} (exited at "
                                 f"{[self.exit_of(p) for p in zombies]} s)")
        return verdict(PASS, "every exited member reaped by the checkpoint")

    def gpu_released(self) -> dict:
        return verdict(NA, "corpus servers never hold device memory: nothing to release")

    def service_unavailable(self) -> dict:
        answers = [e for e in self.m["exchanges"] if e["end"] is not None and e["start"] >= 0]
        before = [e for e in self.m["exchanges"] if e["kind"] == "health" and e["status"] == 200
                  and e["end"] is not None and e["end"] < 0]
        if not before:
            return verdict(NA, "no 2xx /health before the fault")
        bad = sorted((e for e in answers if e["ended"] in FAILED_ENDS), key=lambda e: e["end"])
        if not bad or bad[0]["end"] > self.limit["unavailable_s"]:
            first = bad[0]["end"] if bad else None
            return verdict(FAIL, f"first 5xx/refused at {first} s, limit {self.limit['unavailable_s']} s")
        first = bad[0]["end"]
        later_ok = [e for e in answers if e["start"] > first and e["status"] is not None
                    and 200 <= e["status"] < 300 and e["end"] <= self.window]
        if later_ok:
            e = later_ok[0]
            return verdict(FAIL, f"unavailable at {first} s, then {e['kind']} answered "
                                 f"{e['status']} at {e['end']} s ({len(later_ok)} 2xx in all)")
        return verdict(PASS, f"unavailable at {first} s ({bad[0]['kind']} {bad[0]['ended']}) and "
                             f"no 2xx until the window's end at {self.window} s")

    def inflight(self) -> dict:
        open_at_fault = [e for e in self.m["exchanges"] if e["kind"] != "health" and e["start"] < 0
                         and (e["end"] is None or e["end"] > 0)]
        if not open_at_fault:
            return verdict(NA, "no request open at the fault")
        limit = self.limit["fail_fast_s"]
        bad = [(e["kind"], e["ended"], e["end"]) for e in open_at_fault
               if e["end"] is None or e["end"] > min(limit, self.window) or e["ended"] not in FAILED_ENDS]
        if bad:
            return verdict(FAIL, f"{len(bad)} of {len(open_at_fault)} open at the fault did not fail "
                                 f"within {limit} s: {bad}")
        return verdict(PASS, f"{len(open_at_fault)} open at the fault all failed: "
                             f"{[(e['kind'], e['ended'], e['end']) for e in open_at_fault]}")

    def stop_accepting(self) -> dict:
        grace = self.limit["stop_accepting_s"]
        late = [e for e in self.m["exchanges"] if e["kind"] != "health" and e["start"] > grace]
        if not late:
            return verdict(NA, f"no request started after +{grace} s")
        served = [e for e in late if e["status"] is not None and 200 <= e["status"] < 300]
        if served:
            return verdict(FAIL, f"{len(served)} request(s) started after +{grace} s got a 2xx")
        return verdict(PASS, f"{len(late)} request(s) after +{grace} s: "
                             f"{[e['ended'] for e in late]}")

    def exits(self, members) -> dict:
        return {(p if isinstance(p, int) else p["pid"]):
                self.exit_of(p if isinstance(p, int) else p["pid"]) for p in members}
