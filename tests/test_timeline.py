"""The timeline file: writer flush contract, crash-truncated files, corrupt lines."""
from __future__ import annotations

import json
import time

import pytest

from omnitrace import events as ev
from tests.harness import wait_for
from omnitrace.timeline import (FORMAT, TimelineError, TimelineWriter, make_header, read_timeline,
                                write_timeline)


def sample_events():
    return [ev.Fork(t=10, pid=2, tid=2, ppid=1, comm="a"),
            ev.SignalGenerate(t=20, sender_pid=1, sender_tid=1, sender_comm="x", target_pid=2,
                              target_tid=2, target_comm="a", signal=9),
            ev.Exit(t=30, pid=2, tid=2, comm="a"),
            ev.Reap(t=40, reaper=1, pid=2, status=9, signal=9)]


def test_round_trip_keeps_every_field(tmp_path):
    path = tmp_path / "t.jsonl"
    events = sample_events() + [ev.Span(t=50, end=60, name="GET /health",
                                        attributes={"http.response.status_code": 503})]
    write_timeline(path, make_header(["cmd"], {"kernel": {}}), events, {"t": 70, "exit_status": 0})
    timeline = read_timeline(path)
    assert timeline.events == events
    assert timeline.footer["exit_status"] == 0 and not timeline.truncated and not timeline.warnings


def test_header_says_what_clock_and_host(tmp_path):
    header = make_header(["sleep", "1"], {"kernel": {"precision_ns": 1}})
    assert header["format"] == FORMAT and header["clock"] == "CLOCK_MONOTONIC"
    assert header["boot_id"] and header["kernel"] and header["command"] == ["sleep", "1"]
    assert abs(header["wall_offset_ns"] + time.monotonic_ns() - time.time_ns()) < 1e9


def test_writer_flushes_within_200_ms_without_close(tmp_path):
    path = tmp_path / "live.jsonl"
    writer = TimelineWriter(path, make_header([], {}))
    writer.append(ev.Exit(t=1, pid=5, tid=5))
    # On disk without close() or another append: the writer's own flush did it (every 100 ms;
    # waited for up to 2 s so a busy machine does not fail it, the period is in the code).
    wait_for(lambda: '"exit"' in path.read_text(), 2, "the writer's own flush")
    lines = path.read_text().splitlines()
    assert json.loads(lines[-1])["kind"] == "exit"
    writer.close({"t": 2})


def test_file_without_footer_reads_as_truncated(tmp_path):
    path = tmp_path / "cut.jsonl"
    write_timeline(path, make_header([], {}), sample_events(), footer=None)
    with open(path, "a") as f:
        f.write('{"kind":"exit","t":99,"pi')  # a crash in the middle of a line
    timeline = read_timeline(path)
    assert timeline.truncated and len(timeline.events) == 4
    assert any("truncated: no footer" in w for w in timeline.warnings)
    assert any("partial last line" in w for w in timeline.warnings)


def test_corrupt_line_in_the_middle_names_its_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    write_timeline(path, make_header([], {}), sample_events(), {"t": 70})
    lines = path.read_text().splitlines()
    lines[2] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(TimelineError) as err:
        read_timeline(path)
    assert str(err.value).startswith(f"{path}:3: ") and "--lenient" in str(err.value)
    timeline = read_timeline(path, lenient=True)
    assert len(timeline.events) == 3 and any(":3: skipped" in w for w in timeline.warnings)


def test_unknown_event_kind_is_an_error_naming_the_kind(tmp_path):
    path = tmp_path / "kind.jsonl"
    write_timeline(path, make_header([], {}), sample_events(), {"t": 70})
    with open(path, "a") as f:
        f.write('{"kind":"teleport","t":80}\n')
    with pytest.raises(TimelineError, match=r':7: unknown event kind "teleport"'):
        read_timeline(path)


def test_not_a_timeline(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text('{"hello": 1}\n')
    with pytest.raises(TimelineError, match=r"other.jsonl:1: first line is not an omnitrace-timeline header"):
        read_timeline(path)
    with pytest.raises(TimelineError, match="cannot open"):
        read_timeline(tmp_path / "missing.jsonl")


def test_events_out_of_order_across_sources_are_sorted(tmp_path):
    path = tmp_path / "order.jsonl"
    events = sample_events()
    write_timeline(path, make_header([], {}), [events[2], events[0], events[3], events[1]], {"t": 70})
    assert [e.t for e in read_timeline(path).events] == [10, 20, 30, 40]


def test_wait_status_decoding():
    assert ev.decode_wait_status(3 << 8) == (3, None, False)
    assert ev.decode_wait_status(9) == (None, 9, False)
    assert ev.decode_wait_status(11 | 0x80) == (None, 11, True)
    assert ev.signal_number("KILL") == ev.signal_number("SIGKILL") == ev.signal_number("9") == 9
    with pytest.raises(ValueError):
        ev.signal_number("SIGNOPE")


def test_without_orjson_huge_integers_and_deep_nesting_are_bad_lines(tmp_path, monkeypatch):
    """The stdlib fallback is as strict as orjson: no 400-digit integer reaches the model, and a
    deep line is bad JSON instead of a RecursionError."""
    import omnitrace.timeline as timeline
    monkeypatch.setattr(timeline, "_loads", timeline._stdlib_loads)
    path = tmp_path / "t.jsonl"
    huge = "9" * 400
    for bad, problem in (('{"kind":"exit","t":5,"pid":' + huge + ',"tid":2}',
                          "field 'pid': expected an integer, got a 400-digit number"),
                         ('{"kind":"span","t":5,"end":6,"name":"x","attributes":'
                          '{"omnitrace.fault.pids":[' + huge + ']}}',
                          "field 'attributes.omnitrace.fault.pids': expected a list of integers"),
                         ("[" * 100_000 + "]" * 100_000, "not valid JSON .*nested too deeply")):
        write_timeline(path, make_header([], {}), sample_events(), {"t": 70})
        lines = path.read_text().splitlines()
        path.write_text("\n".join(lines[:2] + [bad] + lines[2:]) + "\n")
        with pytest.raises(TimelineError, match=f":3: {problem}"):
            read_timeline(path)
        assert len(read_timeline(path, lenient=True).events) == len(sample_events())


def test_a_null_list_attribute_beside_a_good_one_is_a_bad_line(tmp_path):
    """The column check looks into list attributes only after every value is known to be a
    list: a null fault.pids beside a real one is a bad line, not a TypeError."""
    path = tmp_path / "t.jsonl"
    marks = [ev.Span(t=50 + n, end=60, name="fault", attributes={"omnitrace.mark": "fault",
                                                                  "omnitrace.fault.pids": pids})
             for n, pids in enumerate(([2], None))]
    write_timeline(path, make_header([], {}), sample_events() + marks, {"t": 70})
    with pytest.raises(TimelineError, match=r":7: field 'attributes.omnitrace.fault.pids': "
                                            r"expected a list of integers, got null"):
        read_timeline(path)
