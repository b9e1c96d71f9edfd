"""Event storms for the recorder benchmark, paced to a target rate of kernel events.

    storm.py signals RATE SECONDS   SIGUSR1 to itself (handler installed): 2 events a signal
                                    (signal_generate + signal_deliver)
    storm.py forks RATE SECONDS     fork + _exit(0) + waitpid: 5 events a child (fork, exit_group,
                                    exit, SIGCHLD generate, reap); RATE 0 = as fast as it can
    storm.py forkloop COUNT         COUNT fork/exit/wait cycles as fast as possible, then prints
                                    the wall seconds they took and the CPU seconds they used
                                    (itself and its children; BPF programs run on this CPU time)
Prints the number of operations done on stdout.
"""
import os
import resource
import signal
import sys
import time

EVENTS_PER_SIGNAL = 2
EVENTS_PER_FORK = 5


def paced(rate_ops: float, seconds: float, op) -> int:
    done = 0
    start = time.monotonic()
    end = start + seconds
    while True:
        now = time.monotonic()
        if now >= end:
            return done
        due = int((now - start) * rate_ops) if rate_ops else done + 1
        while done < due:
            op()
            done += 1
        if rate_ops:
            time.sleep(0.001)


def fork_once() -> None:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def main(argv: list[str]) -> int:
    mode = argv[1]
    if mode == "forkloop":
        count = int(argv[2])
        start, cpu0 = time.perf_counter(), _cpu_seconds()
        for _ in range(count):
            fork_once()
        print(f"{time.perf_counter() - start:.6f} {_cpu_seconds() - cpu0:.6f}")
        return 0
    rate_events, seconds = float(argv[2]), float(argv[3])
    if mode == "signals":
        signal.signal(signal.SIGUSR1, lambda *_: None)
        me = os.getpid()
        done = paced(rate_events / EVENTS_PER_SIGNAL, seconds, lambda: os.kill(me, signal.SIGUSR1))
    else:
        done = paced(rate_events / EVENTS_PER_FORK, seconds, fork_once)
    print(done)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
