"""One error root for the suite, with infrastructure faults kept apart from user and model errors.

An `InfraError` (sandbox died, Docker unreachable, the harness itself timed out) is reported and retried,
never scored as a wrong answer. A `UsageError` is something a user did (bad path, unknown id, broken
dataset row) and the `cwm` command prints it as one line, not a traceback.
"""


class CwmError(Exception):
    """Root of every error this suite raises on purpose."""


class UsageError(CwmError):
    """Bad input from a user: a missing file, an unknown name, a malformed dataset row."""


class InfraError(CwmError):
    """The machinery failed, not the model: retry it, never score it."""


class SandboxError(InfraError):
    """A sandbox could not be started or stopped answering."""


class DockerUnavailable(SandboxError):
    """No Docker engine answers (start `dockerd`, or run `make test`, which starts one)."""
