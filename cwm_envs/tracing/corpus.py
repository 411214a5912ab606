"""Build a trace corpus for mid-training: functions plus inputs -> CWM-format traces, in parallel.

Sources (`cwm traces build --source ...`):
  cruxeval   the 800 CRUXEval functions with their inputs (the row's output is checked against the trace)
  humaneval  the 164 canonical solutions, inputs taken from the `candidate(...)` calls in their tests
  generated  seeded programs from `cwm_envs.sources.programs` (`--limit` programs, 3 inputs each)
  DIR        every `*.py` file: a file of only definitions gives each annotated top-level function fuzzed
             inputs; any other file runs as a script (stdin from `NAME.in` beside it when present).
             A `.jsonl` file (or such files in DIR) gives rows {"code", "entry", "input"} or {"code", "stdin"}.
`--fuzz K` adds K type-directed inputs per function (from an example input's shape, else its annotations).

Output: one JSON object per line, in job order (deterministic for a given source, seed and limits):

    id          str    unique: "<source id>" or "<source id>#<k>" per extra input
    source      str    "cruxeval" | "humaneval" | "generated" | "file"
    code        str    the traced source as given (newlines normalised to \\n)
    entry       str | null   the called function; null for a script (the module is the entry scope)
    input       str | null   argument text of the call, e.g. "[1, 2], 'a'" (null for scripts)
    stdin       str | null   stdin of a script
    trace       str    the CWM trace text: <|trace_context_start|>CONTEXT<|frame_sep|>FRAMES...<|end_of_text|>
                       (no <|begin_of_text|>; no <|end_of_text|> when truncated)
    events      list   (with --events) one object per frame: {"event", "source", "locals" (full snapshot,
                       no ".."), "arg", "lineno", "depth"}
    truncated   bool   a cap cut the trace (only written with --keep-truncated; CWM dropped such traces)
    returned    str | null   repr of the entry's return value (null if it raised or was cut)
    raised      str | null   repr of an exception that left the entry scope
    n_frames    int,  n_bytes int (UTF-8 size of `trace`)
    expect_equal bool | null  CRUXEval only: the traced return value == the dataset's output

Failures (syntax/setup errors, timeouts, sandbox kills) are skipped and counted; the counts come back as
a `CorpusStats` and are printed by the CLI.
"""
from __future__ import annotations

import ast
import json
import random
import sys
import threading
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from cwm_envs.errors import InfraError, UsageError
from cwm_envs.sources.programs import fuzz_from_signature, fuzz_inputs, generate_program
from cwm_envs.tracing.tracer import TraceJob, TraceLimits, Tracer, TraceResult

SOURCES = ("cruxeval", "humaneval", "generated")


@dataclass(frozen=True)
class Job:
    """One program to trace: its code, the entry function (None: a script) and its input or stdin."""
    id: str
    source: str
    code: str
    entry: str | None
    input: str | None = None
    stdin: str | None = None
    expect: str | None = None


@dataclass
class CorpusStats:
    """Counts of a corpus build, for the summary line and the report."""
    jobs: int = 0
    written: int = 0
    statuses: Counter = field(default_factory=Counter)   # ok / truncated / error / timeout / crash / infra
    expect_mismatch: list[str] = field(default_factory=list)
    events: int = 0

    def line(self) -> str:
        parts = ", ".join(f"{k} {v}" for k, v in sorted(self.statuses.items()))
        return f"{self.written} of {self.jobs} traces written ({parts})"


# -- jobs ----------------------------------------------------------------------------------------------
def _with_fuzz(base: Job, n: int, rng: random.Random) -> Iterator[Job]:
    yield base
    if n <= 0 or base.entry is None:
        return
    extra = fuzz_inputs(base.input or "", n, rng) or fuzz_from_signature(base.code, base.entry, n, rng)
    for k, text in enumerate(extra, 1):
        yield Job(f"{base.id}#{k}", base.source, base.code, base.entry, text)


def humaneval_inputs(test: str) -> list[str]:
    """Argument texts of the `candidate(...)` calls in a HumanEval test that use no test-local names."""
    tree = ast.parse(test)
    out = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "candidate"):
            continue
        if any(isinstance(n, ast.Name) for a in node.args + node.keywords for n in ast.walk(a)):
            continue
        parts = [ast.get_source_segment(test, a) for a in node.args + node.keywords]
        text = ", ".join(p for p in parts if p is not None)
        if text not in out:
            out.append(text)
    return out


def _dir_jobs(path: Path) -> Iterator[Job]:
    files = sorted(path.rglob("*")) if path.is_dir() else [path]
    for file in files:
        rel = str(file.relative_to(path)) if path.is_dir() else file.name
        if file.suffix == ".jsonl":
            from cwm_envs.tasks import read_jsonl

            for i, row in enumerate(read_jsonl(file)):
                if not isinstance(row.get("code"), str):
                    raise UsageError(f"{file}: row {i + 1} has no 'code'")
                entry = row.get("entry")
                yield Job(str(row.get("id", f"{rel}:{i + 1}")), "file", row["code"], entry,
                          row.get("input", "") if entry else None, row.get("stdin") if not entry else None)
        elif file.suffix == ".py":
            code = file.read_text(encoding="utf-8", errors="replace")
            try:
                tree = ast.parse(code)
            except SyntaxError:
                continue
            defs_only = all(isinstance(n, (ast.FunctionDef, ast.ClassDef, ast.Import, ast.ImportFrom))
                            or (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant)) for n in tree.body)
            if defs_only:
                for func in (n for n in tree.body if isinstance(n, ast.FunctionDef)):
                    yield Job(f"{rel}:{func.name}", "file", code, func.name, None)
            else:
                stdin_file = file.with_suffix(".in")
                yield Job(rel, "file", code, None, None, stdin_file.read_text() if stdin_file.exists() else "")


def iter_jobs(source: str, limit: int | None = None, fuzz: int = 0, seed: int = 0,
              data: str | None = None) -> Iterator[Job]:
    """The jobs of a source (see the module docstring); `limit` bounds the rows/tasks/programs/files' functions
    taken, before any fuzzed inputs are added."""
    rng = random.Random(seed)
    if source == "cruxeval":
        from cwm_envs.sources.code import load_cruxeval

        for task in load_cruxeval(data, limit=limit):
            m = task.metadata
            yield from _with_fuzz(Job(task.id, "cruxeval", m["code"], m["entry"], m["input"], expect=m["output"]),
                                  fuzz, rng)
    elif source == "humaneval":
        from cwm_envs.sources.code import load_humaneval

        for task in load_humaneval(data, limit=limit):
            m = task.metadata
            code = task.prompt + m["canonical_solution"]
            given = humaneval_inputs(m["test"])
            for k, text in enumerate(given):
                yield Job(f"{task.id}#{k}", "humaneval", code, m["entry_point"], text)
            for k, text in enumerate(fuzz_from_signature(code, m["entry_point"], fuzz, rng), len(given)):
                yield Job(f"{task.id}#{k}", "humaneval", code, m["entry_point"], text)
    elif source == "generated":
        for i in range(limit if limit is not None else 1000):
            prog = generate_program(random.Random(f"{seed}:{i}"))
            for k, text in enumerate(prog.inputs):
                yield Job(f"gen-{seed}-{i}#{k}", "generated", prog.code, prog.entry, text)
    else:
        path = Path(source)
        if not path.exists():
            raise UsageError(f"--source must be one of {', '.join(SOURCES)} or an existing directory/.jsonl file; "
                             f"got {source!r}")
        for n, job in enumerate(_dir_jobs(path)):
            if limit is not None and n >= limit:
                return
            yield from _with_fuzz(job, fuzz, rng)


# -- building ------------------------------------------------------------------------------------------
def row_of(job: Job, result: TraceResult, with_events: bool) -> dict:
    """The corpus row (JSON line) of one traced job."""
    text = result.text
    row = {"id": job.id, "source": job.source, "code": result.code, "entry": job.entry, "input": job.input,
           "stdin": job.stdin, "trace": text}
    if with_events:
        row["events"] = result.events()
    row.update(truncated=result.truncated, returned=result.returned, raised=result.raised,
               n_frames=len(result.frames), n_bytes=len(text.encode()), expect_equal=result.expect_equal)
    return row


def build_corpus(jobs: Iterable[Job], out: str | Path, *, workers: int = 2, limits: TraceLimits | None = None,
                 timeout: float = 10.0, keep_truncated: bool = False, with_events: bool = False,
                 progress: bool | None = None, total: int | None = None, batch: int = 16) -> CorpusStats:
    """Trace every job and write the JSONL at `out`, in job order.

    `workers` threads each own a sandbox (a local sandbox runs one execution at a time) and send it
    batches of `batch` jobs: one interpreter start per batch, one forked process and deadline per job.
    """
    from tqdm import tqdm

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    stats = CorpusStats()
    local = threading.local()
    tracers: list[Tracer] = []
    lock = threading.Lock()

    def run(chunk: list[Job]) -> list[TraceResult | None]:
        tracer = getattr(local, "tracer", None)
        if tracer is None:
            tracer = local.tracer = Tracer(limits=limits, timeout=timeout)
            with lock:
                tracers.append(tracer)
        todo = [TraceJob(j.code, j.entry, j.input, j.stdin, j.expect) for j in chunk]
        for _attempt in range(2):  # an infrastructure fault is retried once, never counted as the code's
            try:
                return tracer.trace_many(todo)
            except UsageError as exc:
                return [TraceResult("error", j.code, j.entry, j.input, error=str(exc)) for j in chunk]
            except InfraError:
                continue
        return [None] * len(chunk)

    def chunks() -> Iterator[list[Job]]:
        chunk = []
        for job in jobs:
            chunk.append(job)
            if len(chunk) == max(1, batch):
                yield chunk
                chunk = []
        if chunk:
            yield chunk

    bar = tqdm(total=total, unit="trace", disable=not (sys.stderr.isatty() if progress is None else progress))
    try:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool, out.open("w", encoding="utf-8") as fh:
            window: deque = deque()

            def drain_one():
                chunk, fut = window.popleft()
                for job, result in zip(chunk, fut.result()):
                    status = "infra" if result is None else result.status
                    stats.statuses[status] += 1
                    if result is not None and result.expect_equal is False:
                        stats.expect_mismatch.append(job.id)
                    if status == "ok" or (status == "truncated" and keep_truncated):
                        fh.write(json.dumps(row_of(job, result, with_events)) + "\n")
                        stats.written += 1
                        stats.events += len(result.frames)
                bar.update(len(chunk))

            for chunk in chunks():
                stats.jobs += len(chunk)
                window.append((chunk, pool.submit(run, chunk)))
                if len(window) >= 2 * max(1, workers):
                    drain_one()
            while window:
                drain_one()
    finally:
        bar.close()
        for tracer in tracers:
            tracer.close()
    return stats
