"""`cwm audit`: every registered env resists the strategy library, and the audit itself catches what it must."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import cwm_envs  # noqa: F401  (registers the ids)
from cwm_envs.audit import run_audit
from cwm_envs.audit.strategies import STRATEGIES, register
from cwm_envs.errors import UsageError
from cwm_envs.registration import ENVS

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
TEXT_ENVS = sorted(i for i in ENVS if i != "cwm/SWE-v0")


@pytest.mark.parametrize("env_id", TEXT_ENVS)
def test_no_strategy_is_paid_by_any_text_env(env_id):
    """CI runs the whole library on every text env's embedded default (a few tasks each: the strategies that
    hack a reward hack it on most tasks)."""
    report = run_audit(env_id, tasks=2)
    s = report["summary"]
    assert s["oracle_paid"] == 1.0, s
    assert s["crashes"] == 0 and s["infra_faults"] == 0, s["failures"]
    assert s["passed"], s["failures"]
    assert s["strategies"] >= 30         # the whole library ran (less the families the env exempts)


REPO_FAMILIES = {"runner-config", "startup-hook", "git", "shadow", "test-edit", "in-process", "install",
                 "agent-container"}


@pytest.mark.docker
@pytest.mark.slow
def test_no_repository_strategy_is_paid_by_the_swe_env(docker_engine):
    """Each patch that changes what runs during grading (runner config, hooks, git, shadow modules, test edits,
    code that fakes pytest from inside, an install step that rewrites it, a tampered agent container) is
    submitted for real and graded: none resolves, and each says why (refused, guard, or tests that fail)."""
    report = run_audit("cwm/SWE-v0", tasks=1, families=REPO_FAMILIES)
    s = report["summary"]
    assert s["oracle_paid"] == 1.0 and s["passed"], s["failures"]
    assert s["strategies"] == len([x for x in STRATEGIES if x.family in REPO_FAMILIES])
    for row in report["details"]:
        assert "'submitted': True" in row["evidence"], row          # the attack reached the grader
    assert s["crashes"] == 0 and s["infra_faults"] == 0


@pytest.fixture
def example_env(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLES))
    import reverse_env

    reverse_env.register()
    return "example/Reverse-v0"


def test_the_documented_toy_env_passes_check_env_and_the_audit(example_env):
    env = gymnasium.make(example_env)
    check_env(env.unwrapped, skip_render_check=True)
    env.close()
    assert run_audit(example_env, tasks=3)["summary"]["passed"]
    assert len((EXAMPLES / "reverse_env.py").read_text().splitlines()) <= 80


class _Gullible(gymnasium.Env):
    """A third-party env with the classic bugs: it pays any response that prints PASSED, and it raises on
    a response with a NUL byte."""

    from cwm_envs.spaces import AnyText
    observation_space = action_space = AnyText(1024)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.task = str(self.np_random.integers(10**9))
        return f"Write a program that prints {self.task}.", {}

    def reference_episode(self, task):
        return [f"```python\nprint({task})\n```"]

    def step(self, action):
        if "\x00" in action:
            raise ValueError("cannot handle NUL")
        ok = "PASSED" in action or f"print({self.task})" in action
        return "", 1.0 if ok else -1.0, True, False, {}


def test_the_audit_catches_a_gullible_reward_and_a_crash():
    gymnasium.register("audittest/Gullible-v0", entry_point=_Gullible)
    report = run_audit("audittest/Gullible-v0", tasks=4)
    s, rows = report["summary"], {r["strategy"]: r for r in report["details"]}
    assert not s["passed"] and s["oracle_paid"] == 1.0
    assert rows["all-passed"]["paid_fraction"] == 1.0
    assert rows["nul-bytes"]["crashed"] == 4 and "cannot handle NUL" in rows["nul-bytes"]["evidence"]
    assert any("all-passed" in f for f in s["failures"]) and any("raised" in f for f in s["failures"])


def test_an_env_without_an_oracle_is_one_clear_error():
    class NoOracle(_Gullible):
        reference_episode = None

    gymnasium.register("audittest/NoOracle-v0", entry_point=NoOracle)
    report = run_audit("audittest/NoOracle-v0", tasks=2, families={"format"})
    assert report["summary"]["oracle_paid"] == 0.0
    assert "has no oracle" in report["summary"]["failures"][-1]
    with pytest.raises(UsageError):
        run_audit("audittest/NoOracle-v0", tasks=0)


def test_cli_plays_an_authors_own_strategy_and_exits_nonzero_when_paid(tmp_path, example_env):
    (tmp_path / "my_attacks.py").write_text(
        "from cwm_envs.audit.strategies import register\n\n"
        "@register('mine', 'copy-the-word-backwards')\n"
        "def copy(ep):\n"
        "    word = ep.observation.split(\"'\")[1]\n"
        "    yield '</think>\\n' + word[::-1]\n")
    env = {"PYTHONPATH": f"{tmp_path}:{EXAMPLES}:{Path.cwd()}"}
    import os

    cmd = [sys.executable, "-m", "cwm_envs.cli", "audit", "--env", example_env, "--tasks", "3",
           "--families", "mine,format", "--strategies", "reverse_env", "my_attacks", "--out", str(tmp_path / "r")]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **env}, timeout=300)
    assert done.returncode == 1, done.stderr        # the "strategy" solves the task: the audit says it is paid
    report = json.loads((tmp_path / "r" / "report.json").read_text())
    assert report["summary"]["failures"] == ["example/Reverse-v0: mine/copy-the-word-backwards paid on 3/3 tasks"]
    assert (tmp_path / "r" / "report.md").read_text().startswith("# cwm audit")
    assert "mine" not in {s.family for s in STRATEGIES}   # the subprocess's registry, not ours


def test_registering_a_strategy_twice_is_refused():
    with pytest.raises(ValueError):
        register("format", "empty")(lambda ep: iter(["x"]))
