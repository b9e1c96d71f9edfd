"""Joins a memory cgroup (v1 or v2) limited to 32 MiB, then allocates until the kernel's OOM killer
chooses it. Usage: host_oom.py CGROUP_DIR"""
import os
import sys

cgroup = sys.argv[1]
with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
    procs.write(str(os.getpid()))
hoard = []
while True:
    hoard.append(bytearray(8 << 20))
