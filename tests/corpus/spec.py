"""The corpus matrix read directly from its YAML (and the built-in file it extends), so that the
ground truth depends on no omnitrace code: a row's fault, target, window, rules and thresholds."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

BUILT_IN = Path(__file__).resolve().parents[2] / "omnitrace" / "data" / "vllm-omni.yaml"
MATRIX = Path(__file__).resolve().parent / "matrix.yaml"


@dataclass(frozen=True)
class Row:
    id: str
    load: bool
    fault: str
    target: str
    observe_s: float
    rules: tuple[str, ...]
    thresholds: dict


@dataclass(frozen=True)
class Patterns:
    worker: tuple[str, ...]
    engine: tuple[str, ...]
    helper: tuple[str, ...]

    def is_worker(self, text: str) -> bool:
        if any(p in text for p in self.helper):
            return False
        return any(p in text for p in self.worker + self.engine)


def _document(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    if doc.get("extends") == "vllm-omni":
        base = _document(BUILT_IN)
        rows = {r["id"]: r for r in base["rows"]}
        for r in doc.get("rows", []):
            rows[r["id"]] = {**rows.get(r["id"], {}), **r,
                             "thresholds": {**rows.get(r["id"], {}).get("thresholds", {}),
                                            **r.get("thresholds", {})}}
        doc = {"thresholds": {**base["thresholds"], **doc.get("thresholds", {})},
               "patterns": {**base["patterns"], **doc.get("patterns", {})},
               "rows": list(rows.values())}
    return doc


def load(path: Path = MATRIX) -> tuple[dict[str, Row], Patterns]:
    doc = _document(Path(path))
    rows = {r["id"]: Row(r["id"], bool(r["load"]), str(r["fault"]), r["target"],
                         float(r["observe_s"]), tuple(r["rules"]),
                         {**doc["thresholds"], **r.get("thresholds", {})})
            for r in doc["rows"]}
    p = doc["patterns"]
    return rows, Patterns(tuple(p.get("worker", ())), tuple(p.get("engine", ())),
                          tuple(p.get("helper", ())))
