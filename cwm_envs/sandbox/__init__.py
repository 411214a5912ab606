"""Sandboxes in which model-written code and commands run. Pick a backend by name:

>>> from cwm_envs.sandbox import make_sandbox
>>> with make_sandbox("local") as sb:          # doctest: +SKIP
...     sb.run("print(1 + 1)").stdout
'2\\n'
"""
from __future__ import annotations

from cwm_envs.sandbox.base import ExecResult, Limits, Sandbox

BACKENDS = {
    "local": "cwm_envs.sandbox.local:LocalSandbox",
    "docker": "cwm_envs.sandbox.docker_backend:DockerSandbox",
}


def make_sandbox(name: str = "local", **kwargs) -> Sandbox:
    """Build a sandbox of the named backend; backends load lazily so `local` never needs the docker SDK."""
    import importlib

    from cwm_envs.errors import UsageError

    if name not in BACKENDS:
        raise UsageError(f"unknown sandbox backend {name!r}; choose one of {sorted(BACKENDS)}")
    module, cls = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), cls)(**kwargs)


__all__ = ["ExecResult", "Limits", "Sandbox", "make_sandbox", "BACKENDS"]
