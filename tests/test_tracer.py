"""The tracer: CWM's exact text format, round trips through the parser, determinism, caps and failures,
batches, the corpus builder and its CLI. Everything runs in the real local sandbox."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from cwm_envs.sources.programs import FAMILIES, fuzz_from_signature, fuzz_inputs, generate_program, literal_args
from cwm_envs.tracing import format as fmt
from cwm_envs.tracing.corpus import build_corpus, humaneval_inputs, iter_jobs
from cwm_envs.tracing.format import Frame, TraceFormatError
from cwm_envs.tracing.tracer import TraceJob, TraceLimits, Tracer

ROOT = Path(__file__).resolve().parent.parent
LOOP = "def f(a, b):\n    y = 1\n    for i in range(b):\n        y += a\n    return y\n"


@pytest.fixture(scope="module")
def tracer():
    with Tracer(timeout=5.0) as t:
        yield t


def test_text_matches_cwm_format_exactly(tracer):
    result = tracer.trace_call(LOOP, "f", "1, 3")
    assert result.status == "ok" and result.returned == "4" and result.seed_fixed
    text = result.text
    assert text.startswith(
        "<|trace_context_start|>def f(a, b):  # << START_OF_TRACE\n    y = 1\n    for i in range(b):\n"
        "        y += a\n    return y\n<|frame_sep|>"
        '<|call_sep|>{"a": "1", "b": "3"}<|action_sep|>def f(a, b):\n<|frame_sep|>'
        '<|line_sep|>{"a": "..", "b": ".."}<|action_sep|>    y = 1\n<|frame_sep|>'
        '<|line_sep|>{"a": "..", "b": "..", "y": "1"}<|action_sep|>    for i in range(b):\n<|frame_sep|>'
        '<|line_sep|>{"a": "..", "b": "..", "y": "..", "i": "0"}<|action_sep|>        y += a\n<|frame_sep|>')
    assert text.endswith('<|return_sep|><|action_sep|>    return y\n<|arg_sep|>"4"<|frame_sep|><|end_of_text|>')
    assert [f.event for f in result.frames].count("line") == 9  # 3 before the loop ends, 2 per iteration


def test_a_nested_call_gets_its_own_frames_and_the_caller_restates_its_locals(tracer):
    code = "def g(x):\n    return x * 2\n\ndef f(n):\n    m = g(n)\n    k = m + 1\n    return k\n"
    result = tracer.trace_call(code, "f", "5")
    events = [(f.event, f.depth) for f in result.frames]
    assert events == [("call", 0), ("line", 0), ("call", 1), ("line", 1), ("return", 1), ("line", 0),
                      ("line", 0), ("return", 0)]
    texts = fmt.frame_texts(result.frames)
    assert texts[5] == '<|line_sep|>{"n": "5", "m": "10"}<|action_sep|>    k = m + 1\n<|frame_sep|>'  # no ".."
    assert texts[6].startswith('<|line_sep|>{"n": "..", "m": "..", "k": "11"}')
    assert "def f(n):  # << START_OF_TRACE" in result.context and "def g(x):  #" not in result.context


def test_uncaught_exception_gives_exception_then_return_frames(tracer):
    code = "def f(xs):\n    total = 0\n    for x in xs:\n        total += 10 // x\n    return total\n"
    result = tracer.trace_call(code, "f", "[2, 0]")
    assert result.status == "ok" and result.raised == "ZeroDivisionError('integer division or modulo by zero')"
    assert [f.event for f in result.frames][-2:] == ["exception", "return"]
    assert result.frames[-2].arg == result.raised and result.frames[-1].arg == "None"
    assert result.text.endswith('<|arg_sep|>"None"<|frame_sep|><|end_of_text|>')


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_round_trip_text_to_frames(tracer, family):
    prog = generate_program(random.Random(11), family=family)
    for text_in in prog.inputs:
        result = tracer.trace_call(prog.code, prog.entry, text_in)
        assert result.status == "ok", result.error
        parsed = fmt.parse(result.text)
        assert parsed.complete and parsed.context == result.context
        assert len(parsed.frames) == len(result.frames)
        for a, b in zip(parsed.frames, result.frames):
            assert a.same_step(b) and a.depth == b.depth
        # A continuation after any prefix parses back to the same frames too.
        k = len(result.frames) // 2
        cont = fmt.emit_continuation(result.frames[:k], result.frames[k:], True)
        frames, complete = fmt.parse_frames(cont, prefix=result.frames[:k])
        assert complete and all(a.same_step(b) for a, b in zip(frames, result.frames[k:]))


@pytest.mark.parametrize("text, message", [
    ("def f(): pass<|frame_sep|>", "starts with"),
    ("<|trace_context_start|>code", "no <|frame_sep|>"),
    ("<|trace_context_start|>c<|frame_sep|><|line_sep|>{}<|action_sep|>x\n", "text after the last"),
    ("<|trace_context_start|>c<|frame_sep|><|line_sep|>{bad json}<|action_sep|>x\n<|frame_sep|>", "not JSON"),
    ("<|trace_context_start|>c<|frame_sep|><|line_sep|>{\"a\": 1}<|action_sep|>x\n<|frame_sep|>", "strings"),
    ("<|trace_context_start|>c<|frame_sep|><|line_sep|>{\"a\": \"..\"}<|action_sep|>x\n<|frame_sep|>", "no earlier"),
    ("<|trace_context_start|>c<|frame_sep|><|return_sep|><|action_sep|>x\n<|frame_sep|>", "no <|arg_sep|>"),
    ("<|trace_context_start|>c<|frame_sep|>hello<|frame_sep|>", "event token"),
])
def test_parser_rejects_malformed_text(text, message):
    with pytest.raises(TraceFormatError, match=message):
        fmt.parse(text)


def test_dots_resolve_like_cwms_reader_and_stop_at_call_or_return():
    prefix = [Frame("call", "def f(a):\n", {"a": "1"}), Frame("line", "    b = 2\n", {"a": "1"})]
    frames, _ = fmt.parse_frames('<|line_sep|>{"a": "..", "b": "2"}<|action_sep|>    c = 3\n<|frame_sep|>', prefix)
    assert frames[0].locals == {"a": "1", "b": "2"}
    after_return = prefix + [Frame("return", "    return 1\n", {}, "1")]
    with pytest.raises(TraceFormatError):
        fmt.parse_frames('<|line_sep|>{"a": ".."}<|action_sep|>x\n<|frame_sep|>', after_return)


def test_same_code_and_input_give_the_same_trace_across_sandboxes():
    code = ("class Box:\n    pass\n\ndef f(words):\n    seen = set(words)\n    box = Box()\n"
            "    return [w for w in seen], box\n")
    texts = []
    for _ in range(2):  # two sandboxes: two fork servers with different hash secrets
        with Tracer() as t:
            result = t.trace_call(code, "f", "['pear', 'fig', 'kiwi', 'plum', 'lime']")
            assert result.seed_fixed
            texts.append(result.text)
    assert texts[0] == texts[1]
    assert "<__main__.Box object at 0x...>" in texts[0]
    assert "0x7f" not in texts[0]


def test_caps_cut_and_mark_traces():
    with Tracer(limits=TraceLimits(max_events=50, max_repr=20), timeout=5.0) as t:
        loop = t.trace_call("def f():\n    i = 0\n    while True:\n        i += 1\n", "f", "")
        assert loop.status == "truncated" and len(loop.frames) == 50 and not loop.text.endswith(fmt.EOS)
        long = t.trace_call("def f(s):\n    t = s * 10\n    return len(t)\n", "f", "'abcdefgh'")
        assert long.status == "ok" and long.values_cut >= 1
        assert any(v.endswith("...") and len(v) == 23 for f in long.frames for v in f.locals.values())
    with Tracer(limits=TraceLimits(max_bytes=600)) as t:
        cut = t.trace_call(LOOP, "f", "1, 50")
        assert cut.status == "truncated" and len(cut.text.encode()) <= 600 and cut.frames


def test_failures_are_reported_not_raised(tracer):
    assert tracer.trace_call("def f(:\n", "f", "").status == "error"
    bad_input = tracer.trace_call(LOOP, "f", "undefined_name")
    assert bad_input.status == "error" and "NameError" in bad_input.error
    missing = tracer.trace_call(LOOP, "g", "1, 2")
    assert missing.status == "error" and "not a function" in missing.error
    with Tracer(timeout=1.0) as t:
        slow = t.trace_call("import time\ndef f():\n    time.sleep(30)\n", "f", "")
        assert slow.status == "timeout"
        hog = t.trace_call("def f():\n    x = [0] * (10 ** 10)\n", "f", "")
        assert hog.status == "ok" and hog.raised == "MemoryError()"  # the memory limit, seen as Python does


def test_script_mode_traces_the_module_with_stdin(tracer):
    result = tracer.trace_script("n = int(input())\nfor k in range(n):\n    print(k * k)\n", "3\n")
    assert result.status == "ok" and result.stdout == "0\n1\n4\n"
    assert result.frames[0].event == "call" and result.frames[0].source == "n = int(input())\n"
    assert result.context.startswith("n = int(input())  # << START_OF_TRACE")
    assert result.frames[-1].event == "return"


def test_a_batch_isolates_jobs():
    jobs = [TraceJob("import string\ndef f():\n    string.ascii_letters = ''\n    return 1\n", "f", ""),
            TraceJob("import time\ndef f():\n    time.sleep(30)\n", "f", ""),
            TraceJob("import builtins\ndef f():\n    builtins.len = None\n", "f", ""),  # breaks its own process
            TraceJob("import string\ndef f():\n    return len(string.ascii_letters)\n", "f", "")]
    with Tracer(timeout=1.0) as t:
        a, b, c, d = t.trace_many(jobs)
    assert (a.status, b.status, c.status, d.status) == ("ok", "timeout", "crash", "ok")
    assert d.returned == "52"


def test_generator_and_fuzzer_are_seeded_and_typed():
    assert generate_program(random.Random(3)) == generate_program(random.Random(3))
    fuzzed = fuzz_inputs("[1, 2, 3], 'ab', {'k': 1}", 5, random.Random(0))
    assert len(fuzzed) == 5
    for text in fuzzed:
        values = literal_args(text)
        assert [type(v) for v in values] == [list, str, dict]
    assert fuzz_inputs("thing[:], 3", 3, random.Random(0)) == []  # not literals: no fuzzing
    sig = "from typing import List\ndef g(xs: List[int], s: str) -> int:\n    return 0\n"
    for text in fuzz_from_signature(sig, "g", 3, random.Random(0)):
        xs, s = literal_args(text)
        assert isinstance(xs, list) and all(isinstance(v, int) for v in xs) and isinstance(s, str)


def test_humaneval_inputs_come_from_the_tests(data_dir):
    from cwm_envs.sources.code import load_humaneval

    task = load_humaneval(limit=1)[0]
    inputs = humaneval_inputs(task.metadata["test"])
    assert inputs and inputs[0].startswith("[1.0, 2.0, 3.9, 4.0, 5.0, 2.2], 0.3")


def test_dir_source_and_corpus_rows(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "lib.py").write_text("def double(xs: list[int]) -> list[int]:\n    return [x * 2 for x in xs]\n")
    (src / "main.py").write_text("s = input()\nprint(s[::-1])\n")
    (src / "main.in").write_text("abc\n")
    (src / "broken.py").write_text("def f(:\n")
    jobs = list(iter_jobs(str(src), fuzz=2))
    assert [(j.id.split("#")[0], j.entry) for j in jobs] == [("lib.py:double", "double")] * 3 + [("main.py", None)]
    out = tmp_path / "t.jsonl"
    stats = build_corpus(jobs, out, workers=2, with_events=True, progress=False)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert stats.written == len(rows) and stats.statuses["ok"] == len(rows)
    script = next(r for r in rows if r["entry"] is None)
    assert script["stdin"] == "abc\n" and script["trace"].endswith(fmt.EOS)
    for row in rows:
        assert {"id", "source", "code", "entry", "input", "trace", "events", "truncated"} <= set(row)
        assert [Frame.from_dict(e).event for e in row["events"]] == [f.event for f in fmt.parse(row["trace"]).frames]


def test_cli_builds_a_corpus_and_reports_bad_sources(tmp_path):
    out = tmp_path / "gen.jsonl"
    cmd = [sys.executable, "-m", "cwm_envs.cli", "traces", "build", "--source", "generated", "--limit", "4",
           "--out", str(out), "--workers", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "12 of 12 traces written" in done.stdout
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and all(r["source"] == "generated" and not r["truncated"] for r in rows)
    bad = subprocess.run(cmd[:6] + ["no/such/dir"] + cmd[7:], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--source" in bad.stderr
