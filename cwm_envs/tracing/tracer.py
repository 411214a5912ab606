"""Host side of the tracer: trace a function call or a script inside a sandbox, get CWM-format traces.

>>> from cwm_envs.tracing import Tracer
>>> with Tracer() as tracer:                                       # doctest: +SKIP
...     result = tracer.trace_call("def f(a, b):\\n    return a + b\\n", "f", "1, 2")
>>> result.returned, [f.event for f in result.frames]             # doctest: +SKIP
('3', ['call', 'line', 'return'])
>>> print(result.text)                                             # doctest: +SKIP

The traced code runs in `cwm_envs.tracing.runtime` inside the sandbox (local by default); this module ships
it there, rebuilds full frames from the compact events, puts the START_OF_TRACE marker on the entry line
and renders the text. Limits follow CWM, which dropped traces over 10k lines or 1 MB: past `max_events`
frames or `max_bytes` of text a trace is cut and marked `truncated` (no <|end_of_text|>), and each value's
repr is cut at `max_repr` characters.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from cwm_envs.errors import UsageError
from cwm_envs.tracing import format as fmt
from cwm_envs.tracing.format import Frame

RUNTIME_PATH = Path(__file__).with_name("runtime.py")
MARK = "@@cwm-trace@@ "


@dataclass(frozen=True)
class TraceLimits:
    """Caps on one trace (CWM dropped traces over 10k lines or 1 MB)."""

    max_events: int = 10_000      # frames recorded before the trace is cut
    max_bytes: int = 1_000_000    # bytes of trace text (UTF-8) before the trace is cut
    max_repr: int = 1_000         # characters of one value's repr (cut values end with "...")


@dataclass
class TraceResult:
    """One traced run. `status`: "ok", "truncated" (a cap cut it), "error" (the code or input did not
    even start: syntax, bad input), "timeout" or "crash" (the sandbox killed it: memory, output...).
    `raised` holds the repr of an exception that left the entry scope (the trace is still complete)."""

    status: str
    code: str
    entry: str | None
    input: str | None
    context: str = ""
    frames: list[Frame] = field(default_factory=list)
    returned: str | None = None
    raised: str | None = None
    stdout: str = ""
    error: str | None = None
    expect_equal: bool | None = None
    values_cut: int = 0
    traced_s: float | None = None
    untraced_s: float | None = None
    wall_s: float | None = None
    seed_fixed: bool = True           # ran with PYTHONHASHSEED=0 (False: str-set order may vary by run)

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def truncated(self) -> bool:
        return self.status == "truncated"

    @property
    def text(self) -> str:
        """The CWM trace text (ends with <|end_of_text|> unless truncated); empty if nothing was traced."""
        if not self.context:
            return ""
        return fmt.emit(self.context, self.frames, complete=self.status == "ok")

    def events(self) -> list[dict]:
        return [f.to_dict() for f in self.frames]


def shipped_source() -> str:
    """The program sent to the sandbox: the runtime, its own text (to re-exec with a fixed hash seed), a call."""
    src = RUNTIME_PATH.read_text()
    return f"{src}\n_SHIPPED_SOURCE = {json.dumps(src + chr(10) + '_main()' + chr(10))}\n_main()\n"


def rebuild_frames(events: list, lines: list[str]) -> list[Frame]:
    """Full frames from the runtime's compact events (locals travel as changes per frame id)."""
    snaps: dict[int, dict[str, str]] = {}
    frames = []
    for kind, lineno, depth, fid, changed, order, arg in events:
        if kind == "call":
            snaps[fid] = dict(changed)
        elif kind == "line":
            prev = snaps.get(fid, {})
            snaps[fid] = {k: changed.get(k, prev.get(k)) for k in order} if order is not None else {**prev, **changed}
        line_no = max(lineno, 1)  # a module's call event reports line 0
        source = (lines[line_no - 1] if line_no <= len(lines) else "") + "\n"
        local_vars = dict(snaps[fid]) if kind in ("call", "line") else {}
        frames.append(Frame(kind, source, local_vars, arg, line_no, depth))
    return frames


def _cap_bytes(context: str, frames: list[Frame], max_bytes: int) -> tuple[list[Frame], bool]:
    """Keep the longest prefix of frames whose text fits in max_bytes (with <|end_of_text|>)."""
    total = len(fmt.context_prefix(context).encode()) + len(fmt.EOS)
    for i, text in enumerate(fmt.frame_texts(frames)):
        total += len(text.encode())
        if total > max_bytes:
            return frames[:i], True
    return frames, False


class Tracer:
    """Traces code in one sandbox; a context manager.

    `sandbox` is a backend name (created on first use, closed with the tracer) or a `Sandbox` to share (left
    open). A local sandbox runs one execution at a time: use one Tracer per thread for parallel work.
    """

    def __init__(self, sandbox="local", limits: TraceLimits | None = None, timeout: float = 10.0,
                 memory_mb: int | None = 1024):
        self._own = isinstance(sandbox, str)
        self._backend = sandbox if self._own else None
        self._sandbox = None if self._own else sandbox
        self.limits = limits or TraceLimits()
        self.timeout = timeout
        self.memory_mb = memory_mb
        self._source = shipped_source()

    @property
    def sandbox(self):
        if self._sandbox is None:
            from cwm_envs.sandbox import make_sandbox

            if not self._own:
                raise UsageError("this tracer is closed")
            self._sandbox = make_sandbox(self._backend)
        return self._sandbox

    def close(self) -> None:
        """Close an owned sandbox (a shared one stays open); safe to call twice."""
        if self._own and self._sandbox is not None:
            self._sandbox.close()
            self._sandbox = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- public API -----------------------------------------------------------------------------------
    def trace_call(self, code: str, entry: str, input: str = "", *, expect: str | None = None,
                   time_untraced: int = 0) -> TraceResult:
        """Trace `entry(<input>)` after running `code`'s definitions. `input` is argument text as in
        CRUXEval (`"[1, 2], 'a'"`, keywords allowed), evaluated in the code's namespace. With `expect`
        (an expression) the result says whether the return value == it; `time_untraced` > 0 also times
        that many untraced calls in the same process (for the slowdown benchmark)."""
        job = TraceJob(code, entry, input, None, expect)
        return self._run([job], batch=False, time_untraced=time_untraced)[0]

    def trace_script(self, code: str, stdin: str = "") -> TraceResult:
        """Trace a whole script run as __main__ with `stdin`; the module is the entry scope."""
        return self._run([TraceJob(code, None, None, stdin)], batch=False)[0]

    def trace_many(self, jobs: list["TraceJob"]) -> list[TraceResult]:
        """Trace several calls/scripts in one sandbox run, each in its own forked process with its own
        deadline (`timeout` each): the interpreter start is paid once per batch, not once per trace."""
        return self._run(list(jobs), batch=True) if jobs else []

    # -- internals ------------------------------------------------------------------------------------
    def _payload(self, job: "TraceJob", time_untraced: int = 0) -> dict:
        if job.entry is not None and not job.entry.isidentifier():
            raise UsageError(f"entry must be a function name, got {job.entry!r}")
        lim = self.limits
        payload = {"code": job.normalized_code, "entry": job.entry, "input": job.input, "stdin": job.stdin,
                   "limits": {"max_events": lim.max_events, "max_bytes": lim.max_bytes, "max_repr": lim.max_repr},
                   "time_untraced": time_untraced}
        if job.expect is not None:
            payload["expect"] = job.expect
        return payload

    def _run(self, jobs: list["TraceJob"], batch: bool, time_untraced: int = 0) -> list[TraceResult]:
        from cwm_envs.sandbox import Limits

        payloads = [self._payload(j, time_untraced) for j in jobs]
        stdin = {"jobs": payloads, "timeout": self.timeout} if batch else payloads[0]
        # Messages carry the events compactly; leave room for JSON escapes and the program's output.
        lim = self.limits
        out_cap = len(jobs) * (3 * lim.max_bytes + lim.max_events * 64) + (1 << 20)
        total_timeout = self.timeout * len(jobs) + (5.0 if batch else 0.0)
        res = self.sandbox.run_python(self._source, stdin=json.dumps(stdin), timeout=total_timeout,
                               limits=Limits(memory_mb=self.memory_mb, output_bytes=out_cap))
        messages: dict[int, dict] = {}
        for line in res.stdout.splitlines():
            if line.startswith(MARK):
                try:
                    message = json.loads(line[len(MARK):])
                except json.JSONDecodeError:
                    continue  # a message cut by a kill
                messages[int(message.get("index", 0))] = message
        return [self._result(job, messages.get(i), res) for i, job in enumerate(jobs)]

    def _result(self, job: "TraceJob", final: dict | None, res) -> TraceResult:
        code = job.normalized_code
        base = TraceResult("error", code, job.entry, job.input, wall_s=res.duration_s)
        if final is None:
            base.status = "timeout" if res.timed_out else "crash"
            base.error = ("timed out" if res.timed_out else
                          f"sandbox: exit {res.exit_code}, limit {res.limit_hit}, stderr {res.stderr[-300:]!r}")
            return base
        if final.get("timed_out"):
            base.status, base.error = "timeout", "timed out"
            return base
        if final.get("error"):
            base.error = final["error"]
            return base
        base.context = fmt.mark_context(code, final.get("entry_line") or 1)
        base.frames = rebuild_frames(final.get("events", []), code.split("\n"))
        base.frames, cut = _cap_bytes(base.context, base.frames, self.limits.max_bytes)
        base.status = "truncated" if (final.get("truncated") or cut) else "ok"
        if base.status == "ok" and (not base.frames or base.frames[-1].event != "return" or base.frames[-1].depth != 0):
            base.status = "truncated"  # the entry scope never returned inside the trace
        base.returned = final.get("returned")
        base.raised = final.get("raised")
        base.stdout = final.get("stdout", "")
        base.expect_equal = final.get("expect_equal")
        base.values_cut = final.get("values_cut", 0)
        base.traced_s = final.get("traced_s")
        base.untraced_s = final.get("untraced_s")
        base.seed_fixed = bool(final.get("seed_fixed", True))
        return base


@dataclass(frozen=True)
class TraceJob:
    """One thing to trace: `entry(<input>)` after running `code`, or (entry None) `code` as a script on `stdin`."""

    code: str
    entry: str | None
    input: str | None = None
    stdin: str | None = None
    expect: str | None = None

    @property
    def normalized_code(self) -> str:
        return self.code.replace("\r\n", "\n").replace("\r", "\n")


def trace_call(code: str, entry: str, input: str = "", **kwargs) -> TraceResult:
    """One-off `Tracer().trace_call` in a fresh local sandbox (use a Tracer to trace many)."""
    with Tracer() as tracer:
        return tracer.trace_call(code, entry, input, **kwargs)
