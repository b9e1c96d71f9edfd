"""What omnitrace needs to know about a container, asked of its runtime (podman, docker).

A container's processes are ordinary host processes in their own pid namespace: omnitrace
injects, probes and cleans up by host pid, and asks the runtime only for what the kernel does
not tell: which host pid is the container's init, the container's id and name, its published
ports, and how to remove it. docs/containers.md says what works with which runtime.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

from omnitrace.errors import OmnitraceError
from omnitrace.procstat import ns_pids

RUNTIMES = ("podman", "docker")
# Set by `record --follow-containers` for its command: a container a daemon starts is recorded.
FOLLOWS_CONTAINERS_ENV = "OMNITRACE_FOLLOWS_CONTAINERS"
INSPECT_TIMEOUT_S = 30.0   # podman takes its storage lock; on a busy machine that waited seconds
REMOVE_TIMEOUT_S = 60.0


class ContainerError(OmnitraceError):
    """The runtime could not tell or do what was asked; the message names the option."""


@dataclass
class Container:
    runtime: str
    id: str
    name: str
    init_pid: int                 # the container's init, as the host sees it (0: not running)
    running: bool
    ports: dict[int, int] = field(default_factory=dict)   # container port -> host port (tcp)
    network: str = ""             # HostConfig.NetworkMode: bridge, host, none, container:ID...

    def describe(self) -> str:
        return (f"{self.runtime} container {self.name} ({self.id[:12]}, "
                f"init host pid {self.init_pid})")


def runtime_of(argv: list[str]) -> str | None:
    """'podman' or 'docker' when argv runs a container (`podman [global options] run ...`), else
    None. A wrapper script is not recognised: the runtime must be the command itself."""
    if not argv or os.path.basename(argv[0]) not in RUNTIMES:
        return None
    return os.path.basename(argv[0]) if _run_index(argv) is not None else None


def _run_index(argv: list[str]) -> int | None:
    """Where the `run` subcommand is: the first word after the global options. Global options
    with a separate value (`--runtime runc`) are not told apart from flags, so `run` is simply
    the first word that is `run` before anything that looks like an image."""
    for index, word in enumerate(argv[1:], start=1):
        if word == "run":
            return index
        if word in ("container",):   # `podman container run`
            continue
        if not word.startswith("-") and argv[index - 1] not in _GLOBAL_WITH_VALUE:
            return None
    return None


_GLOBAL_WITH_VALUE = {"--runtime", "--root", "--runroot", "--cgroup-manager", "--log-level",
                      "--storage-driver", "--url", "--connection", "--context", "-H", "--host",
                      "--config", "--events-backend", "--network-backend", "--tmpdir"}


def with_cidfile(argv: list[str], path: str) -> tuple[list[str], str]:
    """argv that writes the container's id to a file once it is created, and that file: the
    user's own `--cidfile` when given, else `path`. The id is how clean-up finds the container
    even when the command gives it no name."""
    for index, word in enumerate(argv):
        if word == "--cidfile" and index + 1 < len(argv):
            return argv, argv[index + 1]
        if word.startswith("--cidfile="):
            return argv, word.split("=", 1)[1]
    run = _run_index(argv)
    return argv[:run + 1] + ["--cidfile", path] + argv[run + 1:], path


def read_cidfile(path: str) -> str | None:
    try:
        text = open(path).read().strip()
    except OSError:
        return None
    return text or None


def _runtime_binary(runtime: str, option: str) -> str:
    found = shutil.which(runtime)
    if not found:
        raise ContainerError(f"{option}: {runtime} is not installed here (scripts/setup.sh "
                             f"installs podman)")
    return found


def default_runtime() -> str:
    """podman when installed (daemonless: omnitrace's own tests run it), else docker."""
    return next((r for r in RUNTIMES if shutil.which(r)), "podman")


def inspect(ref: str, runtime: str | None = None, option: str = "--container") -> Container:
    """The container named or identified by `ref`; ContainerError naming `option` when the runtime
    has none such."""
    runtime = runtime or default_runtime()
    binary = _runtime_binary(runtime, option)
    try:
        done = subprocess.run([binary, "inspect", "--type", "container", ref], capture_output=True,
                              text=True, timeout=INSPECT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise ContainerError(f"{option} {ref}: {runtime} inspect did not answer within "
                             f"{INSPECT_TIMEOUT_S:.0f} s") from None
    if done.returncode != 0:
        # its own last line says which: no such container, or no daemon to ask (docker)
        why = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise ContainerError(f"{option} {ref}: `{runtime} inspect` failed: {why}")
    return _parse(runtime, json.loads(done.stdout)[0])


def _parse(runtime: str, data: dict) -> Container:
    state = data.get("State") or {}
    return Container(runtime=runtime, id=data["Id"], name=data.get("Name", "").lstrip("/"),
                     init_pid=int(state.get("Pid") or 0), running=bool(state.get("Running")),
                     ports=_ports(data),
                     network=(data.get("HostConfig") or {}).get("NetworkMode") or "")


def _ports(data: dict) -> dict[int, int]:
    """Published tcp ports: container port -> host port."""
    published = (data.get("NetworkSettings") or {}).get("Ports") or {}
    out = {}
    for spec, bindings in published.items():
        port, _, proto = spec.partition("/")
        for binding in bindings or []:
            if proto in ("", "tcp") and binding.get("HostPort"):
                out[int(port)] = int(binding["HostPort"])
    return out


def running_init(ref: str, runtime: str, option: str = "--container") -> Container:
    """The container, which must be running: injection and probes need its init."""
    container = inspect(ref, runtime, option)
    if not container.running or container.init_pid <= 0:
        raise ContainerError(f"{option} {ref}: the container is not running "
                             f"({runtime} ps -a shows its state)")
    return container


def exists(ref: str, runtime: str) -> bool:
    binary = shutil.which(runtime)
    if not binary:
        return False
    done = subprocess.run([binary, "container", "exists", ref] if runtime == "podman" else
                          [binary, "container", "inspect", ref], capture_output=True,
                          timeout=INSPECT_TIMEOUT_S)
    return done.returncode == 0


def remove(ref: str, runtime: str) -> bool:
    """`RUNTIME rm -f REF`: stops (SIGKILL) and removes the container. True when there was one to
    remove. Used by every clean-up, so a container outlives no row, whatever killed its client;
    a runtime that hangs is told on stderr, never raised: clean-up must go on."""
    try:
        if not exists(ref, runtime):
            return False
        subprocess.run([shutil.which(runtime), "rm", "-f", ref], capture_output=True,
                       timeout=REMOVE_TIMEOUT_S)
    except subprocess.TimeoutExpired as exc:
        print(f"omnitrace: warning: `{' '.join(exc.cmd)}` did not finish within "
              f"{exc.timeout:.0f} s; container {ref} may be left", file=sys.stderr, flush=True)
    return True


def is_namespace_init(host_pid: int) -> bool:
    """pid 1 of a pid namespace below the host's (a container's init)."""
    pids = ns_pids(host_pid)
    return len(pids) > 1 and pids[-1] == 1
