"""Defect: orphans its workers. The workers do not watch their parent (on a closed pipe they wait
for a front that never returns) and SIGTERM/SIGINT exit the front without stopping them: after a
SIGKILL or a SIGTERM of the front, both workers (and multiprocessing's resource tracker, whose
pipe they hold) keep running, re-parented away from the server."""
from tests.corpus.engine import Behaviour, main

if __name__ == "__main__":
    main(Behaviour(workers_follow_parent=False, stop_workers_on_term=False))
