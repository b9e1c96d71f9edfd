"""Hand-made timelines: a small builder the tests and the benchmark generator share.

Times are seconds from the start of the recording; the builder writes CLOCK_MONOTONIC-like ns.

    b = TimelineBuilder()
    b.spawn(100, 1, "python3", 0.0, cmdline=["python3", "-m", "vllm", "serve"], ports=[8000])
    b.signal(50, 100, 9, 10.0)
    b.exit(100, 10.001)
    timeline = b.timeline()
"""
from __future__ import annotations

from omnitrace.events import (KERNEL_REAP, KERNEL_REAPER, Event, Exit, ExitGroup, Fork, GpuMemory,
                              GpuProcess, Lost, ProcSnapshot, Reap, SignalDeliver, SignalGenerate,
                              Span)
from omnitrace.timeline import FORMAT, VERSION, Timeline

T0 = 1_000_000_000_000
ALL_SOURCES = ("kernel", "procfs", "gpu", "http")


def ns(seconds: float) -> int:
    return T0 + int(round(seconds * 1e9))


class TimelineBuilder:
    def __init__(self, sources=ALL_SOURCES):
        self.sources = {name: {"backend": "synthetic"} for name in sources}
        self.events: list[Event] = []
        self.names: dict[int, str] = {}

    def add(self, event: Event) -> "TimelineBuilder":
        self.events.append(event)
        return self

    # --- processes ------------------------------------------------------------------------------
    def spawn(self, pid, ppid, name, t, cmdline=None, ports=(), snapshot=True):
        self.names[pid] = name
        self.add(Fork(ns(t), pid, pid, ppid, name))
        if snapshot:
            self.add(ProcSnapshot(ns(t) + 1000, pid, ppid, name, list(cmdline or [name]), "sleeping",
                                  ns(t), ports=list(ports), reason="new"))
        return self

    def snapshot(self, pid, ppid, t, state="sleeping", ports=()):
        return self.add(ProcSnapshot(ns(t), pid, ppid, self.names.get(pid, "?"),
                                     [self.names.get(pid, "?")], state, ports=list(ports)))

    def signal(self, sender, target, sig, t, disposition="default", delay=0.0005):
        """Sent at t; delivered `delay` later with `disposition` (None: delivery not recorded)."""
        self.add(SignalGenerate(ns(t), sender, sender, self.names.get(sender, "sender"), target,
                                target, self.names.get(target, "?"), sig))
        if disposition is not None:
            self.add(SignalDeliver(ns(t + delay), target, target, sig, disposition=disposition))
        return self

    def exit(self, pid, t, code=None):
        if code is not None:
            self.add(ExitGroup(ns(t) - 1000, pid, pid, code))
        return self.add(Exit(ns(t), pid, pid, self.names.get(pid, "?")))

    def reap(self, reaper, pid, t, code=None, sig=None):
        return self.add(Reap(ns(t), reaper, pid, None, code, sig))

    def kernel_reap(self, pid, t):
        """The kernel freed pid with no wait call (a pid namespace's teardown)."""
        return self.add(Reap(ns(t), KERNEL_REAPER, pid, syscall=KERNEL_REAP))

    def lost(self, source, count, t, end):
        return self.add(Lost(ns(t), source, count, ns(end)))

    # --- GPU ------------------------------------------------------------------------------------
    def gpu(self, device, used_gib, t, total_gib=80.0):
        return self.add(GpuMemory(ns(t), device, int(used_gib * (1 << 30)), int(total_gib * (1 << 30))))

    def gpu_proc(self, device, pid, used_gib, t):
        return self.add(GpuProcess(ns(t), device, pid, int(used_gib * (1 << 30))))

    # --- HTTP and marks -------------------------------------------------------------------------
    def request(self, t, end, kind="chat", status=None, error=None, openai=None, source="otlp",
                attrs=None):
        paths = {"health": ("GET", "/health"), "chat": ("POST", "/v1/chat/completions"),
                 "input": ("POST", "/v1/chat/completions"),
                 "chat-stream": ("POST", "/v1/chat/completions"), "speech": ("POST", "/v1/audio/speech")}
        method, path = paths.get(kind, ("GET", "/"))
        attrs = {"http.request.method": method, "url.path": path, "omnitrace.request.kind": kind,
                 **(attrs or {})}
        if status is not None:
            attrs["http.response.status_code"] = status
        if error is not None:
            attrs["error.type"] = error
        if openai is not None:
            attrs["omnitrace.response.openai_error"] = openai
        return self.add(Span(ns(t), 0 if end is None else ns(end), f"{method} {path}", attrs,
                             "probe" if kind == "health" else source))

    def health(self, start, end, every, status=200, error=None):
        """Health probes every `every` s in [start, end); each answers in 2 ms."""
        t = start
        while t < end:
            self.request(t, t + 0.002, "health", status=status, error=error)
            t += every
        return self

    def mark(self, kind, t, end, **attrs):
        keyed = {"omnitrace.mark": kind}
        keyed.update({f"omnitrace.{k.replace('_', '.')}": v for k, v in attrs.items()})
        return self.add(Span(ns(t), ns(end), f"omnitrace.{kind}", keyed, "otlp"))

    def timeline(self, end=None) -> Timeline:
        events = sorted(self.events, key=lambda e: e.t)
        t_end = ns(end) if end is not None else (events[-1].t if events else T0)
        header = {"kind": "header", "format": FORMAT, "version": VERSION, "t0": T0,
                  "clock": "CLOCK_MONOTONIC", "unit": "ns", "sources": dict(self.sources)}
        return Timeline(header, events, {"kind": "footer", "t": t_end}, path="<synthetic>")
