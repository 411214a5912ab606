"""The tracing runtime that runs INSIDE the sandbox: standard library only, shipped as source text.

`cwm_envs.tracing.tracer` sends this file's text (plus a final `_main()` call) to a sandbox, with a JSON
payload on stdin, and reads back one JSON message per line prefixed by `MARK`. Nothing here may import
the project: the sandbox has only the interpreter.

What it records (`sys.settrace` semantics): `call`, `line`, `return` and `exception` events of every frame
whose code comes from the traced source (other files and builtins are not traced), starting at the entry
scope (the called function, or the module for a script) and ending when that scope returns. A `line`
event carries the locals *before* the line runs. Locals are rendered with `repr`, memory addresses scrubbed
(`at 0x...`), each cut at `max_repr` characters (cut values end with `...`).

Determinism: the process must run with PYTHONHASHSEED=0 (set and string iteration order); when it does
not, the runtime re-executes itself once with that seed (execve: same pid, no extra process); if no
interpreter can be executed it goes on and reports `seed_fixed: false`. `random` is seeded with 0 before
the traced code runs.

A payload is one job, run in this process, or `{"jobs": [...], "timeout": s}`, a batch whose jobs each
run in a forked child with its own deadline (one interpreter re-exec for the whole batch). Every message
carries the `index` of its job.

Transport: events travel compactly as `[kind, lineno, depth, fid, changed, order, arg]` where `changed`
holds only the locals that differ from the previous event of the same frame `fid` (all of them on `call`)
and `order` lists every name, in `f_locals` order, when the set of names changed (else null); the host
rebuilds full snapshots. When a cap (events or bytes)
is hit, the events so far go out as the final message (`truncated: true`, no return value) and the process
ends at once, so a capped infinite loop costs no more than its cap.
"""
import io
import json
import os
import random
import re
import sys
import time
import types

MARK = "@@cwm-trace@@ "
FILENAME = "<cwm-trace>"
_ADDR = re.compile(r" at 0x[0-9a-fA-F]+")
_CO_OPTIMIZED = 0x0001
_HIDDEN_IN_NAMESPACES = (types.ModuleType, types.FunctionType, types.BuiltinFunctionType, type)


def scrub(text):
    """Replace memory addresses in reprs so that the same run gives the same text."""
    return _ADDR.sub(" at 0x...", text) if "0x" in text else text


def safe_repr(value, cap):
    """repr() that never raises, with addresses scrubbed, cut at `cap` characters (then ending `...`)."""
    try:
        text = repr(value)
    except BaseException as exc:  # a user __repr__ may raise anything
        text = "<repr failed: %s>" % type(exc).__name__
    text = scrub(text)
    if cap and len(text) > cap:
        return text[:cap] + "...", True
    return text, False


class Recorder:
    """A sys.settrace hook that records the entry scope and everything it calls in the traced file."""

    def __init__(self, max_events, max_bytes, max_repr, emit):
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.max_repr = max_repr
        self.emit = emit              # called with the events when a cap is hit (does not return)
        self.events = []
        self.nbytes = 0
        self.entry = None             # the entry frame; recording ends when it returns
        self.stack = []               # [(frame, fid, last_locals)]
        self.next_fid = 0
        self.done = False
        self.truncated = False
        self.values_cut = 0

    # -- settrace hooks -------------------------------------------------------------------------------
    def global_trace(self, frame, event, arg):
        if self.done or event != "call" or frame.f_code.co_filename != FILENAME:
            return None
        if self.entry is None:
            self.entry = frame
        fid = self.next_fid
        self.next_fid += 1
        snap = self._snapshot(frame)
        self.stack.append([frame, fid, snap])
        self._add("call", frame.f_lineno, fid, snap, None, None)
        return self.local_trace

    def local_trace(self, frame, event, arg):
        if self.done:
            return None
        top = self.stack[-1] if self.stack else None
        if top is None or top[0] is not frame:  # should not happen; stay safe
            return self.local_trace
        _, fid, last = top
        if event == "line":
            snap = self._snapshot(frame)
            changed = {k: v for k, v in snap.items() if last.get(k) != v}
            order = list(snap) if snap.keys() != last.keys() else None
            top[2] = snap
            self._add("line", frame.f_lineno, fid, changed, order, None)
        elif event == "return":
            self.stack.pop()
            self._add("return", frame.f_lineno, fid, {}, None, self._repr(arg))
            if frame is self.entry:
                self.done = True
        elif event == "exception":
            value = arg[1] if arg[1] is not None else arg[0]
            self._add("exception", frame.f_lineno, fid, {}, None, self._repr(value))
        return self.local_trace

    # -- helpers --------------------------------------------------------------------------------------
    def _repr(self, value):
        text, cut = safe_repr(value, self.max_repr)
        self.values_cut += cut
        return text

    def _snapshot(self, frame):
        namespace = not (frame.f_code.co_flags & _CO_OPTIMIZED)  # module or class body
        out = {}
        for name, value in frame.f_locals.items():
            if not name.isidentifier() or (name.startswith("__") and name.endswith("__")):
                continue  # '.0' of comprehensions, __builtins__, __module__ ...
            if namespace and isinstance(value, _HIDDEN_IN_NAMESPACES):
                continue  # imports, function and class definitions at module level
            out[name] = self._repr(value)
        return out

    def _add(self, kind, lineno, fid, changed, order, arg):
        size = 24 + sum(len(k) + len(v) + 6 for k, v in changed.items()) + len(arg or "")
        if len(self.events) >= self.max_events or self.nbytes + size > self.max_bytes:
            self.truncated = True
            self.done = True
            self.emit(self.events)  # ends the process: a capped trace is kept, its run is not finished
            return
        self.nbytes += size
        depth = len(self.stack) - (0 if kind == "return" else 1)
        self.events.append([kind, lineno, depth, fid, changed, order, arg])


def _collect(*args, **kwargs):
    return args, kwargs


def _send(message):
    out = sys.__stdout__
    out.write(MARK + json.dumps(message) + "\n")
    out.flush()


def _reexec_with_fixed_seed(payload_text):
    """Run this same program again in this process with PYTHONHASHSEED=0 (execve keeps the pid).

    Tries this interpreter, then a same-version `pythonX.Y` on PATH (a jail may hide the first). Returns
    only when no interpreter could be executed; the run then goes on with a random hash seed.
    """
    import shutil

    path = os.path.abspath(".cwm_trace_payload.%d.json" % os.getpid())
    try:
        with open(path, "w") as fh:
            fh.write(payload_text)
    except OSError:
        return
    env = dict(os.environ, PYTHONHASHSEED="0", CWM_TRACE_PAYLOAD=path)
    source = globals().get("_SHIPPED_SOURCE") or open(__file__).read() + "\n_main()\n"
    same_version = shutil.which("python%d.%d" % sys.version_info[:2])
    for exe in dict.fromkeys(p for p in (sys.executable, same_version) if p):
        if os.access(exe, os.X_OK):
            try:
                os.execve(exe, [exe, "-c", source], env)
            except OSError:
                continue
    os.unlink(path)


def _run(payload):
    code_text = payload["code"]
    entry = payload.get("entry")
    limits = payload.get("limits", {})
    max_repr = int(limits.get("max_repr", 1000))
    result = {"index": payload.get("index", 0), "error": None, "seed_fixed": not sys.flags.hash_randomization}
    try:
        code = compile(code_text, FILENAME, "exec")
    except SyntaxError as exc:
        return dict(result, error="syntax: %s (line %s)" % (exc.msg, exc.lineno))

    real_stdin = sys.stdin
    captured = io.StringIO()
    sys.stdout = captured
    sys.stdin = io.StringIO(payload.get("stdin") or "")
    # __main__ as when the file runs (reprs read `<__main__.C object at 0x...>`); during a call's setup
    # stdin is empty, so a `if __name__ == "__main__":` block that reads input fails there, untraced.
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    def stop_at_cap(events):
        sys.stdout = sys.__stdout__
        _send(dict(result, events=events, truncated=True, values_cut=recorder.values_cut,
                   stdout=captured.getvalue()[:65536]))
        os._exit(0)

    recorder = Recorder(int(limits.get("max_events", 10_000)), int(limits.get("max_bytes", 1_000_000)),
                        max_repr, stop_at_cap)
    random.seed(0)
    try:
        if entry is None:
            target = lambda: exec(code, namespace)  # noqa: E731  (the module frame is the entry scope)
            make_args = None
        else:
            exec(code, namespace)
            func = namespace.get(entry)
            if not isinstance(func, types.FunctionType) or func.__code__.co_filename != FILENAME:
                return dict(result, error="setup: %r is not a function defined in the code" % entry)
            make_args = lambda: eval("__cwm_collect__(%s)" % (payload.get("input") or ""),  # noqa: E731  (deferred)
                                     dict(namespace, __cwm_collect__=_collect))
            make_args()  # fail early, untraced, on a broken input
            result["entry_line"] = func.__code__.co_firstlineno
    except BaseException as exc:  # the module body or the input expression failed: no trace to take
        sys.stdout = sys.__stdout__
        return dict(result, error="setup: %s" % safe_repr(exc, 500)[0])

    def call_once(trace):
        """One run of the entry; arguments are built before tracing starts, so they are never traced."""
        args, kwargs = make_args() if make_args else ((), {})
        run = target if make_args is None else (lambda: func(*args, **kwargs))  # noqa: E731  (as `target`)
        if trace:
            sys.settrace(recorder.global_trace)
        try:
            return run()
        finally:
            sys.settrace(None)

    repeats = int(payload.get("time_untraced", 0))
    if repeats:
        start = time.perf_counter()
        for _ in range(repeats):
            try:
                call_once(False)
            except BaseException:
                pass
        result["untraced_s"] = (time.perf_counter() - start) / repeats
        random.seed(0)

    outcome = raised = None
    start = time.perf_counter()
    try:
        outcome = call_once(True)
    except SystemExit as exc:
        outcome = exc.code if entry is None else None
        raised = exc if entry is not None else None
    except BaseException as exc:
        raised = exc
    result["traced_s"] = time.perf_counter() - start
    sys.stdout = sys.__stdout__
    sys.stdin = real_stdin

    result.update(events=recorder.events, truncated=recorder.truncated, values_cut=recorder.values_cut,
                  stdout=captured.getvalue()[:65536])
    if raised is not None:
        result["raised"] = safe_repr(raised, max_repr)[0]
    else:
        result["returned"] = safe_repr(outcome, 100_000)[0]
    if entry is not None and "expect" in payload and raised is None:
        try:
            expected = eval(payload["expect"], dict(namespace))
            result["expect_equal"] = bool(outcome == expected)
        except BaseException as exc:
            result["expect_error"] = safe_repr(exc, 500)[0]
    return result


def _run_one(job, index):
    job["index"] = index
    try:
        message = _run(job)
    except BaseException as exc:  # never leave the host without an answer
        sys.stdout = sys.__stdout__
        message = {"error": "runtime: %s" % safe_repr(exc, 500)[0]}
    message["index"] = index
    _send(message)


def _run_forked(job, index, timeout):
    """One job of a batch in a forked child (fresh state, own deadline); the parent reports a timeout."""
    import select
    import signal

    pid = os.fork()
    if pid == 0:
        try:
            _run_one(job, index)
        finally:
            os._exit(0)
    deadline = time.monotonic() + timeout
    fd = os.pidfd_open(pid) if hasattr(os, "pidfd_open") else None
    try:
        while True:
            done, _ = os.waitpid(pid, os.WNOHANG)
            if done:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                _send({"index": index, "error": "timeout", "timed_out": True})
                return
            if fd is not None:
                select.select([fd], [], [], left)
            else:
                time.sleep(min(left, 0.001))
    finally:
        if fd is not None:
            os.close(fd)


def _main():
    path = os.environ.pop("CWM_TRACE_PAYLOAD", None)
    if path:
        with open(path) as fh:
            text = fh.read()
        os.unlink(path)
    else:
        text = sys.stdin.read()
        if sys.flags.hash_randomization:
            _reexec_with_fixed_seed(text)
    try:
        payload = json.loads(text)
    except ValueError as exc:
        _send({"error": "payload: %s" % exc, "index": 0})
        return
    if "jobs" not in payload:
        _run_one(payload, 0)
        return
    for index, job in enumerate(payload["jobs"]):  # a batch: one re-exec, one fork per job
        _run_forked(job, index, float(payload.get("timeout", 10.0)))
