"""pytest plugin (entry point `pytest11`): registers the `omnitrace` marker.

The fixtures for starting a server, injecting faults and running load arrive with the matrix
runner issue; until then the marker is only registered so suites that use it collect cleanly.
"""


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "omnitrace(row): ties a test to a row of the fault-injection matrix")
