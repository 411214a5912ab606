"""Why an instance never reached grading: one class per kind of infrastructure failure, and a classifier.

A runner reads these classes in `cwm swe validate`'s table and in the run summary's `failure_reasons`, so it
sees at a glance what to fix on the machine: a resolver conflict (the pinned requirements of an old commit
cannot be satisfied together), a missing distribution (the index has no release the image can install, e.g.
a conda-only package the tests need), a compile error (a C extension or a sdist failed to build in the image),
an eval timeout, or another fault of the machinery (Docker, git, an unknown error).

>>> classify("ResolverConflict: No solution found when resolving dependencies")
'resolver conflict'
>>> classify("EvalTimeout: django__django-1: the eval script ran past 1800 s")
'eval timeout'
>>> classify("InfraError: docker build x failed: error: command 'gcc' failed with exit code 1")
'compile error'
"""
from __future__ import annotations

import re

from cwm_envs.errors import InfraError

CLASSES = ("resolver conflict", "missing distribution", "compile error", "eval timeout", "network", "other")


class ResolverConflict(InfraError):
    """The requirements of an environment cannot be satisfied together (as of the instance's date)."""

    kind = "resolver conflict"


class MissingDistribution(InfraError):
    """The index has no installable release of a requirement the image or the instance's tests need."""

    kind = "missing distribution"


class CompileError(InfraError):
    """Building the repository or a source distribution in the image failed (compiler, Cython, headers)."""

    kind = "compile error"


# Checked in order: the first class whose pattern matches the error text wins.
_PATTERNS = (
    ("eval timeout", r"EvalTimeout|eval script ran past|Timeout error: \d+ seconds exceeded"),
    ("missing distribution", r"MissingDistribution|No matching distribution found|not found in the package "
                             r"registry|no version of \S+ that satisfies|conda-only"),
    ("resolver conflict", r"ResolverConflict|No solution found when resolving|ResolutionImpossible|"
                          r"conflicting dependencies|requirements are unsatisfiable"),
    ("compile error", r"CompileError|error: command '[^']*(gcc|g\+\+|cc|gfortran)' failed|Cython\.Compiler|"
                      r"fatal error: \S+\.h: No such file|Failed building wheel|Failed to build|"
                      r"subprocess-exited-with-error|error: legacy-install-failure|setup\.py .*(egg_info|develop)"),
    ("network", r"Temporary failure in name resolution|Network is unreachable|Could not resolve host|"
                r"Connection refused|cannot clone"),
)


def classify(error: str | BaseException | None) -> str:
    """The failure class of an error (an exception, or the `Type: message` text a run summary keeps)."""
    if error is None:
        return "other"
    if isinstance(error, BaseException):
        kind = getattr(error, "kind", None)
        if kind in CLASSES:
            return kind
        error = f"{type(error).__name__}: {error}"
    for kind, pattern in _PATTERNS:
        if re.search(pattern, error):
            return kind
    return "other"
