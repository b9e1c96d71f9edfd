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


def worker_rank(name_and_cmdline: str, patterns: RolePatterns = PATTERNS) -> int | None:
    """0 for a worker-pattern match that is no engine, 1 for an engine, None for neither. The
    `worker` target takes the best rank: in real vLLM `VLLM::EngineCore` comes before its
    `VLLM::Worker` in the tree, and a worker row must kill the worker (an engine is the fallback
    for trees whose only worker-like process is the engine)."""
    if not is_worker(name_and_cmdline, patterns):
        return None
    engine = any(p in name_and_cmdline for p in patterns.engine)
    worker = any(p in name_and_cmdline for p in patterns.worker)
    return 0 if worker and not engine else 1


def matrix_patterns(matrix_file: str | None) -> RolePatterns:
    """The role patterns of a matrix file (or of the built-in matrix when None)."""
    from omnitrace.verify.matrix import load_matrix
    return load_matrix(matrix_file).patterns
