"""cwm/Math-v0 and cwm/MathTool-v0: prompts, rewards, tool turns in the real local sandbox, task sources."""
from __future__ import annotations

import json

import gymnasium
import pytest
from gymnasium.utils.env_checker import check_env

import cwm_envs  # noqa: F401 - registers the ids
from cwm_envs.chat import REASONING_SYSTEM_PROMPT
from cwm_envs.envs.math_env import format_tool_result
from cwm_envs.errors import UsageError
from cwm_envs.sandbox.base import ExecResult
from cwm_envs.sources.math import KINDS, MathGenerator, load_math
from cwm_envs.tasks import Task
from rewards.math import verify


def answer(gold: str, think: bool = True) -> str:
    return ("<think>\nworking it out\n</think>\n" if think else "") + f"The answer is $\\boxed{{{gold}}}$."


@pytest.mark.parametrize("env_id", ["cwm/Math-v0", "cwm/MathTool-v0"])
def test_check_env_and_make_vec(env_id):
    env = gymnasium.make(env_id)
    try:
        check_env(env.unwrapped, skip_render_check=True)
    finally:
        env.close()
        env.close()
    envs = gymnasium.make_vec(env_id, num_envs=2, vectorization_mode="sync")
    try:
        obs, info = envs.reset(seed=0)
        assert "answer" not in info                      # a policy reads what reset returns: no gold
        golds = [e.unwrapped.task.answer for e in envs.envs]
        _, reward, terminated, _, _ = envs.step([answer(g) for g in golds])
        assert list(reward) == [1.0, 1.0] and all(terminated)
    finally:
        envs.close()


def test_prompt_is_cwm_chat_with_reasoning_prompt():
    env = gymnasium.make("cwm/Math-v0", source="generated", kinds=("add_sub",), difficulty=0)
    obs, info = env.reset(seed=5)
    assert obs.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n" + REASONING_SYSTEM_PROMPT)
    assert "put your final answer within $\\boxed{}$." in obs
    assert obs.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n<think>\n")
    assert info["task_id"].startswith("gen/add_sub/d0/")
    obs2, info2 = env.reset(seed=5)
    assert obs2 == obs and info2 == info            # seeded
    off = gymnasium.make("cwm/Math-v0", think=False, prompt_style="direct")
    obs3, _ = off.reset(seed=5)
    assert "system" not in obs3 and "Wrap your answer in $\\boxed{}$." in obs3 and not obs3.endswith("<think>\n")


def test_easy_add_sub_stream_for_rl():
    gen = MathGenerator(kinds=("add_sub",), difficulty=0)
    for seed in range(200):
        task = gen.task(seed)
        a, op, b = task.prompt.split("$")[1].split()
        assert 0 <= int(a) <= 9 and 0 <= int(b) <= 9 and op in "+-"
        assert int(task.answer) == (int(a) + int(b) if op == "+" else int(a) - int(b)) >= 0


@pytest.mark.parametrize("response,reward,how", [
    ("<think>\n3+4\n</think>\n$\\boxed{7}$", 1.0, None),
    ("<think>\n3+4\n</think>\n$\\boxed{8}$", -1.0, None),
    ("$\\boxed{7}$", -1.0, "think"),                                    # no </think>
    ("<think>\nx</think>\n</think>\n$\\boxed{7}$", -1.0, "think"),       # two
    ("<think>\nx\n</think>\n$\\boxed{7}$ or $\\boxed{8}$", -1.0, "boxed"),
    ("<think>\n\\boxed{7}\n</think>\nseven", -1.0, "boxed"),            # the box must follow the thinking
    ("I do not know.", -1.0, "think"),
])
def test_cwm_reward_rules(response, reward, how):
    env = gymnasium.make("cwm/Math-v0", source=[Task("t", "What is $3 + 4$?", "7")])
    env.reset(seed=0)
    _, r, terminated, truncated, info = env.step(response)
    assert (r, terminated, truncated) == (reward, True, False)
    assert info["task_id"] == "t" and "outcomes" in info and info["details"]
    if how == "think":
        assert info["outcomes"]["format_ok"] is False and info["outcomes"]["think_ends"] != 1
    if how == "boxed":
        assert info["outcomes"]["format_ok"] is False and info["outcomes"]["boxed"] != 1


def test_binary_scheme_think_off_and_bad_actions():
    env = gymnasium.make("cwm/Math-v0", source=[Task("t", "What is $3 + 4$?", "7")], reward_scheme="binary",
                         think=False).unwrapped
    env.reset(seed=0)
    assert env.step("Seven: $\\boxed{7}$")[1] == 1.0
    env.reset(seed=0)
    assert env.step("$\\boxed{6}$")[1] == 0.0
    env.reset(seed=0)
    with pytest.raises(UsageError, match="must be a str"):  # the caller's bug, told in one line
        env.step(None)
    assert env.step("$\\boxed{7}$")[1] == 1.0          # ... and the episode is still open
    with pytest.raises(UsageError):
        env.step("again")                                # after the end
    with pytest.raises(UsageError):
        gymnasium.make("cwm/Math-v0", reward_scheme="sparkles")


@pytest.mark.parametrize("name,count", [("math500", 500), ("aime24", 30), ("amc23", 40), ("gsm8k", 1319)])
def test_loaders_read_the_shared_files(data_dir, name, count):
    tasks = load_math(name)
    assert len(tasks) == count and len({t.id for t in tasks}) == count
    assert all(t.prompt and t.answer for t in tasks)
    if name == "gsm8k":
        assert tasks[0].answer == "18" and "####" in tasks[0].metadata["solution"]
    if name == "amc23":
        assert tasks[0].answer == "27"                      # 27.0 in the file
    if name == "math500":
        assert {"subject", "level"} <= set(tasks[0].metadata)


def test_env_on_a_benchmark_file_and_task_choice(data_dir):
    env = gymnasium.make("cwm/Math-v0", source="aime24").unwrapped
    obs, info = env.reset(options={"task": 0})
    gold = env.task.answer
    assert env.step(answer(gold))[1] == 1.0
    obs, info2 = env.reset(options={"task": info["task_id"]})
    assert info2["task_id"] == info["task_id"]
    with pytest.raises(UsageError):
        env.reset(options={"task": 999})


def test_generic_jsonl_path_and_broken_rows(tmp_path):
    good = tmp_path / "mine.jsonl"
    good.write_text(json.dumps({"question": "2+2?", "answer": "It is 4.\n#### 4"}) + "\n"
                    + json.dumps({"problem": "x?", "answer": 2.5}) + "\n")
    tasks = load_math(str(good))
    assert [t.answer for t in tasks] == ["4", "2.5"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"problem": "no answer here"}) + "\n")
    with pytest.raises(UsageError, match="row 1"):
        load_math(str(bad))
    with pytest.raises(UsageError, match="unknown math source"):
        load_math("no-such-thing")
    with pytest.raises(UsageError, match="hub dataset"):   # no datasets package, no network, or no such set
        load_math("hub:cwm-envs-tests/no-such-dataset")


@pytest.mark.parametrize("difficulty", [0, 1, 2, 3])
def test_generator_answers_are_exact_and_self_consistent(difficulty):
    for kind in KINDS:
        gen = MathGenerator(kinds=(kind,), difficulty=difficulty)
        for seed in range(3):
            task = gen.task(seed)
            assert task == gen.task(seed)                                 # deterministic
            assert verify(task.answer, f"\\boxed{{{task.answer}}}").value == 1.0, task
    with pytest.raises(UsageError):
        MathGenerator(kinds=("calculus-of-variations",))
    with pytest.raises(UsageError):
        MathGenerator(difficulty=7)


def test_generated_answers_against_known_values():
    """Spot checks that the generator's sympy answers are the right numbers, in other written forms."""
    gen = MathGenerator(kinds=("quadratic",), difficulty=3)
    task = gen.task(1)
    roots = task.answer.split(", ")
    assert len(roots) == 2 and verify(task.answer, f"\\boxed{{{roots[1]}, {roots[0]}}}").value == 1.0
    mod = MathGenerator(kinds=("modular",), difficulty=2).task(0)
    base, exp_, m = [int(x) for x in __import__("re").findall(r"\d+", mod.prompt)[:3]]
    assert int(mod.answer) == pow(base, exp_, m)


def test_tool_result_format_matches_cwm():
    assert format_tool_result(ExecResult("4\n", "", 0)) == "completed. [stdout]4\n[/stdout]"
    assert format_tool_result(ExecResult("", "warn\n", 0)) == "completed. [stderr]warn\n[/stderr]"
    assert format_tool_result(ExecResult("", "", 0)) == "completed."
    assert format_tool_result(ExecResult("", "", None, timed_out=True)) == "error: Timeout"
    assert format_tool_result(ExecResult("", "Traceback...\nZeroDivisionError", 1)).startswith("error: Traceback")


def test_tool_turns_in_the_local_sandbox():
    env = gymnasium.make("cwm/MathTool-v0", source=[Task("t", "What is $2^{20} \\bmod 7$?", "4")],
                         max_tool_calls=2, tool_timeout_s=2.0).unwrapped
    try:
        obs, info = env.reset(seed=0)
        assert "You may invoke tools during reasoning." in obs and "- python:" in obs
        obs, r, term, trunc, info = env.step("<think>\nLet me compute.\n<tool: python>\nprint(2**20 % 7)\n</tool>")
        assert (r, term, trunc) == (0.0, False, False)
        assert "<|start_header_id|>tool: python<|end_header_id|>\n\ncompleted. [stdout]4\n[/stdout]" in obs
        assert obs.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")   # still thinking
        assert info["remaining_tool_calls"] == 1
        obs, *_ = env.step("<tool: python>\nwhile True:\n    pass\n</tool>")
        assert "error: Timeout" in obs
        obs, *_ = env.step("<tool: python>\nprint(1)\n</tool><tool: calculator>\n1+1</tool>")
        assert "error: maximum execution count (2) reached" in obs and "error: No such tool" in obs
        obs, r, term, trunc, info = env.step("So it is 4.\n</think>\nThe remainder is $\\boxed{4}$.")
        assert (r, term) == (1.0, True) and info["outcomes"]["equal"]
    finally:
        env.close()
        env.close()


def test_tool_env_truncates_at_the_turn_limit():
    env = gymnasium.make("cwm/MathTool-v0", source=[Task("t", "1+1?", "2")], max_turns=2, max_tool_calls=0).unwrapped
    env.reset(seed=0)
    call = "<tool: python>\nprint(1)\n</tool>"
    _, r, term, trunc, _ = env.step(call)
    assert (r, term, trunc) == (0.0, False, False)
    _, r, term, trunc, info = env.step(call)
    assert (r, term, trunc) == (-1.0, False, True) and info["outcomes"]["how"] == "turn limit"
    env.close()
