"""A `--serve` command that runs a container (`podman run ... {port}`): what the driver adds to it.

With podman the container's processes descend from the command: podman forks conmon, which
double-forks (and so is re-parented to the driver, a subreaper), and conmon forks the OCI runtime
that starts the container's init. The recording and the driver's tree therefore hold the client,
conmon and the container's processes; the server's root, which `serve` targets and the marks
name, is the container's init by host pid, found through the runtime. Docker's containers are
started by its daemon, outside the command's tree (docs/containers.md).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from urllib.parse import urlsplit

import psutil

from omnitrace.container import (Container, ContainerError, read_cidfile, remove, running_init,
                                 runtime_of, with_cidfile)


class ContainerServe:
    def __init__(self, runtime: str, argv: list[str], cidfile: str, own_cidfile: bool):
        self.runtime, self.argv, self.cidfile = runtime, argv, cidfile
        self.own_cidfile = own_cidfile       # a temporary file of ours, removed at the end
        self.container: Container | None = None

    @classmethod
    def of(cls, argv: list[str], cidfile: str | None) -> "ContainerServe | None":
        """None unless argv runs a container. `cidfile`: where the runtime writes the id (the
        runner's DIR/<row>.cid, which it reads to remove the container whatever happens)."""
        runtime = runtime_of(argv)
        if runtime is None:
            return None
        own = cidfile is None
        path = cidfile or os.path.join(tempfile.gettempdir(), f"omnitrace-{os.getpid()}.cid")
        if os.path.exists(path):
            os.unlink(path)   # a stale file from a past run: the runtime refuses to overwrite it
        argv, path = with_cidfile(argv, path)
        return cls(runtime, argv, path, own)

    def attach(self, client: subprocess.Popen, url: str, timeout_s: float) -> Container:
        """Wait for the container to run (its id in the cidfile, its init started), then check
        that the URL's port is one it publishes."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and client.poll() is None:
            cid = read_cidfile(self.cidfile)
            if cid:
                try:
                    self.container = running_init(cid, self.runtime, option="--serve")
                    break
                except ContainerError:
                    pass   # created, not yet started
            time.sleep(0.1)
        if self.container is None and client.poll() is not None:
            raise ContainerError(f"--serve: `{self.runtime} run` exited with status "
                                 f"{client.returncode} before its container ran (its output "
                                 "is in the row's log)")
        if self.container is None:
            raise ContainerError(f"--serve: the {self.runtime} container did not start within "
                                 f"{timeout_s:.0f} s")
        self._check_port(url)
        self._say_if_outside()
        return self.container

    def _check_port(self, url: str) -> None:
        """Probes go to the host port; a container that publishes ports but not that one would
        only show as a health timeout minutes later."""
        port = urlsplit(url).port
        published = set(self.container.ports.values())
        if published and port not in published:
            raise ContainerError(f"--serve: the container publishes host port(s) "
                                 f"{', '.join(map(str, sorted(published)))}, not {port} of "
                                 f"{url}; publish it with -p {port}:PORT")

    def _say_if_outside(self) -> None:
        """A container whose init is not below this process (a daemon started it, as docker's
        does) is not in the recording: say so, once."""
        try:
            below = {p.pid for p in psutil.Process().children(recursive=True)}
        except psutil.Error:
            below = set()
        if self.container.init_pid not in below:
            print(f"omnitrace: {self.container.describe()} does not descend from this command "
                  "(its runtime's daemon started it): the recording does not follow its processes",
                  file=sys.stderr, flush=True)

    def details(self) -> dict:
        c = self.container
        return {} if c is None else {"runtime": c.runtime, "id": c.id, "name": c.name,
                                     "init_pid": c.init_pid, "ports": c.ports}

    def label(self) -> str:
        """The container's name, else its short id (created, never seen running)."""
        if self.container is not None:
            return self.container.name
        return (read_cidfile(self.cidfile) or "(not created)")[:12]

    def remove(self) -> bool:
        """Remove the container if anything of it is left (after the client was stopped)."""
        cid = read_cidfile(self.cidfile) or (self.container and self.container.id)
        removed = bool(cid) and remove(cid, self.runtime)
        if self.own_cidfile and os.path.exists(self.cidfile):
            os.unlink(self.cidfile)
        return removed
