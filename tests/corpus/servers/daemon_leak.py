"""Defect: leaks a daemon. At start the server detaches a 'telemetry uploader' the classic way
(fork, setsid, fork; the middle process exits at once), so the daemon is re-parented away before
any fault and is in no `children(recursive=True)` of the server. Shutdown is otherwise correct;
the daemon keeps running after every fault."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(leak_daemon=True))
