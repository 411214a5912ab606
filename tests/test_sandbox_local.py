"""The `local` sandbox as its users call it: code and commands, files, limits, threads, asyncio, Ray, restarts.

Hostile code (escapes, bombs, floods) is in test_sandbox_hostile.py.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import pytest

from cwm_envs.errors import SandboxError, UsageError
from cwm_envs.sandbox import Limits, make_sandbox
from cwm_envs.sandbox.local import JAIL_WORKDIR, LocalSandbox


@pytest.fixture
def sb(tmp_path):
    box = LocalSandbox(tmp_root=tmp_path)
    yield box
    box.close()


def _descendants(pid: int) -> list[int]:
    """Host pids below `pid`, nearest first."""
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                stat = Path(f"/proc/{name}/stat").read_text()
            except OSError:
                continue
            kids.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(name))
    out, todo = [], [pid]
    while todo:
        for kid in kids.get(todo.pop(0), []):
            out.append(kid)
            todo.append(kid)
    return out


def _server_python_pid(box: LocalSandbox) -> int:
    for pid in _descendants(box.server_pid):  # outer bwrap -> bwrap's init -> the python server
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"python" in os.path.basename(argv[0]) and b"-c" in argv:
            return pid
    raise AssertionError("no fork-server process found under bwrap")


def test_runs_code_with_stdin_and_exit_code(sb):
    res = sb.run("import sys\nprint(sum(i * i for i in range(1000)), sys.stdin.read().upper())", stdin="abc")
    assert res.ok and res.stdout == "332833500 ABC\n" and res.stderr == ""
    assert 0 < res.duration_s < 1
    assert sb.run("import sys; sys.exit(3)").exit_code == 3
    err = sb.run("def f(:\n")
    assert err.exit_code == 1 and "SyntaxError" in err.stderr and not err.ok
    boom = sb.run("def f():\n    raise ValueError('nope')\nf()")
    assert boom.exit_code == 1 and "ValueError: nope" in boom.stderr
    assert "raise ValueError('nope')" in boom.stderr  # the source line is shown, as python -c would not


def test_each_execution_is_a_fresh_process(sb):
    sb.run("import json\njson.dumps = None\nX = 1")
    res = sb.run("import json, random\nprint(json.dumps([1]), 'X' in globals(), random.random())")
    again = sb.run("import random\nprint(random.random())")
    assert res.stdout.split()[:2] == ["[1]", "False"]
    assert res.stdout.split()[2] != again.stdout.strip()  # random is reseeded in every fork


def test_commands_run_in_the_same_jail(sb):
    res = sb.run(["sh", "-c", "pwd; id -u; echo oops >&2; exit 4"])
    pwd, uid = res.stdout.split()
    assert pwd == JAIL_WORKDIR and int(uid) == sb.uid and uid != "0"
    assert res.stderr == "oops\n" and res.exit_code == 4
    missing = sb.run(["no-such-program-xyz"])
    assert missing.exit_code == 127 and "no-such-program-xyz" in missing.stderr
    assert sb.run(["python3", "-c", "print(6 * 7)"]).stdout == "42\n"


def test_files_round_trip_and_stay_inside(sb, tmp_path):
    sb.write_file("pkg/helper.py", "VALUE = 41\n")
    sb.write_file("data.bin", b"\x00\x01")
    res = sb.run("from pkg.helper import VALUE\n"
                 "import os\nos.makedirs('out', exist_ok=True)\nopen('out/r.txt', 'w').write(str(VALUE + 1))\n"
                 "print(open('data.bin', 'rb').read())")
    assert res.ok, res.stderr
    assert res.stdout == "b'\\x00\\x01'\n"
    assert sb.read_file("out/r.txt") == b"42"
    assert sb.read_file(f"{JAIL_WORKDIR}/out/r.txt") == b"42"
    assert sb.list_files() == ["data.bin", "out/r.txt", "pkg/helper.py"]
    assert sb.list_files("pkg") == ["pkg/helper.py"]
    for bad in ("../escape", "/etc/passwd", "a/../../b"):
        with pytest.raises(UsageError):
            sb.write_file(bad, "x")
        with pytest.raises(UsageError):
            sb.read_file(bad)
    with pytest.raises(FileNotFoundError):
        sb.read_file("nope.txt")


def test_links_made_by_the_code_are_never_followed_by_the_host(sb, tmp_path):
    secret = tmp_path / "host-secret.txt"
    secret.write_text("host only")
    res = sb.run(f"import os\nos.symlink({str(secret)!r}, 'leak')\nos.symlink('/etc', 'etcdir')")
    assert res.ok, res.stderr
    with pytest.raises(UsageError):
        sb.read_file("leak")
    with pytest.raises(UsageError):
        sb.write_file("leak", "overwritten")
    with pytest.raises(UsageError):
        sb.write_file("etcdir/evil", "x")
    assert secret.read_text() == "host only"
    assert not Path("/etc/evil").exists()


def test_limits_are_reported(sb):
    out = sb.run("print('x' * 5000)", limits=Limits(output_bytes=1000))
    assert out.truncated and out.limit_hit == "output" and len(out.stdout) == 1000
    cpu = sb.run("while True: pass", timeout=10, limits=Limits(cpu_s=1))
    assert cpu.limit_hit == "cpu" and not cpu.timed_out and cpu.duration_s < 5
    mem = sb.run("x = bytearray(300 << 20)", limits=Limits(memory_mb=200))
    assert mem.limit_hit == "memory"
    assert sb.run("x = bytearray(300 << 20); print(len(x) >> 20)").stdout == "300\n"  # default is larger
    big = sb.run("open('big', 'wb').write(b'x' * (3 << 20))", limits=Limits(file_size_mb=1))
    assert big.limit_hit == "file_size"
    files = sb.run("fs = [open('/dev/null') for _ in range(100)]", limits=Limits(open_files=20))
    assert files.exit_code == 1 and "Too many open files" in files.stderr and files.limit_hit == "open_files"
    assert sb.run("print('still fine')").stdout == "still fine\n"


def test_total_memory_of_all_processes_is_capped(tmp_path):
    with LocalSandbox(tmp_root=tmp_path, total_memory_mb=512) as box:
        group = box.memory_cgroup
        if group is None:
            pytest.skip("no cgroup-v1 memory controller this process may write to")
        code = ("import os, time\n"
                "for _ in range(6):\n"
                "    if os.fork() == 0:\n"
                "        x = b'\\x01' * (300 << 20)\n"  # each within RLIMIT_AS, together far over 512 MB
                "        time.sleep(5)\n"
                "        os._exit(0)\n"
                "time.sleep(2)\n"
                "print('parent done')\n")
        res = box.run(code, timeout=20)
        assert res.limit_hit == "memory" and res.stdout == "parent done\n", res
        assert box.run("print('after')").stdout == "after\n"
    assert not group.exists()


def test_bad_arguments_are_usage_errors(sb):
    with pytest.raises(UsageError):
        sb.run(42)
    with pytest.raises(UsageError):
        sb.run([])
    with pytest.raises(UsageError):
        sb.run("print(1)", timeout=0)


def test_close_is_idempotent_and_removes_everything(tmp_path):
    box = make_sandbox("local", tmp_root=tmp_path)
    server = box.server_pid
    box.write_file("a.txt", "x")
    assert len(list(tmp_path.iterdir())) == 1
    box.close()
    box.close()
    assert list(tmp_path.iterdir()) == []
    assert not Path(f"/proc/{server}").exists()
    with pytest.raises(UsageError):
        box.run("print(1)")
    with LocalSandbox(tmp_root=tmp_path) as other:
        assert other.run("print(2)").stdout == "2\n"
    assert list(tmp_path.iterdir()) == []


def test_sandboxes_get_distinct_uids(tmp_path):
    with LocalSandbox(tmp_root=tmp_path) as a, LocalSandbox(tmp_root=tmp_path) as b:
        assert a.uid != b.uid
        assert a.run(["id", "-u"]).stdout.strip() != b.run(["id", "-u"]).stdout.strip()


def test_server_restarts_when_killed_between_runs(sb):
    sb.write_file("keep.txt", "kept")
    assert sb.run("print(1)").ok
    os.kill(_server_python_pid(sb), signal.SIGKILL)
    time.sleep(0.05)
    res = sb.run("print(open('keep.txt').read())")
    assert res.ok and res.stdout == "kept\n"  # transparently restarted, working dir intact


def test_server_killed_mid_run_is_an_infra_error_then_recovers(sb):
    pid = _server_python_pid(sb)
    threading.Timer(0.3, os.kill, (pid, signal.SIGKILL)).start()
    with pytest.raises(SandboxError):
        sb.run("import time; time.sleep(5)", timeout=10)
    assert sb.run("print('back')").stdout == "back\n"


def test_ctrl_c_mid_run_leaves_the_sandbox_usable(sb):
    main = threading.main_thread().ident
    threading.Timer(0.3, signal.pthread_kill, (main, signal.SIGINT)).start()
    with pytest.raises(KeyboardInterrupt):
        sb.run("import time; time.sleep(2); print('late')", timeout=10)
    assert sb.run("print('fresh')").stdout == "fresh\n"  # not the interrupted run's late answer


def test_threads_share_one_sandbox_safely(sb):
    results = {}

    def work(i):
        results[i] = sb.run(f"print({i} * 2)").stdout

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: f"{i * 2}\n" for i in range(8)}


def test_asyncio_gathers_runs_without_blocking_the_loop(tmp_path):
    async def main():
        with LocalSandbox(tmp_root=tmp_path) as a, LocalSandbox(tmp_root=tmp_path) as b:
            ticks = 0

            async def ticker():
                nonlocal ticks
                while True:
                    await asyncio.sleep(0.01)
                    ticks += 1

            tick = asyncio.create_task(ticker())
            res = await asyncio.gather(a.arun("import time; time.sleep(0.5); print('a')"),
                                       b.arun("import time; time.sleep(0.5); print('b')"))
            tick.cancel()
            return [r.stdout for r in res], ticks

    outs, ticks = asyncio.run(main())
    assert outs == ["a\n", "b\n"]
    assert ticks >= 20  # the loop kept running while both sandboxes slept


@pytest.mark.ray
def test_usable_inside_a_ray_actor(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    class Worker:
        def __init__(self):
            self.sb = LocalSandbox()

        def run(self, code):
            res = self.sb.run(code, timeout=2)
            return res.stdout, res.timed_out

        def close(self):
            self.sb.close()

    worker = Worker.remote()
    assert ray.get(worker.run.remote("print(7 * 6)")) == ("42\n", False)
    assert ray.get(worker.run.remote("while True: pass")) == ("", True)
    ray.get(worker.close.remote())
    ray.kill(worker)


CWM = [sys.executable, "-m", "cwm_envs.cli"]


def test_cli_run_prints_output_and_exits_with_the_codes_status(tmp_path):
    script = tmp_path / "prog.py"
    script.write_text("import sys\nprint('out', sys.stdin.read())\nprint('err', file=sys.stderr)\nsys.exit(5)\n")
    (tmp_path / "in.txt").write_text("fed")
    res = subprocess.run(CWM + ["sandbox", "run", str(script), "--stdin", str(tmp_path / "in.txt")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 5 and res.stdout == "out fed\n"
    assert res.stderr.splitlines()[0] == "err" and "[sandbox local] exit 5" in res.stderr.splitlines()[-1]
    loop = subprocess.run(CWM + ["sandbox", "run", "-", "--timeout", "0.5"], input="while True: pass\n",
                          capture_output=True, text=True, timeout=60)
    assert loop.returncode == 124 and "timed out" in loop.stderr


def test_bench_writes_a_report_with_figure_and_baseline(tmp_path):
    res = subprocess.run(CWM + ["sandbox", "bench", "--out", str(tmp_path), "-n", "30", "--seconds", "0.3"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["local_median_ms"] > 0 and summary["subprocess_median_ms"] > summary["local_median_ms"]
    assert summary["execs_per_s_2_workers"] > 0
    assert (tmp_path / "report.md").exists() and "local sandbox: median" in res.stdout


# -- hardening: system calls, memory, disk, reset, leftovers, trusted programs --------------------------------

def _probe_syscalls(machine: str) -> str:
    """Code that makes each refused call with arguments the kernel would otherwise answer differently (a
    success, EBADF, EINVAL, ENOKEY...), and prints `name errno` per call, then that it is still alive."""
    from cwm_envs.sandbox._seccomp import CLONE_NEWNET, CLONE_NEWUSER, SYSCALLS

    nr = SYSCALLS[machine][1]
    return f"""
import ctypes, errno, os, signal
libc = ctypes.CDLL(None, use_errno=True)
nr = {nr!r}
def call(name, *args):
    ctypes.set_errno(0)
    r = libc.syscall(nr[name], *args)
    if r == 0 and name == "clone":   # without a filter this is a fork: the child leaves at once
        os._exit(0)
    print(name, errno.errorcode.get(ctypes.get_errno(), r) if r == -1 else "succeeded")
call("unshare", {CLONE_NEWUSER})
call("unshare", {CLONE_NEWUSER | CLONE_NEWNET})
call("clone", {CLONE_NEWUSER} | signal.SIGCHLD, None, None, None, None)
call("setns", -1, 0)
params = ctypes.create_string_buffer(120)
call("io_uring_setup", 4, params)
call("io_uring_enter", -1, 0, 0, 0, None, 0)
call("io_uring_register", -1, 0, None, 0)
call("userfaultfd", 1)                        # UFFD_USER_MODE_ONLY: allowed to anyone without the filter
call("add_key", b"user", b"k", b"v", 1, -3)
call("keyctl", 0, -3, 0)
call("request_key", b"user", b"absent", None, 0)
call("bpf", 9999, None, 0)
call("perf_event_open", None, 0, -1, -1, 0)
call("clone3", None, 0)
print("still alive")
"""


def test_seccomp_refuses_kernel_attack_surface_with_eperm(sb):
    import platform

    from cwm_envs.sandbox._seccomp import SYSCALLS

    if platform.machine() not in SYSCALLS:
        pytest.skip(f"no filter for {platform.machine()}")
    res = sb.run(_probe_syscalls(platform.machine()))
    assert res.ok, res
    lines = res.stdout.splitlines()
    assert lines[-1] == "still alive"   # refused, not killed
    verdicts = [line.split()[1] for line in lines[:-2]]
    assert verdicts == ["EPERM"] * len(verdicts) and len(verdicts) == 13, res.stdout
    assert lines[-2] == "clone3 ENOSYS"  # so that the C library falls back to clone, whose flags are checked
    assert "syscalls" not in sb.uncapped


def test_seccomp_refuses_other_abis(sb):
    """On x86_64 the i386 ABI (`int 0x80`) and the x32 ABI have their own numbers: a filter that only knew
    the x86_64 numbers would let `unshare(CLONE_NEWUSER)` through them."""
    import platform

    if platform.machine() != "x86_64":
        pytest.skip("an x86_64 attack")
    code = ("import ctypes, mmap\n"
            "buf = mmap.mmap(-1, 4096, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n"
            "buf.write(bytes.fromhex('b836010000' 'bb00000010' 'cd80' 'c3'))  # eax=310 (i386 unshare), ebx=NEWUSER\n"
            "i386 = ctypes.CFUNCTYPE(ctypes.c_int)(ctypes.addressof(ctypes.c_char.from_buffer(buf)))\n"
            "print('i386', i386())\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print('x32', libc.syscall(0x40000000 + 272, 0x10000000), ctypes.get_errno())\n")
    res = sb.run(code)
    assert res.stdout.split("\n")[:2] == ["i386 -1", "x32 -1 1"], res  # -EPERM, and EPERM (not ENOSYS)


def test_ordinary_code_runs_under_the_filter(sb):
    code = ("import multiprocessing as mp, subprocess, threading\n"
            "def square(x):\n    return x * x\n"
            "if __name__ == '__main__':\n"
            "    out = []\n"
            "    ts = [threading.Thread(target=out.append, args=(i,)) for i in range(8)]\n"
            "    [t.start() for t in ts]; [t.join() for t in ts]\n"
            "    print(sorted(out) == list(range(8)))\n"
            "    print(subprocess.run(['sh', '-c', 'echo sub'], capture_output=True, text=True).stdout.strip())\n"
            "    with mp.get_context('fork').Pool(2) as pool:\n"
            "        print(pool.map(square, range(5)))\n"
            "    q, lock = mp.Queue(), mp.Lock()\n"            # POSIX semaphores in /dev/shm
            "    p = mp.get_context('fork').Process(target=q.put, args=('queued',))\n"
            "    p.start(); p.join()\n"
            "    with lock:\n        print(q.get(timeout=5))\n")
    res = sb.run(code, timeout=30)
    assert res.ok and res.stdout.split("\n")[:4] == ["True", "sub", "[0, 1, 4, 9, 16]", "queued"], res


def test_memfd_and_shared_memory_count_against_the_memory_cap(tmp_path):
    from cwm_envs.sandbox import _cgroup

    fstype = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
    assert (_cgroup.hierarchy() == "v2") == (fstype == "cgroup2fs")
    with LocalSandbox(tmp_root=tmp_path, total_memory_mb=256) as box:
        if box.memory_cgroup is None:
            pytest.skip(f"no memory cgroup here: {box.uncapped['memory']}")
        version = 2 if (box.memory_cgroup / "memory.max").exists() else 1
        assert (version == 2) == (fstype == "cgroup2fs"), "the group is on the other hierarchy"
        # Each memfd stays under RLIMIT_FSIZE and is never mapped, so no rlimit sees the 768 MB.
        memfd = ("import os\nchunk = b'x' * (1 << 20)\nfds = []\n"
                 "for i in range(24):\n"
                 "    fds.append(os.memfd_create('m%d' % i))\n"
                 "    for _ in range(32):\n        os.write(fds[-1], chunk)\n"
                 "print('kept 768 MB')\n")
        res = box.run(memfd, timeout=30)
        assert res.limit_hit == "memory" and "kept" not in res.stdout, res
        assert box.run("print('after')").stdout == "after\n"
        # SysV segments outlive the process that made them: only the group (or reset) bounds them.
        sysv = ("import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
                "libc.shmat.restype = ctypes.c_void_p\n"
                "for i in range(3):\n"
                "    sid = libc.shmget(0x5ca1ab0 + i, 256 << 20, 0o1600)\n"   # IPC_CREAT | 0600
                "    ctypes.memset(libc.shmat(sid, None, 0), 1, 256 << 20)\n"
                "print('kept 768 MB')\n")
        res = box.run(sysv, timeout=30)
        assert res.limit_hit == "memory" and "kept" not in res.stdout, res
        old_jail = box.server_pid
        box.reset()  # the segments go with the jail's IPC namespace, once its server is gone (in the background)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{old_jail}").exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert box.run("print(len(open('/proc/sysvipc/shm').readlines()))").stdout == "1\n"


def test_writable_dirs_are_capped_in_size_and_files(tmp_path):
    with LocalSandbox(tmp_root=tmp_path, tmpfs_mb=16, tmpfs_inodes=400) as box:
        if "disk" in box.uncapped:
            pytest.skip(box.uncapped["disk"])
        code = ("import os\n"
                "def fill(path):\n"
                "    n = 0\n"
                "    try:\n"
                "        with open(path, 'wb') as f:\n"
                "            while n < 64:\n                f.write(b'x' * (1 << 20)); f.flush(); n += 1\n"
                "    except OSError as e:\n"
                "        print(path, n, e.errno)\n"
                "    os.unlink(path)\n"
                "def touch(d):\n"
                "    n = 0\n"
                "    try:\n"
                "        while n < 2000:\n            open(os.path.join(d, 'f%d' % n), 'w').close(); n += 1\n"
                "    except OSError as e:\n"
                "        print(d, n, e.errno)\n"
                "    for i in range(n):\n        os.unlink(os.path.join(d, 'f%d' % i))\n"
                "for d in ('/sandbox', '/tmp', '/dev/shm'):\n    fill(d + '/big')\n    touch(d)\n")
        res = box.run(code, timeout=60)
        assert res.ok, res
        stopped = [line.split() for line in res.stdout.splitlines()]
        assert [(p, int(n) <= 16, e) for p, n, e in stopped[0::2]] == \
            [(d + "/big", True, "28") for d in ("/sandbox", "/tmp", "/dev/shm")], res.stdout  # ENOSPC
        assert [(p, int(n) <= 400, e) for p, n, e in stopped[1::2]] == \
            [(d, True, "28") for d in ("/sandbox", "/tmp", "/dev/shm")], res.stdout
        box.write_file("host.txt", "still writable")   # the host's file methods act on the same tmpfs
        assert box.run("print(open('host.txt').read())").stdout == "still writable\n"


PLANT_FILES = """
import os, subprocess
for path in ("/sandbox/work.txt", "/tmp/tmp.txt", "/dev/shm/shm.txt", "/sandbox/sub/deep.txt"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    open(path, "w").write("old")
os.symlink("/etc/passwd", "/sandbox/link")
os.mkfifo("/tmp/fifo")
try:
    os.setxattr("/sandbox", "user.cwm", b"old")      # tmpfs keeps user xattrs (Linux 6.6+)
except OSError:
    pass
if os.fork() == 0:                                   # a daemon, beating a file until someone kills it
    os.setsid()
    subprocess.Popen(["sh", "-c", "while true; do date >> /sandbox/beat; sleep 0.05; done"])
    os._exit(0)
os.chmod("/sandbox", 0o500)                          # the working dir is the code's: it may lock it
print("planted")
"""
PLANT_IPC = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
assert libc.shmget(0xC3A11, 4096, 0o1600) >= 0      # IPC_CREAT | 0600
assert libc.semget(0xC3A12, 1, 0o1600) >= 0
assert libc.msgget(0xC3A13, 0o1600) >= 0
assert libc.mq_open(b"/cwm-queue", os.O_CREAT | os.O_RDWR, 0o600, None) >= 0
print("planted")
"""
CHECK = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
seen = {d: sorted(os.listdir(d)) for d in ("/sandbox", "/tmp", "/dev/shm", "/dev/mqueue")}
seen["ipc"] = [libc.shmget(0xC3A11, 0, 0), libc.semget(0xC3A12, 0, 0), libc.msgget(0xC3A13, 0),
               libc.mq_open(b"/cwm-queue", os.O_RDWR)]
seen["ipc_lines"] = [len(open("/proc/sysvipc/" + k).readlines()) for k in ("shm", "sem", "msg")]
ours = (1, os.getpid(), os.getppid())   # bwrap's init, this run, the server
seen["procs"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) not in ours)
seen["workdir"] = [os.access("/sandbox", os.W_OK), os.listxattr("/sandbox")]
print(seen)
"""
CLEAN = {"/sandbox": [], "/tmp": [], "/dev/shm": [], "/dev/mqueue": [], "ipc": [-1, -1, -1, -1],
         "ipc_lines": [1, 1, 1], "procs": [], "workdir": [True, []]}


def _plant_and_reset(box, plants) -> tuple[int, int]:
    """Leave what `plants` make, check it is there, reset(); the server pids before and after."""
    import ast

    box.write_file("host.txt", "old")
    for plant in plants:
        assert box.run(plant).stdout == "planted\n"
    seen = ast.literal_eval(box.run(CHECK).stdout)
    assert "work.txt" in seen["/sandbox"] and (PLANT_IPC not in plants or -1 not in seen["ipc"]), seen
    before = box.server_pid
    box.reset()
    assert box.list_files() == []
    seen = ast.literal_eval(box.run(CHECK).stdout)
    assert seen == CLEAN, seen
    time.sleep(0.2)  # a daemon that survived would beat again
    assert box.list_files() == [] and box.run("print(1)").stdout == "1\n"
    return before, box.server_pid


def test_reset_leaves_nothing_of_earlier_runs(tmp_path):
    with LocalSandbox(tmp_root=tmp_path) as box:
        # files only (the usual case): emptied in place, the same jail and server
        before, after = _plant_and_reset(box, [PLANT_FILES])
        assert after == before or "disk" in box.uncapped
        # IPC objects a wipe cannot reach: a new jail, started on the clock
        before, after = _plant_and_reset(box, [PLANT_FILES, PLANT_IPC])
        assert after != before
        # again, once the old jail is gone and the spare kept warm since is up: reset() takes the spare
        deadline = time.monotonic() + 30
        while Path(f"/proc/{before}").exists() or len([p for p in _descendants(os.getpid()) if _is_bwrap(p)]) < 4:
            assert time.monotonic() < deadline, "no spare jail was started"  # 2 bwrap processes per jail
            time.sleep(0.05)
        spare = {p for p in _descendants(os.getpid()) if _is_bwrap(p)} - {after}
        before, after = _plant_and_reset(box, [PLANT_FILES, PLANT_IPC])
        assert after in spare
    assert list(tmp_path.iterdir()) == []


def _is_bwrap(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].endswith(b"bwrap")
    except OSError:
        return False


OWNER = """
import json, sys, time
from cwm_envs.sandbox.local import LocalSandbox
box = LocalSandbox(tmp_root=sys.argv[1])
box.run("open('left.txt', 'w').write('x')")
print(json.dumps({"dir": str(box.workdir.parent.parent), "group": str(box.memory_cgroup or "")}), flush=True)
time.sleep(120)
"""


def _sigkilled_owner(tmp_path) -> dict:
    """What a sandbox owner killed by SIGKILL (no atexit, no finalizer) leaves behind."""
    proc = subprocess.Popen([sys.executable, "-c", OWNER, str(tmp_path)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)})
    left = json.loads(proc.stdout.readline())
    proc.kill()
    proc.wait()
    assert Path(left["dir"]).is_dir()
    return left


def _mounted_under(path: str) -> bool:
    return any(line.split()[4].startswith(path) for line in Path("/proc/self/mountinfo").read_text().splitlines())


def test_gc_removes_what_a_sigkilled_owner_left_and_nothing_of_live_ones(tmp_path):
    live = LocalSandbox(tmp_root=tmp_path)
    try:
        live.write_file("mine.txt", "live")
        stale = _sigkilled_owner(tmp_path)
        res = subprocess.run(CWM + ["sandbox", "gc", "--tmp-root", str(tmp_path)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode in (0, 2) and stale["dir"] in res.stdout, res  # 2: no docker engine to ask
        assert not Path(stale["dir"]).exists() and not _mounted_under(stale["dir"])
        if stale["group"]:
            assert not Path(stale["group"]).exists()
        # nothing of the live sandbox was touched
        assert live.read_file("mine.txt") == b"live" and live.run("print('ok')").stdout == "ok\n"
        if live.memory_cgroup is not None:
            assert live.memory_cgroup.exists()
        # the next sandbox start does the same
        stale = _sigkilled_owner(tmp_path)
        with LocalSandbox(tmp_root=tmp_path):
            assert not Path(stale["dir"]).exists() and not _mounted_under(stale["dir"])
            if stale["group"]:
                assert not Path(stale["group"]).exists()
        assert live.read_file("mine.txt") == b"live"
    finally:
        live.close()
    assert list(tmp_path.iterdir()) == []


def test_an_earlier_run_cannot_change_what_later_runs_start_with(tmp_path):
    """Trusted programs (the code harness, judges) run as later executions in the same jail: the sys.path and
    environment they start with, and what runs before their first line, are the server's, whatever an earlier
    run planted in the working dir, HOME (the same dir), /tmp or a user site."""
    probe = "import json, os, sys\nprint(json.dumps([sys.path, dict(os.environ), sorted(sys.modules)]))"
    with LocalSandbox(tmp_root=tmp_path) as fresh:
        expected = fresh.run(probe).stdout
    plant = ("import os, sys\n"
             "site = '/sandbox/.local/lib/python%d.%d/site-packages' % sys.version_info[:2]\n"
             "for d in ('/sandbox', '/tmp', site):\n"
             "    os.makedirs(d, exist_ok=True)\n"
             "    for mod in ('sitecustomize', 'usercustomize', 'subprocess', 'marshal', 'select', 'json'):\n"
             "        open(os.path.join(d, mod + '.py'), 'w').write(\"open('/sandbox/PWNED-' + __name__, 'w')\\n\")\n"
             "    open(os.path.join(d, 'evil.pth'), 'w').write(\"import os; open('/sandbox/PWNED-pth', 'w')\\n\")\n"
             "os.environ['PYTHONPATH'] = '/sandbox'\nos.putenv('PYTHONSTARTUP', '/sandbox/json.py')\n")
    with LocalSandbox(tmp_root=tmp_path) as box:
        assert box.run(plant).ok
        assert box.run(probe).stdout == expected
        harness_start = ("import os, sys\n"   # what code_harness does first, then the imports it needs
                         "homes = tuple(os.path.join(os.path.realpath(p), '') for p in {sys.prefix, sys.base_prefix})\n"
                         "sys.path[:] = [p for p in sys.path if p and os.path.realpath(p).startswith(homes)]\n"
                         "import json, marshal, select, subprocess\n"
                         "print([getattr(m, '__file__', 'builtin').startswith(homes) or m.__name__ == 'marshal'"
                         " for m in (json, marshal, select, subprocess)])\n")
        assert box.run(harness_start).stdout == "[True, True, True, True]\n"
        assert box.run(["python3", "-c", "pass"]).ok   # a command's interpreter: no user site from HOME
        assert not [name for name in box.list_files() if name.startswith("PWNED")]


def test_host_file_methods_never_block_on_what_the_code_left(sb):
    """A FIFO (or socket) planted in the working dir would hang a plain open() of the host forever."""
    res = sb.run("import os, socket\nos.mkfifo('pipe')\nsocket.socket(socket.AF_UNIX).bind('sock')")
    assert res.ok, res
    outcomes = []

    def touch_all():
        for call in (lambda: sb.read_file("pipe"), lambda: sb.write_file("pipe", "x"),
                     lambda: sb.read_file("sock")):
            try:
                call()
                outcomes.append("done")
            except UsageError:
                outcomes.append("refused")

    worker = threading.Thread(target=touch_all, daemon=True)
    worker.start()
    worker.join(30)
    assert outcomes == ["refused"] * 3


def test_a_missing_cap_is_said_once_and_readable(tmp_path, monkeypatch):
    monkeypatch.setenv("CWM_SANDBOX_CGROUP", str(tmp_path / "not-a-cgroup"))
    with pytest.warns(RuntimeWarning, match="without its memory cap: .*CWM_SANDBOX_CGROUP"):
        first = LocalSandbox(tmp_root=tmp_path)
    with first, warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        with LocalSandbox(tmp_root=tmp_path) as second:
            assert "CWM_SANDBOX_CGROUP" in second.uncapped["memory"] and second.memory_cgroup is None
            assert second.run("print('runs')").stdout == "runs\n"
    assert not [w for w in again if "memory cap" in str(w.message)]  # once per process
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with LocalSandbox(tmp_root=tmp_path, total_memory_mb=None) as off:  # asked for: no warning, still flagged
            assert off.uncapped["memory"].startswith("turned off")
