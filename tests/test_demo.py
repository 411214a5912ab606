"""`cwm demo` and `make demo` as a new user meets them: every step's result in one table at the end, a step or a
set-up script that cannot do its part says why in one line with the fix, and the exit code tells whether every
step succeeded."""
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.demo import STEPS, _Tee

ROOT = Path(__file__).resolve().parent.parent


def cwm_demo(tmp_path, *flags, env=None):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "demo", "--out", str(out), *flags],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, **(env or {})}, timeout=600)
    return proc, out


def summary_rows(stdout: str) -> dict[str, str]:
    """The rows of the closing table, by step name."""
    table = stdout.split("=== summary", 1)[1].splitlines()
    names = {s.name for s in STEPS}
    return {line.split()[0]: line for line in table if line and line.split()[0] in names}


def test_a_step_without_docker_fails_in_one_line_and_the_table_says_so(tmp_path):
    # a real fault: the engine address points at a socket that does not exist
    proc, out = cwm_demo(tmp_path, "--quick", "--only", "math", "swe", env={"DOCKER_HOST": "unix:///nonexistent.sock"})
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "no Docker engine answers at unix:///nonexistent.sock" in failed[0]
    assert "fix:" in failed[0]
    rows = summary_rows(proc.stdout)
    assert set(rows) == {"math", "swe"}
    assert "FAILED" in rows["swe"] and "FAILED" not in rows["math"]
    assert "oracle 3/3 paid" in rows["math"] and "wrong 0/3 paid" in rows["math"]  # what the step showed
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["failed"] == ["swe"]
    assert "DockerUnavailable" in (out / "swe.log").read_text()  # the traceback is kept for whoever digs


def test_a_machine_without_bubblewrap_is_told_to_install_it(tmp_path):
    # a real fault: nothing on PATH, so no bwrap (behind the memory group's sh wrapper this read "server died")
    proc, _ = cwm_demo(tmp_path, "--quick", "--only", "sandbox", env={"PATH": str(tmp_path)})
    assert proc.returncode == 1 and "Traceback" not in proc.stdout + proc.stderr
    failed = [line for line in proc.stdout.splitlines() if line.startswith("FAILED")]
    assert len(failed) == 1 and "bubblewrap (bwrap) is not installed: `apt-get install bubblewrap`" in failed[0]


def test_step_output_keeps_the_terminal_attributes_libraries_read(tmp_path):
    # Ray's import reads sys.stdout.encoding: a tee without it failed the RL step of a full `make demo`
    with open(tmp_path / "log", "w") as fh:
        tee = _Tee(sys.__stdout__, fh)
        assert tee.encoding == sys.__stdout__.encoding and tee.isatty() == sys.__stdout__.isatty()
        tee.write("seen twice\n")
        tee.flush()
    assert (tmp_path / "log").read_text() == "seen twice\n"
    assert _Tee(io.StringIO(), io.StringIO()).encoding is None  # whatever the first stream has, no AttributeError


def ensure_docker(tmp_path, env: dict, prefix: list[str] = ()) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, "/bin/bash", str(ROOT / "scripts" / "ensure_docker.sh")], capture_output=True,
                          text=True, cwd=tmp_path, env=env, timeout=60)


def test_make_demo_without_docker_installed_says_what_to_install(tmp_path):
    # a machine without Docker: neither `docker` nor `dockerd` is on PATH
    proc = ensure_docker(tmp_path, {"PATH": str(tmp_path)})
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "dockerd is not installed" in lines[0] and "fix: install Debian's docker.io" in lines[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
def test_make_demo_as_a_user_without_an_engine_says_it_needs_root(tmp_path):
    # a user who is not root, with no engine at the address (the real dockerd binary is there)
    env = {"PATH": os.environ["PATH"], "DOCKER_HOST": "unix:///nonexistent.sock", "HOME": str(tmp_path)}
    proc = ensure_docker(tmp_path, env, ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"])
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "starting dockerd needs root" in lines[0] and "fix:" in lines[0]


@pytest.mark.slow
@pytest.mark.ray
@pytest.mark.docker
def test_quick_demo_runs_every_step_and_exits_0(tmp_path, docker_engine):
    """The fast path for real: every step, the SWE episode in a container and GRPO through Ray included."""
    proc, out = cwm_demo(tmp_path, "--quick")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = summary_rows(proc.stdout)
    assert list(rows) == [s.name for s in STEPS] and not any("FAILED" in r for r in rows.values())
    assert "3/3 hostile snippets stopped" in rows["sandbox"]
    assert "reference solution +1, wrong solution -1" in rows["code"]
    assert "oracle patch +1" in rows["swe"] and "do-nothing agent -1" in rows["swe"]
    assert "held-out sampled" in rows["rl"] and str(out / "rl") in rows["rl"]
    report = json.loads((out / "rl" / "report.json").read_text())["summary"]
    assert 0 <= report["heldout_sampled_before"] <= 1 and report["updates"] == 2
    assert (out / "rl" / "curve.png").stat().st_size > 0
    assert json.loads((out / "report.json").read_text())["summary"]["failed"] == []
