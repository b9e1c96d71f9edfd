"""Fuzz: mutations of real recordings through `omnitrace show` and `omnitrace verify`.

Seeds are real: tests/data/recorded-sigterm-serve.jsonl (a `matrix run --matrix
tests/data/short-windows.yaml` row on the testbed: BPF, procfs, GPU sim, health probes, load,
marks, the matrix in its header) and a recording made here with the recorder. Each case changes
one thing (a field's type, a huge integer, deep nesting, truncation, a garbage or non-UTF-8 line,
the header's matrix, reordered or duplicated lines) and runs show and verify in-process through
the CLI's entry point, then one of them, by turns, with --lenient. The contract: no traceback
ever; a bad file exits 2 with one line naming the file's line (and the field, when a field is at
fault); under --lenient the bad line is skipped with a warning naming it and a result comes out.
The mutation loop is seeded, so a failure names a case that can be replayed.
"""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from omnitrace import events as ev
from omnitrace.cli import main
from omnitrace.timeline import FOOTER_FIELDS
from omnitrace.verify.matrix import document_digest
from tests.recording import OMNITRACE, REPO, record_lifecycle_tree

RECORDED = REPO / "tests" / "data" / "recorded-sigterm-serve.jsonl"
SEED = 20261204
CASES = {"recorded": 250, "live": 100}   # x 3 runs each: ~25 s on 2 cores at load 11
ERROR_LINE = re.compile(r"^omnitrace: error: (?P<file>.+?):(?P<line>\d+): (?P<problem>.+)$")

# JSON values of every type, and the awkward ones: a type none of these fields declares is
# chosen per field below, so each mutation is wrong for the field it hits.
WRONG_VALUES = {
    "a string": '"abc"', "an integer": "7", "a float": "1.5", "a list": '[1, "x"]',
    "null": "null", "an object": '{"a": 1}', "true": "true",
    "a huge integer": str(1 << 70), "a huge negative integer": str(-(1 << 70)),
    "a 400-digit integer": "9" * 400, "a deep list": "[" * 5000 + "]" * 5000,
}
JSON_TYPE = {"a string": str, "an integer": int, "a float": float, "a list": list,
             "null": type(None), "an object": dict, "true": bool, "a huge integer": float,
             "a huge negative integer": float, "a 400-digit integer": float, "a deep list": None}


@dataclass
class Case:
    name: str
    data: bytes
    line: int | None = None       # the line the mutation made bad, when exactly one is
    field: str | None = None      # the field it made bad


def lines_of(path: Path) -> list[bytes]:
    return path.read_bytes().split(b"\n")[:-1]


def joined(lines: list[bytes]) -> bytes:
    return b"\n".join(lines) + b"\n"


def declared_type(kind: str, name: str) -> ev.FieldType | None:
    if kind == "footer":
        return FOOTER_FIELDS.get(name)
    cls = ev.EVENT_TYPES.get(kind)
    return next((t for n, t, _ in ev.declared_fields(cls) if n == name), None) if cls else None


def wrong_type(rng: random.Random, lines: list[bytes]) -> Case:
    """One field of one event line gets a value of a type its declaration does not allow."""
    number = rng.randrange(2, len(lines) + 1)      # 1-based; the footer is the last line
    obj = json.loads(lines[number - 1])
    names = [k for k in obj if k != "kind"]
    name = rng.choice(names)
    declared = declared_type(obj["kind"], name)
    allowed = declared.types if declared else (object,)
    choices = [label for label, t in JSON_TYPE.items() if t is None or t not in allowed]
    label = rng.choice(choices)
    raw = _replace_value(lines[number - 1], obj, name, WRONG_VALUES[label])
    mutated = list(lines)
    mutated[number - 1] = raw
    field = name if declared is not None else None
    return Case(f"line {number} {obj['kind']}.{name} := {label}", joined(mutated), number, field)


def _replace_value(raw: bytes, obj: dict, name: str, value: str) -> bytes:
    obj = dict(obj)
    obj[name] = "\0MARK\0"
    return json.dumps(obj).replace('"\\u0000MARK\\u0000"', value).encode()


def wrong_attribute(rng: random.Random, lines: list[bytes]) -> Case:
    """A mark's or request's attribute with a meaning to omnitrace gets a wrong type."""
    candidates = [n for n, raw in enumerate(lines[1:], start=2)
                  if b'"span"' in raw and any(k.encode() in raw for k in ev.ATTRIBUTE_TYPES)]
    number = rng.choice(candidates)
    obj = json.loads(lines[number - 1])
    key = rng.choice([k for k in obj["attributes"] if k in ev.ATTRIBUTE_TYPES])
    label = rng.choice(["an object", "a float", "a list" if "list" not in ev.ATTRIBUTE_TYPES[key]
                        else "a string", "null"])
    obj["attributes"][key] = "\0MARK\0"
    mutated = list(lines)
    mutated[number - 1] = json.dumps(obj).replace('"\\u0000MARK\\u0000"',
                                                  WRONG_VALUES[label]).encode()
    return Case(f"line {number} attributes.{key} := {label}", joined(mutated), number,
                f"attributes.{key}")


def header_field(rng: random.Random, lines: list[bytes]) -> Case:
    obj = json.loads(lines[0])
    name = rng.choice(["version", "t0", "wall_offset_ns", "command", "sources", "host", "matrix"])
    label = rng.choice(["a string" if name != "host" else "a list", "null", "a huge integer",
                        "a deep list"])
    mutated = [_replace_value(lines[0], obj, name, WRONG_VALUES[label])] + lines[1:]
    return Case(f"header {name} := {label}", joined(mutated), 1, name)


def header_matrix(rng: random.Random, lines: list[bytes]) -> Case:
    """One value inside the header's matrix document changed; its digest recomputed by turns
    (then the document itself must be validated), else left stale."""
    header = json.loads(lines[0])
    if "matrix" not in header:
        return header_field(rng, lines)
    document = header["matrix"]["document"]
    path, holder = _random_place(rng, document)
    label = rng.choice(list(WRONG_VALUES))
    holder[path[-1]] = json.loads(WRONG_VALUES[label]) if label != "a deep list" else [[[]]]
    resealed = rng.random() < 0.5
    if resealed:
        header["matrix"]["sha256"] = document_digest(document)
    mutated = [json.dumps(header).encode()] + lines[1:]
    return Case(f"header matrix {'/'.join(map(str, path))} := {label}"
                f"{' (resealed)' if resealed else ''}", joined(mutated), 1)


def _random_place(rng: random.Random, document: dict) -> tuple[list, Any]:
    """A random key path into a JSON document, and the container holding its last step."""
    path, holder = [], document
    while True:
        key = rng.choice(list(holder) if isinstance(holder, dict) else range(len(holder)))
        path.append(key)
        value = holder[key]
        if not isinstance(value, (dict, list)) or not value or rng.random() < 0.3:
            return path, holder
        holder = value


def missing_field(rng: random.Random, lines: list[bytes]) -> Case:
    number = rng.randrange(2, len(lines))
    obj = json.loads(lines[number - 1])
    required = [n for n, _, req in ev.declared_fields(ev.EVENT_TYPES[obj["kind"]]) if req]
    name = rng.choice(required)
    del obj[name]
    mutated = list(lines)
    mutated[number - 1] = json.dumps(obj).encode()
    return Case(f"line {number} {obj['kind']} without {name}", joined(mutated), number, name)


def truncated(rng: random.Random, lines: list[bytes]) -> Case:
    data = joined(lines)
    cut = rng.randrange(1, len(data))
    return Case(f"cut at byte {cut}", data[:cut])


def garbage_line(rng: random.Random, lines: list[bytes]) -> Case:
    number = rng.randrange(2, len(lines) + 1)
    garbage = rng.choice([b"not json", b"{", b"[]", b"42", b'"kind"', b"{}", b'{"kind": 7}',
                          b'{"kind": "teleport", "t": 1}', b"\x00\x01\x02",
                          bytes(rng.randrange(256) for _ in range(40)).replace(b"\n", b" ")])
    mutated = lines[:number - 1] + [garbage] + lines[number - 1:]
    return Case(f"garbage {garbage[:20]!r} as line {number}", joined(mutated), number)


def non_utf8(rng: random.Random, lines: list[bytes]) -> Case:
    number = rng.randrange(1, len(lines) + 1)
    raw = lines[number - 1]
    at = rng.randrange(len(raw))
    mutated = list(lines)
    mutated[number - 1] = raw[:at] + rng.choice([b"\xff", b"\xc3\x28", b"\xed\xa0\x80"]) + raw[at:]
    return Case(f"non-UTF-8 byte in line {number} at {at}", joined(mutated), number)


def deep_line(rng: random.Random, lines: list[bytes]) -> Case:
    number = rng.randrange(2, len(lines) + 1)
    depth = rng.choice([1100, 5000, 100_000])
    nested = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth,
                         b'{"kind":"span","t":1,"end":2,"name":"x","attributes":{"a":'
                         + b"[" * depth + b"]" * depth + b"}}"])
    mutated = lines[:number - 1] + [nested] + lines[number - 1:]
    return Case(f"{depth}-deep line {number}", joined(mutated), number)


def reordered(rng: random.Random, lines: list[bytes]) -> Case:
    a, b = sorted(rng.sample(range(len(lines)), 2))
    mutated = list(lines)
    mutated[a], mutated[b] = mutated[b], mutated[a]
    return Case(f"lines {a + 1} and {b + 1} swapped", joined(mutated))


def duplicated(rng: random.Random, lines: list[bytes]) -> Case:
    number = rng.randrange(1, len(lines) + 1)
    mutated = lines[:number] + [lines[number - 1]] + lines[number:]
    return Case(f"line {number} twice", joined(mutated))


MUTATIONS = [wrong_type, wrong_type, wrong_type, wrong_attribute, header_field, header_matrix,
             missing_field, truncated, garbage_line, non_utf8, deep_line, reordered, duplicated]


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def check_case(case: Case, path: Path, lenient_run: int) -> None:
    """show and verify (against the header's matrix), strict; then one of them (by turns:
    lenient_run) with --lenient."""
    path.write_bytes(case.data)
    commands = (["show", str(path), "--json"], ["verify", str(path)])
    for index, command in enumerate(commands):
        code, _, err = run_cli(*command)   # an exception here fails the test: a traceback
        if code == 2:
            check_error(case, err)
        else:
            assert code in (0, 1), f"{case.name}: {command[0]} exited {code}"
        if index == lenient_run % 2:
            check_lenient(case, command, code, err)


def check_lenient(case: Case, command: list[str], code: int, err: str) -> None:
    """Under --lenient a bad line is skipped, named in a warning, and a result comes out; a bad
    header is still an error."""
    lenient_code, lenient_out, lenient_err = run_cli(*command, "--lenient")
    header_bad = code == 2 and ERROR_LINE.match(err.splitlines()[-1])["line"] == "1"
    if header_bad:
        assert lenient_code == 2, f"{case.name}: {lenient_err}"
        return
    assert lenient_code in (0, 1), f"{case.name}: lenient {command[0]}: {lenient_err}"
    if case.line and code == 2:
        said = lenient_err + lenient_out   # verify lists warnings in its report
        assert f":{case.line}: skipped: " in said, f"{case.name}: {said[-500:]}"


def check_error(case: Case, err: str) -> None:
    """Exit 2: one error line naming the file's line, and the field the mutation broke."""
    last = err.strip().splitlines()[-1]
    match = ERROR_LINE.match(last)
    assert match, f"{case.name}: error names no line: {last}"
    if case.line is not None and int(match["line"]) == case.line and case.field:
        assert f"field {case.field!r}" in match["problem"] or "JSON" in match["problem"], (
            f"{case.name}: {last}")


@pytest.fixture(scope="module")
def live_recording(tmp_path_factory) -> Path:
    """A recording made here, with the recorder: BPF as root, procfs polling otherwise."""
    path = tmp_path_factory.mktemp("live") / "lifecycle.jsonl"
    record_lifecycle_tree(path, *([] if _root() else ["--no-bpf"]))
    return path


def _root() -> bool:
    import os
    return os.geteuid() == 0


@pytest.mark.parametrize("seed_file", ["recorded", "live"])
def test_mutations_never_crash_show_or_verify(seed_file, live_recording, tmp_path, capsys):
    source = RECORDED if seed_file == "recorded" else live_recording
    lines = lines_of(source)
    rng = random.Random(SEED + (seed_file == "live"))
    started = time.monotonic()
    tried: dict[str, int] = {}
    for index in range(CASES[seed_file]):
        mutate = MUTATIONS[index % len(MUTATIONS)]
        if mutate in (wrong_attribute, header_matrix) and seed_file == "live":
            mutate = wrong_type        # the live recording carries no marks, requests or matrix
        case = mutate(rng, lines)
        check_case(case, tmp_path / "case.jsonl", lenient_run=index)
        tried[mutate.__name__] = tried.get(mutate.__name__, 0) + 1
    with capsys.disabled():
        print(f"\nfuzz {seed_file}: {sum(tried.values())} cases x 3 runs in "
              f"{time.monotonic() - started:.1f} s: {tried}")


def test_every_wrong_field_type_of_a_real_line_is_named(tmp_path, capsys):
    """Every field of one line of each kind in the recording, given values of types it does not
    declare (two of the eleven kinds of value per field, in turn): exit 2 naming that line and
    that field."""
    lines = lines_of(RECORDED)
    first_of_kind: dict[str, int] = {}
    for number, raw in enumerate(lines[1:-1], start=2):
        first_of_kind.setdefault(json.loads(raw)["kind"], number)
    path = tmp_path / "case.jsonl"
    count = 0
    wrong_labels = itertools.cycle(JSON_TYPE)
    for kind, number in first_of_kind.items():
        obj = json.loads(lines[number - 1])
        for name, declared, _ in ev.declared_fields(ev.EVENT_TYPES[kind]):
            labels = [label for label in itertools.islice(wrong_labels, 2)
                      if JSON_TYPE[label] not in declared.types]
            for label in labels:
                mutated = list(lines)
                mutated[number - 1] = _replace_value(lines[number - 1], obj, name,
                                                     WRONG_VALUES[label])
                check_error(Case(f"{kind}.{name} := {label}", b"", number, name),
                            _strict_read(path, mutated))
                count += 1
    assert count > 50
    with capsys.disabled():
        print(f"\nfuzz: {count} wrong field types, one line of each of {len(first_of_kind)} kinds")


def _strict_read(path: Path, lines: list[bytes]) -> str:
    path.write_bytes(joined(lines))
    code, _, err = run_cli("show", str(path))
    assert code == 2, err
    return err


def test_the_issue_s_example_message(tmp_path):
    lines = lines_of(RECORDED)
    number = next(n for n, raw in enumerate(lines, start=1) if b'"kind":"fork"' in raw)
    obj = json.loads(lines[number - 1])
    lines[number - 1] = _replace_value(lines[number - 1], obj, "pid", '"abc"')
    path = tmp_path / "bad.jsonl"
    path.write_bytes(joined(lines))
    code, _, err = run_cli("verify", str(path))
    assert code == 2
    assert err.strip() == (f"omnitrace: error: {path}:{number}: field 'pid': expected an integer, "
                           f'got "abc"; use --lenient to skip bad lines')


def test_real_processes_print_no_traceback(tmp_path):
    """Mutations through `python -m omnitrace.cli` for real (show, then verify): exit 2, one
    line, no traceback."""
    lines = lines_of(RECORDED)
    rng = random.Random(SEED)
    cases = [wrong_type(rng, lines), deep_line(rng, lines)]
    for index, case in enumerate(cases):
        path = tmp_path / f"case{index}.jsonl"
        path.write_bytes(case.data)
        for command in (["show", str(path)], ["verify", str(path)])[index % 2:][:1]:
            done = subprocess.run(OMNITRACE + command, capture_output=True, text=True, timeout=120,
                                  cwd=REPO)
            assert "Traceback" not in done.stderr, f"{case.name}: {done.stderr}"
            assert done.returncode == 2 and ERROR_LINE.match(done.stderr.strip()), (
                f"{case.name}: {done.returncode} {done.stderr}")
