"""`omnitrace matrix run`: every selected matrix row in its own recording, then one verify.

Per row: `omnitrace record -o DIR/<row>.jsonl --health-url URL/health -- python -m
omnitrace.inject.scenario ROW ...` (the scenario driver does the row; the recorder sees it all),
then verify reads the timeline. The runner itself only schedules, shows progress, and makes sure
nothing outlives a row: it remembers every descendant of the recording and kills what is left.
"""
from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

import psutil

from omnitrace.container import read_cidfile, remove, runtime_of
from omnitrace.errors import OmnitraceError
from omnitrace.inject.server import become_subreaper, expand, free_port
from omnitrace.inject.supervise import DEFAULT_STARTSECS, supervisord_path
from omnitrace.timeline import TimelineError, read_timeline
from omnitrace.verify.engine import verify_timeline
from omnitrace.verify.matrix import BUILTIN, Matrix, Row
from omnitrace.verify.report import Report
from omnitrace.verify.rules import INCONCLUSIVE, PASS, Evidence

PHASE_LINE = re.compile(r"^omnitrace-phase: (\S+)")
STARTUP_TIMEOUT_S = 120.0
ROW_SLACK_S = 60.0    # beyond startup + window: recorder start and finish, clean-up


def testbed_command() -> str:
    """The built-in system under test: the testbed, run by this same Python."""
    return f"{sys.executable} -m omnitrace.cli testbed serve --port {{port}}"


@dataclass
class RowRun:
    row: Row
    timeline: Path
    outcome: dict = field(default_factory=dict)
    returncode: int | None = None
    elapsed_s: float = 0.0
    problem: str | None = None          # why the row did not run to the end
    swept: list[str] = field(default_factory=list)  # processes the runner had to kill


class Progress:
    """One live line on a terminal; one line per phase change elsewhere (CI logs)."""

    def __init__(self, total: int, stream=sys.stderr):
        self.total, self.stream = total, stream
        self.tty = stream.isatty()
        self.last: tuple[int, str] | None = None

    def show(self, index: int, row: str, phase: str, elapsed: float, final: bool = False) -> None:
        text = f"[{index}/{self.total}] {row:<28} {phase:<10} {elapsed:6.1f} s"
        if self.tty:
            self.stream.write("\r\033[K" + text + ("\n" if final else ""))
        elif (index, phase) != self.last:
            self.stream.write(text + "\n")
        self.last = (index, phase)
        self.stream.flush()


def select_rows(matrix: Matrix, glob: str | None) -> list[Row]:
    """Rows whose id matches the glob, or any of several comma-separated globs."""
    globs = [g.strip() for g in glob.split(",") if g.strip()] if glob else []
    rows = [r for r in matrix.rows if not globs or any(fnmatchcase(r.id, g) for g in globs)]
    if not rows:
        raise OmnitraceError(f"--scenarios {glob!r} matches no row of matrix {matrix.name}; "
                             f"`omnitrace matrix show` lists them")
    return rows


LOAD_FLAGS = {"max_tokens": "--max-tokens", "min_tokens": "--min-tokens", "rate": "--load-rate",
              "requests": "--load-requests", "concurrency": "--load-concurrency"}


def load_args(settings: dict) -> list[str]:
    """The driver's flags for the matrix's load_settings (CLI overrides merged in already)."""
    args = []
    for key, value in settings.items():
        if key == "ignore_eos":
            args += ["--ignore-eos"] if value else []
        elif value is not None:
            args += [LOAD_FLAGS[key], str(value)]
    return args


def scenario_command(row: Row, serve: str, port: int, url: str, outcome: Path,
                     record_args: list[str], timeline: Path,
                     load_settings: dict | None = None, matrix_file: str | None = None,
                     startup_timeout_s: float = STARTUP_TIMEOUT_S,
                     cidfile: Path | None = None) -> list[str]:
    target = row.pattern if row.target == "pattern" and row.pattern else row.target
    driver = [sys.executable, "-m", "omnitrace.inject.scenario", row.id, "--fault", row.fault,
              "--target", target, "--observe", str(row.observe_s), "--serve", serve,
              "--port", str(port), "--url", url, "--report", str(outcome),
              "--startup-timeout", str(startup_timeout_s)]
    if row.load:
        driver.append("--load")
    driver += load_args(load_settings or {})
    if cidfile is not None:  # a container serve: its id lands where the runner can find it
        driver += ["--cidfile", str(cidfile)]
    if matrix_file:  # the driver picks "worker" by the same matrix's patterns as verify
        driver += ["--matrix", matrix_file]
    if "stop-accepting" in row.rules:  # that rule needs a request after its grace period
        driver += ["--probe-after", str(row.thresholds["stop_accepting_s"] + 0.5)]
    if "service-unavailable" in row.rules:  # "stays unavailable" must be watched, not assumed
        driver += ["--unavailable-hold", str(row.thresholds["unavailable_hold_s"])]
    driver += input_args(row)
    driver += supervise_args(row)
    recorded_matrix = ["--matrix", matrix_file] if matrix_file else []  # into the header
    return [sys.executable, "-m", "omnitrace.cli", "record", "-o", str(timeline),
            "--health-url", url + "/health", *recorded_matrix, *record_args, "--", *driver]


def container_record_args(runtime: str | None) -> list[str]:
    """What the recorder needs for a container serve: dockerd starts docker's containers, so they
    do not descend from the driver and are followed by their cgroup; podman's do descend (conmon
    is re-parented to the driver), and following every container made meanwhile on the machine
    would record strangers."""
    return ["--follow-containers"] if runtime == "docker" else []


def input_args(row: Row) -> list[str]:
    """A `fault: input` row's variant, keyword and recovery limit (the recovery's timeout)."""
    if row.fault != "input":
        return []
    args = ["--input", row.input]
    if "input_recovery_s" in row.thresholds:
        args += ["--input-recovery", str(row.thresholds["input_recovery_s"])]
    return args + (["--recovery-keyword", row.recovery_keyword] if row.recovery_keyword else [])


def supervise_args(row: Row) -> list[str]:
    """The driver's flags for a `supervise:` row: supervisord's settings, and the recovery limit
    after which a server that did not come back has settled."""
    if row.supervise is None:
        return []
    args = ["--supervise"] + [f"--{key}={value}" for key, value in row.supervise.items()]
    if "recovery_s" in row.thresholds:
        args.append(f"--recovery-limit={row.thresholds['recovery_s']}")
    return args


def row_bound_s(row: Row, startup_timeout_s: float) -> float:
    """A row's hard bound: start-up, the window, the slack; a supervised row first waits for
    supervisord to count its server started (startsecs)."""
    startsecs = 0.0 if row.supervise is None else row.supervise.get("startsecs", DEFAULT_STARTSECS)
    return startup_timeout_s + startsecs + row.observe_s + ROW_SLACK_S


def run_row(row: Row, index: int, serve: str, url_template: str, out: Path, progress: Progress,
            record_args: list[str], load_settings: dict | None = None,
            matrix_file: str | None = None, startup_timeout_s: float = STARTUP_TIMEOUT_S) -> RowRun:
    port = free_port()
    url = url_template.replace("{port}", str(port)).rstrip("/")
    slug = row.id.replace("/", "_")
    run = RowRun(row, out / f"{slug}.jsonl")
    outcome_path = out / f"{slug}.outcome.json"
    runtime = runtime_of(expand(serve, port))
    cidfile = out / f"{slug}.cid" if runtime else None
    record_args = [*record_args, *container_record_args(runtime)]
    argv = scenario_command(row, serve, port, url, outcome_path, record_args, run.timeline,
                            load_settings, matrix_file, startup_timeout_s, cidfile)
    t0 = time.monotonic()
    bound = row_bound_s(row, startup_timeout_s)
    log = open(out / f"{slug}.log", "w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.PIPE, text=True)
    phase = {"now": "recording"}
    reader = threading.Thread(target=_read_phases, args=(proc, log, phase), daemon=True)
    reader.start()
    seen: dict[int, psutil.Process] = {}
    try:
        while proc.poll() is None:
            _remember(seen)
            elapsed = time.monotonic() - t0
            progress.show(index, row.id, phase["now"], elapsed)
            if elapsed > bound:
                run.problem = f"did not finish within {bound:.0f} s; stopped"
                _stop(proc)
                break
            time.sleep(0.25)
    except KeyboardInterrupt:
        run.problem = "interrupted"
        _stop(proc)
        raise
    finally:
        proc.wait()
        reader.join(5)
        log.close()
        run.swept = _sweep(seen) + _remove_container(cidfile, runtime)
        run.elapsed_s = time.monotonic() - t0
        run.returncode = proc.returncode
        progress.show(index, row.id, "interrupted" if run.problem == "interrupted" else "done",
                      run.elapsed_s, final=True)
    if outcome_path.exists():
        run.outcome = json.loads(outcome_path.read_text())
        if run.outcome.get("error") and not run.problem:
            run.problem = run.outcome["error"]
    elif not run.problem:
        run.problem = f"the recording exited with status {proc.returncode}; see {log.name}"
    return run


def _read_phases(proc: subprocess.Popen, log, phase: dict) -> None:
    for line in proc.stderr:
        log.write(line)
        match = PHASE_LINE.match(line)
        if match:
            phase["now"] = match.group(1)


def _remember(seen: dict[int, psutil.Process]) -> None:
    """Everything below the runner: the recording, its driver and server, and (the runner being a
    subreaper) whatever they orphaned, which the kernel hands to the runner instead of pid 1."""
    try:
        for child in psutil.Process().children(recursive=True):
            seen.setdefault(child.pid, child)
    except psutil.NoSuchProcess:
        pass


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT first: the recorder finishes its file and the driver cleans up; then SIGKILL."""
    for sig, wait_s in ((signal.SIGINT, 20), (signal.SIGKILL, 5)):
        if proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue


def _sweep(seen: dict[int, psutil.Process]) -> list[str]:
    """Kill whatever the row started that is still running (is_running checks the start time,
    so a recycled pid is safe)."""
    left = []
    for proc in seen.values():
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                left.append(f"{proc.pid} {proc.name()}")
                proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(list(seen.values()), timeout=5)
    return left


def _remove_container(cidfile: Path | None, runtime: str | None) -> list[str]:
    """The row's container, if it outlived the driver's clean-up (a driver killed after Ctrl+C, a
    client SIGKILLed by the sweep before it could remove it): removed, and told as a leftover."""
    cid = read_cidfile(str(cidfile)) if cidfile else None
    if cid and remove(cid, runtime):
        return [f"container {cid[:12]}"]
    return []


def verify_runs(runs: list[RowRun], matrix: Matrix) -> Report:
    """One report over all rows: each row's timeline verified for that row's scenario."""
    report = Report(timeline=str(runs[0].timeline.parent) if runs else "", matrix=matrix.name,
                    scenarios=[], warnings=[])
    for run in runs:
        if run.problem:
            report.warnings.append(f"{run.row.id}: {run.problem}")
        fails_run = ("; the server's tree must be gone: the run exits 1"
                     if server_left_behind(run) else "")
        for line in run.outcome.get("leftovers", []) + run.swept:
            report.warnings.append(f"{run.row.id}: leftover process {line} (killed{fails_run})")
        try:
            timeline = read_timeline(run.timeline, lenient=True)
        except TimelineError as exc:
            report.warnings.append(f"{run.row.id}: no usable timeline: {exc}")
            continue
        row_report = verify_timeline(timeline, matrix, scenario_glob=run.row.id)
        if not row_report.scenarios:
            report.warnings.append(f"{run.row.id}: verify found no scenario in {run.timeline}")
        report.health_rate_hz = row_report.health_rate_hz   # one --health-rate for every row
        for scenario in row_report.scenarios:
            residue_left(run, scenario)
        report.scenarios.extend(row_report.scenarios)
    return report


def residue_left(run: RowRun, scenario) -> None:
    """What the row's clean-up had to kill is told beside no-residue, but never decides it: the
    window is the law. A leftover outlived the window, not necessarily the limit (a window cut by
    Ctrl+C, or shorter than child_follow_s), so an undecided verdict stays undecided. A pass that
    a leftover contradicts becomes inconclusive: the recorded tree missed a process of the row."""
    left = run.outcome.get("leftovers", []) + run.swept
    rule = next((r for r in scenario.rules if r.id == "no-residue"), None)
    if not server_left_behind(run) or rule is None:
        return
    rule.evidence = [Evidence(f"pid {line} still running at the end of the row (after the "
                              "window); the clean-up killed it") for line in left] + rule.evidence
    if rule.verdict == PASS:
        rule.verdict = INCONCLUSIVE
        rule.summary = (f"the window saw the tree gone, yet {len(left)} process(es) the row "
                        "started still ran at its end: the recorded tree is incomplete")
    elif rule.verdict == INCONCLUSIVE:
        rule.summary += f"; {len(left)} process(es) still ran at the row's end (after the window)"


def exit_code(report: Report, runs: list[RowRun], rows: list[Row]) -> int:
    """As verify: 1 on any failure; a row that did not run or left no scenario fails too, and so
    does a serve/all row that left a process of the server running: the window may not decide
    no-residue from it (residue_left), but a run that left a daemon behind is never green."""
    found = {s.id for s in report.scenarios}
    if any(r.problem for r in runs) or any(r.id not in found for r in rows):
        return 1
    if any(server_left_behind(r) for r in runs):
        return 1
    return report.exit_code()


def server_left_behind(run: RowRun) -> bool:
    """A serve/all row's server must be gone; on worker and OOM rows a degraded server running on
    is correct, and the clean-up stops it."""
    return (run.row.target in ("serve", "all") and run.row.fault != "input"   # input: it lives on
            and bool(run.outcome.get("leftovers", []) + run.swept))


def run_matrix(matrix: Matrix, serve: str | None, url: str | None, glob: str | None,
               out: str | None, record_args: list[str], load_overrides: dict | None = None,
               startup_timeout_s: float = STARTUP_TIMEOUT_S,
               ) -> tuple[Report, list[RowRun], int, Path | None]:
    rows = select_rows(matrix, glob)
    if any(row.supervise is not None for row in rows):
        supervisord_path()   # a missing supervisord is one line now, not a failed row later
    become_subreaper()  # what a row orphans comes to the runner, which sweeps it (_remember)
    settings = {**matrix.load_settings, **{k: v for k, v in (load_overrides or {}).items()
                                           if v is not None}}
    keep = out is not None
    directory = Path(out) if keep else Path(tempfile.mkdtemp(prefix="omnitrace-matrix-"))
    directory.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(rows))
    runs: list[RowRun] = []
    try:
        for index, row in enumerate(rows, start=1):
            runs.append(run_row(row, index, serve or testbed_command(),
                                url or "http://127.0.0.1:{port}", directory, progress, record_args,
                                settings, matrix_source(matrix), startup_timeout_s))
        report = verify_runs(runs, matrix)
        if keep:
            (directory / "report.json").write_text(json.dumps(report.to_dict(), indent=2))
        return report, runs, exit_code(report, runs, rows), directory if keep else None
    finally:
        if not keep:
            shutil.rmtree(directory, ignore_errors=True)


def matrix_source(matrix: Matrix) -> str:
    """What the driver loads to get this matrix again: the file that was given (it names what it
    extends), or the built-in matrix's name."""
    top = matrix.sources[-1]
    return top if top == BUILTIN else str(Path(top).resolve())


def runs_table(runs: list[RowRun], report: Report) -> str:
    verdicts = {s.id: s.verdict for s in report.scenarios}
    lines = [f"{'row':<28} {'verdict':<13} {'seconds':>7}  notes"]
    for run in runs:
        verdict = verdicts.get(run.row.id, "not run" if run.problem else "no scenario")
        notes = run.problem or ("settled early" if run.outcome.get("settled") else "full window")
        lines.append(f"{run.row.id:<28} {verdict:<13} {run.elapsed_s:7.1f}  {notes}")
    total = sum(r.elapsed_s for r in runs)
    lines.append(f"{len(runs)} row(s) in {total:.1f} s")
    return "\n".join(lines)
