"""The sandbox contract: one interface, several backends (`local`, `docker`).

Outcomes are data, not exceptions: a timeout, a limit hit or a crash of the sandboxed code comes back in an
`ExecResult`. Only a failure of the machinery itself (the sandbox cannot start, the engine is gone) raises,
as a `SandboxError`.

Every backend takes the same calls with the same keyword arguments (`stdin`, `timeout`, `limits`):
`run_python(code)` runs Python source, `run_shell(command)` a shell command line, `exec(argv)` a program with
its arguments. `run(str)` is each backend's native form (Python on `local`, shell on `docker`); portable code
uses the three named calls.
"""
from __future__ import annotations

import abc
import asyncio
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from cwm_envs.errors import UsageError


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution. None leaves a limit at the backend's default."""

    cpu_s: float | None = None          # CPU seconds (RLIMIT_CPU)
    memory_mb: int | None = None        # address space (RLIMIT_AS) / container memory
    processes: int | None = None        # RLIMIT_NPROC / pids limit
    file_size_mb: int | None = None     # largest file one execution may write (RLIMIT_FSIZE)
    open_files: int | None = None       # RLIMIT_NOFILE
    output_bytes: int | None = None     # cap on stdout and on stderr each; the excess is dropped and marked

    def merged(self, over: Limits | None) -> Limits:
        """These limits with every field that `over` sets (not None) taken from it: a run's limits laid over
        a sandbox's defaults, or a sandbox's over its backend's.

        >>> Limits(memory_mb=1024, processes=64).merged(Limits(processes=8, cpu_s=2))
        Limits(cpu_s=2, memory_mb=1024, processes=8, file_size_mb=None, open_files=None, output_bytes=None)
        """
        if over is None:
            return self
        return dataclasses.replace(self, **{f.name: getattr(over, f.name) for f in dataclasses.fields(over)
                                            if getattr(over, f.name) is not None})


@dataclass(frozen=True)
class ExecResult:
    """What one execution did. `limit_hit` names the limit ("memory", "cpu", "output", ...) or is None."""

    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool = False
    limit_hit: str | None = None
    duration_s: float = 0.0
    truncated: bool = False

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.timed_out and self.limit_hit is None


class Sandbox(abc.ABC):
    """Runs untrusted code or commands, keeps a private working directory, and cleans up after itself."""

    name: str = "base"

    @abc.abstractmethod
    def run(self, code_or_cmd: str | list[str], stdin: str | bytes | None = None, timeout: float = 10.0,
            limits: Limits | None = None) -> ExecResult:
        """The backend's native call: a list of args is a command everywhere; a string is Python source on
        `local` and a shell command on `docker`."""

    @abc.abstractmethod
    def run_python(self, code: str, *, stdin: str | bytes | None = None, timeout: float = 10.0,
                   limits: Limits | None = None) -> ExecResult:
        """Run Python source, the same on every backend."""

    def run_shell(self, command: str, *, stdin: str | bytes | None = None, timeout: float = 10.0,
                  limits: Limits | None = None) -> ExecResult:
        """Run a shell command line (`bash -c COMMAND`), the same on every backend."""
        if not isinstance(command, str):
            raise UsageError(f"run_shell takes the command line as a string, got {command!r:.80}")
        return self.exec(["bash", "-c", command], stdin=stdin, timeout=timeout, limits=limits)

    def exec(self, argv: Sequence[str], *, stdin: str | bytes | None = None, timeout: float = 10.0,
             limits: Limits | None = None) -> ExecResult:
        """Run a program with its arguments (no shell between), the same on every backend."""
        if isinstance(argv, str) or not argv or not all(isinstance(a, str) for a in argv):
            raise UsageError(f"exec takes a non-empty list of str, got {argv!r:.80}")
        return self.run(list(argv), stdin=stdin, timeout=timeout, limits=limits)

    async def arun(self, code_or_cmd, stdin=None, timeout: float = 10.0, limits: Limits | None = None, **kwargs):
        """`run` for asyncio: executes in a worker thread so the event loop keeps going."""
        return await asyncio.to_thread(self.run, code_or_cmd, stdin, timeout, limits, **kwargs)

    @abc.abstractmethod
    def write_file(self, path: str, content: str | bytes) -> None: ...

    @abc.abstractmethod
    def read_file(self, path: str) -> bytes: ...

    @abc.abstractmethod
    def list_files(self, path: str = ".") -> list[str]: ...

    @abc.abstractmethod
    def reset(self) -> None:
        """Make the sandbox pristine for a new episode: afterwards no file, process, shared memory segment or
        IPC object that an earlier run made is visible, and the next run sees what a new sandbox would.
        Limits and settings stay. Backends keep a spare warm so that this is fast (a swap, not a start)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release every process, container and temp dir; safe to call twice."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
