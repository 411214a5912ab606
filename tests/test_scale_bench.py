"""`cwm bench scale` on real containers and sandboxes, at a tiny size: its figures are there, its failures are
counted, and it leaves no container behind; the capacity model's arithmetic and its simulation."""
import json
import os

import pytest

from benchmarks import scale_bench, scale_model
from cwm_envs.cli import main


def test_bad_settings_are_one_line_errors_naming_the_command(capsys):
    for args in (["--points", "0"], ["--execs", "0"], ["--resets", "-1"], ["--host-windows", "0"]):
        assert main(["bench", "scale", *args, "--command", "true", "--out", "unused"]) == 2
        err = capsys.readouterr().err
        assert err.startswith("cwm bench: error:") and len(err.strip().splitlines()) == 1, err


@pytest.mark.docker
@pytest.mark.slow
def test_two_containers_and_the_text_envs_give_every_figure_and_leave_nothing(docker_engine, tmp_path):
    import docker

    out = tmp_path / "scale"
    code = main(["bench", "scale", "--image", "base", "--points", "2", "--execs", "2", "--resets", "1",
                 "--host-windows", "1", "--seconds", "0.5", "--no-ray", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    s, rows = report["summary"], report["details"]["points"]
    assert [r["containers"] for r in rows] == [1, 2]             # the baseline, then the point
    for r in rows:
        n = r["containers"]
        assert r["started"] == n and r["execs"] == 2 * n and r["resets"] == n and r["failures"] == 0, r["errors"]
        assert r["mem_peak_mb_per_container"] > 0 and r["shim_pss_mb_per_container"] > 0
        assert r["container_cpu_ms_per_exec"] > 0 and 0 < r["exec_p50_ms"] <= r["exec_p99_ms"]
        assert r["containers_left_after"] == 0 and r["load_1m_before"] >= 0
    assert s["containers_left"] == 0 and s["host_cpu_ms_per_reset"] is not None
    text = report["details"]["text_envs"]
    assert text["sandbox_execs"] > 0 and text["code_env_episodes"] > 0 and text["code_env_oracle_paid"] == 1.0
    assert "| containers |" in (out / "report.md").read_text()
    client = docker.from_env()
    assert not client.containers.list(all=True, filters={"label": f"cwm-envs.owner-pid={os.getpid()}"})


@pytest.mark.docker
def test_a_failing_command_is_counted_as_a_failure_not_a_latency(docker_engine):
    row = scale_bench.container_point(1, scale_bench.swe_image("base", print), execs=2, resets=0,
                                      workloads=[("custom", "exit 3", None)])
    assert row["failures_by_kind"] == {"start": 0, "exec": 2, "reset": 0} and "exit 3" in row["errors"][0]
    assert row["containers_left_after"] == 0


@pytest.mark.ray
def test_the_rollout_worker_and_rays_own_processes_are_measured(ray_session):
    mem = scale_bench.rollout_worker_memory()
    assert mem["episodes"] == 4
    assert mem["worker_pss_mb"] > 50          # a Python with torch and a policy replica: never a few MB
    names = [p["process"] for p in mem["processes"]]
    assert mem["ray_node_pss_mb"] > 0 and "raylet" in names and "gcs_server" in names, names


def test_the_simulation_of_one_core_reproduces_processor_sharing():
    """N clients with no think time on k cores: each exec takes N * c / k once N > k (and c below)."""
    for n, k in ((1, 2), (2, 2), (8, 2), (32, 2)):
        sim = scale_model.simulate(n, cores=k, cpu_s=0.05, execs=40)
        assert sim["exec_p50_s"] == pytest.approx(0.05 * max(1, n / k), rel=1e-6)
        assert sim["execs_per_s"] == pytest.approx(min(n, k) / 0.05, rel=1e-6)
    # three other runnable tasks share the 2 cores with one client: it gets half a core
    assert scale_model.simulate(1, cores=2, cpu_s=0.05, background=3)["exec_p50_s"] == pytest.approx(0.1)


def test_the_capacity_model_counts_nodes_per_resource_and_names_the_binding_one_first():
    figures = {"container_mem_mb": 300, "shim_mb": 5, "container_cpu_s_per_exec": 0.1, "host_cpu_s_per_exec": 0.04,
               "host_cpu_s_per_reset": 0.3, "worker_mem_mb": 500, "node_overhead_mb": 800}
    common = dict(containers=512, workers=64, node_cores=64, turn_s=10.0, turns_per_episode=30, grading_cpu_s=20.0)
    small = scale_model.capacity(figures, node_mem_gb=32, **common)
    # memory: 512 x (300 + 5) + 64 x 500 = 188160 MB over 32 GB - 800 MB per node -> 6 nodes
    # cpu: 64 + 51.2 x (0.1 + 0.04) + 1.707 episodes/s x (2 x 0.3 + 20) = 106.3 cores over 48 per node -> 3
    assert [(r["resource"], r["nodes"]) for r in small["resources"]] == [("memory", 6), ("cpu", 3)]
    assert small["bottleneck"] == "memory" and small["nodes"] == 6 and small["cores"] == 6 * 64
    assert small["resources"][1]["demand"] == pytest.approx(106.3, abs=0.05)
    roomy = scale_model.capacity(figures, node_mem_gb=1024, **common)
    assert roomy["bottleneck"] == "cpu" and roomy["nodes"] == 3
