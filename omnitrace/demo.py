"""`make demo`: the whole built-in matrix against the built-in testbed, verdict table at the end.

Equivalent to `omnitrace matrix run`; extra arguments are passed on (e.g. `--out demo-run`).
"""
import sys

from omnitrace.cli import main

if __name__ == "__main__":
    sys.exit(main(["matrix", "run", *sys.argv[1:]]))
