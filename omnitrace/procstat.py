"""The one /proc/<pid>/stat parser, cheap enough for the 200 Hz and 50 Hz pollers that use it, and
the pid-namespace view of a process (NSpid, /proc/PID/ns/pid), which the recorder, the simulated
GPU and the container lookups share."""
from __future__ import annotations

import os


def read_stat(pid: int) -> tuple[int, str, int] | None:
    """(ppid, state letter, start time in clock ticks since boot), or None when pid is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: the fields start after the last ')'
    fields = data[data.rfind(b")") + 2:].split()
    return int(fields[1]), fields[0].decode(), int(fields[19])


def is_running(state: str) -> bool:
    """Zombies (Z) and dead tasks (X) have exited, whatever their pid still says."""
    return state not in ("Z", "X")


# --- the pid namespace view -----------------------------------------------------------------
def ns_pids(pid: int) -> list[int]:
    """The pid in each pid namespace it is in, host first (NSpid of /proc/PID/status); [pid] on
    a kernel without NSpid; [] when gone."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"NSpid:"):
                    return [int(n) for n in line.split()[1:]]
    except (OSError, ValueError):
        return []
    return [pid]


def ns_pid(pid: int) -> int | None:
    """Its pid in its own (innermost) pid namespace, None when gone."""
    pids = ns_pids(pid)
    return pids[-1] if pids else None


def _pid_ns_inode(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/pid").st_ino
    except OSError:
        return None


_OWN_PID_NS = _pid_ns_inode("self")


def pid_ns_view(pid: int) -> tuple[int, int] | None:
    """(pid namespace inode, its pid there) for a process in another pid namespace than the
    recorder's; None when it shares ours (or is gone). A stat first: most processes share it,
    and that is cheaper than reading status."""
    inode = _pid_ns_inode(pid)
    if inode is None or inode == _OWN_PID_NS:
        return None
    inner = ns_pid(pid)
    return None if inner is None else (inode, inner)


def own_pid_ns() -> tuple[int, int] | None:
    """(st_dev, st_ino) of this process's pid namespace (the recorder's), as bpf_get_ns_current_pid_tgid takes it."""
    try:
        st = os.stat("/proc/self/ns/pid")
    except OSError:
        return None
    return st.st_dev, st.st_ino
