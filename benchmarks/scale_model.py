"""The capacity model of docs/scale.md: from `cwm bench scale`'s single-machine figures to the nodes, cores and
memory that C concurrent SWE containers and W rollout workers need on a Ray cluster, bottleneck first; and a
simulation that checks the model's CPU arithmetic against the single machine's own latencies.

- `simulate`: N clients, each running a sequence of CPU jobs (execs, resets) with think time between them,
  on `cores` cores shared equally by every runnable job (processor sharing, as Linux's CFS does), a job
  using at most one core (a container's `--cpus 1`), with `background` other runnable tasks (the load
  average of the programs that share the machine). It predicts exec latency and execs/s.
- `capacity`: CPU, memory and container-start rate that C containers and W workers need, each turned into
  a node count; the resource that needs the most nodes binds.

    python -m benchmarks.scale_model runs/scale/report.json      # the model and the check, printed
"""
from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import statistics
from pathlib import Path
from typing import Sequence

# --- the simulation ----------------------------------------------------------------------------------------

def simulate(n: int, *, cores: float, jobs: Sequence[float] | None = None, cpu_s: float | None = None,
             execs: int = 20, think_s: float = 0.0, background: float = 0.0, seed: int = 0,
             counted: Sequence[bool] | None = None) -> dict:
    """Processor sharing of `n` closed-loop clients, each running `jobs` (CPU seconds, in order; default
    `execs` jobs of `cpu_s`) with `think_s` between them. Returns the latency p50/p99 and the rate per second
    of the jobs that `counted` marks (default all: e.g. the execs, not the resets between them).

    >>> simulate(4, cores=2, cpu_s=0.1, execs=10)["exec_p50_s"]
    0.2
    """
    jobs = list(jobs) if jobs is not None else [cpu_s] * execs
    counted = list(counted) if counted is not None else [True] * len(jobs)
    rng = random.Random(seed)
    t = 0.0
    running: dict[int, list] = {}                     # client -> [work left, started at, job index]
    waking: list[tuple[float, int, int]] = []          # (time, client, next job index)
    for c in range(n):                                 # clients start spread over one think time
        heapq.heappush(waking, (rng.uniform(0, think_s) if think_s else 0.0, c, 0))
    latencies = []
    while running or waking:
        rate = min(1.0, cores / (len(running) + background)) if running else 0.0
        finish = min(running.items(), key=lambda kv: kv[1][0]) if running else None
        t_finish = t + finish[1][0] / rate if finish else math.inf
        t_wake = waking[0][0] if waking else math.inf
        t_next = min(t_finish, t_wake)
        for job in running.values():
            job[0] -= (t_next - t) * rate
        t = t_next
        if t_finish <= t_wake:
            c, (_, started, k) = finish
            del running[c]
            if counted[k]:
                latencies.append(t - started)
            if k + 1 < len(jobs):
                heapq.heappush(waking, (t + think_s, c, k + 1))
        else:
            _, c, k = heapq.heappop(waking)
            running[c] = [jobs[k], t, k]
    latencies.sort()
    return {"exec_p50_s": round(statistics.median(latencies), 9),
            "exec_p99_s": round(latencies[min(len(latencies) - 1, math.ceil(0.99 * len(latencies)) - 1)], 9),
            "execs_per_s": round(len(latencies) / t, 6) if t else None}


def check_against(report: dict, cores: float | None = None) -> list[dict]:
    """Each measured container point beside the simulation, fed with what the same run measured: each exec
    kind's CPU in its container plus the host's CPU per exec and per reset (one container alone), in the
    bench's order, and as background the runnable tasks of other programs sampled during the point (the
    1-minute load average before it, for an older report)."""
    d = report["details"]
    host = d["host_costs_one_container"]
    cores = cores or report["summary"]["cpus"]
    kinds = [w[0] for w in d.get("workloads", [])]
    rows = []
    for p in d["points"]:
        per_kind = [p.get(f"{k}_cpu_ms") for k in kinds] if len(kinds) > 1 else []
        if not per_kind or None in per_kind:
            per_kind = [p["container_cpu_ms_per_exec"]]
        execs = [(ms + host["host_cpu_ms_per_exec"]) / 1000 for ms in per_kind]
        per_client = max(1, p["execs"] // max(1, p["started"]))
        resets = p["resets"] // max(1, p["started"])
        chunks = [per_client // (resets + 1) + (1 if r < per_client % (resets + 1) else 0) for r in range(resets + 1)]
        jobs, counted, i = [], [], 0
        for r, k in enumerate(chunks):                 # the bench's order: execs, a reset, execs, ...
            for _ in range(k):
                jobs.append(execs[i % len(execs)])
                counted.append(True)
                i += 1
            if r < resets:
                jobs.append(host["host_cpu_ms_per_reset"] / 1000)
                counted.append(False)
        background = p.get("runnable_others_mean")
        background = p["load_1m_before"] if background is None else background
        sim = simulate(p["started"], cores=cores, jobs=jobs, counted=counted, background=background)
        rows.append({"containers": p["containers"], "background_tasks": round(background, 1),
                     "measured_p50_ms": p["exec_p50_ms"], "simulated_p50_ms": round(1000 * sim["exec_p50_s"], 1),
                     "measured_p99_ms": p["exec_p99_ms"], "simulated_p99_ms": round(1000 * sim["exec_p99_s"], 1),
                     "measured_execs_per_s": p["execs_per_s"],
                     "simulated_execs_per_s": round(sim["execs_per_s"], 2),
                     "ratio_p50": round(p["exec_p50_ms"] / (1000 * sim["exec_p50_s"]), 2)})
    return rows


# --- the model ---------------------------------------------------------------------------------------------

def capacity(f: dict, *, containers: int = 512, workers: int = 64, node_cores: int = 64, node_mem_gb: float = 256,
             turn_s: float = 10.0, turns_per_episode: int = 30, grading_cpu_s: float = 5.0,
             worker_cpus: float = 1.0, utilisation: float = 0.75, starts_per_s_per_node: float | None = None) -> dict:
    """Nodes needed for `containers` concurrent SWE containers and `workers` rollout workers, per resource.

    `f` holds the measured figures: container_mem_mb, shim_mb (host memory beside each container),
    container_cpu_s_per_exec, host_cpu_s_per_exec, host_cpu_s_per_reset, worker_mem_mb, node_overhead_mb,
    and optionally client_mb_per_sandbox. Assumptions: each container runs one command per `turn_s` (the
    policy's turn: generation plus the command), an episode lasts `turns_per_episode` turns and then needs a
    fresh container and a grading run of `grading_cpu_s`; Ray reserves `worker_cpus` per worker; CPU is
    planned to `utilisation`.
    """
    episodes_per_s = containers / (turn_s * turns_per_episode)
    cpu = {
        "rollout workers (Ray reservation)": workers * worker_cpus,
        "commands in containers": containers / turn_s * f["container_cpu_s_per_exec"],
        "engine per command (dockerd, shim)": containers / turn_s * f["host_cpu_s_per_exec"],
        "container turnover (2 per episode)": episodes_per_s * 2 * f["host_cpu_s_per_reset"],
        "grading runs": episodes_per_s * grading_cpu_s,
    }
    mem_mb = {
        "containers (working set)": containers * f["container_mem_mb"],
        "shims beside them": containers * f["shim_mb"],
        "sandbox clients in the workers": containers * f.get("client_mb_per_sandbox", 0.0),
        "rollout worker processes": workers * f["worker_mem_mb"],
    }
    cpu_total, mem_total = sum(cpu.values()), sum(mem_mb.values())
    per_node_mem = node_mem_gb * 1024 - f["node_overhead_mb"]
    resources = [
        {"resource": "cpu", "demand": round(cpu_total, 1), "unit": "cores",
         "per_node": round(node_cores * utilisation, 1),
         "nodes": math.ceil(cpu_total / (node_cores * utilisation)),
         "parts": {k: round(v, 2) for k, v in cpu.items()}},
        {"resource": "memory", "demand": round(mem_total / 1024, 1), "unit": "GB",
         "per_node": round(per_node_mem / 1024, 1), "nodes": math.ceil(mem_total / per_node_mem),
         "parts": {k: round(v / 1024, 2) for k, v in mem_mb.items()}},
    ]
    if starts_per_s_per_node:
        starts = episodes_per_s * 2
        resources.append({"resource": "container starts", "demand": round(starts, 2), "unit": "starts/s",
                          "per_node": round(starts_per_s_per_node, 2),
                          "nodes": math.ceil(starts / starts_per_s_per_node), "parts": {}})
    resources.sort(key=lambda r: (r["nodes"], r["demand"] / r["per_node"]), reverse=True)
    nodes = resources[0]["nodes"]
    return {"containers": containers, "workers": workers, "turn_s": turn_s, "turns_per_episode": turns_per_episode,
            "episodes_per_s": round(episodes_per_s, 3), "resources": resources, "bottleneck": resources[0]["resource"],
            "nodes": nodes, "cores": nodes * node_cores, "memory_gb": nodes * node_mem_gb,
            "containers_per_node": math.ceil(containers / nodes), "workers_per_node": math.ceil(workers / nodes)}


OS_RESERVE_MB = 1024   # the kernel, page tables, logging and the like on a node: assumed, not measured


def figures_from(report: dict, worker_mem_mb: float | None = None, node_overhead_mb: float | None = None) -> dict:
    """The model's inputs from a `cwm bench scale` report: the largest per-container working set of any point,
    the largest point's shim and client memory, each kind's CPU per exec averaged, the single container's
    host CPU per exec and per reset, the start rate at the largest point, the rollout worker's memory, and per
    node Ray's processes + dockerd and containerd + OS_RESERVE_MB."""
    d = report["details"]
    top = max(d["points"], key=lambda p: p["containers"])
    host = d["host_costs_one_container"]
    ray_mem = d.get("rollout_worker_memory", {})
    if worker_mem_mb is None:
        worker_mem_mb = ray_mem.get("worker_pss_mb") or 600.0
    if node_overhead_mb is None:
        node_overhead_mb = (ray_mem.get("ray_node_pss_mb") or 700.0) + host.get("engine_pss_mb", 200.0) + OS_RESERVE_MB
    return {"container_mem_mb": max(p["mem_peak_mb_per_container"] or 0 for p in d["points"]),
            "shim_mb": top["shim_pss_mb_per_container"],
            "client_mb_per_sandbox": max(0.0, top.get("client_mb_per_sandbox") or 0.0),
            "container_cpu_s_per_exec": statistics.mean(p["container_cpu_ms_per_exec"] for p in d["points"]) / 1000,
            "host_cpu_s_per_exec": host["host_cpu_ms_per_exec"] / 1000,
            "host_cpu_s_per_reset": host["host_cpu_ms_per_reset"] / 1000,
            "starts_per_s_per_node": top["started"] / (top["start_max_ms"] / 1000),
            "worker_mem_mb": worker_mem_mb, "node_overhead_mb": node_overhead_mb}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.scale_model", description=__doc__.split("\n\n")[0])
    p.add_argument("report", help="report.json of `cwm bench scale`")
    p.add_argument("--containers", type=int, default=512)
    p.add_argument("--workers", type=int, default=64)
    p.add_argument("--node-cores", type=int, default=64)
    p.add_argument("--node-mem-gb", type=float, default=256)
    p.add_argument("--turn-s", type=float, nargs="+", default=[10.0], help="seconds per agent turn (several: a sweep)")
    p.add_argument("--turns", type=int, default=30, help="turns per episode")
    p.add_argument("--grading-cpu-s", type=float, default=5.0, help="CPU seconds of one grading run")
    p.add_argument("--worker-cpus", type=float, default=1.0, help="Ray CPUs per rollout worker (RolloutPool's "
                   "cpus_per_worker, default 1)")
    p.add_argument("--container-mem-mb", type=float, help="override the measured working set per container")
    p.add_argument("--container-cpu-s", type=float, help="override the measured container CPU per command (a heavier "
                   "repository's test runs, say)")
    p.add_argument("--worker-mem-mb", type=float, help="a rollout worker's memory (default: measured)")
    p.add_argument("--node-overhead-mb", type=float, help="Ray, dockerd, the OS, per node (default: measured Ray "
                   "and engine + 1 GB)")
    a = p.parse_args(argv)
    report = json.loads(Path(a.report).read_text())
    print("simulation against the single machine (each exec kind's container CPU + the host's per exec of one "
          "container alone; background: other programs' runnable tasks during the point):")
    for r in check_against(report):
        print("  " + ", ".join(f"{k} {v}" for k, v in r.items()))
    f = figures_from(report, a.worker_mem_mb, a.node_overhead_mb)
    if a.container_mem_mb:
        f["container_mem_mb"] = a.container_mem_mb
    if a.container_cpu_s:
        f["container_cpu_s_per_exec"] = a.container_cpu_s
    starts = f.pop("starts_per_s_per_node")
    print(f"inputs: {json.dumps({k: round(v, 4) for k, v in f.items()})}, starts/s per node {starts:.2f}")
    for turn in a.turn_s:
        plan = capacity(f, containers=a.containers, workers=a.workers, node_cores=a.node_cores,
                        node_mem_gb=a.node_mem_gb, turn_s=turn, turns_per_episode=a.turns,
                        grading_cpu_s=a.grading_cpu_s, worker_cpus=a.worker_cpus, starts_per_s_per_node=starts)
        print(f"turn {turn} s: {plan['nodes']} node(s) of {a.node_cores} cores / {a.node_mem_gb:g} GB, bottleneck "
              f"{plan['bottleneck']}, {plan['episodes_per_s']} episodes/s")
        for r in plan["resources"]:
            print(f"  {r['resource']}: {r['demand']} {r['unit']} (per node {r['per_node']}) -> {r['nodes']} node(s) "
                  f"{r['parts']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
