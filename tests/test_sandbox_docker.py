"""The `docker` sandbox against a real engine: runs, files, limits, the warm pool, and that no container
outlives its owner (normal exit, exception, Ctrl-C, SIGTERM, a crashed owner reaped by `gc`).

The hostile-code battery for this backend lives in test_sandbox_hostile.py.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest

from cwm_envs.errors import SandboxError, UsageError
from cwm_envs.sandbox import Limits, make_sandbox
from cwm_envs.sandbox.docker_backend import ROOT as ROOT_USER, SANDBOX_USER
from cwm_envs.sandbox.images import apt_mirror, ensure_base_image, image_tag, recipe_hash

pytestmark = pytest.mark.docker
ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def _containers(*labels: str) -> list[str]:
    """Ids of containers (running or not) carrying every `key=value` label, asked of the docker CLI."""
    args = ["docker", "ps", "-aq", "--no-trunc", *(f"--filter=label={lab}" for lab in labels)]
    return subprocess.run(args, capture_output=True, text=True, check=True).stdout.split()


def _host_procs_with(marker: str) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{name}/cmdline").read_bytes():
                    found.append(int(name))
            except OSError:
                pass
    return found


@pytest.fixture(scope="module")
def sb(docker_engine):
    box = make_sandbox("docker")
    yield box
    box.close()


@pytest.fixture(scope="module", autouse=True)
def nothing_left_behind():
    """After this module, no container of this test process remains (checked where an engine answers)."""
    yield
    if subprocess.run(["docker", "info"], capture_output=True).returncode == 0:
        assert _containers(f"cwm-envs.owner-pid={os.getpid()}") == []


# ------------------------------------------------------------------------------------------------ base image

def test_apt_mirror_reads_both_source_formats(tmp_path):
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(
        "Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n\n"
        "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n"
        "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm\n")
    assert apt_mirror(tmp_path) == "http://mirror.example/debian"
    (tmp_path / "sources.list.d" / "debian.sources").unlink()
    (tmp_path / "sources.list").write_text("# deb http://commented.example/debian bookworm main\n"
                                            "deb [arch=amd64] http://old.example/debian bookworm main\n")
    assert apt_mirror(tmp_path) == "http://old.example/debian"


def test_base_image_is_built_once_and_reused(docker_engine):
    import docker

    tag = ensure_base_image()                      # `make test` built it already: a no-op
    assert tag == os.environ.get("CWM_BASE_IMAGE", image_tag())
    if tag == image_tag():
        image = docker.from_env().images.get(tag)
        assert image.labels["cwm-envs.recipe"] == recipe_hash("bookworm")
    out = subprocess.run([str(ROOT / ".venv/bin/cwm") if (ROOT / ".venv/bin/cwm").exists() else "cwm",
                          "sandbox", "image"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == tag, out.stderr
    with pytest.raises(UsageError):
        ensure_base_image(suite="not-a-suite!")
    with pytest.raises(SandboxError, match="cannot pull cwm-envs/no-such-image:never"):
        ensure_base_image("cwm-envs/no-such-image:never")        # no registry has it (or none answers)


# ------------------------------------------------------------------------------------------------ runs

def test_shell_argv_python_and_stdin(sb):
    res = sb.run("echo $PWD; echo oops >&2; exit 3")
    assert (res.stdout, res.stderr, res.exit_code, res.timed_out) == ("/work\n", "oops\n", 3, False)
    assert sb.run(["printf", "%s|", "a b", "c"]).stdout == "a b|c|"
    res = sb.run_python("import sys; print(sum(map(int, sys.stdin.read().split())))", stdin="1 2 3 4")
    assert res.ok and res.stdout == "10\n"
    big = "x" * (3 << 20)                          # larger than any pipe buffer: written while reading output
    assert sb.run("wc -c", stdin=big).stdout.strip() == str(len(big))
    assert sb.run("cat", stdin="").stdout == ""
    assert sb.run("echo $CWM_EXTRA", env={"CWM_EXTRA": "seen"}).stdout == "seen\n"
    assert sb.run("pwd", workdir="/tmp").stdout == "/tmp\n"
    with pytest.raises(UsageError):
        sb.run([])
    with pytest.raises(UsageError):
        sb.run("true", timeout=0)


def test_threads_and_asyncio_share_one_sandbox(sb):
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(4) as pool:
        outs = list(pool.map(lambda i: sb.run_python(f"print({i} * {i})").stdout, range(8)))
    assert outs == [f"{i * i}\n" for i in range(8)]

    async def both():
        return await asyncio.gather(sb.arun("echo a"), sb.arun(["echo", "b"]))
    assert [r.stdout for r in asyncio.run(both())] == ["a\n", "b\n"]


def test_files_roundtrip(sb):
    sb.write_file("pkg/mod.py", "VALUE = 41\n")
    sb.write_file("/tmp/abs.bin", b"\x00\xff")
    assert sb.read_file("pkg/mod.py") == b"VALUE = 41\n"
    assert sb.read_file("/tmp/abs.bin") == b"\x00\xff"
    assert "pkg/mod.py" in sb.list_files()
    assert sb.list_files("pkg") == ["pkg/mod.py"]
    assert sb.run_python("import sys; sys.path.insert(0, 'pkg'); import mod; print(mod.VALUE + 1)").stdout == "42\n"
    with pytest.raises(FileNotFoundError):
        sb.read_file("no/such/file")
    with pytest.raises(FileNotFoundError):
        sb.list_files("no/such/dir")


def test_timeout_kills_the_whole_tree_but_spares_other_runs(docker_engine):
    with make_sandbox("docker", pool_size=0, background=True) as box:
        keeper, victim = f"{5000 + uuid.uuid4().int % 1000}.5", f"{6000 + uuid.uuid4().int % 1000}.5"
        res = box.run(f"sleep {keeper} > /dev/null 2>&1 &")          # a background job of an earlier run
        assert res.ok and _host_procs_with(keeper)
        res = box.run(f"setsid sleep {victim} & sleep {victim}", timeout=1)
        assert res.timed_out and res.exit_code is None, res
        assert _host_procs_with(victim) == []
        assert _host_procs_with(keeper), "a run's timeout must not kill other runs' processes"
    assert _host_procs_with(keeper) == []                             # gone with its container


def test_leftover_processes_are_killed_unless_background(sb):
    marker = f"{7000 + uuid.uuid4().int % 1000}.25"
    res = sb.run(f"setsid sleep {marker} > /dev/null 2>&1 < /dev/null & echo started")
    assert res.stdout == "started\n" and not res.timed_out
    assert _host_procs_with(marker) == []


@pytest.mark.parametrize("exec_server", [True, False], ids=["exec-server", "docker-exec"])
def test_a_forged_marker_does_not_keep_a_process_alive(docker_engine, exec_server):
    """The marker that ties processes to a run is an environment variable: borrowing the container's own
    ("keep"), the server's or a made-up run's must not let a daemon outlive its run."""
    with make_sandbox("docker", pool_size=0, exec_server=exec_server) as box:
        for forged in ("keep", "server", "0" * 32):
            marker = f"{3000 + uuid.uuid4().int % 1000}.5"
            res = box.run(f"CWM_EXEC={forged} setsid sleep {marker} > /dev/null 2>&1 < /dev/null & echo started")
            assert res.stdout == "started\n" and _host_procs_with(marker) == [], forged
        # the runtime's own processes (`runc:[2:INIT]`) are spared; a command may take their name, not their
        # parent outside the container: as a daemon, and as the command itself
        box.run("cp /bin/sleep '/tmp/runc:[2:INIT]'")
        for disguised in ("setsid '/tmp/runc:[2:INIT]' {} > /dev/null 2>&1 < /dev/null & sleep 0.5",
                          "exec '/tmp/runc:[2:INIT]' {} > /dev/null 2>&1 < /dev/null"):
            marker = f"{3000 + uuid.uuid4().int % 1000}.5"
            box.run(disguised.format(marker), timeout=1)
            assert _host_procs_with(marker) == [], disguised
        assert box.run("echo fine").stdout == "fine\n"


def test_per_run_limits(sb):
    res = sb.run_python("x = bytearray(700 * 2**20); print('ok')", limits=Limits(memory_mb=256))
    assert res.limit_hit == "memory" and "ok" not in res.stdout, res
    assert sb.run_python("x = bytearray(700 * 2**20); print('ok')").stdout == "ok\n"   # default 1 GB again
    res = sb.run_python("while True: pass", limits=Limits(cpu_s=1), timeout=10)
    assert res.limit_hit == "cpu" and not res.timed_out, res
    res = sb.run_python("open('/tmp/big', 'wb').write(b'x' * 3 * 2**20)", limits=Limits(file_size_mb=1))
    assert res.limit_hit == "file_size", res
    res = sb.run("yes | head -c 5000", limits=Limits(output_bytes=1000))
    assert res.truncated and res.limit_hit == "output" and len(res.stdout) == 1000, res


def test_network_is_off_by_default_and_can_be_enabled(docker_engine):
    code = "import socket\ntry:\n    socket.create_connection(('10.0.0.1', 9), timeout=2)\nexcept OSError as e:\n    print(e.errno)"
    with make_sandbox("docker", pool_size=0) as box:
        assert box.run("cat /sys/class/net/*/operstate; ls /sys/class/net").stdout.split()[-1] == "lo"
        assert box.run_python(code).stdout.strip() == "101"            # ENETUNREACH, at once
    with make_sandbox("docker", pool_size=0, network=True) as box:
        assert "eth0" in box.run("ls /sys/class/net").stdout


def test_commands_run_unprivileged_on_a_read_only_root(docker_engine):
    """By default a command is an unprivileged user who may write only the capped areas; root comes only when
    asked for, and even root cannot write the image."""
    probe = ("id -u; echo $HOME; for d in /etc /usr/bin /usr/lib/python3/dist-packages /work /tmp /var/tmp /dev/shm $HOME; "
             "do touch $d/probe 2>/dev/null && echo rw $d || echo ro $d; done; cat /etc/shadow > /dev/null 2>&1 || echo no shadow")
    with make_sandbox("docker", pool_size=0) as box:
        box.write_file("deep/dir/f.txt", "x\n")
        lines = box.run(probe + "; echo more >> deep/dir/f.txt && cat deep/dir/f.txt").stdout.splitlines()
        assert lines[:2] == [SANDBOX_USER.split(":")[0], "/home/sandbox"]
        assert [line.split()[0] for line in lines[2:10]] == ["ro"] * 3 + ["rw"] * 5, lines
        assert lines[10:] == ["no shadow", "x", "more"]
    with make_sandbox("docker", pool_size=0, user=ROOT_USER) as box:
        lines = box.run(probe).stdout.splitlines()
        assert lines[:2] == ["0", "/root"] and [line.split()[0] for line in lines[2:10]] == ["ro"] * 3 + ["rw"] * 5
        # PID 1's stdout is the container's log on this host's disk: not even root may write it
        res = box.run("head -c 1M /dev/zero > /proc/1/fd/1")
        assert res.exit_code != 0 and "Permission denied" in res.stderr, res
    with pytest.raises(UsageError):
        make_sandbox("docker", user="nobody")


IPC_MAKE = """import ctypes
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shm = libc.shmget(0x5eed, 1 << 16, 0o1666)
ctypes.memmove(libc.shmat(shm, None, 0), b"left by episode 1", 17)
print(shm >= 0, libc.semget(0x5eed, 1, 0o1666) >= 0, libc.msgget(0x5eed, 0o1666) >= 0)
"""
LEFT_BEHIND = ("for d in /work /tmp /var/tmp /dev/shm $HOME; do echo dirty > $d/left; done; ls /work /tmp /var/tmp /dev/shm $HOME; "
               "wc -l < /proc/sysvipc/shm; wc -l < /proc/sysvipc/sem; wc -l < /proc/sysvipc/msg")


def test_reset_gives_a_pristine_container_from_the_pool(docker_engine):
    """Nothing of an episode is visible after reset(): no file (workdir, /tmp, /var/tmp, /dev/shm, home), no
    process, no SysV shared memory, semaphore or message queue."""
    marker = f"{2000 + uuid.uuid4().int % 1000}.5"
    with make_sandbox("docker", pool_size=1, background=True) as box:   # background: the daemon outlives its run
        first = box.container_id
        assert box.run_python(IPC_MAKE).stdout == "True True True\n"
        box.run(f"setsid sleep {marker} > /dev/null 2>&1 < /dev/null &")
        dirty = box.run(LEFT_BEHIND).stdout.split()
        assert dirty.count("left") == 5 and dirty[-3:] == ["2", "2", "2"] and _host_procs_with(marker)
        box.reset()
        assert box.container_id != first
        clean = box.run("ls -A /work /tmp /var/tmp /dev/shm $HOME; "
                        "wc -l < /proc/sysvipc/shm; wc -l < /proc/sysvipc/sem; wc -l < /proc/sysvipc/msg")
        assert clean.stdout.split() == ["/dev/shm:", "/home/sandbox:", "/tmp:", "/var/tmp:", "/work:", "1", "1", "1"], clean
        deadline = time.monotonic() + 30                  # the old one is removed in the background
        while first in _containers("cwm-envs") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert first not in _containers("cwm-envs") and _host_procs_with(marker) == []
        box.reset()
        assert box.run_python("print(6 * 7)").stdout == "42\n"
    with pytest.raises(UsageError):
        box.run("true")
    box.close()                                          # twice is fine


def test_without_a_host_view_the_in_container_helper_does_the_work(docker_engine):
    """A remote engine: no cgroup files, no signals from here. Kills and limits go through the helper."""
    with make_sandbox("docker", pool_size=0) as box:
        box._box.cgroup, box._box.host_kill = {}, False
        marker = f"{8000 + uuid.uuid4().int % 1000}.75"
        res = box.run(f"setsid sleep {marker} & sleep {marker}", timeout=1)
        assert res.timed_out and _host_procs_with(marker) == []
        hidden = (f"# {marker}\nimport ctypes, os, time\nif os.fork() == 0:\n    os.setsid()\n"
                  "    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n    time.sleep(300)\n")  # its marker unreadable
        for timeout in (30, 1):              # left behind by a finished run, then by a timed-out one
            res = box.run_python(hidden + ("" if timeout == 30 else "time.sleep(60)\n"), timeout=timeout)
            assert res.timed_out == (timeout == 1) and _host_procs_with(marker) == [], res
        res = box.run_python("x = bytearray(2 * 2**30)")
        assert res.limit_hit == "memory", res
        assert box.run("echo fine").stdout == "fine\n"


def test_an_unprivileged_command_cannot_signal_the_exec_server(docker_engine):
    with make_sandbox("docker", pool_size=0) as box:
        res = box.run("kill -STOP $PPID; kill -9 $PPID; kill -9 1; echo $?")
        assert res.stderr.count("Operation not permitted") == 3 and res.stdout == "1\n", res
        assert box.run("echo fine").stdout == "fine\n"


@pytest.mark.parametrize("how", ["STOP", "KILL"])
def test_a_stopped_or_killed_exec_server_is_noticed_at_once(docker_engine, how):
    """Root may stop or kill the server that runs its command: the host notices within a second or two (the
    server's heartbeat stops), not after the timeout; the run says so and the next run gets a new server."""
    with make_sandbox("docker", pool_size=0, user=ROOT_USER) as box:
        server = box._box.server
        start = time.monotonic()
        res = box.run(f"kill -{how} $PPID; sleep 60", timeout=60)
        assert time.monotonic() - start < 5, res
        assert res.exit_code is None and not res.timed_out and "exec server" in res.stderr, res
        assert box.run("echo fine").stdout == "fine\n"
        assert box._box.server is not None and box._box.server is not server


def test_an_exec_server_killed_between_runs_is_replaced(docker_engine):
    with make_sandbox("docker", pool_size=0) as box:
        server = box._box.server
        subprocess.run(["docker", "exec", box.container_id, "python3", "-c", f"import os; os.kill({server.pid}, 9)"],
                       check=True)
        res = box.run("echo still fine")             # on the classic path; the next run starts a new server
        assert res.ok and res.stdout == "still fine\n", res
        assert box.run("echo again").stdout == "again\n"
        assert box._box.server is not None and box._box.server is not server


@pytest.mark.parametrize("user,exec_server", [(SANDBOX_USER, True), (ROOT_USER, True), (ROOT_USER, False)],
                         ids=["user", "root", "root-docker-exec"])
def test_killing_everything_ends_that_run_and_the_sandbox_goes_on(docker_engine, user, exec_server):
    """`kill -9 -1` (and `kill 1`) kill whatever the command may signal; the container's init survives them, the
    run ends with what the command did (or, if it took the exec server with it, says so), the next run works
    in the same container."""
    with make_sandbox("docker", pool_size=0, user=user, exec_server=exec_server) as box:
        first = box.container_id
        start = time.monotonic()
        res = box.run("kill -9 -1; kill -9 1; kill 1; sleep 1; echo survived", timeout=30)
        assert time.monotonic() - start < 10
        assert res.stdout == "survived\n" or (res.exit_code is None and "exec server" in res.stderr), res
        assert box.run("echo fine").stdout == "fine\n" and box.container_id == first


def test_a_container_killed_from_outside_is_an_infra_error_once_then_replaced(docker_engine):
    with make_sandbox("docker", pool_size=0) as box:
        first = box.container_id
        subprocess.run(["docker", "kill", first], check=True, capture_output=True)
        with pytest.raises(SandboxError):
            box.run("echo lost")
        assert box.container_id != first and box.run("echo fine").stdout == "fine\n"


def test_commands_cannot_reach_the_exec_servers_pipes_or_memory(docker_engine):
    """The server that runs a command (its parent) is closed to it through /proc, for root too: no forged
    replies in its stream, no reading its memory."""
    code = ("import os\nfor what in ('fd/0', 'fd/1', 'mem', 'environ'):\n    try:\n"
            "        open(f'/proc/{os.getppid()}/{what}', 'rb').close()\n        print('opened', what)\n"
            "    except PermissionError:\n        print('denied', what)\n")
    with make_sandbox("docker", pool_size=0) as box:
        res = box.run_python(code)
        assert res.ok and res.stdout.split().count("denied") == 4, res
        assert box.run("cat /proc/self/oom_score_adj").stdout == "1000\n"   # the OOM killer picks commands first


PLANTS = r"""
import os, site, sys, sysconfig
evil = "print('PLANTED', __name__)\n"
user_site = site.getusersitepackages()
dirs = {os.getcwd(), "/tmp", user_site, *[p for p in sys.path if p], sysconfig.get_paths()["purelib"]}
for d in dirs:
    for name, text in (("json.py", evil), ("sitecustomize.py", evil), ("usercustomize.py", evil),
                       ("zz.pth", "import sys; print('PLANTED pth')\n")):
        try:
            os.makedirs(d, exist_ok=True)
            with open(os.path.join(d, name), "w") as f:
                f.write(text)
            print("wrote", d, name)
        except OSError:
            pass
shim = "#!/bin/sh\necho PLANTED shim\n"
for d in os.environ["PATH"].split(":") + ["/usr/lib/python3.11/json"]:
    for name in ("python3", "python3.11", "__init__.py"):
        try:
            with open(os.path.join(d, name), "w") as f:
                f.write(shim)
            os.chmod(os.path.join(d, name), 0o755)
            print("wrote", d, name)
        except OSError:
            pass
"""


@pytest.mark.parametrize("user", [SANDBOX_USER, ROOT_USER], ids=["user", "root"])
def test_what_a_command_leaves_behind_changes_no_later_python(docker_engine, user):
    """A command plants modules, site customisations, .pth files and interpreter shims wherever it may
    write; later Python runs (a judge's) and the sandbox's own programs import none of them."""
    with make_sandbox("docker", pool_size=0, user=user) as box:
        planted = box.run_python(PLANTS)
        assert planted.ok, planted
        assert not any(d.startswith(("/usr", "/etc", "/bin", "/sbin")) for d in planted.stdout.split()[1::3])
        assert "wrote /work json.py" in planted.stdout and "usercustomize.py" in planted.stdout  # it tried
        res = box.run_python("import json, sys; print(json.__file__, sys.flags.isolated)",
                             env={"PYTHONPATH": "/work:/tmp", "PYTHONSTARTUP": "/work/json.py"})
        assert res.ok and res.stdout == "/usr/lib/python3.11/json/__init__.py 1\n", res
        box.write_file("data.bin", b"\x00\x01")           # the file helpers and the exec server: unaffected
        assert box.read_file("data.bin") == b"\x00\x01" and box.run("echo fine").stdout == "fine\n"
        res = box.run("sleep 30", timeout=1)                 # the in-container helper still kills
        assert res.timed_out and box._box.probe() is not None


def test_full_areas_are_a_limit_hit_not_a_wedge(docker_engine):
    """Filling a capped area's bytes or inodes fails that write with ENOSPC, reports limit_hit="disk", and the
    next command (one that cleans up, say) works."""
    with make_sandbox("docker", pool_size=0, disk_mb=16, disk_inodes=512) as box:
        for fill in ("head -c 64M /dev/zero > big", "head -c 64M /dev/zero > /dev/shm/big",
                     "cd /tmp && for i in $(seq 1000); do : > f$i || exit 1; done"):
            res = box.run(fill, timeout=30)
            assert res.limit_hit == "disk" and "No space left on device" in res.stderr, (fill, res)
        res = box.run_python("open('/tmp/more', 'w').write('x')")
        assert res.limit_hit == "disk" and "[Errno 28]" in res.stderr, res
        assert box.run("rm -rf /work/* /tmp/* /dev/shm/*; echo ok > /work/small; cat /work/small").stdout == "ok\n"
        # SysV shared memory outlives its processes and pins memory: a quarter of the memory limit at most
        res = box.run_python("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\nn = 0\n"
                             "while n < 64 and libc.shmget(1000 + n, 64 << 20, 0o1666) >= 0:\n    n += 1\n"
                             "print(n, ctypes.get_errno())")
        assert res.stdout.split() == ["4", "28"], res          # 4 x 64 MB of the 1 GB limit, then ENOSPC
        assert box.run("echo fine").stdout == "fine\n"


def test_a_writable_image_layer_is_capped_from_the_host(docker_engine):
    """With a writable image (as SWE asks), a command that fills it is killed, and a layer left past its cap,
    by one run or by several quick ones, is replaced by a fresh container: never a full host disk."""
    with make_sandbox("docker", pool_size=0, user=ROOT_USER, read_only_root=False, disk_mb=32, disk_inodes=2000) as box:
        first = box.container_id
        start = time.monotonic()
        res = box.run("head -c 4G /dev/zero > /big; echo wrote", timeout=60)
        assert res.limit_hit == "disk" and "wrote" not in res.stdout and time.monotonic() - start < 20, res
        assert box.container_id != first and box.run("ls /big").exit_code != 0
        assert box.run("head -c 20M /dev/zero > /a").ok                         # under the cap: fine
        res = box.run("head -c 20M /dev/zero > /b")                             # together past it
        assert res.limit_hit == "disk" and "replaced" in res.stderr, res
        res = box.run("mkdir /d && cd /d && for i in $(seq 5000); do : > f$i; done", timeout=60)
        assert res.limit_hit == "disk", res
        res = box.run("head -c 64M /dev/zero > /etc/hosts")                     # Docker's own files count too
        assert res.limit_hit == "disk", res
        assert box.run("echo fine").stdout == "fine\n"


# Appended to the standard library's json (and planted as json.py / sitecustomize.py wherever it may write): a
# judge that imports it answers with the nonce it was given and every test passed. On a writable image as root
# this paid the wrong solution of the next episode +1.
FORGE_VERDICT = '''
import json, os, sys
forge = """
import os as _os
_real_loads = loads
def loads(s, *a, **k):
    data = _real_loads(s, *a, **k)
    if isinstance(data, dict) and "nonce" in data:
        units = {str(i): [True, None] for i in range(50)}
        _os.write(1, (data["nonce"] + " " + dumps({"load_error": None, "aborted": None, "units": units}) + "\\\\n").encode())
        _os._exit(0)
    return data
"""
for d in {os.path.dirname(json.__file__), os.getcwd(), "/tmp", *sys.path}:
    for name in ("__init__.py", "json.py", "sitecustomize.py"):
        path = os.path.join(d, name)
        if d and (name == "__init__.py") == (d == os.path.dirname(json.__file__)):
            try:
                with open(path, "a") as f:
                    f.write(("" if name == "__init__.py" else "from json import *\\n") + forge)
            except OSError:
                pass
'''


@pytest.mark.parametrize("user", [SANDBOX_USER, ROOT_USER], ids=["user", "root"])
def test_code_env_on_docker_pays_no_planted_judge_and_survives_kill_all(docker_engine, user):
    """The reported attack: an episode's solution rewrites what the judge of a later episode imports (the
    standard library, site customisation) so a wrong solution is paid +1. And a solution that kills every
    process it can must score -1 without the env raising; the next episode is judged as usual."""
    from cwm_envs.envs.code_env import CodeEnv
    from cwm_envs.tasks import Task

    add = Task(id="t/add", prompt='def add(a, b):\n    """Return a + b."""\n',
               tests="def check(candidate):\n    assert candidate(1, 2) == 3\n    assert candidate(2, 2) == 4\n",
               metadata={"entry_point": "add"})
    poison = FORGE_VERDICT + "def add(a, b):\n    return a + b\n"
    kill_all = "import os\nos.kill(-1, 9)\ndef add(a, b):\n    return a + b\n"
    with make_sandbox("docker", pool_size=0, user=user) as box:
        env = CodeEnv(tasks=[add], sandbox=box, timeout_s=5.0)

        def episode(code):
            env.reset(options={"task": "t/add"})
            return env.step(f"```python\n{code}```\n")

        episode(poison)
        _, reward, _, _, info = episode("def add(a, b):\n    return a - b\n")
        assert reward == -1.0 and info["outcomes"]["failures"][0]["status"] == "wrong answer", info
        _, reward, terminated, _, info = episode(kill_all)
        assert terminated and reward == -1.0, info
        assert episode("def add(a, b):\n    return a + b\n")[1] == 1.0


# ------------------------------------------------------------------------------------------------ lifetime

CHILD = textwrap.dedent("""
    import os, signal, sys, time
    from cwm_envs.sandbox import make_sandbox
    mode = sys.argv[1]
    if mode == "chained":
        signal.signal(signal.SIGTERM, lambda s, f: (print("previous handler ran", flush=True), sys.exit(7)))
    boxes = [make_sandbox("docker", pool_size=1), make_sandbox("docker", pool_size=0)]
    boxes[0].run("true")
    while not boxes[0]._pool:                    # its pooled container is up too
        time.sleep(0.05)
    print("ready", flush=True)
    if mode == "exception":
        raise RuntimeError("the owner crashed")
    if mode == "exit":
        sys.exit(0)
    time.sleep(120)
""")


@pytest.mark.parametrize("mode,sig,expect", [
    ("sigterm", signal.SIGTERM, -signal.SIGTERM),   # dies by the signal, as without the handler
    ("chained", signal.SIGTERM, 7),                 # a handler set before ours still runs
    ("sigint", signal.SIGINT, -signal.SIGINT),      # Ctrl-C: KeyboardInterrupt, atexit, dies by SIGINT
    ("exception", None, 1),
    ("exit", None, 0),
])
def test_no_container_outlives_its_owner(docker_engine, mode, sig, expect):
    child = subprocess.Popen([PY, "-c", CHILD, mode], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        assert child.stdout.readline().strip() == "ready", child.stderr.read()
        mine = f"cwm-envs.owner-pid={child.pid}"
        if sig is not None:
            assert len(_containers(mine)) == 3           # two sandboxes, one with a pooled container
            child.send_signal(sig)
        rc = child.wait(timeout=60)
        out = child.stdout.read()
    finally:
        child.kill()
        child.wait()
    assert rc == expect, child.stderr.read()
    if mode == "chained":
        assert "previous handler ran" in out
    assert _containers(mine) == []


def test_gc_reaps_containers_of_dead_owners_only(docker_engine):
    import docker

    from cwm_envs.sandbox._docker_reaper import HOST_LABEL, LABEL, PID_LABEL, START_LABEL, owner_labels

    dead = subprocess.Popen(["true"])
    dead.wait()
    client = docker.from_env()
    image = ensure_base_image()
    orphan = client.containers.create(image, ["sleep", "infinity"], network_mode="none", labels={
        **owner_labels(), PID_LABEL: str(dead.pid), START_LABEL: "1"})
    reused = client.containers.create(image, ["sleep", "infinity"], network_mode="none", labels={
        **owner_labels(), START_LABEL: "1"})     # our pid, but another process's start time: a reused pid
    alive = client.containers.create(image, ["sleep", "infinity"], network_mode="none", labels=owner_labels())
    try:
        cwm = str(ROOT / ".venv/bin/cwm") if (ROOT / ".venv/bin/cwm").exists() else "cwm"
        out = subprocess.run([cwm, "sandbox", "gc"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert orphan.short_id in out.stdout and reused.short_id in out.stdout
        left = _containers(LABEL, f"{HOST_LABEL}={owner_labels()[HOST_LABEL]}")
        assert orphan.id not in left and reused.id not in left and alive.id in left
    finally:
        for c in (orphan, reused, alive):
            try:
                c.remove(force=True)
            except docker.errors.NotFound:
                pass


def test_no_engine_is_a_clear_error():
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    cwm = str(ROOT / ".venv/bin/cwm") if (ROOT / ".venv/bin/cwm").exists() else "cwm"
    out = subprocess.run([cwm, "sandbox", "gc"], capture_output=True, text=True, env=env, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "no Docker engine answers" in out.stderr, out.stderr
    code = ("from cwm_envs.errors import DockerUnavailable\nfrom cwm_envs.sandbox import make_sandbox\n"
            "try:\n    make_sandbox('docker')\nexcept DockerUnavailable as e:\n    print('raised', e)\n")
    out = subprocess.run([PY, "-c", code], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT)
    assert out.stdout.startswith("raised no Docker engine answers"), out.stderr
