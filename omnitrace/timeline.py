"""The timeline file: a JSON Lines header, events, and a footer; its writer and its tolerant reader.

Crash safety comes from the shape, not from fsync: each line is written whole, the buffer is
flushed at least every FLUSH_INTERVAL_S, and the reader treats a missing footer (or a half-written
last line) as a truncated recording whose complete events are still good.
"""
from __future__ import annotations

import gc
import json
import os
import platform
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any, Iterable, Iterator

try:  # orjson parses and writes lines 3-5x faster; the stdlib serves where it is missing
    import orjson
except ImportError:
    orjson = None

from omnitrace.errors import OmnitraceError
from omnitrace.events import (EVENT_TYPES, TYPES, BadEvent, Event, FieldType, event_from_dict,
                              shown, well_typed)

FORMAT = "omnitrace-timeline"
VERSION = 1
FLUSH_INTERVAL_S = 0.1  # the contract is "at least every 200 ms"; half that leaves headroom


class TimelineError(OmnitraceError):
    """Bad input in a timeline file; str() is the one-line message for users."""

    def __init__(self, path: str | os.PathLike, line: int | None, message: str):
        self.path, self.line, self.message = str(path), line, message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def wall_offset_ns() -> int:
    """wall-clock ns minus monotonic ns: add it to a timeline time to get Unix time."""
    return time.time_ns() - time.monotonic_ns()


def make_header(command: list[str], sources: dict[str, dict[str, Any]], **extra: Any) -> dict[str, Any]:
    header = {
        "kind": "header",
        "format": FORMAT,
        "version": VERSION,
        "host": socket.gethostname(),
        "kernel": platform.release(),
        "boot_id": boot_id(),
        "clock": "CLOCK_MONOTONIC",
        "unit": "ns",
        "t0": time.monotonic_ns(),
        "wall_offset_ns": wall_offset_ns(),
        "command": list(command),
        "sources": sources,
    }
    header.update(extra)
    return header


class TimelineWriter:
    """Appends events from any thread; a background flusher bounds what a crash can lose."""

    def __init__(self, path: str | os.PathLike, header: dict[str, Any]):
        self.path = Path(path)
        self._file = open(self.path, "w", encoding="utf-8")
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._closed = False
        self.events_written = 0
        self._write_line(header)
        self._file.flush()
        self._stop = threading.Event()
        self._flusher = threading.Thread(target=self._flush_loop, name="timeline-flush", daemon=True)
        self._flusher.start()

    def _write_line(self, obj: dict[str, Any]) -> None:
        self._file.write(_dumps(obj) + "\n")

    def append(self, event: Event) -> None:
        line = _dumps(event.to_dict()) + "\n"
        with self._lock:
            if self._closed:
                return
            self._pending.append(line)
            self.events_written += 1

    @property
    def closed(self) -> bool:
        return self._closed

    def extend(self, events: Iterable[Event]) -> None:
        for event in events:
            self.append(event)

    def flush(self) -> None:
        with self._lock:
            if self._pending and not self._closed:
                # One write per batch of whole lines: a crash leaves at most one partial line.
                self._file.write("".join(self._pending))
                self._pending.clear()
            if not self._closed:
                self._file.flush()

    def _flush_loop(self) -> None:
        while not self._stop.wait(FLUSH_INTERVAL_S):
            self.flush()

    def close(self, footer: dict[str, Any]) -> None:
        self._stop.set()
        self._flusher.join()
        self.flush()
        with self._lock:
            footer = {"kind": "footer", "events": self.events_written, **footer}
            self._write_line(footer)
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._closed = True


def _dumps(obj: dict[str, Any]) -> str:
    if orjson is not None:
        return orjson.dumps(obj, default=_json_default).decode()
    return json.dumps(obj, separators=(",", ":"), default=_json_default)


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (set, frozenset, tuple)):
        return list(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to a timeline")


@dataclass
class Timeline:
    """A recording in memory: what verify, show and the exporters take (never a path)."""
    header: dict[str, Any]
    events: list[Event]
    footer: dict[str, Any] | None = None
    path: str = ""
    warnings: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return self.footer is None

    @property
    def t0(self) -> int:
        return int(self.header.get("t0") or (self.events[0].t if self.events else 0))

    @property
    def t_end(self) -> int:
        if self.footer and self.footer.get("t"):
            return int(self.footer["t"])
        return self.events[-1].t if self.events else self.t0

    def seconds(self, t: int) -> float:
        """Timeline ns -> seconds since the recording started."""
        return (t - self.t0) / 1e9

    def of_kind(self, *kinds: str) -> Iterator[Event]:
        return (e for e in self.events if e.kind in kinds)

    def source_ran(self, name: str) -> bool:
        return name in (self.header.get("sources") or {})


def read_timeline(path: str | os.PathLike, lenient: bool = False) -> Timeline:
    """Read a timeline file, every field checked against its declared type. A bad line (not JSON,
    an unknown kind, a field missing or of the wrong type, a footer that is not last) raises
    TimelineError naming its line and field; with lenient=True it is skipped and a warning kept.
    A bad header is never skipped. A missing footer is not an error."""
    path = Path(path)
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise TimelineError(path, None, f"cannot open: {exc.strerror}") from None
    with handle:
        data = handle.read()
    lines = data.split(b"\n")
    # A file that does not end in a newline was cut mid-line by a crash: its last piece is partial.
    partial_tail = lines.pop() if lines else b""
    warnings: list[str] = []
    if partial_tail.strip():
        warnings.append(f"{path}:{len(lines) + 1}: ignored a partial last line (recording cut off)")
    if not lines or not lines[0].strip():
        raise TimelineError(path, 1, "empty file: not an omnitrace timeline")
    header = _parse_header(path, lines[0])
    with _bulk_allocation():
        events, footer = _BodyReader(path, lenient, warnings).read(lines)
    if footer is None:
        warnings.append(f"{path}: truncated: no footer (the recorder did not finish the file)")
    # Sources write from separate threads, so the file is only roughly in time order.
    events.sort(key=_EVENT_TIME)
    return Timeline(header=header, events=events, footer=footer, path=str(path), warnings=warnings)


@contextmanager
def _bulk_allocation():
    """Pause the cyclic garbage collector while a million event objects are made: they hold no
    cycles, and its passes over the growing heap would double the read time."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def settle_for_analysis() -> None:
    """For a one-shot command that has read a large timeline and will now analyse it: move
    everything alive into the collector's permanent generation, so the model's allocations do
    not make each collection re-walk a million events (they hold no cycles). Not for
    long-running processes: cycles frozen with them would never be collected."""
    gc.freeze()


class _BodyReader:
    """The event lines and the footer. The clean case is one tight loop that makes events
    unchecked, then checks their fields column by column (events.well_typed); a line the loop
    cannot take (the footer, an unknown kind or field, not JSON) is decoded carefully on the
    spot. Only when a column holds a bad value is the body read again line by line, to name it."""

    def __init__(self, path: Path, lenient: bool, warnings: list[str]):
        self.path, self.lenient, self.warnings = path, lenient, warnings
        self.footer: dict[str, Any] | None = None
        self.footer_line = 0

    def read(self, lines: list[bytes]) -> tuple[list[Event], dict[str, Any] | None]:
        warned = len(self.warnings)
        events, unchecked = self._read_fast(lines)
        bounded = orjson is not None and _loads is orjson.loads   # no integer beyond 64 bits
        if not all(well_typed(EVENT_TYPES[kind], group, ints_bounded=bounded)
                   for kind, group in unchecked.items()):
            del self.warnings[warned:]      # the careful pass reports every bad line itself
            self.footer, self.footer_line = None, 0
            events = self._read_carefully(lines)
        if self.footer is not None and self.footer_line != _last_nonblank(lines):
            self._bad(self.footer_line, "the footer is not the last line (lines follow it)")
            self.footer = None
        return events, self.footer

    def _read_fast(self, lines: list[bytes]) -> tuple[list[Event], dict[str, list[Event]]]:
        loads, types = _loads, EVENT_TYPES
        events: list[Event] = []
        append = events.append
        unchecked: dict[str, list[Event]] = {kind: [] for kind in types}
        keep_unchecked = {kind: group.append for kind, group in unchecked.items()}
        for number, raw in enumerate(lines[1:], start=2):
            try:
                obj = loads(raw)
                kind = obj.pop("kind")
                event = types[kind](**obj)
            except (ValueError, TypeError, AttributeError, KeyError):
                event = self._careful(number, raw)
                if event is not None:
                    append(event)
                continue
            append(event)
            keep_unchecked[kind](event)
        return events, unchecked

    def _read_carefully(self, lines: list[bytes]) -> list[Event]:
        events = []
        for number, raw in enumerate(lines[1:], start=2):
            event = self._careful(number, raw)
            if event is not None:
                events.append(event)
        return events

    def _careful(self, number: int, raw: bytes) -> Event | None:
        """The event on this line, every field checked; None for a blank line, the footer, or
        (lenient) a bad line."""
        try:
            return self._decode(number, raw)
        except BadEvent as exc:
            self._bad(number, str(exc))
            return None

    def _decode(self, number: int, raw: bytes) -> Event | None:
        if not raw.strip():
            return None
        try:
            obj = _loads(raw)
        except ValueError as exc:
            raise BadEvent(f"not valid JSON ({exc})") from None
        if not isinstance(obj, dict):
            raise BadEvent(f"not a JSON object but {shown(obj)}")
        if obj.get("kind") != "footer":
            return event_from_dict(obj)
        if self.footer is not None:
            self._bad(self.footer_line, f"a second footer follows at line {number}")
        self.footer, self.footer_line = _checked(FOOTER_FIELDS, obj), number
        return None

    def _bad(self, number: int, problem: str) -> None:
        if not self.lenient:
            raise TimelineError(self.path, number, problem + "; use --lenient to skip bad lines")
        self.warnings.append(f"{self.path}:{number}: skipped: {problem}")


def _last_nonblank(lines: list[bytes]) -> int:
    """The 1-based number of the last line with content."""
    number = len(lines)
    while number > 1 and not lines[number - 1].strip():
        number -= 1
    return number


def _checked(declared: dict[str, FieldType], obj: dict[str, Any]) -> dict[str, Any]:
    """A header or footer whose known fields have their declared types (absent ones are fine:
    hand-made and older files lack some)."""
    for name, field_type in declared.items():
        if name in obj:
            field_type.check(name, obj[name])
    return obj


def _object_of_objects(name: str, value: dict[str, Any]) -> None:
    for key, item in value.items():
        _OBJECT.check(f"{name}.{key}", item)


_OBJECT = FieldType("an object", (dict,))
_SECTIONS = FieldType("an object of objects", (dict,), check_value=_object_of_objects)
HEADER_FIELDS = {
    "format": TYPES["str"], "version": TYPES["int"], "host": TYPES["str"], "kernel": TYPES["str"],
    "boot_id": TYPES["str"], "clock": TYPES["str"], "unit": TYPES["str"], "t0": TYPES["int"],
    "wall_offset_ns": TYPES["int"], "command": TYPES["list[str]"], "sources": _SECTIONS,
    "recorder_pid": TYPES["int"], "attach": TYPES["list[int]"], "trace_all": TYPES["bool"],
    "matrix": _OBJECT, "cgroup": TYPES["str"], "cgroup_pids": TYPES["list[int]"],
    "container": _OBJECT,
}
FOOTER_FIELDS = {
    "t": TYPES["int"], "events": TYPES["int"], "exit_status": TYPES["int | None"],
    "ended_by": TYPES["str"], "counters": _SECTIONS,
}


def _stdlib_loads(raw: bytes) -> Any:
    """json.loads where orjson is missing: nesting too deep for Python's stack is bad JSON, not
    a RecursionError. Its integers are unbounded: the field checks test their range
    (well_typed's ints_bounded=False; FieldType.check always)."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


_loads = orjson.loads if orjson is not None else _stdlib_loads
_EVENT_TIME = attrgetter("t")


def _parse_header(path: Path, raw: bytes) -> dict[str, Any]:
    try:
        header = _loads(raw)
    except ValueError:
        raise TimelineError(path, 1, "first line is not JSON: not an omnitrace timeline") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise TimelineError(path, 1, f"first line is not an {FORMAT} header")
    try:
        _checked(HEADER_FIELDS, header)
    except BadEvent as exc:
        raise TimelineError(path, 1, f"header: {exc}") from None
    if header.get("version", 0) > VERSION:
        raise TimelineError(path, 1, f"format version {header['version']} is newer than this "
                                     f"omnitrace reads ({VERSION}); upgrade omnitrace")
    return header


def write_timeline(path: str | os.PathLike, header: dict[str, Any], events: Iterable[Event],
                   footer: dict[str, Any] | None) -> None:
    """Write a whole timeline at once (tests, generators, converters)."""
    with open(path, "w", encoding="utf-8") as out:
        out.write(json.dumps(header, separators=(",", ":")) + "\n")
        count = 0
        for event in events:
            out.write(_dumps(event.to_dict()) + "\n")
            count += 1
        if footer is not None:
            out.write(json.dumps({"kind": "footer", "events": count, **footer}, separators=(",", ":")) + "\n")
