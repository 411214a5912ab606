"""Sandbox speed: one isolated execution of a short snippet in the `local` sandbox against a fresh
`subprocess.run([python, "-c", code])` measured in the same run, and executions/s with 2 workers (2 sandboxes
in 2 threads). `--backend docker|all` adds the docker backend's figures (exec in a warm container through its
exec server, reset from the warm pool; one `docker exec` per command and `docker run --rm` as baselines) when
an engine answers.

    cwm sandbox bench --out runs/sandbox        (also: cwm bench sandbox)

Targets on a 2-core machine: local median <= 3 ms, >= 10x faster than the subprocess baseline, >= 500
executions/s with 2 workers; docker exec median <= 60 ms, reset() median <= 300 ms.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

from tqdm import tqdm

from benchmarks.host_measure import engine_pids

SNIPPET = "sum(i*i for i in range(1000))"
CHECK = "print(sum(i*i for i in range(1000)))"
PROJECT = Path(__file__).resolve().parent.parent
TARGETS = {"local_median_ms": 3.0, "speedup_vs_subprocess": 10.0, "execs_per_s_2_workers": 500.0,
           "docker_exec_median_ms": 60.0, "docker_reset_median_ms": 300.0}


def _ms(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median": round(1000 * statistics.median(xs), 3), "p90": round(1000 * xs[int(0.9 * (len(xs) - 1))], 3),
            "min": round(1000 * xs[0], 3)}


def _server_cpu_s(sb) -> float:
    """CPU seconds of the sandbox's fork-server and of the children it reaped (read from /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    todo, total = [sb.server_pid], 0.0
    while todo:  # outer bwrap -> bwrap's init -> the python server (whose cutime/cstime hold its children)
        pid = todo.pop()
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(fields[1]) == pid:
                    todo.append(int(name))
                    total += sum(int(x) for x in fields[11:15]) / tick
    return total


def local_figures(n: int = 500, n_baseline: int = 40, throughput_s: float = 3.0, workers: int = 2,
                  progress: bool = False) -> dict:
    """Median latency per isolated execution, the subprocess baseline, and throughput with `workers`."""
    from cwm_envs.errors import SandboxError
    from cwm_envs.sandbox.local import LocalSandbox

    lat = []
    with LocalSandbox() as sb:
        res = sb.run(CHECK)
        if res.stdout.strip() != "332833500":
            raise SandboxError(f"the snippet gave {res!r}")
        for _ in range(20):  # warm up page cache and branch predictors
            sb.run(SNIPPET)
        cpu0, host0 = _server_cpu_s(sb), time.process_time()
        for _ in tqdm(range(n), desc="local sandbox", disable=not progress, leave=False):
            t = time.perf_counter()
            res = sb.run(SNIPPET)
            lat.append(time.perf_counter() - t)
            if not res.ok:
                raise SandboxError(f"the snippet failed: {res!r}")
        cpu_per_exec = (_server_cpu_s(sb) - cpu0 + time.process_time() - host0) / n
    base = []
    for _ in tqdm(range(n_baseline), desc="subprocess baseline", disable=not progress, leave=False):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-c", SNIPPET], check=True)
        base.append(time.perf_counter() - t)

    boxes = [LocalSandbox() for _ in range(workers)]
    try:
        counts = [0] * workers
        stop = threading.Event()

        def work(i: int) -> None:
            while not stop.is_set():
                boxes[i].run(SNIPPET)
                counts[i] += 1

        threads = [threading.Thread(target=work, args=(i,)) for i in range(workers)]
        start = time.perf_counter()
        for th in threads:
            th.start()
        time.sleep(throughput_s)
        stop.set()
        for th in threads:
            th.join()
        elapsed = time.perf_counter() - start
    finally:
        for box in boxes:
            box.close()
    local, subproc = _ms(lat), _ms(base)
    return {"n": n, "n_baseline": n_baseline, "workers": workers,
            "local_median_ms": local["median"], "local_p90_ms": local["p90"], "local_min_ms": local["min"],
            "subprocess_median_ms": subproc["median"], "subprocess_p90_ms": subproc["p90"],
            "speedup_vs_subprocess": round(subproc["median"] / local["median"], 1),
            "cpu_ms_per_exec": round(1000 * cpu_per_exec, 3),
            f"execs_per_s_{workers}_workers": round(sum(counts) / elapsed, 1)}


def docker_figures(n: int = 50, image: str | None = None) -> dict:
    """Exec latency in a warm container (through the exec server), reset() from the warm pool, and two
    baselines, all measured in this call on `CHECK`: one `docker exec` per command (the classic path) and
    `docker run --rm`. Also the first exec after a reset."""
    from cwm_envs.errors import SandboxError
    from cwm_envs.sandbox._docker_reaper import owner_labels
    from cwm_envs.sandbox.docker_backend import DockerSandbox

    def ms(xs):
        xs = sorted(xs)
        return round(1000 * statistics.median(xs), 3), round(1000 * xs[min(len(xs) - 1, int(0.9 * len(xs)))], 3)

    def check(res):
        if res.stdout.strip() != "332833500":
            raise SandboxError(f"the snippet gave {res!r}")

    def timed(sb, k: int) -> list[float]:
        """Seconds of each of k runs of the snippet, each checked."""
        secs = []
        for _ in range(k):
            t = time.perf_counter()
            res = sb.run_python(CHECK)
            secs.append(time.perf_counter() - t)
            check(res)
        return secs

    with DockerSandbox(image, pool_size=1) as sb:
        timed(sb, 3)                          # warm up
        cpu0 = _exec_cpu_s(sb)
        execs = timed(sb, n)
        cpu1 = _exec_cpu_s(sb)
        resets, colds = [], []
        for _ in range(max(5, n // 5)):
            with sb._cv:                      # the warm path: wait until the pool is full again
                while len(sb._pool) < sb.pool_size:
                    sb._cv.wait(0.05)
            t = time.perf_counter()
            sb.reset()
            resets.append(time.perf_counter() - t)
            colds += timed(sb, 1)             # the fresh container works at once
        image = sb.image
    with DockerSandbox(image, pool_size=0, exec_server=False) as sb:
        timed(sb, 3)                          # warm up
        classic = timed(sb, n)
    runs = []
    labels = [f"--label={k}={v}" for k, v in owner_labels().items()]   # reaped by gc if we are killed
    for _ in range(max(5, n // 10)):
        t = time.perf_counter()
        proc = subprocess.run(["docker", "run", "--rm", "--network=none", *labels, image, "python3", "-c", CHECK],
                              capture_output=True, text=True)
        runs.append(time.perf_counter() - t)
        if proc.stdout.strip() != "332833500":
            raise SandboxError(f"docker run baseline failed: {proc.stderr.strip()[-300:]}")
    (e50, e90), (r50, r90), (c50, _), (b50, _), (x50, _) = ms(execs), ms(resets), ms(colds), ms(runs), ms(classic)
    return {"image": image, "snippet": CHECK, "n_exec": n, "n_reset": len(resets), "n_docker_run": len(runs),
            "exec_median_ms": round(e50, 1), "exec_p90_ms": round(e90, 1),
            "reset_median_ms": r50, "reset_p90_ms": r90,
            "first_exec_after_reset_median_ms": round(c50, 1),
            "docker_exec_per_command_median_ms": round(x50, 1),
            "docker_run_median_ms": round(b50, 1),
            "exec_speedup_vs_docker_exec": round(x50 / e50, 1),
            "exec_speedup_vs_docker_run": round(b50 / e50, 1),
            "cpu_ms_per_exec": round(1000 * (cpu1 - cpu0) / n, 1) if cpu0 is not None and cpu1 is not None else None,
            "load_avg_1m_after": round(os.getloadavg()[0], 2)}   # other work on the machine slows every figure


def _exec_cpu_s(sb) -> float | None:
    """CPU seconds spent so far by everything an exec in `sb`'s container involves: this process, dockerd,
    containerd and the container's shim (which reaps runc and the exec'd processes, so their time lands in its
    children's share). Other programs' load does not inflate it, other Docker work at the same time does; None
    where /proc does not show them."""
    def cpu(pid: int, children: bool) -> float:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = int(f[11]) + int(f[12]) + (int(f[13]) + int(f[14]) if children else 0)
        return ticks / os.sysconf("SC_CLK_TCK")

    try:
        shim = int(Path(f"/proc/{sb._box.init_pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        engine = engine_pids()
        if len(engine) < 2:
            return None
        own = os.times()
        return own.user + own.system + sum(cpu(pid, False) for pid in engine) + cpu(shim, True)
    except (OSError, ValueError, IndexError):
        return None


def run_bench(args) -> int:
    from benchmarks.report import write_report

    progress = sys.stderr.isatty()
    summary: dict = {"load_avg_1min_at_start": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    details: dict = {"snippet": SNIPPET, "baseline": f"subprocess.run([{sys.executable!r}, '-c', snippet])",
                     "targets": TARGETS}
    if args.backend in ("local", "all"):
        fig = local_figures(n=args.n, n_baseline=max(10, args.n // 10), throughput_s=args.seconds,
                            progress=progress)
        details["local"] = fig
        summary.update(local_median_ms=fig["local_median_ms"], subprocess_median_ms=fig["subprocess_median_ms"],
                       speedup_vs_subprocess=fig["speedup_vs_subprocess"],
                       execs_per_s_2_workers=fig["execs_per_s_2_workers"], cpu_ms_per_exec=fig["cpu_ms_per_exec"])
        summary["local_targets_met"] = (fig["local_median_ms"] <= TARGETS["local_median_ms"]
                                        and fig["speedup_vs_subprocess"] >= TARGETS["speedup_vs_subprocess"]
                                        and fig["execs_per_s_2_workers"] >= TARGETS["execs_per_s_2_workers"])
        print(f"local sandbox: median {fig['local_median_ms']:.2f} ms per isolated execution "
              f"(p90 {fig['local_p90_ms']:.2f} ms), {fig['execs_per_s_2_workers']:.0f} execs/s with 2 workers, "
              f"{fig['cpu_ms_per_exec']:.2f} ms of CPU per execution (host + server + child)")
        print(f"baseline subprocess.run([python, '-c', ...]): median {fig['subprocess_median_ms']:.1f} ms "
              f"-> {fig['speedup_vs_subprocess']:.1f}x faster (load average {summary['load_avg_1min_at_start']} "
              f"on {summary['cpus']} CPUs at the start)")
    if args.backend in ("docker", "all"):
        docker = _docker(args)
        details["docker"] = docker
        if "error" in docker:
            print(f"docker: skipped ({docker['error']})")
        else:
            summary.update({f"docker_{k}": v for k, v in docker.items()
                            if k in ("exec_median_ms", "reset_median_ms", "first_exec_after_reset_median_ms",
                                     "docker_exec_per_command_median_ms", "docker_run_median_ms")})
            summary["docker_targets_met"] = (docker["exec_median_ms"] <= TARGETS["docker_exec_median_ms"]
                                             and docker["reset_median_ms"] <= TARGETS["docker_reset_median_ms"])
            print(f"docker: exec median {docker['exec_median_ms']} ms (p90 {docker['exec_p90_ms']} ms) through the "
                  f"exec server, reset median {docker['reset_median_ms']} ms, first exec after it "
                  f"{docker['first_exec_after_reset_median_ms']} ms")
            print(f"baselines: one `docker exec` per command {docker['docker_exec_per_command_median_ms']} ms "
                  f"({docker['exec_speedup_vs_docker_exec']}x slower), `docker run --rm` "
                  f"{docker['docker_run_median_ms']} ms")
    path = write_report(args.out, "Sandbox benchmark", summary, details)
    print(f"report: {path}")
    return 0


def _docker(args) -> dict:
    """The docker backend's figures, or why there are none."""
    from cwm_envs.errors import DockerUnavailable

    try:
        return docker_figures(max(10, args.n // 10))
    except DockerUnavailable as exc:
        if args.backend == "docker":
            raise
        return {"error": str(exc)}


def _add_args(p) -> None:
    p.add_argument("--out", default="runs/sandbox-bench", help="report directory (default runs/sandbox-bench)")
    p.add_argument("--backend", choices=["local", "docker", "all"], default="local",
                   help="which backends to measure (default local)")
    p.add_argument("-n", "--n", type=int, default=500, help="timed executions of the local sandbox (default 500)")
    p.add_argument("--seconds", type=float, default=3.0, help="length of the 2-worker throughput run (default 3)")
    p.set_defaults(func=run_bench)


def register(sub) -> None:
    from benchmarks.cli import bench_group
    from cwm_envs.cli import group
    from cwm_envs.sandbox.cli import SANDBOX_HELP

    help_ = "sandbox speed: local per-execution latency vs subprocess, executions/s with 2 workers"
    _add_args(group(sub, "sandbox", SANDBOX_HELP).add_parser("bench", help=help_, description=__doc__))
    _add_args(bench_group(sub).add_parser("sandbox", help=help_, description=__doc__))


def demo_section(args) -> str:
    """Local sandbox: a snippet, then hostile code, each in a fresh jailed process"""
    from cwm_envs.sandbox import Limits
    from cwm_envs.sandbox.local import LocalSandbox

    with LocalSandbox() as sb:
        res = sb.run(CHECK)
        print(f"snippet {SNIPPET!r} -> {res.stdout.strip()} (exit {res.exit_code}, {1000 * res.duration_s:.1f} ms)")
        lat = []
        for _ in range(50):
            t = time.perf_counter()
            sb.run(SNIPPET)
            lat.append(time.perf_counter() - t)
        median_ms = 1000 * statistics.median(lat)
        print(f"median of 50 isolated executions: {median_ms:.2f} ms")
        hostile = {
            "fork bomb": ("import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass", 1),
            "network": ("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=3)", 5),
            "read project": (f"print(open({str(PROJECT / 'pyproject.toml')!r}).read())", 5),
        }
        stopped = 0
        for name, (code, timeout) in hostile.items():
            res = sb.run(code, timeout=timeout, limits=Limits(processes=32))
            stopped += res.exit_code != 0 or res.timed_out or res.limit_hit
            last = (res.stderr.strip().splitlines() or [""])[-1]
            print(f"{name:12s} -> exit {res.exit_code}, timed out {res.timed_out}, limit {res.limit_hit}"
                  + (f", {last[:70]}" if last else ""))
        print(f"and the sandbox still works: {sb.run(CHECK).stdout.strip()}")
    return f"{median_ms:.1f} ms per isolated run; {stopped}/{len(hostile)} hostile snippets stopped"
