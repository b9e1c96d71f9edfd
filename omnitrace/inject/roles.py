"""Which process in a server tree is a worker, for choosing signal targets.

Verify classifies processes with omnitrace.model.roles.RolePatterns; injection uses the same
patterns so that "worker" means the same process to both.
"""
from __future__ import annotations

from omnitrace.model.roles import RolePatterns

PATTERNS = RolePatterns()


def is_worker(name_and_cmdline: str) -> bool:
    if any(p in name_and_cmdline for p in PATTERNS.helper):
        return False
    return any(p in name_and_cmdline for p in PATTERNS.worker + PATTERNS.engine)
