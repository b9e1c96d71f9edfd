"""The one /proc/<pid>/stat parser: cheap enough for the 200 Hz and 50 Hz pollers that use it."""
from __future__ import annotations


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
