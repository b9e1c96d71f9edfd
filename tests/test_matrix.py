"""The matrix as data: the built-in rows, user overrides, and validation errors that say where."""
from __future__ import annotations

import textwrap

import pytest
from click.testing import CliRunner

from omnitrace.verify.cli import matrix
from omnitrace.verify.matrix import MatrixError, load_matrix


def write(tmp_path, text, name="mine.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_builtin_matrix_has_the_seed_rows_with_stable_ids():
    m = load_matrix(None)
    seed = m.rows[:15]   # the seed document's rows come first; rows beyond it are appended
    ids = [r.id for r in seed]
    assert len(set(ids)) == 15 and len({r.id for r in m.rows}) == len(m.rows)
    assert sum(r.load for r in seed) == 7 and sum(not r.load and r.fault != "oom" for r in seed) == 7
    row = m.row("under-load/sigterm/serve")
    assert (row.signal, row.target, row.thresholds["residue_s"], row.observe_s) == (15, "serve", 90, 100)
    assert m.row("no-load/sigint/serve").thresholds["residue_s"] == 120
    assert m.row("oom/gpu-hog").rules == ["oom-contract"]


def test_a_user_file_overrides_thresholds_and_adds_rows(tmp_path):
    path = write(tmp_path, """
        extends: vllm-omni
        thresholds: {unavailable_s: 5}
        rows:
          - id: no-load/sigkill/serve
            thresholds: {residue_s: 10}
          - id: no-load/sighup/serve
            load: false
            fault: HUP
            target: serve
            observe_s: 20
            rules: [target-exits]
            thresholds: {exit_s: 3}
        """)
    m = load_matrix(path)
    row = m.row("no-load/sigkill/serve")
    assert row.thresholds["residue_s"] == 10 and row.thresholds["exit_s"] == 30
    assert row.thresholds["unavailable_s"] == 5
    assert m.row("no-load/sighup/serve").fault == "SIGHUP"
    assert len(m.rows) == len(load_matrix(None).rows) + 1


@pytest.mark.parametrize("body, where, what", [
    ("rows:\n  - id: a\n    load: false\n    fault: SIGKIL\n    target: serve\n    observe_s: 1\n"
     "    rules: [target-exits]\n    thresholds: {exit_s: 1}\n", "rows[0].fault", "must be a signal"),
    ("extends: vllm-omni\nrows:\n  - id: no-load/sigkill/serve\n    thresholds: {exit_s: soon}\n",
     "rows[0].thresholds.exit_s", "must be a number"),
    ("extends: vllm-omni\nrows:\n  - id: x\n    load: true\n    fault: oom\n    target: gpu\n"
     "    observe_s: 5\n    rules: [no-such-rule]\n", "rows[0].rules[0]", "unknown rule"),
    ("extends: vllm-omni\nrows:\n  - id: x\n    fault: oom\n", "rows[0].load", "missing"),
    ("extends: vllm-omni\nthresholds: {exit_sec: 3}\n", "thresholds.exit_sec", "unknown key"),
    ("extends: vllm-omni\nload_settings: {max_tokens: 2.5}\n", "load_settings.max_tokens",
     "must be an integer >= 1"),
    ("extends: vllm-omni\nload_settings: {ignore_eos: yes please}\n", "load_settings.ignore_eos",
     "must be true or false"),
    ("extends: vllm-omni\nload_settings: {tokens: 3}\n", "load_settings.tokens", "unknown key"),
    # a value of the wrong shape is an error, not a traceback
    ("extends: vllm-omni\npatterns: [MyWorker]\n", "patterns", "must be a mapping"),
    ("extends: vllm-omni\nrows:\n  - id: no-load/sigkill/serve\n    thresholds: [1]\n",
     "rows[0].thresholds", "must be a mapping"),
    ("matrix: [mine]\nextends: vllm-omni\n", "matrix", "must be a string"),
])
def test_validation_errors_name_file_path_and_problem(tmp_path, body, where, what):
    path = write(tmp_path, body)
    with pytest.raises(MatrixError) as err:
        load_matrix(path)
    message = str(err.value)
    assert message.startswith(str(path) + ":") and f" {where}: " in message and what in message


def test_validation_error_carries_the_line(tmp_path):
    path = write(tmp_path, "extends: vllm-omni\nrows:\n  - id: no-load/sigkill/serve\n"
                           "    thresholds: {exit_s: -1}\n")
    with pytest.raises(MatrixError, match=r"mine.yaml:4: rows\[0\].thresholds.exit_s"):
        load_matrix(path)


def test_invalid_yaml_is_reported_with_its_line(tmp_path):
    path = write(tmp_path, "rows: [\n  - id: x\n")
    with pytest.raises(MatrixError, match="not valid YAML"):
        load_matrix(path)


def test_matrix_show_prints_every_row():
    result = CliRunner().invoke(matrix, ["show"])
    assert result.exit_code == 0
    assert result.output.count("\nno-load/") == 7 and "oom/gpu-hog" in result.output
    assert "residue_s=30" in result.output


def test_the_vllm_matrix_shapes_load_and_names_the_real_trees_roles():
    """examples/vllm-cpu/matrix.yaml: every seed row, 400 tokens past EOS, VLLM::Worker as worker."""
    from pathlib import Path
    m = load_matrix(Path(__file__).parent.parent / "examples" / "vllm-cpu" / "matrix.yaml")
    assert m.name == "vllm-cpu" and len(m.rows) == len(load_matrix(None).rows)
    assert m.load_settings == {"max_tokens": 1800, "ignore_eos": True}
    assert m.patterns.worker == ["VLLM::Worker"] and "VLLM::EngineCore" in m.patterns.engine


def test_scenarios_takes_several_globs_separated_by_commas():
    from omnitrace.inject.runner import select_rows
    rows = select_rows(load_matrix(None), "no-load/sigkill/*, oom/*")
    assert [r.id for r in rows] == ["no-load/sigkill/worker", "no-load/sigkill/serve",
                                    "no-load/sigkill/all", "oom/gpu-hog"]
