"""Not a defect: the front blocks SIGTERM and reads it with sigwait, as an init such as catatonit
(`podman run --init`) or tini reads it with signalfd or sigwait, then shuts down as the correct
server does and exits 128+15. The kernel never delivers the signal (no handler runs), so a
verifier that asks for a handler would call a clean shutdown a failure."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(sigwait_sigterm=True))
