"""`cwm bench scale`: what one machine carries, measured: concurrent SWE containers, rollout workers, and
text-env executions.

Containers, at each of `--points` (default 4 8 16 32): N docker sandboxes with `cwm/SWE-v0`'s settings (the
embedded task's instance image, 4 GB memory, 1 CPU, 1024 pids, no network, one container each) start at
once; then N threads each run `--execs` commands in their own container, alternating an agent-like turn (a
file search and a short Python run) with the repository's test suite, outputs checked, and replace their
container `--resets` times meanwhile (`reset()` without a warm pool: a fresh container is created, started
and its exec server readied, the old one removed in the background: what the warm pool absorbs when it keeps
up). Per point:
- memory per container: the cgroup's working set (usage minus inactive file cache), idle and peak, and on the
  host the containerd shim beside each container (its PSS) and the sandbox client in this process;
- CPU in the container (cgroup) per exec of each kind, host CPU (dockerd, containerd, the shims and this
  process) per exec or reset, the containers' idle CPU;
- exec latency p50/p99 (per kind too), reset p50/p99, start time, failures (an exec that errs, times out or
  prints the wrong result; a reset or start that raises), execs/s, the load average before and after, and
  the other programs' runnable tasks sampled during the point;
- every container is removed afterwards, and the bench checks that none of this process is left.
Baseline in the same run: the same work with one container alone (N=1). One container alone also gives the
host's CPU per exec and per reset, the engine's share taken from the least busy of several windows.

Rollout workers: the memory of one rollout worker actor (a small in-process LM policy, after a batch) and of
Ray's own processes on the node.

Text envs: executions of the local sandbox, and `cwm/Code-v0` oracle episodes (reset, then the reference
program judged against the tests in the sandbox), per CPU-second of everything involved (this process and
its sandbox servers, read from /proc: robust to other programs' load) and per wall second with 2 threads;
baseline in the same run: `subprocess.run([python, "-c", ...])` per CPU-second.

The machine is shared: every figure comes with the load average beside it. docs/scale.md turns the figures
into a capacity model (`benchmarks/scale_model.py`), checked against these points by simulation.
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.host_measure import (
    Container,
    Monitor,
    engine_pids,
    proc_cpu_s,
    proc_stat,
    pss_mb,
    quantiles,
    rss_mb,
    tree_cpu_s,
)
from benchmarks.report import write_report

SUM = "print(sum(i * i for i in range(20000)))"
EXPECTED = str(sum(i * i for i in range(20000)))
# (name, command, what its output must contain; None: exit 0 is enough)
TURN = ("turn", f"grep -rIl import /usr/lib/python3*/json | wc -l >/dev/null && python3 -c '{SUM}'", EXPECTED)
TESTS = ("tests", "cd /testbed && /opt/miniconda3/envs/testbed/bin/python -m pytest -q -p no:cacheprovider 2>&1 "
         "| tail -1", " passed")   # the repo's test suite: what an agent runs to check a fix, and grading runs
IDLE_S = 2.0                                        # seconds of idle CPU measured per point
SWE_LIMITS = dict(memory_mb=4096, processes=1024)   # cwm/SWE-v0's defaults (cwm_envs/envs/swe_env.py)


# --- one point ---------------------------------------------------------------------------------------------

def container_point(n: int, image: str, execs: int, resets: int, workloads=(TURN,), progress=None) -> dict:
    """N containers at once: start, idle, then execs (cycling through `workloads`) and resets in N threads;
    every container removed at the end."""
    from cwm_envs.sandbox.base import Limits
    from cwm_envs.sandbox.docker_backend import PID_LABEL, DockerSandbox, docker_client

    client = docker_client()
    limits = Limits(**SWE_LIMITS)
    load_before = os.getloadavg()[0]
    boxes: list = [None] * n
    starts: list[float] = []
    failures = {"start": 0, "exec": 0, "reset": 0}
    errors: list[str] = []
    lock = threading.Lock()

    def fail(kind: str, what: str) -> None:
        with lock:
            failures[kind] += 1
            if len(errors) < 10:
                errors.append(f"{kind}: {what[:200]}")

    def start(i: int) -> None:
        t = time.perf_counter()
        try:
            boxes[i] = DockerSandbox(image, pool_size=0, limits=limits, cpus=1.0)
        except Exception as exc:                 # an engine that cannot start one more container
            fail("start", f"{type(exc).__name__}: {exc}")
            return
        with lock:
            starts.append(time.perf_counter() - t)

    monitor = Monitor()
    rss0 = rss_mb(os.getpid())
    try:
        with ThreadPoolExecutor(n) as pool:
            list(pool.map(start, range(n)))
        live = [b for b in boxes if b is not None]
        client_mb = (rss_mb(os.getpid()) - rss0) / max(1, len(live))   # what a sandbox costs its owner
        info = {id(b): Container(client, b.container_id) for b in live}
        for c in info.values():
            monitor.watch(c)
        engines = engine_pids()
        idle0, e0 = {k: c.cpu_s() for k, c in info.items()}, proc_cpu_s(engines)
        time.sleep(IDLE_S)                        # idle: the exec server waits, sleep infinity sleeps
        idle_cpu = [c.cpu_s() - idle0[k] for k, c in info.items() if idle0[k] is not None and c.cpu_s() is not None]
        background = (proc_cpu_s(engines) - e0) / IDLE_S   # the engine's CPU/s for other users of Docker
        idle_mem = [c.memory_mb()[0] for c in info.values()]
        monitor.start()
        shims = {c.shim_pid for c in info.values()}
        host0 = proc_cpu_s(engines) + tree_cpu_s()
        shim0 = {p: proc_cpu_s([p]) for p in shims}
        lat = {w[0]: [] for w in workloads}
        cpu = {w[0]: [] for w in workloads}       # container CPU seconds of each exec (one thread per container)
        reset_s: list[float] = []

        def work(box) -> None:
            c = info[id(box)]
            chunks = [execs // (resets + 1) + (1 if r < execs % (resets + 1) else 0) for r in range(resets + 1)]
            i = 0
            for r, k in enumerate(chunks):
                for _ in range(k):
                    name, command, needle = workloads[i % len(workloads)]
                    i += 1
                    before, t = c.cpu_s(), time.perf_counter()
                    monitor.enter(1)
                    try:
                        res = box.run(command, timeout=300)
                        ok = res.ok and (needle is None or needle in res.stdout)
                        why = "" if ok else (f"exit {res.exit_code}, timed out {res.timed_out}: "
                                             f"{res.stdout[-100:]} {res.stderr[-100:]}")
                    except Exception as exc:
                        ok, why = False, f"{type(exc).__name__}: {exc}"
                    monitor.enter(-1)
                    took, after = time.perf_counter() - t, c.cpu_s()
                    with lock:
                        lat[name].append(took)
                        if before is not None and after is not None:
                            cpu[name].append(after - before)
                    if not ok:
                        fail("exec", f"{name}: {why}")
                    if progress:
                        progress()
                if r < resets:
                    monitor.drop(c)
                    t = time.perf_counter()
                    monitor.enter(1)
                    try:
                        box.reset()
                    except Exception as exc:
                        fail("reset", f"{type(exc).__name__}: {exc}")
                        return
                    finally:
                        monitor.enter(-1)
                    with lock:
                        reset_s.append(time.perf_counter() - t)
                    c = info[id(box)] = Container(client, box.container_id)
                    with lock:
                        shims.add(c.shim_pid)
                        shim0.setdefault(c.shim_pid, proc_cpu_s([c.shim_pid]))
                    monitor.watch(c)

        t0 = time.perf_counter()
        with ThreadPoolExecutor(max(1, len(live))) as pool:
            list(pool.map(work, live))
        wall = time.perf_counter() - t0
        shim_cpu = sum(proc_cpu_s([p]) - shim0.get(p, 0) for p in shims if proc_stat(p))
        host_cpu = proc_cpu_s(engines) + tree_cpu_s() - host0 + shim_cpu
        monitor.stop.set()
        monitor.join()
        shim_mb = [pss_mb(c.shim_pid) for c in info.values()]
        peaks = sorted(monitor.peaks.values())
        done_execs, done_resets = sum(map(len, lat.values())), len(reset_s)
        all_lat = [x for xs in lat.values() for x in xs]
        row = {
            "containers": n, "started": len(live), "load_1m_before": round(load_before, 2),
            "start_p50_ms": quantiles(starts)["p50_ms"], "start_max_ms": quantiles(starts)["max_ms"],
            "mem_idle_mb_per_container": _median(idle_mem), "mem_peak_mb_per_container": _median(peaks),
            "mem_peak_mb_all_containers": round(monitor.total_peak, 1),
            "shim_pss_mb_per_container": _median(shim_mb),
            "idle_cpu_pct_per_container": round(100 * statistics.mean(idle_cpu) / IDLE_S, 3) if idle_cpu else None,
            "execs": done_execs, "resets": done_resets,
            "exec_p50_ms": quantiles(all_lat)["p50_ms"], "exec_p99_ms": quantiles(all_lat)["p99_ms"],
            **({f"{name}_{k}": v for name in lat for k, v in (("p50_ms", quantiles(lat[name])["p50_ms"]),
                                                             ("p99_ms", quantiles(lat[name])["p99_ms"]),
                                                             ("cpu_ms", _mean_ms(cpu[name])))} if len(lat) > 1 else {}),
            "reset_p50_ms": quantiles(reset_s)["p50_ms"], "reset_p99_ms": quantiles(reset_s)["p99_ms"],
            "execs_per_s": round(done_execs / wall, 2) if wall else None,
            "container_cpu_ms_per_exec": _mean_ms([x for xs in cpu.values() for x in xs]),
            "client_mb_per_sandbox": round(client_mb, 2),
            "host_cpu_ms_per_exec_or_reset": round(1000 * host_cpu / max(1, done_execs + done_resets), 1),
            "engine_background_cpu_pct": round(100 * background, 1),
            "runnable_others_mean": round(statistics.mean(monitor.others), 2) if monitor.others else None,
            "host_cpu_s": round(host_cpu, 2), "wall_s": round(wall, 2),
            "failures": sum(failures.values()), "failures_by_kind": dict(failures), "errors": errors,
        }
    finally:
        monitor.stop.set()
        closers = [threading.Thread(target=b.close) for b in boxes if b is not None]
        for t in closers:
            t.start()
        for t in closers:
            t.join(timeout=120)
    left = client.api.containers(all=True, filters={"label": f"{PID_LABEL}={os.getpid()}"})   # no inspect: no race
    row["containers_left_after"] = len(left)
    row["load_1m_after"] = round(os.getloadavg()[0], 2)
    return row


def _mean_ms(xs) -> float | None:
    return round(1000 * statistics.mean(xs), 1) if xs else None


def _median(xs) -> float | None:
    xs = [x for x in xs if x is not None]
    return round(statistics.median(xs), 1) if xs else None


def host_costs(image: str, windows: int = 5, per_window: int = 4) -> dict:
    """Host CPU of one exec and of one reset, one container alone: what the capacity model charges per command
    and per container turnover. The shim and this process are counted exactly; the engine's share (dockerd,
    containerd) is the least over `windows` windows of `per_window` operations, since other users of the
    engine on a shared machine only ever add to it."""
    from cwm_envs.sandbox.base import Limits
    from cwm_envs.sandbox.docker_backend import PID_LABEL, DockerSandbox

    engines = engine_pids()
    mine = {"label": f"{PID_LABEL}={os.getpid()}"}
    ex_engine, ex_own, ex_in, re_engine, re_own = [], [], [], [], []
    with DockerSandbox(image, pool_size=0, limits=Limits(**SWE_LIMITS)) as sb:
        sb.run(TURN[1])
        for _ in range(windows):
            c = Container(sb.client, sb.container_id)
            e0, o0, s0, i0 = proc_cpu_s(engines), tree_cpu_s(), proc_cpu_s([c.shim_pid]), c.cpu_s() or 0
            for _ in range(per_window):
                sb.run(TURN[1])
            ex_engine.append(proc_cpu_s(engines) - e0)
            ex_own.append(tree_cpu_s() - o0 + proc_cpu_s([c.shim_pid]) - s0)
            ex_in.append((c.cpu_s() or 0) - i0)
            e0, o0 = proc_cpu_s(engines), tree_cpu_s()
            for _ in range(per_window):
                sb.reset()
            deadline = time.monotonic() + 120      # the old containers are removed in the background
            while len(sb.client.api.containers(all=True, filters=mine)) > 1 and time.monotonic() < deadline:
                time.sleep(0.1)
            new_shim = Container(sb.client, sb.container_id).shim_pid   # the newest shim's start-up, whole
            re_engine.append(proc_cpu_s(engines) - e0)
            re_own.append(tree_cpu_s() - o0 + proc_cpu_s([new_shim]) / per_window)
    ms = lambda x: round(1000 * x / per_window, 1)  # noqa: E731  (a one-line local helper)
    out = {"engine_cpu_ms_per_exec": ms(min(ex_engine)), "own_cpu_ms_per_exec": ms(statistics.median(ex_own)),
           "container_cpu_ms_per_exec": ms(statistics.median(ex_in)),
           "engine_cpu_ms_per_reset": ms(min(re_engine)), "own_cpu_ms_per_reset": ms(statistics.median(re_own)),
           "engine_cpu_ms_per_exec_median_window": ms(statistics.median(ex_engine)),
           "engine_cpu_ms_per_reset_median_window": ms(statistics.median(re_engine)),
           "windows": windows, "per_window": per_window,
           "note": "own = the shim and this process (the sandbox client); engine = dockerd + containerd, the "
                   "least window; reset = create, start, exec server, and removal of the old container"}
    out["engine_pss_mb"] = round(sum(pss_mb(pid) for pid in engines), 1)   # dockerd + containerd, once a node
    out["host_cpu_ms_per_exec"] = round(out["engine_cpu_ms_per_exec"] + out["own_cpu_ms_per_exec"], 1)
    out["host_cpu_ms_per_reset"] = round(out["engine_cpu_ms_per_reset"] + out["own_cpu_ms_per_reset"], 1)
    return out


# --- rollout workers ---------------------------------------------------------------------------------------

def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def descendants(root: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if name.isdigit() and (f := proc_stat(int(name))):
            kids.setdefault(int(f[1]), []).append(int(name))
    out, todo = [], [root]
    while todo:
        for k in kids.get(todo.pop(), []):
            out.append(k)
            todo.append(k)
    return out


def rollout_worker_memory() -> dict:
    """Memory (PSS) of one rollout worker actor after a batch of cwm/Math-v0 episodes with a small in-process
    LM policy (cwm-micro), and of the Ray processes beside it on the node (raylet, GCS, agents, idle workers).
    Uses the running Ray when there is one, else starts a local one for the measurement."""
    import ray

    from agents.rollout import EnvSpec, RolloutPool, init_ray
    from agents.train_rl import load_policy

    started = init_ray(num_cpus=2)
    try:
        policy = load_policy("cwm-micro", seed=0, value_head=False, max_new_tokens=8)
        env = EnvSpec("cwm/Math-v0", kwargs={"source": "generated", "kinds": ("add_sub",), "difficulty": 0})
        pool = RolloutPool([env], policy.spec(), policy.get_weights(), num_workers=1, seed=0)
        try:
            trajs, _ = pool.sample(2, 2)
            procs = {pid: (_cmdline(pid), pss_mb(pid)) for pid in descendants(os.getpid())}
        finally:
            pool.close()
    finally:
        if started:
            ray.shutdown()
    worker = [mb for cmd, mb in procs.values() if "RolloutWorker" in cmd]
    rest = {pid: (cmd, mb) for pid, (cmd, mb) in procs.items() if "RolloutWorker" not in cmd}
    named = sorted(((_name(cmd), mb) for cmd, mb in rest.values()), key=lambda x: -x[1])
    return {"worker_pss_mb": round(max(worker), 1) if worker else None, "episodes": len(trajs),
            "ray_node_pss_mb": round(sum(mb for _, mb in rest.values()), 1), "ray_processes": len(rest),
            "processes": [{"process": name, "pss_mb": round(mb, 1)} for name, mb in named]}


def _name(cmdline: str) -> str:
    """A process's short name: a Ray worker's title, a script's file name, or a binary's."""
    words = cmdline.split()
    if not words:
        return "?"
    if words[0].startswith("ray::"):
        return words[0]
    script = next((w for w in words[1:] if w.endswith(".py")), None) if "python" in Path(words[0]).name else None
    return Path(script or words[0]).name


# --- text envs ---------------------------------------------------------------------------------------------

def _threads(work, workers: int, seconds: float) -> tuple[int, float, float]:
    """Run `work()` in `workers` threads for `seconds`: (calls, wall seconds, CPU seconds of this tree)."""
    counts, stop = [0] * workers, threading.Event()

    def loop(i: int) -> None:
        while not stop.is_set():
            work[i]()
            counts[i] += 1

    cpu0, t0 = tree_cpu_s(), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(i,)) for i in range(workers)]
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    return sum(counts), time.perf_counter() - t0, tree_cpu_s() - cpu0


def text_env_figures(seconds: float = 5.0, workers: int = 2) -> dict:
    """Local-sandbox executions and cwm/Code-v0 oracle episodes per CPU-second and per second; baseline
    subprocess.run([python, -c]) per CPU-second."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from cwm_envs.sandbox.local import LocalSandbox

    out = {"workers": workers, "seconds": seconds, "load_1m_before": round(os.getloadavg()[0], 2)}
    boxes = [LocalSandbox() for _ in range(workers)]
    try:
        for b in boxes:
            if b.run(SUM).stdout.strip() != EXPECTED:
                raise RuntimeError("the local sandbox gave a wrong result")
        n, wall, cpu = _threads([lambda b=b: b.run(SUM) for b in boxes], workers, seconds)
    finally:
        for b in boxes:
            b.close()
    out.update(sandbox_execs=n, sandbox_execs_per_s=round(n / wall, 1), sandbox_execs_per_cpu_s=round(n / cpu, 1))

    envs = [gymnasium.make("cwm/Code-v0").unwrapped for _ in range(workers)]
    seeds = iter(range(10**9))
    paid = []

    def episode(env) -> None:
        env.reset(seed=next(seeds))
        _, reward, *_ = env.step(env.reference_response(env.task))
        paid.append(reward > 0)

    try:
        for env in envs:
            episode(env)                          # warm: the sandbox is up
        paid.clear()
        n, wall, cpu = _threads([lambda e=e: episode(e) for e in envs], workers, seconds)
    finally:
        for env in envs:
            env.close()
    out.update(code_env_episodes=n, code_env_episodes_per_s=round(n / wall, 1),
               code_env_episodes_per_cpu_s=round(n / cpu, 1), code_env_oracle_paid=round(sum(paid) / len(paid), 3))

    cpu0, t0, k = tree_cpu_s(), time.perf_counter(), 0
    while time.perf_counter() - t0 < min(seconds, 3.0) or k < 5:
        subprocess.run([sys.executable, "-c", SUM], check=True, capture_output=True)
        k += 1
    out.update(subprocess_runs_per_cpu_s=round(k / (tree_cpu_s() - cpu0), 1),
               load_1m_after=round(os.getloadavg()[0], 2))
    return out


# --- the command -------------------------------------------------------------------------------------------

def swe_image(choice: str, log) -> str:
    """The image to load: `swe` (the embedded task set's first instance image, built if missing), `base`, or
    a tag."""
    if choice == "base":
        from cwm_envs.sandbox.images import ensure_base_image

        return ensure_base_image(None)
    if choice != "swe":
        return choice
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)

    env = gymnasium.make("cwm/SWE-v0", log=log).unwrapped
    try:
        return env.image_for(env.tasks[0])
    finally:
        env.close()


def run_bench(args) -> int:
    from tqdm import tqdm

    from cwm_envs.errors import UsageError

    points = sorted(set(args.points))
    if not points or min(points) < 1 or args.execs < 1 or args.resets < 0 or args.host_windows < 1:
        raise UsageError("--points must be positive, --execs and --host-windows at least 1, --resets 0 or more")
    show = sys.stderr.isatty()
    log = (lambda m: tqdm.write(m, file=sys.stderr)) if show else (lambda _m: None)
    cpus = os.cpu_count()
    summary: dict = {"cpus": cpus, "load_1m_at_start": round(os.getloadavg()[0], 2)}
    rows: list[dict] = []
    details: dict = {"limits": SWE_LIMITS, "points": rows}
    title = "Scale: concurrent SWE containers and text-env executions on one machine"

    def save() -> Path:                          # after every part: a later fault keeps what was measured
        summary["load_1m_at_end"] = round(os.getloadavg()[0], 2)
        tables = {"containers": [{k: v for k, v in r.items() if k not in ("errors", "failures_by_kind")}
                                 for r in rows]}
        return write_report(args.out, title, summary, details, tables)
    if not args.no_containers:
        t = time.perf_counter()
        image = swe_image(args.image, log)
        if args.exec_command:
            workloads = [("custom", args.exec_command, None)]
        else:                                    # the repo's tests too, where the image has a repo to test
            workloads = [TURN, TESTS] if "swe-instance" in image else [TURN]
        details.update(image=image, image_ready_s=round(time.perf_counter() - t, 1), workloads=workloads)
        details["host_costs_one_container"] = host_costs(image, args.host_windows)   # first: as quiet as it gets
        save()
        total = sum((n * args.execs) for n in [1, *points])
        bar = tqdm(total=total, desc="scale: containers", unit="exec", disable=not show, dynamic_ncols=True)
        lock = threading.Lock()

        def tick() -> None:
            with lock:
                bar.update(1)

        try:
            for n in [1, *points]:               # 1: the baseline, measured in this run
                bar.set_postfix(containers=n)
                rows.append(container_point(n, image, args.execs, args.resets, workloads, tick))
                r = rows[-1]
                tqdm.write(f"{n:3d} containers: exec p50 {r['exec_p50_ms']} ms p99 {r['exec_p99_ms']} ms, reset p50 "
                           f"{r['reset_p50_ms']} ms p99 {r['reset_p99_ms']} ms, {r['execs_per_s']} execs/s, memory "
                           f"{r['mem_peak_mb_per_container']} MB peak per container (+{r['shim_pss_mb_per_container']}"
                           f" MB shim), {r['failures']} failures, load {r['load_1m_before']} -> {r['load_1m_after']}")
                save()
        finally:
            bar.close()
        base, top = rows[0], rows[-1]
        summary.update({
            "image": image, "points": points,
            "exec_p50_ms_1_container": base["exec_p50_ms"], f"exec_p50_ms_{top['containers']}": top["exec_p50_ms"],
            f"exec_p99_ms_{top['containers']}": top["exec_p99_ms"],
            "reset_p50_ms_1_container": base["reset_p50_ms"], f"reset_p50_ms_{top['containers']}": top["reset_p50_ms"],
            "mem_peak_mb_per_container": top["mem_peak_mb_per_container"],
            "shim_pss_mb_per_container": top["shim_pss_mb_per_container"],
            "execs_per_s_1_container": base["execs_per_s"], f"execs_per_s_{top['containers']}": top["execs_per_s"],
            "failures": sum(r["failures"] for r in rows),
            "containers_left": sum(r["containers_left_after"] for r in rows),
            **{k: v for k, v in details["host_costs_one_container"].items() if k.startswith("host_cpu_ms_per")},
            "baseline": "one container alone (N=1), same command, same run",
        })
    if not args.no_ray:
        mem = rollout_worker_memory()
        details["rollout_worker_memory"] = mem
        summary.update(worker_pss_mb=mem["worker_pss_mb"], ray_node_pss_mb=mem["ray_node_pss_mb"])
        print(f"rollout worker: {mem['worker_pss_mb']} MB (PSS, cwm-micro in-process policy, after a batch); "
              f"Ray's own processes on the node: {mem['ray_node_pss_mb']} MB in {mem['ray_processes']} processes")
        save()
    if not args.no_text:
        text = text_env_figures(args.seconds)
        details["text_envs"] = text
        per_core = {k: text[k] for k in ("sandbox_execs_per_cpu_s", "code_env_episodes_per_cpu_s",
                                          "subprocess_runs_per_cpu_s")}
        summary.update({**per_core, "sandbox_execs_per_s_2_threads": text["sandbox_execs_per_s"],
                        "code_env_episodes_per_s_2_threads": text["code_env_episodes_per_s"],
                        "text_baseline": "subprocess.run([python, '-c', ...]) per CPU-second, same run"})
        print(f"text envs: local sandbox {text['sandbox_execs_per_cpu_s']} executions per CPU-second "
              f"({text['sandbox_execs_per_s']}/s with 2 threads), cwm/Code-v0 oracle "
              f"{text['code_env_episodes_per_cpu_s']} episodes per CPU-second ({text['code_env_episodes_per_s']}/s); "
              f"baseline subprocess.run {text['subprocess_runs_per_cpu_s']} per CPU-second "
              f"(load {text['load_1m_before']} -> {text['load_1m_after']})")
    print(f"report: {save()}")
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("scale", help="concurrent SWE containers (4-32) and text-env executions/s "
                                    "per core on this machine", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/scale", help="report directory (default runs/scale)")
    p.add_argument("--points", type=int, nargs="+", default=[4, 8, 16, 32],
                   help="containers at once (default 4 8 16 32)")
    p.add_argument("--execs", type=int, default=8, help="commands per container per point (default 8)")
    p.add_argument("--resets", type=int, default=2, help="container replacements per container per point (default 2)")
    p.add_argument("--image", default="swe", help="swe (the embedded SWE task's image, default), base, or a tag")
    p.add_argument("--command", dest="exec_command",      # not `command`: the top-level parser's dest
                   help="the command each exec runs, which must exit 0 (default: an agent-like turn, a file search "
                   "and a short Python run, alternating with the repo's test suite in an SWE image; their output is "
                   "checked)")
    p.add_argument("--host-windows", type=int, default=5, help="windows of 4 execs and 4 resets, one container "
                   "alone, for the host's CPU per exec and per reset (the least busy counts; default 5)")
    p.add_argument("--seconds", type=float, default=5.0, help="length of each text-env throughput run (default 5)")
    p.add_argument("--no-containers", action="store_true", help="skip the container points")
    p.add_argument("--no-text", action="store_true", help="skip the text-env figures")
    p.add_argument("--no-ray", action="store_true", help="skip the rollout worker's memory (starts a local Ray)")
    p.set_defaults(func=run_bench)
