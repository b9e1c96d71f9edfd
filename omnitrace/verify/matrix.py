"""The fault-injection matrix as data: load, merge and validate the YAML (docs/verify.md).

    matrix = load_matrix(None)            # the built-in vllm-omni matrix
    matrix = load_matrix("mine.yaml")     # a file; `extends: vllm-omni` starts from the built-in
    matrix, origin = matrix_for(timeline.header, None, path)   # what a recording was made with

Errors name the file, the path in the document (and its line) and what is wrong.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from omnitrace.errors import OmnitraceError
from omnitrace.events import signal_name, signal_number
from omnitrace.model.roles import RolePatterns
from omnitrace.verify.rules import RULES, THRESHOLD_KEYS

BUILTIN = "vllm-omni"
TARGETS = ("worker", "serve", "all", "pattern", "gpu")
ROW_KEYS = {"id", "load", "fault", "target", "pattern", "observe_s", "behaviour", "issues",
            "thresholds", "rules", "input", "recovery_keyword", "source", "supervise"}
# `fault: input` rows send one abnormal request (`input:` names it) instead of a signal
INPUT_FAULT = "input"
# `supervise:` (a row's server runs under supervisord, docs/matrix-run.md): true, or these
# settings of supervisord's program section -> (type, minimum)
SUPERVISE_KEYS = {"startsecs": (float, 0), "startretries": (int, 0)}
TOP_KEYS = {"matrix", "description", "extends", "patterns", "thresholds", "load_settings", "rows"}
# How the runner's load and probes shape their requests (docs/matrix-run.md): key -> (type, minimum)
LOAD_SETTINGS = {"max_tokens": (int, 1), "min_tokens": (int, 0), "ignore_eos": (bool, None),
                 "rate": (float, 0.01), "requests": (int, 1), "concurrency": (int, 1)}


class MatrixError(OmnitraceError):
    def __init__(self, source: str, path: str, message: str, line: int | None = None):
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {path}: {message}" if path else f"{where}: {message}")


@dataclass
class Row:
    id: str
    load: bool
    fault: str                 # a signal name ("SIGKILL") or "oom"
    target: str                # worker | serve | all | pattern | gpu
    rules: list[str]
    thresholds: dict[str, float]
    observe_s: float
    behaviour: str = ""
    issues: list[str] = field(default_factory=list)
    pattern: str | None = None
    input: str | None = None             # fault: input rows: the variant sent
    recovery_keyword: str | None = None  # fault: input rows: the recovery answer must contain it
    source: str | None = None            # where a row beyond the seed document comes from
    supervise: dict | None = None   # None: not supervised; else SUPERVISE_KEYS settings it sets

    @property
    def signal(self) -> int | None:
        return None if self.fault in ("oom", INPUT_FAULT) else signal_number(self.fault)


@dataclass
class Matrix:
    name: str
    description: str
    rows: list[Row]
    patterns: RolePatterns
    sources: list[str]
    load_settings: dict = field(default_factory=dict)   # LOAD_SETTINGS keys the files set

    def row(self, row_id: str) -> Row | None:
        return next((r for r in self.rows if r.id == row_id), None)

    def observe_s(self, row_id: str) -> float | None:
        row = self.row(row_id)
        return row.observe_s if row else None


def load_matrix(path: str | Path | None = None) -> Matrix:
    """The built-in matrix (path None or "vllm-omni") or a user's file, validated."""
    doc, source, lines = _read(path)
    docs = [(doc, source, lines)]
    seen = {source}
    while docs[0][0].get("extends"):
        parent = docs[0][0]["extends"]
        if not isinstance(parent, str):
            raise MatrixError(docs[0][1], "extends", "must be a matrix name or a file path",
                              _line(docs[0][2], ["extends"]))
        if parent != BUILTIN and not Path(parent).is_absolute() and docs[0][1] != BUILTIN:
            parent = str(Path(docs[0][1]).parent / parent)
        if parent in seen:
            raise MatrixError(docs[0][1], "extends", f"{parent} extends itself in a cycle")
        seen.add(parent)
        docs.insert(0, _read(parent))
    return _merged(docs)


def _merged(docs: list[tuple[dict, str, Any]]) -> Matrix:
    """Each (document, its source, its YAML node or None) merged onto the ones before it."""
    merged: dict[str, Any] = {"patterns": {}, "thresholds": {}, "rows": []}
    for doc, source, lines in docs:
        _merge(merged, doc, source, lines)
    return merged["_matrix"]


# -- the matrix a recording was made with (its header's `matrix`, docs/timeline-format.md) ----

def header_entry(matrix: Matrix) -> dict[str, Any]:
    """What `omnitrace record --matrix` writes into the header: the matrix resolved into one
    document (no `extends`: the files it came from may not exist where the recording is
    verified), its sources for people, and a digest that tells an edited copy."""
    document = to_document(matrix)
    return {"name": matrix.name, "sources": list(matrix.sources),
            "sha256": document_digest(document), "document": document}


def to_document(matrix: Matrix) -> dict[str, Any]:
    """The matrix as one stand-alone document that load_matrix's rules accept."""
    rows = []
    for row in matrix.rows:
        raw = row_entry(row)
        if row.pattern is not None:
            raw["pattern"] = row.pattern
        rows.append(raw)
    return {"matrix": matrix.name, "description": matrix.description,
            "patterns": dataclasses.asdict(matrix.patterns),
            "load_settings": dict(matrix.load_settings), "rows": rows}


def row_entry(row: Row) -> dict[str, Any]:
    """A row's fields as a document holds them (`matrix show --json` prints these)."""
    entry = {"id": row.id, "load": row.load, "fault": row.fault, "target": row.target,
             "observe_s": row.observe_s, "rules": list(row.rules),
             "thresholds": dict(row.thresholds), "behaviour": row.behaviour,
             "issues": list(row.issues)}
    for key in ("input", "recovery_keyword", "source"):   # only rows beyond the seed carry them
        if getattr(row, key) is not None:
            entry[key] = getattr(row, key)
    if row.supervise is not None:   # only when set: the digests of unsupervised rows stay as they were
        entry["supervise"] = dict(row.supervise) or True
    return entry


def from_header(entry: Any, where: str) -> Matrix:
    """The matrix a recording's header carries, checked against its digest and validated like
    a file (errors name `where`, the recording)."""
    header = f"{where}:1"   # errors name the header's line, like the reader's
    if not isinstance(entry, dict) or not isinstance(entry.get("document"), dict):
        raise MatrixError(header, "field 'matrix.document'", "missing or not a mapping")
    document = entry["document"]
    if entry.get("sha256") != document_digest(document):
        raise MatrixError(header, "field 'matrix.sha256'", "does not match the document (the "
                          "header was edited or is corrupt); give the matrix with --matrix FILE")
    if "extends" in document:
        raise MatrixError(header, "field 'matrix.document.extends'", "a recorded matrix is "
                          "resolved: it extends nothing")
    return _merged([(document, f"{header}: header matrix", None)])


def document_digest(document: dict[str, Any]) -> str:
    """The header's `sha256`: of the document as canonical JSON (keys sorted, no spaces)."""
    canonical = json.dumps(document, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def matrix_for(header: dict[str, Any], matrix_file: str | None, where: str) -> tuple[Matrix, str]:
    """The matrix to verify a recording against, and where it came from (for the report): the
    one given (--matrix), else the one its header carries, else the built-in one."""
    if matrix_file:
        return load_matrix(matrix_file), f"--matrix {matrix_file}"
    if "matrix" in header:
        return from_header(header["matrix"], where), "the recording's header"
    return load_matrix(None), BUILTIN_FALLBACK


BUILTIN_FALLBACK = f"the built-in {BUILTIN} matrix (the recording names none)"


# libyaml's loader where PyYAML was built with it: the pure-Python one took 0.5 s per verify
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _read(path) -> tuple[dict, str, Any]:
    if path is None or str(path) == BUILTIN:
        text = resources.files("omnitrace.data").joinpath(f"{BUILTIN}.yaml").read_text("utf-8")
        source = BUILTIN
    else:
        source = str(path)
        try:
            text = Path(path).read_text(encoding="utf-8")
        except OSError as exc:
            raise MatrixError(source, "", f"cannot read: {exc.strerror}") from None
    try:
        node = yaml.compose(text, Loader=_LOADER)   # for the lines in error messages
        doc = yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise MatrixError(source, "", f"not valid YAML: {getattr(exc, 'problem', exc)}",
                          mark.line + 1 if mark else None) from None
    if not isinstance(doc, dict):
        raise MatrixError(source, "", "must be a mapping with `rows:` (see docs/verify.md)")
    return doc, source, node


def _line(node, path: list) -> int | None:
    """The line of the YAML node at path (keys and list indexes), for error messages."""
    for step in path:
        if isinstance(node, yaml.MappingNode):
            node = next((v for k, v in node.value if k.value == step), None)
        elif isinstance(node, yaml.SequenceNode) and isinstance(step, int) and step < len(node.value):
            node = node.value[step]
        else:
            return None
        if node is None:
            return None
    return node.start_mark.line + 1 if node is not None else None


class _Checker:
    def __init__(self, source: str, node):
        self.source, self.node = source, node

    def fail(self, path: list, message: str):
        text = "".join(f"[{p}]" if isinstance(p, int) else (f".{p}" if i else p)
                       for i, p in enumerate(path))
        raise MatrixError(self.source, text, message, _line(self.node, path))

    def keys(self, path, value, allowed):
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping, got {type(value).__name__}")
        for key in value:
            if key not in allowed:
                self.fail(path + [key], f"unknown key; expected one of {', '.join(sorted(allowed))}")

    def thresholds(self, path, value) -> dict[str, float]:
        self.keys(path, value, THRESHOLD_KEYS)
        for key, number in value.items():
            if isinstance(number, bool) or not isinstance(number, (int, float)) or number < 0:
                self.fail(path + [key], f"must be a number >= 0, got {number!r}")
        return {k: float(v) for k, v in value.items()}

    def load_settings(self, path, value) -> dict:
        self.keys(path, value, LOAD_SETTINGS)
        for key, setting in value.items():
            kind, minimum = LOAD_SETTINGS[key]
            if kind is bool:
                if not isinstance(setting, bool):
                    self.fail(path + [key], f"must be true or false, got {setting!r}")
            elif isinstance(setting, bool) or not isinstance(setting, (int, float)) or (
                    kind is int and not isinstance(setting, int)) or setting < minimum:
                self.fail(path + [key], f"must be {'an integer' if kind is int else 'a number'} "
                          f">= {minimum}, got {setting!r}")
        return dict(value)

    def strings(self, path, value) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.fail(path, "must be a list of strings")
        return list(value)


def _merge(merged: dict, doc: dict, source: str, node) -> None:
    check = _Checker(source, node)
    check.keys([], doc, TOP_KEYS)
    for key in ("matrix", "description"):
        if key in doc and not isinstance(doc[key], str):
            check.fail([key], f"must be a string, got {doc[key]!r}")
    if not isinstance(doc.get("patterns") or {}, dict):
        check.fail(["patterns"], "must be a mapping of role: [patterns]")
    for role, value in (doc.get("patterns") or {}).items():
        if role not in RolePatterns.__dataclass_fields__:
            check.fail(["patterns", role], "unknown role; expected serve, worker, engine or helper")
        merged["patterns"][role] = check.strings(["patterns", role], value)
    merged["thresholds"].update(check.thresholds(["thresholds"], doc.get("thresholds") or {}))
    merged.setdefault("load_settings", {}).update(
        check.load_settings(["load_settings"], doc.get("load_settings") or {}))
    rows = doc.get("rows") or []
    if not isinstance(rows, list):
        check.fail(["rows"], "must be a list of rows")
    by_id = {r["id"]: r for r in merged["rows"]}
    in_this_file: set[str] = set()
    for n, raw in enumerate(rows):
        path = ["rows", n]
        check.keys(path, raw, ROW_KEYS)
        if not isinstance(raw.get("id"), str) or not raw["id"]:
            check.fail(path + ["id"], "every row needs an id (e.g. under-load/sigterm/serve)")
        if raw["id"] in in_this_file:
            check.fail(path + ["id"], f"row {raw['id']!r} appears twice in this file")
        in_this_file.add(raw["id"])
        check.thresholds(path + ["thresholds"], raw.get("thresholds") or {})  # before merging
        if raw["id"] in by_id:       # an override: merge into the row it names
            row = by_id[raw["id"]]
            thresholds = {**row.get("thresholds", {}), **(raw.get("thresholds") or {})}
            row.update(copy.deepcopy(raw))
            row["thresholds"] = thresholds
        else:
            row = copy.deepcopy(raw)
            merged["rows"].append(row)
            by_id[row["id"]] = row
        row["_path"], row["_check"] = path, check
    merged["name"] = doc.get("matrix") or merged.get("name") or Path(source).stem
    merged["description"] = doc.get("description") or merged.get("description", "")
    merged.setdefault("sources", []).append(source)
    merged["_matrix"] = Matrix(merged["name"], merged["description"],
                               [_row(r, merged["thresholds"]) for r in merged["rows"]],
                               RolePatterns(**merged["patterns"]), list(merged["sources"]),
                               dict(merged["load_settings"]))


def _row(raw: dict, defaults: dict[str, float]) -> Row:
    check, path = raw["_check"], raw["_path"]
    for key in ("load", "fault", "target", "rules", "observe_s"):
        if key not in raw:
            check.fail(path + [key], "missing (a new row needs id, load, fault, target, rules, "
                       "observe_s)")
    if not isinstance(raw["load"], bool):
        check.fail(path + ["load"], f"must be true or false, got {raw['load']!r}")
    fault = raw["fault"]
    if str(fault).lower() in ("oom", INPUT_FAULT):
        fault = str(fault).lower()
    else:
        try:
            fault = signal_name(signal_number(fault))
        except (ValueError, AttributeError):
            check.fail(path + ["fault"], f"must be a signal (SIGKILL, TERM, 9), oom or input, "
                       f"got {fault!r}")
    _input_keys(check, path, raw, fault)
    if raw["target"] not in TARGETS:
        check.fail(path + ["target"], f"must be one of {', '.join(TARGETS)}, got {raw['target']!r}")
    if raw["target"] == "pattern" and not isinstance(raw.get("pattern"), str):
        check.fail(path + ["pattern"], "target: pattern needs `pattern:` (a name substring)")
    rules = check.strings(path + ["rules"], raw["rules"])
    for i, rule in enumerate(rules):
        if rule not in RULES:
            check.fail(path + ["rules", i], f"unknown rule {rule!r}; known: {', '.join(RULES)}")
    observe = raw["observe_s"]
    if isinstance(observe, bool) or not isinstance(observe, (int, float)) or observe <= 0:
        check.fail(path + ["observe_s"], f"must be a number of seconds > 0, got {observe!r}")
    thresholds = {**defaults, **check.thresholds(path + ["thresholds"], raw.get("thresholds") or {})}
    for i, rule in enumerate(rules):
        missing = [k for k in RULES[rule].thresholds if k not in thresholds]
        if missing:
            check.fail(path + ["rules", i], f"rule {rule} needs threshold(s) {', '.join(missing)}")
    return Row(id=raw["id"], load=raw["load"], fault=fault, target=raw["target"], rules=rules,
               thresholds=thresholds, observe_s=float(observe), behaviour=str(raw.get("behaviour", "")),
               issues=check.strings(path + ["issues"], raw.get("issues") or []),
               pattern=raw.get("pattern"), input=raw.get("input"),
               recovery_keyword=raw.get("recovery_keyword"), source=_source(check, path, raw),
               supervise=_supervise(check, path, raw.get("supervise")))


def _source(check: _Checker, path: list, raw: dict) -> str | None:
    if "source" in raw and not isinstance(raw["source"], str):
        check.fail(path + ["source"], f"must be a string, got {raw['source']!r}")
    return raw.get("source")


def _input_keys(check: _Checker, path: list, raw: dict, fault: str) -> None:
    """`input:` names a known variant on `fault: input` rows and only there;
    `recovery_keyword:` is a non-empty string."""
    from omnitrace.inject.input_variants import VARIANTS   # plain data, no heavy imports
    if fault != INPUT_FAULT:
        for key in ("input", "recovery_keyword"):
            if key in raw:
                check.fail(path + [key], "only a `fault: input` row takes this key")
        return
    if raw.get("input") not in VARIANTS:
        check.fail(path + ["input"], f"fault: input needs `input:` one of {', '.join(VARIANTS)}, "
                   f"got {raw.get('input')!r}")
    keyword = raw.get("recovery_keyword")
    if keyword is not None and (not isinstance(keyword, str) or not keyword):
        check.fail(path + ["recovery_keyword"], f"must be a non-empty string, got {keyword!r}")


def _supervise(check: _Checker, path: list, value) -> dict | None:
    """`supervise: true | false | {startsecs: S, startretries: N}` -> None or its settings."""
    if value is None or value is False:
        return None
    if value is True:
        return {}
    check.keys(path + ["supervise"], value, SUPERVISE_KEYS)
    for key, setting in value.items():
        kind, minimum = SUPERVISE_KEYS[key]
        if isinstance(setting, bool) or not isinstance(setting, (int, float)) or (
                kind is int and not isinstance(setting, int)) or setting < minimum:
            check.fail(path + ["supervise", key], f"must be {'an integer' if kind is int else 'a number'}"
                       f" >= {minimum}, got {setting!r}")
    return dict(value)
