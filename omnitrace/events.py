"""The event vocabulary of a timeline: one type per kind, and its JSON form.

Every event carries `t`, CLOCK_MONOTONIC nanoseconds (the kernel's `bpf_ktime_get_ns` and Python's
`time.monotonic_ns` read the same clock). On disk an event is one JSON object per line whose `kind`
names the type below; field names are the dataclass field names. docs/timeline-format.md is the
reference for users.

Process ids follow the kernel's split: `pid` is always a process id (a tgid); `tid` a thread id.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from itertools import chain
from operator import attrgetter, methodcaller
from typing import Any, ClassVar, Iterable

SIGNAL_NAMES = {
    1: "SIGHUP", 2: "SIGINT", 3: "SIGQUIT", 4: "SIGILL", 5: "SIGTRAP", 6: "SIGABRT", 7: "SIGBUS",
    8: "SIGFPE", 9: "SIGKILL", 10: "SIGUSR1", 11: "SIGSEGV", 12: "SIGUSR2", 13: "SIGPIPE",
    14: "SIGALRM", 15: "SIGTERM", 16: "SIGSTKFLT", 17: "SIGCHLD", 18: "SIGCONT", 19: "SIGSTOP",
    20: "SIGTSTP", 21: "SIGTTIN", 22: "SIGTTOU", 23: "SIGURG", 24: "SIGXCPU", 25: "SIGXFSZ",
    26: "SIGVTALRM", 27: "SIGPROF", 28: "SIGWINCH", 29: "SIGIO", 30: "SIGPWR", 31: "SIGSYS",
}


def signal_name(sig: int) -> str:
    if sig in SIGNAL_NAMES:
        return SIGNAL_NAMES[sig]
    if 34 <= sig <= 64:
        return f"SIGRTMIN+{sig - 34}"
    return f"SIG{sig}"


def signal_number(name: str | int) -> int:
    """'KILL', 'SIGKILL', '9' or 9 -> 9; ValueError for anything else."""
    if isinstance(name, int):
        return name
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    if not text.startswith("SIG"):
        text = "SIG" + text
    for number, known in SIGNAL_NAMES.items():
        if known == text:
            return number
    raise ValueError(f"unknown signal {name!r}")


# Signals whose default action ends the process (the rest are ignored, stop or continue it).
FATAL_BY_DEFAULT = frozenset({1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 24, 25, 26, 27,
                              29, 30, 31})

# signal_generate's `result` field (kernel: enum trace_signal_result)
SIGNAL_RESULTS = {0: "delivered", 1: "ignored", 2: "already_pending", 3: "overflow_fail",
                  4: "lose_info"}
# signal_deliver's sa_handler: 0 SIG_DFL, 1 SIG_IGN, anything else is a user handler
DISPOSITIONS = {0: "default", 1: "ignored"}


def disposition_name(sa_handler: int) -> str:
    return DISPOSITIONS.get(sa_handler, "handler")


def decode_wait_status(status: int) -> tuple[int | None, int | None, bool]:
    """A raw wait(2) status -> (exit_code, signal, core_dumped); one of the first two is None."""
    termsig = status & 0x7F
    if termsig == 0:
        return (status >> 8) & 0xFF, None, False
    if termsig == 0x7F:  # stopped, not terminated: callers filter these out
        return None, None, False
    return None, termsig, bool(status & 0x80)


@dataclass(slots=True)
class Event:
    kind: ClassVar[str] = "event"
    t: int

    def to_dict(self) -> dict[str, Any]:
        d = {"kind": self.kind}
        for name in _FIELD_ORDER[type(self)]:
            d[name] = getattr(self, name)
        return d


@dataclass(slots=True)
class Fork(Event):
    """A new process (thread=False) or thread (thread=True). For a thread, pid is the process it
    joins; for a process, pid is the child and ppid the process that forked it."""
    kind: ClassVar[str] = "fork"
    pid: int
    tid: int
    ppid: int
    comm: str = ""
    thread: bool = False
    ns_pid: int | None = None  # its pid in its own pid namespace, when that is not the recorder's


@dataclass(slots=True)
class Exec(Event):
    kind: ClassVar[str] = "exec"
    pid: int
    filename: str = ""
    old_pid: int = 0


@dataclass(slots=True)
class Exit(Event):
    """A thread ended; group_dead marks the last thread, i.e. the process (keyed by pid) ended."""
    kind: ClassVar[str] = "exit"
    pid: int
    tid: int
    comm: str = ""
    group_dead: bool = True


@dataclass(slots=True)
class ExitGroup(Event):
    """The exit_group(2) call: the status a process asked to exit with."""
    kind: ClassVar[str] = "exit_group"
    pid: int
    tid: int
    code: int = 0


# A reap with no wait call: the kernel freed the process (a pid namespace's teardown reaps the
# namespace's processes itself; a parent that ignores SIGCHLD has its children released at exit).
KERNEL_REAP = "kernel"
KERNEL_REAPER = 0


@dataclass(slots=True)
class Reap(Event):
    """`reaper` collected the exit status of `pid` with wait4/waitid; or, with syscall
    KERNEL_REAP, the kernel freed `pid` with no wait call seen (reaper KERNEL_REAPER, no status,
    `t` when it was freed: at most an RCU grace period after the reap itself)."""
    kind: ClassVar[str] = "reap"
    reaper: int
    pid: int
    status: int | None = None
    exit_code: int | None = None
    signal: int | None = None
    core_dumped: bool = False
    syscall: str = "wait4"


@dataclass(slots=True)
class SignalGenerate(Event):
    """A signal was sent: by sender_pid (the current task) to target_pid/target_tid."""
    kind: ClassVar[str] = "signal_generate"
    sender_pid: int
    sender_tid: int
    sender_comm: str
    target_pid: int
    target_tid: int
    target_comm: str
    signal: int
    code: int = 0
    group: bool = False
    result: str = "delivered"


@dataclass(slots=True)
class SignalDeliver(Event):
    """A signal was taken off the queue by the receiving thread; disposition is what it did.

    A fatal signal with the default action is turned by the kernel into a group SIGKILL before
    delivery; `signal` then names the signal that was sent (what the process dies of) and
    `delivered_as` is 9."""
    kind: ClassVar[str] = "signal_deliver"
    pid: int
    tid: int
    signal: int
    code: int = 0
    disposition: str = "default"
    delivered_as: int | None = None


@dataclass(slots=True)
class Rename(Event):
    """task_rename: prctl(PR_SET_NAME) or setproctitle changed a thread's comm."""
    kind: ClassVar[str] = "rename"
    pid: int
    tid: int
    oldcomm: str
    newcomm: str


@dataclass(slots=True)
class OomKill(Event):
    """The kernel's (host memory) OOM killer chose pid."""
    kind: ClassVar[str] = "oom_kill"
    pid: int
    comm: str = ""


@dataclass(slots=True)
class Lost(Event):
    """`count` events of `source` were dropped between t and end (ring buffer full, queue full)."""
    kind: ClassVar[str] = "lost"
    source: str
    count: int
    end: int


@dataclass(slots=True)
class ProcSnapshot(Event):
    """What procfs said of a process at t. `reason`: start, new, exec, rename, periodic."""
    kind: ClassVar[str] = "proc"
    pid: int
    ppid: int
    name: str
    cmdline: list[str] = field(default_factory=list)
    state: str = ""
    create_time: int | None = None  # monotonic ns
    user: str = ""
    ports: list[int] = field(default_factory=list)
    reason: str = "periodic"
    ns_pid: int | None = None  # its pid in its own pid namespace, when that is not the recorder's
    cgroup: str = ""           # its cgroup v2 path ("0::" of /proc/PID/cgroup)


@dataclass(slots=True)
class GpuMemory(Event):
    """Device memory in use on GPU `device` changed to `used` bytes (of `total`)."""
    kind: ClassVar[str] = "gpu_memory"
    device: int
    used: int
    total: int


@dataclass(slots=True)
class GpuProcess(Event):
    """Process pid holds `used` bytes on `device` (0 = it stopped holding any)."""
    kind: ClassVar[str] = "gpu_process"
    device: int
    pid: int
    used: int


@dataclass(slots=True)
class GpuError(Event):
    kind: ClassVar[str] = "gpu_error"
    device: int
    message: str


@dataclass(slots=True)
class Span(Event):
    """An OpenTelemetry-style span from t to end: an HTTP request (health probe, load generator,
    test client) or a mark (attributes under `omnitrace.*`, see docs/marks.md)."""
    kind: ClassVar[str] = "span"
    end: int
    name: str
    attributes: dict[str, Any] = field(default_factory=dict)
    source: str = "otlp"
    trace_id: str = ""
    span_id: str = ""
    status: str = "unset"  # OTel status code: unset, ok, error
    parent_span_id: str = ""  # hex, as the client sent it: a request inside a test's span

    def is_mark(self) -> bool:
        """Scenario, fault and OOM marks carry `omnitrace.mark` (docs/marks.md); request spans
        may carry other `omnitrace.*` attributes and are not marks."""
        return "omnitrace.mark" in self.attributes


@dataclass(slots=True)
class Log(Event):
    """A line a traced process or the recorder wrote that matters for a verdict."""
    kind: ClassVar[str] = "log"
    pid: int
    stream: str
    line: str


EVENT_TYPES: dict[str, type[Event]] = {
    cls.kind: cls
    for cls in (Fork, Exec, Exit, ExitGroup, Reap, SignalGenerate, SignalDeliver, Rename, OomKill,
                Lost, ProcSnapshot, GpuMemory, GpuProcess, GpuError, Span, Log)
}


class BadEvent(ValueError):
    """A line that is not a valid event; str() says why, naming the field when one is at fault."""


class UnknownEventKind(BadEvent):
    pass


class BadField(BadEvent):
    def __init__(self, name: str, problem: str):
        self.field = name
        super().__init__(f"field {name!r}: {problem}")


# -- declared types, checked on read ---------------------------------------------------------
# A file may come from anywhere (a crashed recorder, an editor, another tool): every field is
# checked against its declared type before an event is made, so no bad value reaches the model.

INT64_MIN, UINT64_MAX = -(1 << 63), (1 << 64) - 1  # what any writer's integers fit in


@dataclass(frozen=True)
class FieldType:
    """A JSON value type as the reader accepts it. `types` are exact: true is not an integer."""
    expected: str                     # for messages: "an integer"
    types: tuple[type, ...]
    items: type | None = None         # a list's element type
    check_value: Any = None           # a further check of the whole value (attributes)

    @property
    def type_set(self) -> frozenset[type]:
        return frozenset(self.types)

    def check(self, name: str, value: Any) -> None:
        if type(value) not in self.types or not _in_range(value):
            raise BadField(name, f"expected {self.expected}, got {shown(value)}")
        if self.items is not None:
            for index, item in enumerate(value):
                if type(item) is not self.items or not _in_range(item):
                    raise BadField(name, f"expected {self.expected}, got {shown(item)} "
                                         f"at [{index}]")
        if self.check_value is not None:
            self.check_value(name, value)


def _in_range(value: Any) -> bool:
    return type(value) is not int or INT64_MIN <= value <= UINT64_MAX


def shown(value: Any) -> str:
    """A value as a message quotes it: short, JSON-like, never recursive (it may be deep)."""
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        text = value if len(value) <= 40 else value[:37] + "..."
        return '"' + text.replace('"', '\\"') + '"'
    if isinstance(value, (int, float)):
        text = repr(value)
        return text if len(text) <= 24 else f"a {len(text)}-digit number"
    return {list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


# Attributes with a meaning to omnitrace (docs/marks.md): the model reads them, so their types
# are checked like fields. Other attributes are the client's own and may hold any JSON.
ATTRIBUTE_TYPES = {
    "omnitrace.mark": "str", "omnitrace.scenario": "str", "omnitrace.server.pid": "int",
    "omnitrace.server.url": "str", "omnitrace.fault.signal": "str | int",
    "omnitrace.fault.target": "str", "omnitrace.fault.pids": "list[int]",
    "omnitrace.oom.pids": "list[int]", "omnitrace.oom.devices": "list[int]",
    "omnitrace.request.kind": "str", "omnitrace.response.openai_error": "bool",
    "http.request.method": "str", "http.response.status_code": "int", "url.full": "str",
    "url.path": "str", "error.type": "str",
}


def _check_attributes(name: str, attributes: dict[str, Any]) -> None:
    for key, value in attributes.items():
        declared = _ATTRIBUTE_CHECKS.get(key)
        if declared is not None:
            declared.check(f"{name}.{key}", value)


TYPES = {  # by annotation, as the dataclasses above spell them
    "int": FieldType("an integer", (int,)),
    "str": FieldType("a string", (str,)),
    "bool": FieldType("true or false", (bool,)),
    "int | None": FieldType("an integer or null", (int, type(None))),
    "str | int": FieldType("a string or an integer", (str, int)),
    "list[str]": FieldType("a list of strings", (list,), items=str),
    "list[int]": FieldType("a list of integers", (list,), items=int),
    "dict[str, Any]": FieldType("an object", (dict,), check_value=_check_attributes),  # attributes
}
_ATTRIBUTE_CHECKS = {key: TYPES[annotation] for key, annotation in ATTRIBUTE_TYPES.items()}


def _declared_fields(cls: type[Event]) -> tuple[tuple[str, FieldType, bool], ...]:
    """(name, type, required) of each field; a KeyError here means a field was added with a type
    the reader cannot check yet: add it to TYPES."""
    return tuple((f.name, TYPES[f.type],
                  f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
                 for f in dataclasses.fields(cls))


def declared_fields(cls: type[Event]) -> tuple[tuple[str, FieldType, bool], ...]:
    """(name, declared type, required) of each field of an event type, in order."""
    return _FIELDS[cls]


def checked_fields(cls: type[Event], values: dict[str, Any]) -> dict[str, Any]:
    """The fields of `cls` in `values`, each checked against its declared type (BadField names
    the first that is missing or wrong). Fields a newer writer added are left out."""
    known = {}
    for name, declared, required in _FIELDS[cls]:
        if name in values:
            declared.check(name, values[name])
            known[name] = values[name]
        elif required:
            raise BadField(name, f"missing (a {cls.kind} event needs "
                                 f"{', '.join(n for n, _, req in _FIELDS[cls] if req)})")
    return known


def well_typed(cls: type[Event], events: list[Event], ints_bounded: bool = True) -> bool:
    """Whether every field of these events (all of type `cls`, made without checks) has its
    declared type. Column by column, in C (map, attrgetter, set): the 1,000,000-event read
    cannot afford a Python step per field. False says only that some line is bad; the careful
    reader finds which. `ints_bounded`: the parser yields no integer beyond 64 bits (orjson);
    otherwise integer columns are range-checked too."""
    for name, declared, _ in _FIELDS[cls]:
        column = attrgetter(name)
        if not declared.type_set.issuperset(map(type, map(column, events))):
            return False
        if not ints_bounded and int in declared.types and not _ints_in_range(map(column, events)):
            return False
        if declared.items is not None:
            items = list(chain.from_iterable(map(column, events)))
            if not {declared.items}.issuperset(map(type, items)) or (
                    not ints_bounded and not _ints_in_range(items)):
                return False
        if declared.check_value is _check_attributes and not _attributes_well_typed(
                list(map(column, events)), ints_bounded):
            return False
    return True


def _ints_in_range(values: Iterable[Any]) -> bool:
    ints = list(filter(int.__instancecheck__, values))
    return not ints or (INT64_MIN <= min(ints) and max(ints) <= UINT64_MAX)


def _attributes_well_typed(attribute_sets: list[dict[str, Any]], ints_bounded: bool) -> bool:
    """One pass over every (key, type of value) pair; then the values of the few declared
    attributes that need more than their type (lists, integers from an unbounded parser)."""
    keys = chain.from_iterable(attribute_sets)
    value_types = map(type, chain.from_iterable(map(dict.values, attribute_sets)))
    found = [(key, value_type, _ATTRIBUTE_CHECKS[key]) for key, value_type
             in set(zip(keys, value_types)) if key in _ATTRIBUTE_CHECKS]
    if any(value_type not in declared.types for _, value_type, declared in found):
        return False
    for key, value_type, declared in found:   # every value has its type: lists are lists
        if declared.items is not None:
            items = list(chain.from_iterable(map(methodcaller("get", key, ()), attribute_sets)))
            if not {declared.items}.issuperset(map(type, items)) or (
                    not ints_bounded and not _ints_in_range(items)):
                return False
        elif not ints_bounded and value_type is int and not _ints_in_range(
                map(methodcaller("get", key), attribute_sets)):
            return False
    return True


def event_from_dict(d: dict[str, Any]) -> Event:
    """Build the typed event for one decoded line, every field checked (BadEvent says what is
    wrong). Fields a newer writer added are ignored."""
    kind = d.pop("kind", None)
    cls = EVENT_TYPES.get(kind) if isinstance(kind, str) else None
    if cls is None:
        raise UnknownEventKind(f"unknown event kind {shown(kind)}")
    return cls(**checked_fields(cls, d))


_FIELD_ORDER = {cls: tuple(f.name for f in dataclasses.fields(cls)) for cls in EVENT_TYPES.values()}
_FIELDS = {cls: _declared_fields(cls) for cls in EVENT_TYPES.values()}
