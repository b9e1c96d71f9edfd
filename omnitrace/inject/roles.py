"""Which process in a server tree is a worker, for choosing signal targets.

Verify classifies processes with omnitrace.model.roles.RolePatterns read from the matrix; injection
takes the same matrix's patterns (`--matrix FILE`) so that "worker" means the same process to
both. Without a matrix, the built-in matrix's patterns (RolePatterns' defaults) are used.
"""
from __future__ import annotations

from omnitrace.model.roles import RolePatterns

PATTERNS = RolePatterns()


def is_worker(name_and_cmdline: str, patterns: RolePatterns = PATTERNS) -> bool:
    if any(p in name_and_cmdline for p in patterns.helper):
        return False
    return any(p in name_and_cmdline for p in patterns.worker + patterns.engine)


def matrix_patterns(matrix_file: str | None) -> RolePatterns:
    """The role patterns of a matrix file (or of the built-in matrix when None)."""
    from omnitrace.verify.matrix import load_matrix
    return load_matrix(matrix_file).patterns
