"""A hard time limit for the sympy part of answer checking, safe in any thread, asyncio task or Ray actor.

Why a helper process: sympy can run for minutes on a hostile answer (`(x+1)^{10^6}`), and a Python thread
cannot be stopped. `signal.alarm` only works in the main thread (math-verify's timeout raises or, in
thread pools, silently scores every answer 0). So the comparison runs in a small pool of long-lived helper
processes (started once, sympy pre-imported); the caller waits on a pipe with `poll()` until the deadline,
and on expiry kills the helper and starts a fresh one. The caller's threads never block beyond the deadline,
a runaway computation never keeps burning CPU, and each helper has an address-space limit.

Protocol: one JSON line per request on the helper's stdin, one JSON line per answer on its stdout. A
helper exits when its stdin closes, so a crashed caller leaves nothing behind.
"""
from __future__ import annotations

import atexit
import json
import os
import select
import subprocess
import sys
import threading
import time
from pathlib import Path

STARTUP_TIMEOUT_S = 60.0


class VerifierUnavailable(RuntimeError):
    """The helper process could not be started: a fault of the machine, never a wrong answer."""


class _Timeout(Exception):
    pass


class _Worker:
    def __init__(self, memory_mb: int | None):
        root = str(Path(__file__).resolve().parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        env.setdefault("OMP_NUM_THREADS", "1")
        args = [sys.executable, "-u", "-m", "rewards.math_worker"]
        if memory_mb:
            args.append(str(int(memory_mb)))
        try:
            self.proc = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.DEVNULL, env=env, close_fds=True)
        except OSError as exc:
            raise VerifierUnavailable(f"cannot start the math verifier helper: {exc}") from exc
        self._buf = b""
        self._poll = select.poll()
        self._poll.register(self.proc.stdout.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        try:
            line = self._readline(time.monotonic() + STARTUP_TIMEOUT_S)
        except (_Timeout, EOFError) as exc:
            self.kill()
            raise VerifierUnavailable("the math verifier helper did not start "
                                      f"({type(exc).__name__}); is sympy installed?") from None
        if json.loads(line).get("ready") is not True:
            self.kill()
            raise VerifierUnavailable("the math verifier helper sent an unexpected greeting")

    def _readline(self, deadline: float) -> bytes:
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise _Timeout()
            if not self._poll.poll(max(1, int(left * 1000))):
                continue
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise EOFError("helper closed its output")
            self._buf += chunk
        line, _, self._buf = self._buf.partition(b"\n")
        return line

    def call(self, request: dict, timeout: float) -> dict:
        payload = (json.dumps(request) + "\n").encode()
        deadline = time.monotonic() + timeout
        try:
            self.proc.stdin.write(payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise EOFError(str(exc)) from None
        return json.loads(self._readline(deadline))

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        try:
            self.proc.kill()
        except OSError:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass

    def close(self) -> None:
        """Ask politely (stdin EOF), then kill."""
        try:
            self.proc.stdin.close()
            self.proc.wait(timeout=2)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()


class WorkerPool:
    """Up to `size` helpers shared by all threads of this process; re-created after a fork."""

    def __init__(self, size: int = 2, memory_mb: int | None = 4096):
        self.size = max(1, int(size))
        self.memory_mb = memory_mb
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._count = 0

    def _check_fork(self) -> None:
        if os.getpid() != self._pid:  # a forked child must not share its parent's pipes
            self._pid = os.getpid()
            self._cond = threading.Condition()
            self._idle, self._count = [], 0

    def _acquire(self) -> _Worker:
        self._check_fork()
        with self._cond:
            while True:
                if self._idle:
                    return self._idle.pop()
                if self._count < self.size:
                    self._count += 1
                    break
                self._cond.wait()
        try:
            return _Worker(self.memory_mb)
        except BaseException:
            with self._cond:
                self._count -= 1
                self._cond.notify()
            raise

    def _release(self, worker: _Worker | None) -> None:
        with self._cond:
            if worker is not None and worker.alive():
                self._idle.append(worker)
            else:
                self._count -= 1
            self._cond.notify()

    def run(self, request: dict, timeout: float) -> dict:
        """Send one request; on timeout or a helper crash the helper is killed and replaced later."""
        worker = self._acquire()
        try:
            return worker.call(request, timeout)
        except _Timeout:
            worker.kill()
            worker = None
            return {"equal": False, "how": f"timed out after {timeout:g} s", "timed_out": True}
        except (EOFError, ValueError) as exc:
            worker.kill()
            worker = None
            return {"equal": False, "how": f"verifier helper died ({exc})", "crashed": True}
        finally:
            self._release(worker)

    def shutdown(self) -> None:
        with self._cond:
            idle, self._idle = self._idle, []
            self._count -= len(idle)
        for w in idle:
            w.close()

    def pids(self) -> list[int]:
        with self._cond:
            return [w.proc.pid for w in self._idle]


def run_in_thread(fn, args: tuple, timeout: float) -> dict:
    """The soft alternative: a daemon thread we stop waiting for (it cannot be killed)."""
    box: dict = {}

    def target():
        try:
            box["result"] = fn(*args)
        except BaseException as exc:  # noqa: BLE001  (the error is handed to the waiting caller)
            box["error"] = exc

    t = threading.Thread(target=target, daemon=True, name="math-verify")
    t.start()
    t.join(timeout)
    if t.is_alive():
        return {"equal": False, "how": f"timed out after {timeout:g} s (thread left running)", "timed_out": True}
    if "error" in box:
        return {"equal": False, "how": f"error: {type(box['error']).__name__}"}
    return box["result"]


_POOLS: list[WorkerPool] = []


@atexit.register
def _shutdown_all() -> None:
    for pool in _POOLS:
        pool.shutdown()


def _serve(memory_mb: int | None) -> None:
    """The helper's main loop (python -m rewards.math_worker [MEMORY_MB])."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the caller; we end on stdin EOF
    if memory_mb:
        try:
            import resource

            limit = int(memory_mb) * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
        except (ImportError, ValueError, OSError):
            pass
    out = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything a library prints must not corrupt the protocol
    from rewards.math_compare import compare

    compare("1", "1")  # warm the caches
    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        try:
            req = json.loads(line)
            verdict = compare(req["gold"], req["answer"], deadline=time.monotonic() + float(req["budget"]),
                              strict_chains=bool(req.get("strict_chains", True)))
            reply = {"equal": verdict.equal, "how": verdict.how, "gold": verdict.gold, "answer": verdict.answer}
        except MemoryError:
            reply = {"equal": False, "how": "out of memory"}
        except Exception as exc:  # noqa: BLE001 - never let one bad request end the helper
            reply = {"equal": False, "how": f"error: {type(exc).__name__}"}
        out.write((json.dumps(reply) + "\n").encode())
        out.flush()


if __name__ == "__main__":
    _serve(int(sys.argv[1]) if len(sys.argv) > 1 else None)
