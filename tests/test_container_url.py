"""Where the host reaches a containerised server: the URL's port is the host port the command
publishes, else the server's port inside, mapped to the host port the runtime picked
(container_serve.ContainerServe.host_url). No runtime needed: the container is as inspect reads
it."""
from __future__ import annotations

import pytest

from omnitrace.container import Container, ContainerError
from omnitrace.inject.container_serve import ContainerServe

URL = "http://127.0.0.1:12345"


def served(ports: dict[int, int], network: str = "bridge") -> ContainerServe:
    serve = ContainerServe("podman", ["podman", "run"], "/nonexistent.cid", True, "--serve")
    serve.container = Container("podman", "c0ffee", "tb", 4321, True, ports, network)
    return serve


@pytest.mark.parametrize("ports, url", [
    ({12345: 12345}, URL),                         # -p {port}:{port}
    ({8000: 12345}, URL),                          # -p {port}:8000
    ({12345: 40001}, "http://127.0.0.1:40001"),    # -p {port}: the runtime picked 40001
    ({8000: 40001}, "http://127.0.0.1:40001"),     # -p 8000 (or -P): the one port published
    ({12345: 40001, 9000: 40002}, "http://127.0.0.1:40001"),   # -p {port} -p 9000
])
def test_the_url_gets_the_host_port_that_reaches_the_server(ports, url):
    assert served(ports).host_url(URL) == url


def test_host_name_and_path_are_kept():
    assert served({12345: 40001}).host_url("http://localhost:12345/api") == \
        "http://localhost:40001/api"


def test_host_network_needs_no_published_port():
    assert served({}, network="host").host_url(URL) == URL


@pytest.mark.parametrize("ports, message", [
    ({}, "--serve: the container publishes no port, so http://127.0.0.1:12345 cannot reach it; "
         "publish the server's port: -p PORT (the runtime picks the host port) or -p 12345:PORT"),
    ({8000: 40001, 9000: 40002}, "--serve: the container publishes host port(s) 40001 (its 8000), "
                                 "40002 (its 9000): none is 12345 of http://127.0.0.1:12345"),
])
def test_no_port_that_fits_is_one_line_naming_the_option(ports, message):
    with pytest.raises(ContainerError) as caught:
        served(ports).host_url(URL)
    assert str(caught.value).startswith(message) and "\n" not in str(caught.value)
