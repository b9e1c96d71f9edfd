"""Running the server under a real supervisor: supervisord, for the matrix's recovery rows.

A production server runs under something that restarts it after a crash (systemd `Restart=`,
supervisord, Kubernetes). The recovery rows (docs/matrix-run.md) put the server command under
supervisord (PyPI `supervisor`): it is widely used, installs with pip (no systemd in this VM or in
CI containers), and restarts a program the way systemd's `Restart=always` does. The scenario driver
starts supervisord in the foreground as its server process, so the recorder sees the whole tree:
supervisord -> each server incarnation -> what that forked.

    sup = Supervisor(["vllm", "serve", ...], SupervisorSettings(startsecs=10, startretries=2))
    server = Server(sup.command(), url)        # supervisord is what the driver starts
    sup.state()                                # from supervisord's log: pids spawned, RUNNING, FATAL

supervisord's log is read, not its RPC interface: the lines "spawned: 'server' with pid N",
"success: server entered RUNNING state" and "gave up: server entered FATAL state" are its
documented state transitions, and reading a file needs no socket, no credentials, no supervisorctl.
The rules never read this: which server pid the supervisor forked after the fault comes from the
kernel's fork records (omnitrace/verify/rules/recovery.py).
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from omnitrace.errors import OmnitraceError

PROGRAM = "server"   # the program's name in supervisord's config and log

# supervisord's own defaults are startsecs 1 and startretries 3. A start counts as a success once
# the program has stayed up `startsecs`; after that, an exit is restarted by autorestart without
# limit. Every Python server takes longer than 1 s to fail its start-up (imports alone), so with
# 1 s a server that can never start (its memory is held by an orphan) "starts" every time and is
# restarted forever. startsecs must exceed how long a failing start takes to fail: the testbed's
# failed start (a stage refused its memory) exited 1.4 s after its fork, three times, with a vLLM
# run loading both cores; 10 s leaves room for a machine several times busier. Two retries then
# end such a server as FATAL ("could not recover"): 8.3 s after the fault in that run, inside the
# testbed's 45 s recovery limit. Real vLLM starts in 104-220 s there: its
# matrix (examples/vllm-cpu/matrix.yaml) sets its own.
DEFAULT_STARTSECS = 10.0
DEFAULT_STARTRETRIES = 2
STOP_WAIT_S = 10     # supervisord's SIGTERM -> SIGKILL grace when the driver stops it at clean-up


@dataclass(frozen=True)
class SupervisorSettings:
    startsecs: float = DEFAULT_STARTSECS
    startretries: int = DEFAULT_STARTRETRIES


@dataclass
class SupervisorState:
    """What supervisord's log said so far."""
    spawned: list[int] = field(default_factory=list)   # program pids, in order
    running: int = 0                                    # "entered RUNNING state" lines
    fatal: bool = False                                 # gave up: too many failed starts

    @property
    def current(self) -> int | None:
        return self.spawned[-1] if self.spawned else None


SPAWNED = re.compile(rf"spawned: '{PROGRAM}' with pid (\d+)")
RUNNING = f"success: {PROGRAM} entered RUNNING state"
FATAL = f"gave up: {PROGRAM} entered FATAL state"


def supervisord_path() -> str:
    """supervisord beside this Python (the venv's), else on PATH; a one-line error names the fix."""
    beside = Path(sys.executable).parent / "supervisord"
    found = str(beside) if beside.exists() else shutil.which("supervisord")
    if not found:
        raise OmnitraceError("a row with `supervise: true` needs supervisord: pip install "
                             "'omnitrace[supervise]' (or 'supervisor>=4.2')")
    return found


def _quote(arg: str) -> str:
    """One argument as supervisord's `command=` reads it: shell-like words, and '%' starts its
    own %(ENV_X)s expansion, so a literal one is doubled."""
    escaped = arg.replace("%", "%%")
    if escaped and not re.search(r"[\s'\"\\]", escaped):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


class Supervisor:
    """One supervisord for one server command, with its config and log in a private directory."""

    def __init__(self, argv: list[str], settings: SupervisorSettings = SupervisorSettings()):
        self.argv, self.settings = list(argv), settings
        self.dir = Path(tempfile.mkdtemp(prefix="omnitrace-supervise-"))
        self.conf = self.dir / "supervisord.conf"
        self.log = self.dir / "supervisord.log"
        self._state = SupervisorState()
        self._read = 0
        self.conf.write_text(self.config_text())

    def config_text(self) -> str:
        argv = list(self.argv)
        # supervisord looks a bare name up on PATH and resolves nothing against a directory, so a
        # relative path (scripts/vllm-serve.sh) is made absolute here, where the user meant it.
        if os.sep in argv[0] and not os.path.isabs(argv[0]):
            argv[0] = os.path.abspath(argv[0])
        s = self.settings
        return "\n".join([
            "[supervisord]",
            "nodaemon=true",                 # the driver's child, in the recorder's tree
            f"logfile={self.log}",           # read for its state lines; also echoed to stdout
            "logfile_maxbytes=0",
            f"pidfile={self.dir / 'supervisord.pid'}",
            f"childlogdir={self.dir}",
            "loglevel=info",
            "",
            f"[program:{PROGRAM}]",
            "command=" + " ".join(_quote(a) for a in argv),
            f"directory={os.getcwd()}",
            "autostart=true",
            "autorestart=true",              # as systemd's Restart=always: any exit, any status
            f"startsecs={max(int(round(s.startsecs)), 0)}",
            f"startretries={s.startretries}",
            "stopsignal=TERM",
            f"stopwaitsecs={STOP_WAIT_S}",
            "stopasgroup=true",              # clean-up stops the incarnation's process group
            "killasgroup=true",
            "redirect_stderr=true",
            "stdout_logfile=/dev/stdout",    # the server's output goes to the row's log
            "stdout_logfile_maxbytes=0",
            "",
        ])

    def command(self) -> list[str]:
        return [supervisord_path(), "--nodaemon", "--configuration", str(self.conf)]

    def state(self) -> SupervisorState:
        """supervisord's log read up to now (incrementally)."""
        try:
            with open(self.log, "rb") as f:
                f.seek(self._read)
                chunk = f.read()
        except FileNotFoundError:
            return self._state
        complete = chunk[:chunk.rfind(b"\n") + 1]   # a line still being written waits
        self._read += len(complete)
        for line in complete.decode("utf-8", "replace").splitlines():
            self._note(line)
        return self._state

    def _note(self, line: str) -> None:
        spawned = SPAWNED.search(line)
        if spawned:
            self._state.spawned.append(int(spawned.group(1)))
        elif RUNNING in line:
            self._state.running += 1
        elif FATAL in line:
            self._state.fatal = True

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
