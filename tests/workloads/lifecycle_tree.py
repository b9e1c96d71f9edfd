"""A parent whose children exercise every lifecycle fact the recorder must capture.

Prints one JSON object (the pids, by role) on stdout, then runs the faults and reaps. Roles:
  killed      SIGKILLed by the parent
  handler     SIGTERM handler that exits 3
  default     no handler: dies of SIGTERM
  threaded    the leader thread exits first; another thread calls exit_group(4)
  orphan      forked by `middle`, which exits at once: re-parented to this parent (a subreaper)
  renamed     setproctitle to a vLLM stage title, then exits 0
  zombie      exits at once; reaped only ZOMBIE_HOLD_S later
  outside     waits to be killed by a process outside the traced tree (the test)
"""
import ctypes
import json
import os
import signal
import sys
import threading
import time

ZOMBIE_HOLD_S = 0.6
PR_SET_CHILD_SUBREAPER = 36
SYS_EXIT = 60  # x86_64: ends the calling thread only


def child(body):
    pid = os.fork()
    if pid == 0:
        try:
            body()
        finally:
            os._exit(0)
    return pid


def sleep_forever():
    while True:
        time.sleep(60)


def with_handler(ready_fd):
    signal.signal(signal.SIGTERM, lambda *_: os._exit(3))
    os.write(ready_fd, b"ready\n")  # only now may the parent send SIGTERM
    sleep_forever()


def leader_exits_first():
    def worker():
        time.sleep(0.3)
        os._exit(4)
    threading.Thread(target=worker).start()
    ctypes.CDLL(None, use_errno=True).syscall(SYS_EXIT, 0)


def middle(report_fd):
    grandchild = os.fork()
    if grandchild == 0:
        time.sleep(0.4)
        os._exit(0)
    os.write(report_fd, f"{grandchild}\n".encode())
    os._exit(0)


def renamed():
    import setproctitle
    setproctitle.setproctitle("VLLM::StageEngineCoreProc_test_replica0_DP0")
    time.sleep(0.2)


def main():
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    pids = {}
    pids["killed"] = child(sleep_forever)
    handler_ready, handler_write = os.pipe()
    pids["handler"] = child(lambda: with_handler(handler_write))
    os.close(handler_write)
    pids["default"] = child(sleep_forever)
    pids["threaded"] = child(leader_exits_first)
    read_end, write_end = os.pipe()
    pids["middle"] = child(lambda: middle(write_end))
    os.close(write_end)
    pids["orphan"] = int(os.read(read_end, 32).decode().strip())
    pids["renamed"] = child(renamed)
    pids["zombie"] = child(lambda: None)
    pids["outside"] = child(sleep_forever)
    pids["parent"] = os.getpid()
    print(json.dumps(pids), flush=True)

    os.read(handler_ready, 16)  # the handler is installed
    time.sleep(0.3)  # the children live a moment before the faults, as the tests' lifetimes expect
    os.kill(pids["killed"], signal.SIGKILL)
    os.kill(pids["handler"], signal.SIGTERM)
    os.kill(pids["default"], signal.SIGTERM)
    for role in ("killed", "handler", "default", "threaded", "middle", "renamed", "orphan"):
        os.waitpid(pids[role], 0)  # the orphan is ours to reap: we are its subreaper
    time.sleep(ZOMBIE_HOLD_S)
    os.waitpid(pids["zombie"], 0)
    # The test kills `outside` from outside the tree once it reads our pids; wait for that.
    os.waitpid(pids["outside"], 0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
