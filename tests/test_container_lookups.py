"""What omnitrace reads from a container command and a runtime's answer, without a runtime
(tests/test_containers.py runs the real one)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from omnitrace.container import _parse, is_namespace_init, runtime_of, with_cidfile
from omnitrace.inject.signals import kernel_ignores
from tests.harness import wait_for


@pytest.mark.parametrize("argv, runtime", [
    (["podman", "run", "--rm", "img"], "podman"),
    (["/usr/bin/podman", "--runtime", "runc", "run", "img"], "podman"),
    (["docker", "container", "run", "img"], "docker"),
    (["podman", "ps"], None),
    (["podman", "--log-level", "debug", "ps", "run"], None),
    (["scripts/wrap.sh", "podman", "run", "img"], None),
    (["python", "-m", "omnitrace.cli", "testbed", "serve"], None),
])
def test_a_container_command_is_the_runtime_with_a_run_subcommand(argv, runtime):
    assert runtime_of(argv) == runtime


def test_the_cidfile_goes_after_run_unless_the_command_has_one():
    argv = ["podman", "--runtime", "runc", "run", "--rm", "img", "serve"]
    assert with_cidfile(argv, "/d/row.cid") == (
        ["podman", "--runtime", "runc", "run", "--cidfile", "/d/row.cid", "--rm", "img", "serve"],
        "/d/row.cid")
    assert with_cidfile(["podman", "run", "--cidfile", "/mine", "img"], "/d/row.cid")[1] == "/mine"
    assert with_cidfile(["podman", "run", "--cidfile=/mine", "img"], "/d/row.cid")[1] == "/mine"
    assert with_cidfile(["podman", "run", "img"], "/d/row.cid") == (
        ["podman", "run", "--cidfile", "/d/row.cid", "img"], "/d/row.cid")


def test_inspect_output_gives_init_pid_and_published_tcp_ports():
    data = {"Id": "abc123" * 8, "Name": "/tb", "State": {"Pid": 4321, "Running": True},
            "NetworkSettings": {"Ports": {"8000/tcp": [{"HostIp": "", "HostPort": "12345"}],
                                          "53/udp": [{"HostPort": "5353"}], "9000/tcp": None}}}
    container = _parse("docker", data)
    assert (container.name, container.init_pid, container.running) == ("tb", 4321, True)
    assert container.ports == {8000: 12345}


def test_kernel_ignores_names_a_signal_set_to_sig_ign_and_nothing_else():
    child = subprocess.Popen([sys.executable, "-c", "import signal, sys, time; "
                              "signal.signal(signal.SIGUSR1, signal.SIG_IGN); "
                              "print('ready', flush=True); time.sleep(60)"],
                             stdout=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: child.stdout.readline().strip() == "ready", timeout=30, what="child")
        assert "SIG_IGN" in kernel_ignores(child.pid, signal.SIGUSR1)
        assert kernel_ignores(child.pid, signal.SIGTERM) is None   # default action: it dies
        assert kernel_ignores(child.pid, signal.SIGKILL) is None
        assert not is_namespace_init(child.pid) and not is_namespace_init(os.getpid())
    finally:
        child.kill()
        child.wait()
