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
from urllib.parse import urlsplit, urlunsplit

import psutil

from omnitrace.container import (FOLLOWS_CONTAINERS_ENV, Container, ContainerError, read_cidfile,
                                 remove, running_init, runtime_of, with_cidfile)
from omnitrace.inject.server import Server


class ContainerServe:
    def __init__(self, runtime: str, argv: list[str], cidfile: str, own_cidfile: bool,
                 option: str):
        self.runtime, self.argv, self.cidfile = runtime, argv, cidfile
        self.own_cidfile = own_cidfile       # a temporary file of ours, removed at the end
        self.option = option                 # the user's option that gave the command
        self.container: Container | None = None
        self.url: str | None = None          # where the host reaches the server, once attached

    @classmethod
    def of(cls, argv: list[str], cidfile: str | None,
           option: str = "--serve") -> "ContainerServe | None":
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
        return cls(runtime, argv, path, own, option)

    def attach(self, server: Server, timeout_s: float) -> Container:
        """Wait for the container to run (its id in the cidfile, its init started); then point
        `server` at it: its URL at the host port the container publishes, its tree to include the
        init's (conmon re-parents the container away from the client). Returns the container."""
        self.container = self._wait_running(server.proc, timeout_s)
        self.url = self.host_url(server.url)
        if self.url != server.url:
            print(f"omnitrace: {self.container.describe()} publishes the server on "
                  f"{self.url}, not {server.url}: probing there", file=sys.stderr, flush=True)
        server.url = self.url
        server.adopt(self.container.init_pid)
        self._say_if_outside()
        return self.container

    def _wait_running(self, client: subprocess.Popen, timeout_s: float) -> Container:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and client.poll() is None:
            cid = read_cidfile(self.cidfile)
            if cid:
                try:
                    return running_init(cid, self.runtime, option=self.option)
                except ContainerError:
                    pass   # created, not yet started
            time.sleep(0.1)
        if client.poll() is not None:
            raise ContainerError(f"{self.option}: `{self.runtime} run` exited with status "
                                 f"{client.returncode} before its container ran (its output "
                                 "says why)")
        raise ContainerError(f"{self.option}: the {self.runtime} container did not start within "
                             f"{timeout_s:.0f} s")

    def host_url(self, url: str) -> str:
        """The URL with the host port that reaches the server. The URL's port (`{port}`) is the
        host port when the command publishes it (`-p {port}:PORT`), else the server's port in the
        container, mapped to whatever host port the runtime picked (`-p {port}`); a container
        that publishes a single port is reached there whatever the URL says (`-p 8000`, `-P`).
        Refused in one line when no published port fits: the probes would only time out."""
        parts, ports = urlsplit(url), self.container.ports
        host_ports = set(ports.values())
        if parts.port in host_ports or (not ports and self._reachable_unpublished()):
            return url
        host_port = ports.get(parts.port) or (min(host_ports) if len(host_ports) == 1 else None)
        if host_port is None:
            raise ContainerError(self._unreachable(url, parts.port))
        host = parts.netloc.rpartition(":")[0] if parts.port else parts.netloc
        return urlunsplit(parts._replace(netloc=f"{host}:{host_port}"))

    def _reachable_unpublished(self) -> bool:
        """Whether the host may reach the server with no port published: on the host's network,
        or another container's or namespace's, which omnitrace does not look into."""
        network = self.container.network
        return network == "host" or network.startswith(("container:", "ns:"))

    def _unreachable(self, url: str, port: int | None) -> str:
        ports = self.container.ports
        if not ports:
            return (f"{self.option}: the container publishes no port, so {url} cannot reach it; "
                    f"publish the server's port: -p PORT (the runtime picks the host port) or "
                    f"-p {port}:PORT")
        mapped = ", ".join(f"{h} (its {c})" for c, h in sorted(ports.items()))
        return (f"{self.option}: the container publishes host port(s) {mapped}: none is {port} "
                f"of {url} or maps its port {port}; publish the server's port with -p {port}:PORT "
                f"or -p {port}, or publish one port only")

    def _say_if_outside(self) -> None:
        """A container whose init is not below this process (a daemon started it, as docker's
        does) is recorded only when the recorder follows containers: say which, once."""
        try:
            below = {p.pid for p in psutil.Process().children(recursive=True)}
        except psutil.Error:
            below = set()
        if self.container.init_pid in below:
            return
        followed = os.environ.get(FOLLOWS_CONTAINERS_ENV) == "1"
        print(f"omnitrace: {self.container.describe()} does not descend from this command "
              "(its runtime's daemon started it): "
              + ("the recorder follows it (--follow-containers)" if followed else
                 "the recording does not follow its processes (record --follow-containers would)"),
              file=sys.stderr, flush=True)

    def details(self) -> dict:
        c = self.container
        return {} if c is None else {"runtime": c.runtime, "id": c.id, "name": c.name,
                                     "init_pid": c.init_pid, "ports": c.ports, "url": self.url}

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
