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
