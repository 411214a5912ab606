"""`cwm demo` as a user meets it: each step's result in one table at the end, a step that cannot run says why in
one line and the demo goes on, and the exit code tells whether every step succeeded."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cwm_demo(tmp_path, *flags, env=None):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "demo", "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)
    return proc, out


def summary_rows(stdout: str) -> dict[str, str]:
    """The rows of the closing table, by step name."""
    table = stdout.split("=== summary", 1)[1].splitlines()
    return {line.split()[0]: line for line in table if line and line.split()[0] in ("math", "swe", "rl")}


def test_a_step_without_docker_fails_in_one_line_and_the_table_says_so(tmp_path):
    # a real fault: the engine address points at a socket that does not exist
    proc, out = cwm_demo(tmp_path, "--quick", "--only", "math", "swe", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "no Docker engine answers" in failed[0] and "fix:" in failed[0]
    rows = summary_rows(proc.stdout)
    assert set(rows) == {"math", "swe"}
    assert "FAILED" in rows["swe"] and "FAILED" not in rows["math"]
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["failed"] == ["swe"]
    assert "DockerUnavailable" in (out / "swe.log").read_text()  # the traceback is kept for whoever digs


@pytest.mark.slow
@pytest.mark.ray
def test_quick_rl_step_runs_after_a_failed_one_and_writes_its_files(tmp_path):
    proc, out = cwm_demo(tmp_path, "--quick", "--only", "swe", "rl", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    rows = summary_rows(proc.stdout)
    assert "FAILED" in rows["swe"]
    assert "held-out sampled" in rows["rl"] and str(out / "rl") in rows["rl"]
    report = json.loads((out / "rl" / "report.json").read_text())["summary"]
    assert 0 <= report["heldout_sampled_before"] <= 1 and report["updates"] == 2
    assert (out / "rl" / "curve.png").stat().st_size > 0
