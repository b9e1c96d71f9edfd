"""A process the cgroup tests drive line by line on stdin; it answers each command with one line
on stdout, so a test waits for what happened, never for time. Pids are as this process sees them
(inside a pid namespace: the namespace's).

  fork CODE   fork a child that exits CODE at once; reap it; answer its pid
  orphan      fork a middle process that forks a grandchild and exits; the grandchild waits on a
              pipe. Answer the grandchild's pid (as this process's namespace numbers it)
  release     let the orphan exit 5 and, when this process is the namespace's init (pid 1), reap
              it as init does; answer its pid
  exit        exit 0
"""
import os
import sys


def fork_and_reap(code: int) -> int:
    pid = os.fork()
    if pid == 0:
        os._exit(code)
    os.waitpid(pid, 0)
    return pid


def orphan() -> tuple[int, int]:
    """(grandchild pid, write end of the pipe it waits on)."""
    hold_r, hold_w = os.pipe()
    report_r, report_w = os.pipe()
    middle = os.fork()
    if middle == 0:
        grandchild = os.fork()
        if grandchild == 0:
            os.read(hold_r, 1)
            os._exit(5)
        os.write(report_w, str(grandchild).encode())
        os._exit(0)
    pid = int(os.read(report_r, 32))
    os.waitpid(middle, 0)
    return pid, hold_w


def main() -> None:
    held = None
    for line in sys.stdin:
        words = line.split()
        if words[0] == "fork":
            answer = fork_and_reap(int(words[1]))
        elif words[0] == "orphan":
            answer, hold = orphan()
            held = (answer, hold)
        elif words[0] == "release":
            pid, hold = held
            os.write(hold, b"x")
            if os.getpid() == 1:  # the orphan is ours to reap
                os.waitpid(pid, 0)
            answer = pid
        else:
            return
        print(answer, flush=True)


main()
