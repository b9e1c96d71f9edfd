"""Defect: health flaps back. When a worker dies the server fails in-flight requests and answers
503 (health and requests) while it 'drains', then after 3 s drops the dead worker from its pool
and answers 200 again, serving on the one worker left: not the stable 5xx the matrix asks for."""
from tests.corpus.engine import Behaviour, main

RECOVER_S = 3.0

if __name__ == "__main__":
    main(Behaviour(recover_after_s=RECOVER_S))
