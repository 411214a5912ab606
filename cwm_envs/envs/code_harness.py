"""Test harness for call-based code tasks (HumanEval style), run as a script inside the sandbox.

Why two processes: a candidate that shares a process with its tests can forge a pass (exit(0) before the
asserts, patch `assert`/builtins, return an object whose `__eq__` is always True, print a fake success line,
find a secret in memory). So the trusted side (this script, the "judge") never runs candidate code; it
starts a fresh interpreter (the "candidate", `CANDIDATE_BOOT` below) with `exec` of a new image, so none of
the judge's memory is inherited, and calls the solution there over a pipe. Arguments and results cross as
`marshal` data of plain built-in types only (an int subclass or a custom object cannot cross), so every
comparison happens on the judge's side, on values the candidate cannot make lie.

The judge reads its secret payload (nonce, test code) from stdin before the candidate exists, makes itself
non-dumpable (no ptrace or /proc/PID/mem from the candidate), and ends by writing one line,
`NONCE JSON`, to a private copy of stdout; everything else it or the test code prints goes to stderr.
A run counts only if that line carries the nonce the environment generated for it, so neither the exit
status nor anything the candidate prints can make a pass.

Payload (JSON on stdin): nonce, solution (source), tests (source defining `__cwm_units(candidate,
record)`), entry (["function", name] or ["method", class, name]), call_timeout_s, deadline_s.
Result: {"load_error": str|None, "units": {index: [ok, error]}, "aborted": str|None}.
This file uses only the standard library: the sandbox runs its text.
"""
import os
import sys

# Import only from the Python installation, never from the working dir: an earlier execution in the same
# sandbox may have left a `subprocess.py` there to take over the judge of a later one.
_HOMES = tuple(os.path.join(os.path.realpath(p), "") for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
sys.path[:] = [p for p in sys.path if p and os.path.join(os.path.realpath(p), "").startswith(_HOMES)]

import json  # noqa: E402  (the imports follow the path fix on purpose)
import marshal  # noqa: E402  (after the path fix)
import select  # noqa: E402  (after the path fix)
import signal  # noqa: E402  (after the path fix)
import struct  # noqa: E402  (after the path fix)
import subprocess  # noqa: E402  (after the path fix)
import time  # noqa: E402  (after the path fix)

CANDIDATE_BOOT = r'''
import os, sys, marshal, struct, traceback
IN, OUT = os.dup(0), os.dup(1)
_null = os.open(os.devnull, os.O_RDONLY)
os.dup2(_null, 0)
os.dup2(2, 1)  # the candidate's prints go to stderr; the protocol pipe is not on a standard fd
def _drop_privileges():
    with open("/proc/self/status") as fh:
        if "CapEff:\t0000000000000000" in fh.read():
            return
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS
    class Hdr(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]
    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]
    if libc.capset(ctypes.byref(Hdr(0x20080522, 0)), (Data * 2)()) != 0:
        raise OSError(ctypes.get_errno(), "capset failed")
def _read(n):
    buf = b""
    while len(buf) < n:
        chunk = os.read(IN, n - len(buf))
        if not chunk:
            os._exit(0)
        buf += chunk
    return buf
def _recv():
    return marshal.loads(_read(struct.unpack(">Q", _read(8))[0]))
def _send(msg):
    try:
        data = marshal.dumps(msg)
    except ValueError:
        data = marshal.dumps(("error", "unsupported return type %s (only built-in types cross)" % type(msg[1]).__name__))
    os.write(OUT, struct.pack(">Q", len(data)))
    view = memoryview(data)
    while view:
        view = view[os.write(OUT, view):]
def _short(exc):
    return ("%s: %s" % (type(exc).__name__, exc))[:2000]
_drop_privileges()
source, entry = _recv()
try:
    ns = {"__name__": "__solution__", "__builtins__": __builtins__}
    exec(compile(source, "<solution>", "exec"), ns)
    if entry[1] not in ns:
        raise NameError("the solution does not define %s" % entry[1])
    fn = getattr(ns[entry[1]](), entry[2]) if entry[0] == "method" else ns[entry[1]]
except BaseException as exc:
    _send(("load_error", "".join(traceback.format_exception_only(type(exc), exc))[-2000:]))
    os._exit(0)
_send(("ready", None))
while True:
    args, kwargs = _recv()
    try:
        _send(("ok", fn(*args, **kwargs)))
    except BaseException as exc:
        _send(("error", _short(exc)))
'''

MAX_REPLY_BYTES = 64 << 20
_PLAIN = (type(None), bool, int, float, complex, str, bytes, tuple, list, dict, set, frozenset)


class CandidateError(Exception):
    """The candidate raised, returned something that cannot cross, or is gone."""


def _check_plain(value) -> None:
    """Refuse anything but plain built-in data (marshal can also carry code objects)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) not in _PLAIN:
            raise CandidateError(f"unsupported return type {type(v).__name__}")
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (tuple, list, set, frozenset)):
            stack.extend(v)


class Candidate:
    """The solution's entry point, living in another process; calling it is one request and one reply."""

    def __init__(self, solution: str, entry, call_timeout: float, deadline: float):
        self.call_timeout, self.deadline, self.dead = call_timeout, deadline, None
        self.proc = subprocess.Popen([sys.executable, "-I", "-c", CANDIDATE_BOOT], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, start_new_session=True, close_fds=True)
        self.rfd, self.wfd = self.proc.stdout.fileno(), self.proc.stdin.fileno()
        try:
            self._send((solution, list(entry)))
            kind, value = self._recv()
        except CandidateError:
            kind, value = "load_error", self.dead
        self.load_error = None if kind == "ready" else str(value or "candidate failed to load")
        if self.load_error:
            self.kill(self.load_error)

    def kill(self, why: str) -> None:
        self.dead = self.dead or why
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except OSError:
            pass
        self.proc.wait()

    def _send(self, msg) -> None:
        data = marshal.dumps(msg)
        try:
            os.write(self.wfd, struct.pack(">Q", len(data)))
            view = memoryview(data)
            while view:
                view = view[os.write(self.wfd, view):]
        except OSError:
            self.kill("candidate process is gone")
            raise CandidateError(self.dead) from None

    def _read(self, n: int) -> bytes:
        buf = b""
        while len(buf) < n:
            left = min(self.call_timeout, self.deadline - time.monotonic())
            ready, _, _ = select.select([self.rfd], [], [], max(0.0, left))
            if not ready:
                self.kill(f"timeout: no answer within {self.call_timeout:g} s")
                raise CandidateError(self.dead)
            chunk = os.read(self.rfd, n - len(buf))
            if not chunk:
                self.kill("candidate process exited")
                raise CandidateError(self.dead)
            buf += chunk
        return buf

    def _recv(self):
        try:
            (size,) = struct.unpack(">Q", self._read(8))
            if size > MAX_REPLY_BYTES:
                raise ValueError(f"a reply of {size} bytes")
            msg = marshal.loads(self._read(size))
        except (ValueError, EOFError, TypeError, struct.error) as exc:
            self.kill(f"garbled reply ({exc})")
            raise CandidateError(self.dead) from None
        if not (isinstance(msg, tuple) and len(msg) == 2 and msg[0] in ("ok", "error", "ready", "load_error")):
            self.kill("garbled reply")
            raise CandidateError(self.dead)
        return msg

    def __call__(self, *args, **kwargs):
        if self.dead:
            raise CandidateError(self.dead)
        self._send((args, kwargs))
        kind, value = self._recv()
        if kind != "ok":
            raise CandidateError(str(value))
        _check_plain(value)
        return value


def _make_undumpable() -> None:
    """PR_SET_DUMPABLE 0: other processes of the same user cannot ptrace this one or read its memory."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def main() -> None:
    """The judge: read the secret payload, run the tests against a fresh candidate, print the nonce line."""
    _make_undumpable()
    payload = json.loads(sys.stdin.buffer.read())  # the secret arrives before any candidate process exists
    try:
        os.ftruncate(0, 0)  # stdin may be a file (a memfd): leave no copy of the secret behind
    except OSError:
        pass
    out = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # prints of the test code go to stderr; only the final line uses the private stdout copy
    start = time.monotonic()
    deadline = start + float(payload["deadline_s"])
    result = {"load_error": None, "units": {}, "aborted": None}
    candidate = None
    try:
        candidate = Candidate(payload["solution"], payload["entry"], float(payload["call_timeout_s"]), deadline)
        result["load_error"] = candidate.load_error
        if not candidate.dead:
            def record(index, exc):
                result["units"][index] = [exc is None, None if exc is None else f"{type(exc).__name__}: {exc}"[:2000]]

            ns = {"__name__": "__cwm_tests__"}
            exec(compile(payload["tests"], "<tests>", "exec"), ns)
            if payload["entry"][0] == "function":  # tests (and helpers) may name the entry point directly
                ns[payload["entry"][1]] = candidate
            ns["__cwm_units"](candidate, record)
    except BaseException as exc:  # an error outside any test unit: the remaining units count as not run
        result["aborted"] = f"{type(exc).__name__}: {exc}"[:2000]
    finally:
        if candidate is not None:
            candidate.kill("finished")
    result["duration_s"] = round(time.monotonic() - start, 4)
    out.write(payload["nonce"] + " " + json.dumps(result) + "\n")
    out.flush()


if __name__ == "__main__":
    main()
