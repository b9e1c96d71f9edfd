"""Defect: never reaps a dead child. The front notices a worker's death through its sentinel
(and turns unavailable, correctly) but never join()s it, so the dead worker stays a zombie for as
long as the front lives."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(reap_dead_workers=False))
