"""The rules, one module per family; RULES maps a rule id (as the matrix names it) to its Rule."""
from omnitrace.verify.rules import (abnormal_input, cleanup_order, gpu_released, graceful, inflight,
                                    oom, residue, service_unavailable, stop_accepting, target_exits,
                                    zombies)
from omnitrace.verify.rules.base import FAIL, INCONCLUSIVE, PASS, Context, Evidence, Result, Rule

RULES: dict[str, Rule] = {m.RULE.id: m.RULE for m in (
    target_exits, graceful, cleanup_order, residue, zombies, gpu_released, service_unavailable,
    inflight, stop_accepting, oom)}
RULES.update({rule.id: rule for rule in abnormal_input.RULES})   # a family of four in one module

# Recovery under a supervisor: one module of three rules (docs/verify.md)
from omnitrace.verify.rules import recovery  # noqa: E402
RULES.update({rule.id: rule for rule in recovery.RULES})



def http_rules(rule_ids) -> list[str]:
    """Those of rule_ids that rest on HTTP evidence (health probes and requests): what an observer
    that probes changes, or what a recording without probes cannot see (docs/recorder.md)."""
    http = {rule_id for rule_id, rule in RULES.items()
            if any(set(choice) & {"http", "otlp"} for choice in rule.sources)}
    return [rule_id for rule_id in dict.fromkeys(rule_ids) if rule_id in http]


# Every threshold key some rule reads: the matrix loader rejects any other.
THRESHOLD_KEYS = frozenset(k for rule in RULES.values() for k in rule.thresholds)

__all__ = ["RULES", "THRESHOLD_KEYS", "http_rules", "Rule", "Result", "Evidence", "Context", "PASS", "FAIL",
           "INCONCLUSIVE"]
