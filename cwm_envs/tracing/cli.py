"""`cwm traces ...`: build a trace corpus, or show the trace of one call."""
from __future__ import annotations

import os
import sys
from pathlib import Path

from cwm_envs.cli import group
from cwm_envs.errors import UsageError


def _limits(args):
    from cwm_envs.tracing.tracer import TraceLimits

    return TraceLimits(max_events=args.max_events, max_bytes=args.max_bytes, max_repr=args.max_repr)


def _add_limit_args(p) -> None:
    p.add_argument("--max-events", type=int, default=10_000, help="frames per trace before it is cut (10000)")
    p.add_argument("--max-bytes", type=int, default=1_000_000, help="bytes of trace text before it is cut (1 MB)")
    p.add_argument("--max-repr", type=int, default=1_000, help="characters of one value's repr (1000)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per traced run (10)")


def cmd_build(args) -> int:
    from cwm_envs.tracing.corpus import build_corpus, iter_jobs

    if args.workers < 1:
        raise UsageError("--workers must be at least 1")
    jobs = list(iter_jobs(args.source, limit=args.limit, fuzz=args.fuzz, seed=args.seed, data=args.data))
    stats = build_corpus(jobs, args.out, workers=args.workers, limits=_limits(args), timeout=args.timeout,
                         keep_truncated=args.keep_truncated, with_events=args.events, total=len(jobs),
                         batch=args.batch)
    print(f"{stats.line()} -> {args.out}")
    if stats.expect_mismatch:
        print(f"traced return value differs from the dataset output: {', '.join(stats.expect_mismatch[:20])}")
    return 0


def cmd_show(args) -> int:
    from cwm_envs.tracing.tracer import Tracer

    path = Path(args.file)
    if not path.is_file():
        raise UsageError(f"no such file: {path}")
    code = path.read_text()
    with Tracer(limits=_limits(args), timeout=args.timeout) as tracer:
        if args.entry:
            result = tracer.trace_call(code, args.entry, args.input)
        else:
            result = tracer.trace_script(code, sys.stdin.read() if args.stdin else "")
    if result.status in ("error", "timeout", "crash"):
        raise UsageError(f"could not trace {path}: {result.status}: {result.error}")
    text = result.text
    print(text.replace("<|frame_sep|>", "<|frame_sep|>\n") if args.pretty else text)
    return 0


def register(sub) -> None:
    traces = group(sub, "traces", "execution traces in CWM's format (corpus building, one-off traces)")
    p = traces.add_parser("build", help="trace functions plus inputs into a JSONL corpus, in parallel",
                          description="Trace a source into one JSON line per trace (schema: "
                                      "cwm_envs/tracing/corpus.py). Failures are skipped and counted.")
    p.add_argument("--source", required=True, help="cruxeval | humaneval | generated | DIR | FILE.jsonl")
    p.add_argument("--out", required=True, help="output .jsonl path")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="parallel sandboxes (all cores)")
    p.add_argument("--limit", type=int, default=None, help="rows/programs/functions taken (generated: 1000)")
    p.add_argument("--fuzz", type=int, default=0, help="extra type-directed inputs per function (0)")
    p.add_argument("--seed", type=int, default=0, help="seed of the generator and the fuzzer (0)")
    p.add_argument("--data", default=None, help="dataset file for cruxeval/humaneval (default: shared data)")
    p.add_argument("--batch", type=int, default=16, help="traces per sandbox run (one interpreter start) (16)")
    p.add_argument("--keep-truncated", action="store_true", help="also write traces cut by a cap")
    p.add_argument("--events", action="store_true", help="also write the structured events of each trace")
    _add_limit_args(p)
    p.set_defaults(func=cmd_build)

    p = traces.add_parser("show", help="print the CWM trace of a call or a script")
    p.add_argument("file", help="a Python file")
    p.add_argument("--entry", default=None, help="function to call (omit to run the file as a script)")
    p.add_argument("--input", default="", help="argument text of the call, e.g. \"[1, 2], 'a'\"")
    p.add_argument("--stdin", action="store_true", help="pass this command's stdin to the script")
    p.add_argument("--pretty", action="store_true", help="one frame per line")
    _add_limit_args(p)
    p.set_defaults(func=cmd_show)
