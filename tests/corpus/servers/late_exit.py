"""Defect: exits late. SIGTERM/SIGINT run a correct shutdown (stop accepting, fail in-flight
requests, stop the workers and wait for them), then the front 'flushes a cache' for 4.5 s and exits
with status 0: a graceful exit in every respect but time, after the corpus matrix's 3 s exit_s."""
from tests.corpus.engine import Behaviour, main

LATE_S = 4.5

if __name__ == "__main__":
    main(Behaviour(exit_delay_s=LATE_S))
