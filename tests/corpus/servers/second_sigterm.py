"""Defect: needs a second SIGTERM. The first SIGTERM/SIGINT stops accepting and fails in-flight
requests, then the front 'drains' until another signal comes (as servers that wait for open
connections do: "press Ctrl+C again to force"); only then does it stop its workers and exit 0.
In the row's window it never exits. The matrix runner's clean-up SIGTERM, after the window, makes
it exit cleanly at once: an exit that is not the fault's outcome (issue 12, class 1)."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(drain_until_second_signal=True))
