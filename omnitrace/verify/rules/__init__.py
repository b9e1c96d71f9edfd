"""The rules, one module per family; RULES maps a rule id (as the matrix names it) to its Rule."""
from omnitrace.verify.rules import (cleanup_order, gpu_released, graceful, inflight, oom, residue,
                                    service_unavailable, stop_accepting, target_exits, zombies)
from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, Context, Evidence, Result, Rule

RULES: dict[str, Rule] = {m.RULE.id: m.RULE for m in (
    target_exits, graceful, cleanup_order, residue, zombies, gpu_released, service_unavailable,
    inflight, stop_accepting, oom)}

# Every threshold key some rule reads: the matrix loader rejects any other.
THRESHOLD_KEYS = frozenset(k for rule in RULES.values() for k in rule.thresholds)

__all__ = ["RULES", "THRESHOLD_KEYS", "Rule", "Result", "Evidence", "Context", "PASS", "FAIL",
           "INCONCLUSIVE"]
