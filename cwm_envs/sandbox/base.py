"""The sandbox contract: one interface, several backends (`local`, `docker`).

Outcomes are data, not exceptions: a timeout, a limit hit or a crash of the sandboxed code comes back in an
`ExecResult`. Only a failure of the machinery itself (the sandbox cannot start, the engine is gone) raises,
as a `SandboxError`.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Resource limits for one execution. None leaves a limit at the backend's default."""

    cpu_s: float | None = None          # CPU seconds (RLIMIT_CPU)
    memory_mb: int | None = None        # address space (RLIMIT_AS) / container memory
    processes: int | None = None        # RLIMIT_NPROC / pids limit
    file_size_mb: int | None = None     # largest file one execution may write (RLIMIT_FSIZE)
    open_files: int | None = None       # RLIMIT_NOFILE
    output_bytes: int | None = None     # cap on stdout and on stderr each; the excess is dropped and marked


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
    def run(self, code_or_cmd: str | list[str], stdin: str | None = None, timeout: float = 10.0,
            limits: Limits | None = None) -> ExecResult:
        """Run Python code (a string) or a command (a list of args, or a shell string for docker)."""

    @abc.abstractmethod
    def run_python(self, code: str, **kwargs) -> ExecResult:
        """Run Python source on any backend (a `str` given to `run` is Python locally but shell in docker)."""

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
