"""The model of one recording and the queries the rules share.

Built by omnitrace.model.build.build_model; rules read it and never touch events directly except
to cite them (by index into timeline.events).
"""
from __future__ import annotations

from bisect import bisect_right
from typing import TYPE_CHECKING, Iterable, Iterator

from omnitrace.model.process import Process
from omnitrace.timeline import Timeline

if TYPE_CHECKING:
    from omnitrace.model.gpu import GpuUsage
    from omnitrace.model.http import Request
    from omnitrace.model.marks import Mark


class Model:
    def __init__(self, timeline: Timeline):
        self.timeline = timeline
        self.processes: list[Process] = []
        self.children_of: dict[int, dict[int, Process]] = {}
        self.marks: list[Mark] = []
        self.requests: list[Request] = []
        self.lost: list[tuple[int, int, str, int, int]] = []   # (t, end, source, count, ref)
        self.gpu: GpuUsage
        self.window_end: int | None = None   # set on a scenario's cut view (model/window.py)
        self._by_pid: dict[int, list[Process]] = {}
        self._kind_times: dict[str, list[int]] = {}
        self._request_starts: list[int] | None = None

    def index_child(self, proc: Process) -> None:
        parent = proc.parents[-1].ppid if proc.parents else None
        if parent is not None:
            self.children_of.setdefault(parent, {})[id(proc)] = proc

    def finish(self) -> None:
        self.index_pids()
        self.requests.sort(key=lambda r: r.t)

    def index_pids(self) -> None:
        for proc in self.processes:
            self._by_pid.setdefault(proc.pid, []).append(proc)

    # --- the recording ----------------------------------------------------------------------------
    @property
    def t0(self) -> int:
        return self.timeline.t0

    @property
    def t_end(self) -> int:
        """Where the recording ends, or where the window this view was cut at ends."""
        return self.timeline.t_end if self.window_end is None else self.window_end

    def source_ran(self, name: str) -> bool:
        return self.timeline.source_ran(name)

    def lost_in(self, start: int, end: int, sources: Iterable[str]) -> int:
        """Events of these sources dropped in [start, end]: a window with losses cannot pass."""
        wanted = set(sources)
        return sum(count for t, t_last, source, count, _ in self.lost
                   if source in wanted and t <= end and t_last >= start)

    # --- processes --------------------------------------------------------------------------------
    def process(self, pid: int, t: int | None = None) -> Process | None:
        """The incarnation of pid alive (or last started) at t; the latest one if t is None."""
        incarnations = self._by_pid.get(pid)
        if not incarnations:
            return None
        if t is None:
            return incarnations[-1]
        best = incarnations[0]
        for proc in incarnations:
            if proc.start is None or proc.start <= t:
                best = proc
        return best

    def alive_at(self, pid: int, t: int) -> bool:
        proc = self.process(pid, t)
        return proc is not None and proc.alive_at(t)

    def descendants(self, root: Process, since: int | None = None) -> list[Process]:
        """Everything root forked, recursively, by who forked whom (re-parenting does not break
        the family: an orphan is still the server's residue). `since`: skip lines that ended
        before it."""
        found: list[Process] = []
        stack = [root]
        seen = {id(root)}
        while stack:
            parent = stack.pop()
            for child in self.children_of.get(parent.pid, {}).values():
                if id(child) in seen or child.ppid != parent.pid:
                    continue
                if child.start is not None and parent.start is not None and child.start < parent.start:
                    continue  # child of an earlier incarnation of this pid
                if since is not None and child.exit_t is not None and child.exit_t < since:
                    continue
                seen.add(id(child))
                found.append(child)
                stack.append(child)
        return found

    def tree_at(self, root: Process, t: int) -> list[Process]:
        """root and its descendants alive at t."""
        return [p for p in [root, *self.descendants(root)] if p.alive_at(t)]

    def ancestors(self, proc: Process) -> Iterator[Process]:
        seen = set()
        current = proc
        while current.ppid not in (None, 0) and current.ppid not in seen:
            seen.add(current.ppid)
            parent = self.process(current.ppid, current.start)
            if parent is None:
                return
            yield parent
            current = parent

    # --- events -----------------------------------------------------------------------------------
    def first_after(self, kind: str, t: int) -> int | None:
        """Index of the first event of `kind` at or after t (None if there is none)."""
        times = self._kind_times.get(kind)
        if times is None:
            times = self._kind_times[kind] = [e.t for e in self.timeline.events if e.kind == kind]
            self._kind_index = getattr(self, "_kind_index", {})
            self._kind_index[kind] = [i for i, e in enumerate(self.timeline.events) if e.kind == kind]
        pos = bisect_right(times, t - 1)
        if pos == len(times) or times[pos] > self.t_end:   # none before the end (of a window)
            return None
        return self._kind_index[kind][pos]

    def requests_started_by(self, t: int) -> list[Request]:
        """The requests sent at or before t (requests are sorted by their start)."""
        if self._request_starts is None:
            self._request_starts = [r.t for r in self.requests]
        return self.requests[:bisect_right(self._request_starts, t)]

    def requests_between(self, start: int, end: int) -> list[Request]:
        """Requests that were open at some point in [start, end]."""
        return [r for r in self.requests if r.t <= end and (r.end is None or r.end >= start)]

    def seconds(self, t: int, since: int) -> float:
        return (t - since) / 1e9
