"""Process-level care of the docker backend's containers: the engine client, owner labels, and the reaper.

Every container is labelled `cwm-envs` with its owner's pid, process start time and host. The first sandbox
of a process (and `cwm sandbox gc`) removes containers whose owner is dead (`gc_stale`); atexit, a chained
SIGTERM handler and `DockerSandbox.close()` remove the process's own, so none outlives an exit, exception,
Ctrl-C or SIGTERM. A forked child forgets its parent's client and sandboxes and removes none of them.
"""
from __future__ import annotations

import atexit
import os
import signal
import socket
import threading
import weakref

from cwm_envs.errors import DockerUnavailable

LABEL = "cwm-envs"
PID_LABEL, START_LABEL, HOST_LABEL = "cwm-envs.owner-pid", "cwm-envs.owner-start", "cwm-envs.owner-host"

_lock = threading.RLock()
_client = None
live: weakref.WeakSet = weakref.WeakSet()   # the open DockerSandboxes of this process
_hooks_pid: int | None = None
_gc_done_pid: int | None = None
_sigterm_pid: int | None = None
_prev_sigterm = None


def docker_client():
    """The process's Docker client; raises DockerUnavailable with a clear message when no engine answers."""
    global _client
    with _lock:
        if _client is None:
            import docker

            try:
                client = docker.from_env(timeout=120)
                client.ping()
            except Exception as exc:
                raise DockerUnavailable(
                    f"no Docker engine answers ({type(exc).__name__}: {exc}); start dockerd "
                    "(`bash scripts/ensure_docker.sh`) or run `make test`, which starts one") from exc
            _client = client
        return _client


def _proc_start(pid: int) -> str | None:
    """The start time of a process in clock ticks since boot, to tell a live owner from a reused pid."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[19].decode()
    except (OSError, IndexError):
        return None


def owner_labels() -> dict[str, str]:
    pid = os.getpid()
    return {LABEL: "1", PID_LABEL: str(pid), START_LABEL: _proc_start(pid) or "", HOST_LABEL: socket.gethostname()}


def _owner_alive(labels: dict[str, str]) -> bool:
    try:
        pid = int(labels[PID_LABEL])
    except ValueError:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    start = labels.get(START_LABEL)
    return not start or _proc_start(pid) in (None, start)


def gc_stale(client=None) -> list[dict]:
    """Remove containers labelled `cwm-envs` whose owner process is dead; return what was removed.

    Only containers made on this host are judged: a pid means nothing on another host.
    """
    client = client or docker_client()
    host = socket.gethostname()
    removed = []
    for c in client.containers.list(all=True, filters={"label": LABEL}, ignore_removed=True):
        labels = c.labels or {}
        if PID_LABEL not in labels or labels.get(HOST_LABEL) != host:
            continue                         # not made by a sandbox, or elsewhere: nothing to judge it by
        if _owner_alive(labels):
            continue
        remove_quietly(c)
        removed.append({"id": c.short_id, "name": c.name, "owner_pid": labels.get(PID_LABEL, "?")})
    return removed


def remove_quietly(container) -> None:
    try:
        container.remove(force=True, v=True)
    except Exception:   # already gone, or the engine is going down: nothing left to do
        pass


def _cleanup_all() -> None:
    """Close every sandbox of this process, then remove anything else labelled with its pid."""
    if _hooks_pid != os.getpid():           # a forked child must not remove its parent's containers
        return
    closers = [threading.Thread(target=sb.close) for sb in list(live)]   # in parallel: exit stays quick
    for t in closers:
        t.start()
    for t in closers:
        t.join(timeout=90)
    if _client is not None:
        try:
            own = {"label": [f"{PID_LABEL}={os.getpid()}", f"{HOST_LABEL}={socket.gethostname()}"]}
            for c in _client.containers.list(all=True, filters=own, ignore_removed=True):
                remove_quietly(c)
        except Exception:
            pass


def _on_sigterm(signum, frame):
    _cleanup_all()
    prev = _prev_sigterm
    if callable(prev):
        prev(signum, frame)
    else:                                    # SIG_DFL (or unknown): die by the signal, as without us
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGTERM)


def _after_fork_in_child() -> None:
    global _client, _hooks_pid, _gc_done_pid, _sigterm_pid
    _client, _hooks_pid, _gc_done_pid, _sigterm_pid = None, None, None, None
    live.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def install_process_hooks(client) -> None:
    """Once per process: reap dead owners' containers, and make sure ours go at exit and on SIGTERM.

    The SIGTERM handler can only be set from the main thread; it is set by the first sandbox made there."""
    global _hooks_pid, _gc_done_pid, _prev_sigterm, _sigterm_pid
    with _lock:
        if _gc_done_pid != os.getpid():
            _gc_done_pid = os.getpid()
            gc_stale(client)
        if _hooks_pid != os.getpid():
            _hooks_pid = os.getpid()
            atexit.register(_cleanup_all)
        if _sigterm_pid != os.getpid() and threading.current_thread() is threading.main_thread():
            _sigterm_pid = os.getpid()
            prev = signal.getsignal(signal.SIGTERM)
            if prev is not signal.SIG_IGN and prev is not _on_sigterm:
                _prev_sigterm = prev
                signal.signal(signal.SIGTERM, _on_sigterm)
