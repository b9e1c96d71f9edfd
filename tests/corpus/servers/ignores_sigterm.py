"""Defect: ignores SIGTERM. The front and its workers set SIGTERM to SIG_IGN: a SIGTERM changes
nothing, the server stays up and healthy (SIGINT and SIGKILL still work as in the correct
server)."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(ignore_sigterm=True))
