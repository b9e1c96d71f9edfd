"""The correct server: no defect. A dead worker makes it unavailable for good and fails every
in-flight request at once; SIGTERM/SIGINT stop it in order (workers first, then the front, exit
0); after a SIGKILL of the front its workers see their pipe close and exit."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour())
