"""cwm/SWE-v0 end to end: real images, real containers, real grading, on the embedded default task set.

The first run builds the default set and its images (a couple of minutes once; cached afterwards). Each test
asserts what a user of the env would check: the prompt, the tools' behaviour, the budgets, the reward for
the oracle and for doing nothing, and that cheating (editing tests, conftest tricks, peeking into git) does
not pay.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import threading

import gymnasium
import pytest

import cwm_envs  # noqa: F401  (registers the ids)
from agents.swe_agents import DoNothingSWEAgent, OracleSWEAgent, run_episode, tool
from cwm_envs import chat


def output_of(obs: str) -> str:
    m = re.search(r"<output>\n(.*)\n</output>\n\n<budget>\n\* Remaining turns: \d+\n\* Remaining tokens: -?\d+\n</budget>",
                  obs, re.S)
    assert m, f"not a tool result in CWM's format: {obs[:300]!r}"
    return m.group(1)


def make(**kwargs):
    return gymnasium.make("cwm/SWE-v0", **kwargs).unwrapped


def test_tool_calls_are_parsed_as_cwm_does():
    from cwm_envs.swe.tools import ToolCall, parse_tool_call

    assert parse_tool_call("thinking...\n<tool: bash>\nls\npwd\n</tool>") == ToolCall("bash", "ls\npwd")
    assert parse_tool_call("<tool: edit>\na.py\n<<<<<<< SEARCH\nx\n=======\ny\n>>>>>>> REPLACE\n</tool>").name == "edit"
    for bad, expected in (("", "No tool call"), ("<tool:bash>\nls\n</tool>", "Malformed"),
                          ("<tool: bash>\nls</tool>", "Malformed"), ("<tool: bash>\n \n</tool>", "non-empty"),
                          ("<tool: bash>\nls\n</tool><tool: submit>\np\n</tool>", "found 2"),
                          ("<tool: browse>\nx\n</tool>", "Unknown tool 'browse'")):
        got = parse_tool_call(bad)
        assert isinstance(got, str) and expected in got, (bad, got)


@pytest.mark.parametrize("module", ["cwm_envs.swe.tools", "cwm_envs.swe.mutate", "cwm_envs.swe.default_repo",
                                    "cwm_envs.envs.swe_env", "rewards.swe", "agents.swe_agents"])
def test_doctests(module):
    import doctest
    import importlib

    assert doctest.testmod(importlib.import_module(module)).failed == 0


@pytest.fixture
def env(docker_engine):
    """An env on the default task set, closed after the test."""
    e = make()
    yield e
    e.close()


def own_containers() -> list:
    import docker

    client = docker.from_env()
    try:
        return client.containers.list(all=True, filters={"label": f"cwm-envs.owner-pid={os.getpid()}"},
                                      ignore_removed=True)
    finally:
        client.close()


@pytest.mark.docker
def test_first_observation_is_the_issue_in_cwm_chat_format(env):
    obs, info = env.reset(seed=0)
    task = env.task
    assert info["task_id"] == task.instance_id and info["turn"] == 0
    assert obs.startswith(chat.BOS + "<|start_header_id|>system<|end_header_id|>\n\n")
    assert obs.endswith(chat.assistant_header())                      # the model continues the assistant turn
    system, user = re.findall(r"<\|start_header_id\|>(\w+)<\|end_header_id\|>\n\n(.*?)<\|eot_id\|>", obs, re.S)
    assert system[0] == "system" and user[0] == "user"
    for name in ("bash", "edit", "create", "submit"):
        assert f"<tool: {name}>" in system[1]
    assert "128 turns" in system[1] and "131072 tokens" in system[1] and "120 seconds" in system[1]
    assert task.problem_statement.strip() in user[1] and "/testbed" in user[1]
    assert "FAIL_TO_PASS" not in obs and task.patch not in obs      # no grading data leaks into the prompt
    assert env.observation_space.contains(obs)


@pytest.mark.docker
def test_gymnasium_checker_passes(env):
    from gymnasium.utils.env_checker import check_env

    check_env(env, skip_render_check=True)


@pytest.mark.docker
@pytest.mark.slow
def test_oracle_resolves_every_embedded_task(env):
    agent = OracleSWEAgent()
    for index, task in enumerate(env.tasks):
        ep = run_episode(env, agent, options={"task": index})
        assert ep.reward == 1.0, (task.instance_id, ep.info)
        assert ep.tools[-1] == "submit" and "edit" in ep.tools and not agent.fallbacks
        status = ep.info["outcomes"]["tests_status"]
        assert sorted(status["FAIL_TO_PASS"]["success"]) == sorted(task.FAIL_TO_PASS)
        assert len(status["PASS_TO_PASS"]["success"]) == len(task.PASS_TO_PASS) and not status["PASS_TO_PASS"]["failure"]


@pytest.mark.docker
def test_do_nothing_gets_minus_one_when_the_turns_run_out(docker_engine):
    e = make(max_turns=2)
    try:
        ep = run_episode(e, DoNothingSWEAgent(), options={"task": 0})
    finally:
        e.close()
    assert ep.reward == -1.0 and ep.steps == 2
    assert ep.info["resolved"] is False and "no turns left" in ep.info["reason"]


@pytest.mark.docker
def test_tools_behave_like_cwms(env):
    env.reset(options={"task": 0})
    target = env.task.patch.split("\n")[0].split(" b/")[1]     # the file the gold patch changes

    def step(action):
        obs, reward, terminated, truncated, info = env.step(action)
        assert reward == 0.0 and not terminated and not truncated
        return obs, info

    # bash: the session keeps its directory and exported variables; stderr is shown; stdin is empty
    obs, info = step(tool("bash", "cd tests && export CWM_X=42 && echo oops >&2"))
    assert output_of(obs) == "oops" and obs.startswith("<|start_header_id|>tool: bash<|end_header_id|>")
    assert "* Remaining turns: 127\n" in obs and info["remaining_turns"] == 127
    obs, _ = step(tool("bash", "pwd; echo $CWM_X; cat; which python"))
    assert output_of(obs).split("\n") == ["/testbed/tests", "42", "/opt/miniconda3/envs/testbed/bin/python"]
    obs, _ = step(tool("bash", "cd /testbed\nfor i in 1 2; do\n  echo line $i\ndone"))       # multi-line commands
    assert output_of(obs) == "line 1\nline 2"
    # edit: exact, unique match of whole lines; the result shows numbered lines around the edit
    original = env._sandbox.read_file(f"/testbed/{target}").decode()
    first = next(line for line in original.splitlines() if line.startswith("def "))
    obs, info = step(tool("edit", f"{target}\n<<<<<<< SEARCH\n{first}\n=======\n# note\n{first}\n>>>>>>> REPLACE"))
    assert info["tool_success"] and "# note" in output_of(obs) and re.search(r"^\s+\d+\t# note$", output_of(obs), re.M)
    assert env._sandbox.read_file(f"/testbed/{target}").decode() == original.replace(first, f"# note\n{first}", 1)
    obs, info = step(tool("edit", f"{target}\n<<<<<<< SEARCH\nno such line\n=======\nx\n>>>>>>> REPLACE"))
    assert not info["tool_success"] and "do not appear verbatim" in output_of(obs)
    obs, info = step(tool("edit", f"{target}\n<<<<<<< SEARCH\n\n=======\nx\n>>>>>>> REPLACE"))
    assert not info["tool_success"] and "occur" in output_of(obs) and "unique" in output_of(obs)
    obs, info = step(tool("edit", f"{target}\nno markers here"))
    assert not info["tool_success"] and "<<<<<<< SEARCH" in output_of(obs)
    # create: new files only, in an existing directory (relative paths follow the session's directory)
    obs, info = step(tool("create", "notes/new.txt\nhello"))
    assert not info["tool_success"] and "does not exist" in output_of(obs)
    obs, info = step(tool("create", "new.txt\nhello"))
    assert info["tool_success"] and env._sandbox.read_file("/testbed/new.txt") == b"hello\n"
    obs, info = step(tool("create", f"{target}\nx"))
    assert not info["tool_success"] and "already exists" in output_of(obs)
    # submit: an existing, non-empty file that starts with `diff`
    for content, expected in (("", "empty"), ("not a diff\n", "git diff format")):
        step(tool("bash", f"printf '{content}' > /tmp/p.diff"))
        obs, info = step(tool("submit", "/tmp/p.diff"))
        assert not info["tool_success"] and expected in output_of(obs)
    obs, info = step(tool("submit", "/tmp/missing.diff"))
    assert not info["tool_success"] and "does not exist" in output_of(obs)
    # format errors come back as a user message; the episode goes on (strict_format is off)
    for bad, expected in (("I will look around.", "No tool call"),
                          (tool("bash", "ls") + "\n" + tool("bash", "pwd"), "exactly one tool call, found 2"),
                          (tool("python", "print(1)"), "Unknown tool 'python'"),
                          ("<tool: bash>\nls", "Malformed tool call")):
        obs, info = step(bad)
        assert obs.startswith("<|start_header_id|>user<|end_header_id|>\n\nFormat error: ") and expected in obs, obs
        assert info["format_error"]
    assert info["remaining_turns"] == 128 - info["turn"]


@pytest.mark.docker
def test_text_that_is_not_unicode_reaches_the_tools_as_replacement_characters(env):
    """A lone surrogate (no UTF-8 encoding exists) in a command or a reply is an observation, never a crash."""
    env.reset(seed=0)
    obs, reward, done, _, _ = env.step(tool("bash", "echo '\ud800'"))
    assert not done and reward == 0.0 and output_of(obs) == "?"
    obs, reward, done, _, info = env.step("\ud800")
    assert not done and "format_error" in info


def test_strict_format_ends_the_episode_on_a_malformed_call(docker_engine):
    e = make(strict_format=True)
    try:
        e.reset(options={"task": 0})
        obs, reward, terminated, truncated, info = e.step("no tool call here")
    finally:
        e.close()
    assert reward == -1.0 and terminated and not truncated and "No tool call" in info["format_error"]


@pytest.mark.docker
def test_a_command_that_keeps_timing_out_ends_the_episode(docker_engine):
    e = make(command_timeout_s=1.5, max_timeouts=2)
    try:
        e.reset(options={"task": 0})
        e.step(tool("bash", "cd tests"))
        obs, reward, terminated, _, info = e.step(tool("bash", "echo started; sleep 30"))
        assert not terminated and info["timeouts"] == 1
        assert output_of(obs).startswith("started") and "fresh session" in output_of(obs)
        obs, *_ = e.step(tool("bash", "pwd"))                       # the session restarted at the repo root
        assert output_of(obs) == "/testbed"
        obs, reward, terminated, truncated, info = e.step(tool("bash", "sleep 30 & sleep 30"))
    finally:
        e.close()
    assert terminated and reward == -1.0 and "2 commands timed out" in info["reason"]


@pytest.mark.docker
def test_killing_everything_leaves_the_episode_going(env):
    env.reset(options={"task": 0})
    # The container's init ignores every signal from inside, even root's; `kill -9 -1` takes the sandbox's exec
    # server with it: that command's outcome is lost, reported as such, and the episode goes on.
    obs, reward, terminated, truncated, info = env.step(tool("bash", "kill 1; kill -9 -1; sleep 5"))
    assert not terminated and not truncated and reward == 0.0
    assert "exec server" in output_of(obs)
    obs, reward, terminated, *_ = env.step(tool("bash", "echo fine; git status --porcelain | wc -l"))
    assert not terminated and output_of(obs).split() == ["fine", "0"]


@pytest.mark.docker
def test_the_token_budget_ends_the_episode(docker_engine):
    e = make(context_tokens=3000)
    try:
        _, info = e.reset(options={"task": 0})
        assert 0 < info["remaining_tokens"] < 3000
        obs, reward, terminated, truncated, info = e.step(tool("bash", "seq 1 20000"))
    finally:
        e.close()
    assert truncated and not terminated and reward == -1.0 and "context exceeded" in info["reason"]


@pytest.mark.docker
def test_git_history_remotes_and_network_are_out_of_reach(env):
    env.reset(options={"task": 1})
    path = env.task.patch.split("\n")[0].split(" b/")[1]
    fixed = next(ln[1:] for ln in env.task.patch.splitlines() if ln.startswith("+") and not ln.startswith("+++"))
    needle = shlex.quote(fixed.strip())
    res = env._sandbox.run(
        "git remote; echo ==; git branch -a --format='%(refname)'; echo ==; git log --all --format=%H | wc -l; echo ==;"
        " git reflog | wc -l; echo ==; git fsck --unreachable --no-reflogs 2>/dev/null | wc -l; echo ==;"
        f" ls /eval.sh 2>&1; echo ==; git log --all -p | grep -cF -- {needle}; echo ==; grep -cF -- {needle} {path}",
        timeout=60)
    remotes, branches, commits, reflog, unreachable, eval_sh, in_history, in_code = [p.strip() for p in res.stdout.split("==")]
    assert remotes == "" and branches == "refs/heads/main" and reflog == "0" and unreachable == "0"
    assert commits == "2"                # the mutated code's own commit and the image's setup commit
    assert "No such file" in eval_sh     # the eval script (and the hidden tests it holds) is not in the container
    assert in_history == in_code         # history shows the fixed line nowhere but where the current code has it
    obs, *_ = env.step(tool("bash", "python -c \"import socket; socket.create_connection(('1.1.1.1', 53), 3)\" "
                                    "2>&1 | tail -1"))
    assert "Network is unreachable" in output_of(obs)


def _submit_diff(env, commands: str):
    env.step(tool("bash", commands + " && git add -A && git diff --cached > /tmp/cheat.patch && git reset -q"))
    return env.step(tool("submit", "/tmp/cheat.patch"))


@pytest.mark.docker
def test_editing_or_adding_tests_does_not_count(env):
    env.reset(options={"task": 0})
    failing = env.task.FAIL_TO_PASS[0].split("::")
    # redefine the failing test to pass, and add conftest.py files that report every test as passed
    hook = ("import pytest\\n@pytest.hookimpl(hookwrapper=True)\\ndef pytest_runtest_makereport(item, call):\\n"
            "    out = yield\\n    out.get_result().outcome = 'passed'\\n").replace("'", '"')
    cheat = (f"cd /testbed && printf 'def {failing[1]}():\\n    pass\\n' >> {failing[0]} && printf '{hook}' > conftest.py"
             f" && printf '{hook}' > tests/conftest.py")
    obs, *_ = env.step(tool("bash", cheat + " && python -m pytest -rA -p no:cacheprovider tests | tail -1"))
    assert re.search(r"\b\d+ passed in", output_of(obs)) and "failed" not in output_of(obs)   # it fools pytest here
    _, reward, terminated, _, info = _submit_diff(env, "cd /testbed")
    assert terminated and reward == -1.0 and not info["outcomes"]["patch_applied"]    # refused, not applied
    assert sorted(r.split(":")[0] for r in info["outcomes"]["refused"]) == ["conftest.py", "tests/conftest.py"]
    env.reset(options={"task": 0})                      # the test edit alone: undone before the tests run
    _, reward, _, _, info = _submit_diff(env, f"cd /testbed && printf 'def {failing[1]}():\\n    pass\\n' >> {failing[0]}")
    assert reward == -1.0 and info["outcomes"]["tests_reset"] == [failing[0]]
    assert env.task.FAIL_TO_PASS[0] in info["outcomes"]["tests_status"]["FAIL_TO_PASS"]["failure"]


PASS_ALL = ("import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
            "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n")


@pytest.mark.docker
def test_nothing_the_agent_leaves_in_its_container_reaches_grading(env):
    """The agent rigs its own container every way it can, checks that pytest there now passes everything,
    and submits a patch that fixes nothing: grading runs in a fresh container of the image, so -1."""
    env.reset(options={"task": 0})
    site = "$(python -c 'import sysconfig; print(sysconfig.get_paths()[\"purelib\"])')"
    rig = "\n".join([
        "cd /testbed",
        f"cat > {site}/cwm_pass_all.py <<'EOF'\n{PASS_ALL}EOF",                       # a plugin in site-packages
        f"echo 'import cwm_pass_all' > {site}/zz_cwm.pth",                               # loaded by every python
        "export PYTEST_ADDOPTS='-p cwm_pass_all' PYTEST_PLUGINS=cwm_pass_all PYTHONSTARTUP=/tmp/s.py",
        "mkdir -p /root/hooks && printf '#!/bin/sh\\ncp %s/cwm_pass_all.py /testbed/conftest.py\\n' "
        f"{site} > /root/hooks/post-checkout && chmod +x /root/hooks/post-checkout",
        "git config --global core.hooksPath /root/hooks",                               # global git settings
        "mkdir -p /root/bin && printf '#!/bin/sh\\nexec /usr/bin/git \"$@\"\\n' > /root/bin/git && chmod +x /root/bin/git",
        "export PATH=/root/bin:$PATH",                                                    # a shim first on PATH
        "python -m pytest -rA -p no:cacheprovider tests | tail -1",
    ])
    obs, *_ = env.step(tool("bash", rig))
    assert re.search(r"\b\d+ passed\b", output_of(obs)) and "failed" not in output_of(obs)   # it fools pytest here
    _, reward, terminated, _, info = _submit_diff(env, "cd /testbed && echo '# checked' >> README.md")
    assert terminated and reward == -1.0 and info["outcomes"]["patch_applied"]
    assert sorted(info["outcomes"]["tests_status"]["FAIL_TO_PASS"]["failure"]) == sorted(env.task.FAIL_TO_PASS)


@pytest.mark.docker
def test_the_env_refuses_what_cwm_swe_eval_refuses(env):
    """Same grader as `cwm swe eval`: a module shadowing pytest (the tasks run `python -m pytest`) is removed;
    code that prints every test's PASSED line past pytest's capture and ends the run leaves no seal."""
    env.reset(options={"task": 0})
    fake = "".join(f"PASSED {t}\n" for t in env.task.FAIL_TO_PASS + env.task.PASS_TO_PASS).encode()
    shadow = f"cd /testbed && cat > pytest.py <<'EOF'\nimport sys\nsys.stdout.write({fake.decode()!r})\nEOF\ntrue"
    _, reward, _, _, info = _submit_diff(env, shadow)
    assert reward == -1.0 and "shadows the installed 'pytest'" in info["outcomes"]["removed"][0]
    env.reset(options={"task": 0})
    early = ("cd /testbed && cat >> tinylib/__init__.py <<'EOF'\nimport os\n"
             f"os.write(os.open('/proc/%d/fd/1' % os.getppid(), os.O_WRONLY), {fake!r})\nos._exit(0)\nEOF\ntrue")
    _, reward, _, _, info = _submit_diff(env, early)
    assert reward == -1.0 and "no seal" in info["outcomes"].get("guard", ""), info["outcomes"]


@pytest.mark.docker
def test_a_grading_infrastructure_fault_is_raised_never_scored(docker_engine):
    from cwm_envs.errors import InfraError

    e = make(eval_timeout_s=0.3)                 # even the oracle's tests cannot run in that time
    try:
        with pytest.raises(InfraError, match="not scored"):
            run_episode(e, OracleSWEAgent(), options={"task": 0})
        assert e._done
    finally:
        e.close()
    assert own_containers() == []


@pytest.mark.docker
def test_review_turn_then_final_reply(docker_engine):
    e = make(review_turn=True)
    try:
        ep = run_episode(e, OracleSWEAgent(), options={"task": 2})
        assert ep.reward == 1.0 and ep.tools[-2:] == ["submit", "(reply)"]
        assert ep.info["reason"] == "final reply after submission"
        e.reset(options={"task": 2})
        e.step(tool("bash", "git diff > /tmp/none.patch; echo 'diff --git a/x b/x' > /tmp/p.patch"))
        obs, reward, terminated, _, info = e.step(tool("submit", "/tmp/p.patch"))
        assert not terminated and "<submission>\ndiff --git a/x b/x\n\n</submission>" in output_of(obs)
        obs, reward, terminated, _, info = e.step("## Summary\nDone.")
        assert terminated and reward == -1.0 and info["outcomes"]["patch_applied"] is False
    finally:
        e.close()


@pytest.mark.docker
def test_similarity_shaping_rewards_near_misses_below_zero(docker_engine):
    e = make(similarity_weight=0.5)
    try:
        index, task = next((k, t) for k, t in enumerate(e.tasks)
                           if any(ln.startswith("-") and not ln.startswith("---") and ln[1:].strip()
                                  for ln in t.patch.splitlines()))
        buggy = next(ln[1:] for ln in task.patch.splitlines() if ln.startswith("-") and not ln.startswith("---")
                     and ln[1:].strip())
        path = task.patch.split("\n")[0].split(" b/")[1]
        e.reset(options={"task": index})
        e.step(tool("edit", f"{path}\n<<<<<<< SEARCH\n{buggy}\n=======\n{buggy}  # touched\n>>>>>>> REPLACE"))
        obs, reward, terminated, _, info = _submit_diff(e, "cd /testbed")
    finally:
        e.close()
    assert terminated and not info["resolved"] and -1.0 < reward < -0.5, reward
    assert 0 < info["outcomes"]["similarity"] < 1


@pytest.mark.docker
def test_three_envs_side_by_side_leave_no_container(docker_engine):
    results, errors = {}, []

    def one(k):
        e = make()
        try:
            results[k] = run_episode(e, OracleSWEAgent(), options={"task": k}).reward
        except Exception as exc:          # noqa: BLE001 - reported below
            errors.append(repr(exc))
        finally:
            e.close()
            e.close()                     # safe twice

    threads = [threading.Thread(target=one, args=(k,)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert not errors and results == {0: 1.0, 1: 1.0, 2: 1.0}
    assert own_containers() == []         # `docker ps -a --filter label=cwm-envs.owner-pid=<this pid>`


@pytest.mark.docker
def test_no_container_outlives_a_closed_env(docker_engine):
    before = {c.id for c in own_containers()}
    e = make()
    e.reset(options={"task": 0})
    e.reset(options={"task": 1})                        # another image: the old sandbox closes in the background
    mine = {c.id for c in own_containers()} - before
    assert mine
    e.close()
    assert not ({c.id for c in own_containers()} & mine)
    out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=cwm-envs.owner-pid={os.getpid()}"],
                         capture_output=True, text=True).stdout.split()
    assert not (set(out) & {i[:12] for i in mine})


FIXED_DATES = {"GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}


def _git(repo, *args):
    """git in `repo`; commits get fixed dates, so a rerun makes the same commit and reuses its image."""
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, **FIXED_DATES}).stdout


def _diff(repo, edits: dict) -> str:
    """The git diff that `edits` make to the repo (left unchanged afterwards)."""
    for rel, text in edits.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    _git(repo, "add", "-A")
    out = _git(repo, "diff", "--cached")
    _git(repo, "reset", "-q", "--hard")
    _git(repo, "clean", "-fdq")
    return out


@pytest.mark.docker
def test_hidden_tests_stay_hidden_and_still_grade(tmp_path, docker_engine):
    """A SWE-bench-shaped row: the failing test arrives only with the test patch, at grading time."""
    repo = tmp_path / "own" / "hid"
    (repo / "calc").mkdir(parents=True)
    (repo / "tests").mkdir()
    (repo / "calc" / "__init__.py").write_text("def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n")
    (repo / "tests" / "test_visible.py").write_text("from calc import sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n")
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "add", "-A")
    _git(repo, "-c", "user.email=t@example.com", "-c", "user.name=t", "commit", "-qm", "calc")
    marker = "HIDDEN_MARKER_5e2c"
    row = {"instance_id": "own__hid-1", "repo": "own/hid", "base_commit": _git(repo, "rev-parse", "HEAD").strip(),
           "patch": _diff(repo, {"calc/__init__.py": "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"}),
           "test_patch": _diff(repo, {"tests/test_hidden.py": f"from calc import add\n\n\ndef test_add():\n"
                                                             f"    assert add(2, 3) == 5, '{marker}'\n"}),
           "FAIL_TO_PASS": ["tests/test_hidden.py::test_add"], "PASS_TO_PASS": ["tests/test_visible.py::test_sub"],
           "test_cmd": "python -m pytest -rA -p no:cacheprovider tests", "pip_packages": ["pytest"],
           "repo_path": str(repo), "problem_statement": "add() subtracts instead of adding."}
    e = make(tasks=[row])
    try:
        e.reset()
        res = e._sandbox.run(f"grep -rl {marker} /testbed /tmp /root /opt /eval.sh 2>/dev/null | grep -v '^/opt/wheels';"
                             f" git log --all -p | grep -c {marker}; ls tests", timeout=120)
        assert res.stdout.split() == ["0", "test_visible.py"]          # nowhere on disk, nowhere in history
        assert run_episode(e, OracleSWEAgent()).reward == 1.0
        e.reset()
        _, reward, _, _, info = _submit_diff(e, "cd /testbed && echo '# looked at it' >> calc/__init__.py")
        assert reward == -1.0 and info["outcomes"]["tests_status"]["FAIL_TO_PASS"]["failure"] == row["FAIL_TO_PASS"]
    finally:
        e.close()


@pytest.mark.docker
def test_prepare_removes_later_commits_branches_remotes_and_reflog(env):
    """Containers of images made elsewhere may carry the future: preparation must strip it."""
    from cwm_envs.swe.tools import ToolBox

    env.reset(options={"task": 0})
    sb = env._sandbox
    setup = sb.run("cd /testbed && git tag v0 && git -c user.email=a@b -c user.name=a commit -q --allow-empty -m future"
                   " && git rev-parse HEAD && git tag v9 && git branch future && git reset -q --hard HEAD~1"
                   " && git remote add origin https://example.com/x.git", timeout=60)
    future = setup.stdout.strip()
    assert setup.exit_code == 0 and len(future) == 40
    assert ToolBox(sb).prepare() == "full"
    res = sb.run(f"git tag; echo ==; git branch --format='%(refname)'; echo ==; git remote; echo ==; git reflog | wc -l;"
                 f" echo ==; git cat-file -t {future} 2>&1", timeout=60)
    tags, branches, remotes, reflog, future_kind = [p.strip() for p in res.stdout.split("==")]
    assert (tags, branches, remotes, reflog) == ("v0", "refs/heads/main", "", "0")   # the ancestor tag stays
    assert "commit" not in future_kind                                                # pruned, not just unlisted
