"""cgroup v2 groups and containers for `record --cgroup PATH` and `record --container NAME|ID`,
and the pid-namespace view of a process (its pid as the container sees it).

Self-contained on purpose: the container runtime lookups the injector uses live elsewhere; here
only what the recorder needs to find a group and read procfs.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from omnitrace.errors import OmnitraceError

MOUNTINFO = "/proc/self/mountinfo"


class CgroupError(OmnitraceError):
    """A group or container that cannot be recorded; str() names the option."""


@dataclass(frozen=True)
class Group:
    path: Path            # the directory on the cgroup2 mount
    relative: str         # as /proc/PID/cgroup's "0::" line names it: "/system.slice/x.scope"


@dataclass(frozen=True)
class Container:
    name: str
    id: str
    runtime: str
    pid: int              # its init process, on the host
    group: Group


# --- groups ---------------------------------------------------------------------------------
def cgroup2_mount(mountinfo: str = MOUNTINFO) -> Path | None:
    """Where the cgroup v2 hierarchy is mounted (/sys/fs/cgroup, or /sys/fs/cgroup/unified on a
    hybrid v1+v2 machine), None when it is not."""
    try:
        with open(mountinfo) as f:
            for line in f:
                left, _, right = line.partition(" - ")
                if right.split()[:1] == ["cgroup2"]:
                    return Path(left.split()[4])
    except OSError:
        pass
    return None


def resolve_group(spec: str, option: str = "--cgroup") -> Group:
    """A cgroup v2 directory from a path on the mount or a path as /proc/PID/cgroup names it."""
    mount = cgroup2_mount()
    if mount is None:
        raise CgroupError(f"{option} {spec}: no cgroup v2 hierarchy is mounted here "
                          f"(mount -t cgroup2 none /sys/fs/cgroup)")
    candidates = [Path(spec)] if Path(spec).is_absolute() else []
    candidates.append(mount / spec.lstrip("/"))
    for path in candidates:
        real = Path(os.path.realpath(path))
        if real.is_dir() and (real == mount or mount in real.parents):
            if not (real / "cgroup.procs").is_file():
                break
            return Group(real, "/" + str(real.relative_to(mount)).lstrip("."))
    raise CgroupError(f"{option} {spec}: not a cgroup v2 group (none under {mount})")


def member_pids(group: Group) -> list[int]:
    """The processes in the group and every group below it, now."""
    pids: list[int] = []
    for directory, _, _ in os.walk(group.path):
        try:
            with open(os.path.join(directory, "cgroup.procs")) as f:
                pids += [int(line) for line in f if line.strip()]
        except OSError:
            continue  # a subgroup removed while we walked
    return sorted(set(pids))


def cgroup_of(pid: int) -> str | None:
    """The process's cgroup v2 path ("0::" line of /proc/PID/cgroup), None when it is gone."""
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                if line.startswith("0::"):
                    return line[3:].strip()
    except OSError:
        pass
    return None


# --- containers -----------------------------------------------------------------------------
def resolve_container(ref: str) -> Container:
    """NAME or ID -> its running init and cgroup, by the first runtime that knows it (the
    runtime is asked through omnitrace.container, as injection and the runner ask it)."""
    from omnitrace import container   # a runtime lookup only when --container is given
    tried = []
    for runtime in container.RUNTIMES:
        try:
            found = container.inspect(ref, runtime)
        except container.ContainerError as exc:
            tried.append(str(exc).removeprefix(f"--container {ref}: ").removeprefix("--container: "))
            continue
        return _container_of(ref, runtime, found.init_pid, found.id, found.name)
    raise CgroupError(f"--container {ref}: no such running container ({'; '.join(tried)})")


def _container_of(ref: str, runtime: str, pid: int, cid: str, name: str) -> Container:
    if pid <= 0:
        raise CgroupError(f"--container {ref}: {runtime} says it is not running")
    relative = cgroup_of(pid)
    if relative is None:
        raise CgroupError(f"--container {ref}: its init pid {pid} is gone")
    if relative == cgroup_of(1):
        # A runtime that put it in no cgroup v2 group of its own (cgroup v1 only): a kernel
        # filter on that group would trace the whole machine.
        raise CgroupError(f"--container {ref}: it has no cgroup v2 group of its own "
                          f"(pid {pid} is in {relative}, as init is)")
    group = resolve_group(relative, option=f"--container {ref}")
    return Container(name=name, id=cid, runtime=runtime, pid=pid, group=group)
