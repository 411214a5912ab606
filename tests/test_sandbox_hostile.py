"""Hostile code, for every sandbox backend: each attack is contained, reported in the ExecResult, and the next
execution works. After the battery no stray process and no temp dir remains.

Backends are parameters: add one to HOSTILE_BACKENDS (a Docker one takes the `docker_engine` fixture, which
fails under CI=true when no engine is up) and teach `_open` / `_run_py` how to start and call it.
"""
from __future__ import annotations

import os
import socket
import time
import uuid
from pathlib import Path

import pytest

from cwm_envs.sandbox import Limits, make_sandbox

HOSTILE_BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("docker", id="docker", marks=pytest.mark.docker),             # through the exec server
    pytest.param("docker-exec", id="docker-exec", marks=pytest.mark.docker),   # one `docker exec` per run
]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module", params=HOSTILE_BACKENDS)
def backend(request):
    if request.param.startswith("docker"):
        request.getfixturevalue("docker_engine")
    return request.param


@pytest.fixture(scope="module")
def tmp_root(tmp_path_factory):
    return tmp_path_factory.mktemp("sandbox-root")


def _open(backend: str, tmp_root: Path):
    if backend == "local":
        return make_sandbox("local", tmp_root=tmp_root)
    if backend.startswith("docker"):  # its default user is unprivileged, as in the local jail
        return make_sandbox("docker", exec_server=backend == "docker")
    return make_sandbox(backend)


def _run_py(backend: str, sb, code: str, **kw):
    """Python source in the backend's usual way (local: a forked child of the warm server)."""
    return sb.run_python(code, **kw)


@pytest.fixture(scope="module")
def sb(backend, tmp_root):
    box = _open(backend, tmp_root)
    yield box
    box.close()
    assert list(tmp_root.iterdir()) == [], "the sandbox left its temp dir behind"


@pytest.fixture
def check_alive(backend, sb):
    """After each attack the same sandbox still runs code normally."""
    yield
    res = _run_py(backend, sb, "print('alive', 6 * 7)")
    assert res.ok and res.stdout == "alive 42\n", res


def _procs_with(marker: str) -> list[int]:
    """Host pids whose command line holds `marker` (read from /proc: no psutil needed)."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit() and int(name) != os.getpid():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


def _procs_of_uid(uid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                status = Path(f"/proc/{name}/status").read_text()
            except OSError:
                continue
            if any(line.startswith("Uid:") and int(line.split()[1]) == uid for line in status.splitlines()):
                found.append(int(name))
    return found


def _marker() -> str:
    """A unique sleep duration (seconds) that identifies the process on the host."""
    return f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"


def test_the_named_calls_mean_the_same_on_every_backend(backend, sb):
    """run_python, run_shell and exec take the same keyword arguments everywhere and mean the same thing,
    whatever a backend's `run(str)` means; a call given the wrong shape of command is a usage error."""
    from cwm_envs.errors import UsageError

    kw = {"stdin": "3 4", "timeout": 10, "limits": Limits(output_bytes=1000)}
    res = sb.run_python("import sys; a, b = map(int, sys.stdin.read().split()); print(a * b)", **kw)
    assert (res.stdout, res.exit_code) == ("12\n", 0), res
    res = sb.run_shell("read a b; echo $((a * b)); echo oops >&2; exit 3", **kw)
    assert (res.stdout, res.stderr, res.exit_code) == ("12\n", "oops\n", 3), res
    res = sb.exec(["printf", "%s|", "a b", "$HOME"], **kw)         # no shell between: nothing expands
    assert (res.stdout, res.exit_code) == ("a b|$HOME|", 0), res
    res = sb.run_shell("yes | head -c 5000", **kw)                  # the run's limits over the sandbox's
    assert res.limit_hit == "output" and res.truncated and len(res.stdout) <= 1000, res
    for bad in (lambda: sb.exec("ls"), lambda: sb.exec([]), lambda: sb.run_shell(["ls"]),
                lambda: sb.run_python(["print(1)"])):
        with pytest.raises(UsageError):
            bad()


def test_limits_merge_field_by_field():
    base = Limits(memory_mb=1024, processes=64, output_bytes=1 << 20)
    assert base.merged(None) is base
    assert base.merged(Limits(processes=8, cpu_s=2.0)) == Limits(cpu_s=2.0, memory_mb=1024, processes=8,
                                                                 output_bytes=1 << 20)


def test_network_is_unreachable_and_fails_fast(backend, sb, check_alive):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = ("import socket, time\n"
            f"for host, port in (('127.0.0.1', {port}), ('1.1.1.1', 80), ('8.8.8.8', 53)):\n"
            "    t = time.monotonic()\n"
            "    try:\n"
            "        socket.create_connection((host, port), timeout=5)\n"
            "        print('CONNECTED', host)\n"
            "    except OSError as e:\n"
            "        print('blocked', host, round(time.monotonic() - t, 2))\n")
    try:
        listener.settimeout(0.1)
        res = _run_py(backend, sb, code, timeout=20)
        with pytest.raises(socket.timeout):
            listener.accept()  # the host's listener saw no one
    finally:
        listener.close()
    assert "CONNECTED" not in res.stdout and res.stdout.count("blocked") == 3, res
    assert all(float(line.split()[-1]) < 1.0 for line in res.stdout.splitlines())  # fast, not a timeout


def test_writing_outside_the_working_dir_never_reaches_the_host(backend, sb, check_alive):
    name = f"cwm-probe-{uuid.uuid4().hex}"
    targets = [f"/{name}", f"/etc/{name}", f"/usr/{name}", f"/root/{name}", f"/tmp/{name}", str(ROOT / name)]
    code = ("import sys\n"
            f"for path in {targets!r}:\n"
            "    try:\n"
            "        open(path, 'w').write('pwned')\n"
            "        print('wrote', path)\n"
            "    except OSError as e:\n"
            "        print('denied', path)\n")
    res = _run_py(backend, sb, code)
    assert res.exit_code == 0, res
    for target in targets:
        assert not Path(target).exists(), f"{target} reached the host"
    if backend == "local":  # only the private /tmp (a tmpfs of the jail) is writable outside the working dir
        assert [line.split()[1] for line in res.stdout.splitlines() if line.startswith("wrote")] == [f"/tmp/{name}"]


def test_files_planted_outside_cannot_be_read(backend, sb, check_alive):
    secret = f"SECRET-{uuid.uuid4().hex}"
    planted = [ROOT / f".cwm-planted-{uuid.uuid4().hex}", Path.home() / f".cwm-planted-{uuid.uuid4().hex}"]
    for path in planted:
        path.write_text(secret)
    try:
        paths = [str(p) for p in planted] + [str(ROOT / "pyproject.toml"), "/etc/shadow"]
        code = ("import os\n"
                f"for path in {paths!r}:\n"
                "    try:\n"
                "        print(path, open(path).read())\n"
                "    except OSError as e:\n"
                "        print(path, 'unreadable', type(e).__name__)\n"
                f"print(os.path.exists({str(ROOT)!r}))\n")
        res = _run_py(backend, sb, code)
    finally:
        for path in planted:
            path.unlink()
    assert res.exit_code == 0, res
    assert secret not in res.stdout + res.stderr
    assert "[project]" not in res.stdout
    assert res.stdout.count("unreadable") == len(paths)


def test_fork_bomb_is_contained(backend, sb, check_alive):
    start = time.monotonic()
    res = _run_py(backend, sb, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                  timeout=3)
    assert res.timed_out and res.limit_hit == "processes", res
    assert time.monotonic() - start < 10
    if backend == "local":  # at most the pre-forked spare child, waiting for the next execution
        assert len(_procs_of_uid(sb.uid)) <= 1


def test_allocating_8_gb_hits_the_memory_limit(backend, sb, check_alive):
    res = _run_py(backend, sb, "x = bytearray(8 * 2**30)\nprint('allocated')")
    assert res.limit_hit == "memory" and "allocated" not in res.stdout, res


def test_cpu_bound_loop_is_killed_on_the_wall_clock(backend, sb, check_alive):
    start = time.monotonic()
    res = _run_py(backend, sb, "while True:\n    pass\n", timeout=1)
    assert res.timed_out and res.exit_code is None, res
    assert time.monotonic() - start < 3


def test_endless_printing_is_capped_and_marked(backend, sb, check_alive):
    res = _run_py(backend, sb, "while True:\n    print('spam' * 100)\n", timeout=10,
                  limits=Limits(output_bytes=64 << 10))
    assert res.truncated and res.limit_hit == "output", res
    assert len(res.stdout.encode()) <= 64 << 10 and res.stdout.startswith("spam")


def test_setsid_child_sleeping_past_the_timeout_is_killed(backend, sb, check_alive):
    marker = _marker()
    code = ("import os, time\n"
            "if os.fork() == 0:\n"
            "    os.setsid()\n"
            f"    os.execvp('sleep', ['sleep', '{marker}'])\n"
            "time.sleep(60)\n")
    res = _run_py(backend, sb, code, timeout=1)
    assert res.timed_out, res
    assert _procs_with(marker) == []
    # the same when the parent returns at once and leaves a daemon behind
    res = _run_py(backend, sb, code.replace("time.sleep(60)", "print('parent done')"), timeout=5)
    assert res.stdout == "parent done\n"
    assert _procs_with(marker) == []


def test_killing_the_parent_is_contained(backend, sb, check_alive):
    res = _run_py(backend, sb, "import os\nos.kill(os.getppid(), 9)\nprint('after')")
    assert not res.timed_out, res  # reported as the code's own outcome, and the sandbox goes on
    if backend == "docker-exec":  # a `docker exec`'d process has no parent inside: getppid() is 0, its own group
        assert res.exit_code == 137 and "after" not in res.stdout, res
    else:  # the sandboxed uid may not signal the server at all
        assert res.exit_code == 1 and "PermissionError" in res.stderr and "after" not in res.stdout, res


def test_ignoring_sigterm_does_not_outlive_the_timeout(backend, sb, check_alive):
    start = time.monotonic()
    res = _run_py(backend, sb, "import signal, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                               "time.sleep(60)\n", timeout=1)
    assert res.timed_out, res
    assert time.monotonic() - start < 4


def test_nothing_is_left_after_the_battery(backend, tmp_path):
    """A fresh sandbox takes the worst offenders, is closed, and leaves no process or temp dir behind."""
    marker = _marker()
    box = _open(backend, tmp_path)
    uid = getattr(box, "uid", None)
    try:
        _run_py(backend, box, "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n",
                timeout=1)
        _run_py(backend, box, f"import os\nif os.fork() == 0:\n    os.setsid()\n    os.execvp('sleep', ['sleep', '{marker}'])\n",
                timeout=1)
        _run_py(backend, box, "while True:\n    print('x')\n", timeout=1)
    finally:
        box.close()
    assert _procs_with(marker) == []
    if uid is not None:
        assert _procs_of_uid(uid) == []
    assert list(tmp_path.iterdir()) == []
