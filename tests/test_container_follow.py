"""How a container a daemon starts is recorded: `matrix run` asks the recorder to follow docker's
containers (dockerd starts them, not the driver), and the driver says whether the recording
follows a container that does not descend from it. The kernel side, with a real runtime and a
stand-in daemon, is in tests/test_containers.py."""
from __future__ import annotations

import pytest

from omnitrace.container import FOLLOWS_CONTAINERS_ENV, Container
from omnitrace.inject.container_serve import ContainerServe
from omnitrace.inject.runner import container_record_args


def test_only_a_docker_serve_makes_the_recorder_follow_containers():
    assert container_record_args("docker") == ["--follow-containers"]
    assert container_record_args("podman") == []   # its containers descend from the driver
    assert container_record_args(None) == []


def _outside(runtime: str) -> ContainerServe:
    serve = ContainerServe(runtime, [runtime, "run", "img"], "/tmp/none.cid", True, "--serve")
    # pid 1 is never below this process: as a container dockerd started
    serve.container = Container(runtime, "a" * 64, "tb", 1, True)
    return serve


@pytest.mark.parametrize("followed, said", [
    (None, "the recording does not follow its processes (record --follow-containers would)"),
    ("1", "the recorder follows it (--follow-containers)")])
def test_the_driver_says_whether_a_daemon_s_container_is_recorded(capsys, monkeypatch, followed,
                                                                  said):
    if followed:
        monkeypatch.setenv(FOLLOWS_CONTAINERS_ENV, followed)
    else:
        monkeypatch.delenv(FOLLOWS_CONTAINERS_ENV, raising=False)
    _outside("docker")._say_if_outside()
    err = capsys.readouterr().err
    assert err.startswith("omnitrace: docker container tb (aaaaaaaaaaaa, init host pid 1) does "
                          "not descend from this command"), err
    assert said in err and err.count("\n") == 1


def test_record_tells_its_command_that_it_follows_containers(tmp_path):
    import subprocess
    import sys
    from tests.recording import OMNITRACE, QUIET_SOURCES, REPO
    said = {}
    show_env = f"import os; print(os.environ.get('{FOLLOWS_CONTAINERS_ENV}'))"
    for flags in ((), ("--follow-containers",)):
        done = subprocess.run(OMNITRACE + ["record", "-o", str(tmp_path / "r.jsonl"),
                                           *QUIET_SOURCES, *flags, "--", sys.executable, "-c",
                                           show_env],
                              cwd=REPO, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        said[flags] = done.stdout.strip()
    assert said == {(): "None", ("--follow-containers",): "1"}
