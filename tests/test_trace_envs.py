"""cwm/Trace-v0, cwm/OutputPrediction-v0 and cwm/InputPrediction-v0: rewards paid for the right reasons.

(check_env and make_vec for every registered id live in test_envs.py.)
"""
from __future__ import annotations

import json

import gymnasium
import pytest

import cwm_envs  # noqa: F401  (registers the ids)
from cwm_envs.envs.prediction import InputPredictionEnv, OutputPredictionEnv
from cwm_envs.envs.trace_env import TraceEnv
from cwm_envs.errors import UsageError
from cwm_envs.tasks import Task
from cwm_envs.tracing import format as fmt

TASK = Task(id="t/loop", prompt="", metadata={
    "code": ("def f(xs, k):\n    out = []\n    for x in xs:\n        if x > k:\n            out.append(x)\n"
             "    return out\n"),
    "input": "[3, 1, 4], 2", "output": "[3, 4]"})


@pytest.fixture
def trace_env():
    env = TraceEnv(tasks=[TASK])
    yield env
    env.close()


def test_trace_oracle_is_exact_in_both_modes():
    for mode in ("next", "rest"):
        env = gymnasium.make("cwm/Trace-v0", mode=mode)
        try:
            for seed in range(3):
                obs, info = env.reset(seed=seed)
                assert obs.startswith(fmt.TRACE_CONTEXT_START) and obs.endswith(fmt.FRAME_SEP)
                _, reward, terminated, _, info = env.step(env.unwrapped.reference_response(env.unwrapped.task))
                assert reward == 1.0 and terminated and info["outcomes"]["exact"]
        finally:
            env.close()


def test_next_frame_partial_credit_names_the_wrong_field(trace_env):
    trace_env.reset(seed=0, options={"task": TASK, "cut": 4})
    (truth,), _ = trace_env.expected_frames()
    assert truth.event == "line" and truth.locals["x"] == "3"
    wrong = fmt.Frame(truth.event, truth.source, dict(truth.locals, x="5"))
    _, reward, _, _, info = trace_env.step(fmt.emit_continuation(trace_env.trace.frames[:4], [wrong], False))
    o = info["outcomes"]
    assert reward == -1.0 and o["parse"] and not o["exact"]
    assert o["event_acc"] == 1.0 and o["line_acc"] == 1.0 and 0 < o["locals_acc"] < 1


def test_explicit_values_instead_of_dots_are_still_exact(trace_env):
    trace_env.reset(options={"task": TASK, "cut": 3})
    (truth,), _ = trace_env.expected_frames()
    spelled_out = f"<|line_sep|>{json.dumps(truth.locals)}<|action_sep|>{truth.source}<|frame_sep|>\n"
    assert '".."' in trace_env.reference_response(trace_env.task) and '".."' not in spelled_out
    assert trace_env.step(spelled_out)[1] == 1.0


def test_the_end_of_the_trace_is_predicted_with_end_of_text(trace_env):
    _, info = trace_env.reset(options={"task": TASK})
    n = info["n_frames"]
    trace_env.reset(options={"task": TASK, "cut": n})
    assert trace_env.reference_response(trace_env.task) == fmt.EOS
    assert trace_env.step(fmt.EOS)[1] == 1.0
    trace_env.reset(options={"task": TASK, "cut": n - 1})
    _, reward, _, _, info = trace_env.step(fmt.EOS)  # stopping one frame early
    assert reward == -1.0 and not info["outcomes"]["ending"]


@pytest.mark.parametrize("action", ["", "garbage", "<|line_sep|>{}", "<|frame_sep|>" * 3, "\x00" * 10])
def test_malformed_trace_predictions_score_minus_one(trace_env, action):
    trace_env.reset(seed=1)
    _, reward, terminated, _, info = trace_env.step(action)
    assert reward == -1.0 and terminated and info["outcomes"]["exact"] is False


def test_rest_mode_from_cruxeval_and_partial_scheme(data_dir):
    env = TraceEnv(mode="rest", tasks="cruxeval", reward_scheme="partial")
    try:
        env.reset(options={"task": "sample_3"})
        frames = env.trace.frames
        assert env.cut == 1 and json.loads(json.dumps(frames[0].locals)) == {"text": "'bcksrut'", "value": "'q'"}
        half = fmt.emit_continuation(frames[:1], frames[1:3], False)
        _, reward, _, _, info = env.step(half)
        assert 0 < reward < 1 and info["outcomes"]["frames_exact"] == 2
    finally:
        env.close()


def test_partial_credit_pays_nothing_for_nothing():
    """An empty or junk prediction once earned 0.25: a field that is empty on both sides (no value on a line
    frame, no locals on a return frame) counted as matched."""
    env = TraceEnv(tasks=[TASK], reward_scheme="partial")
    try:
        for cut in (2, 3, 4):
            env.reset(options={"task": TASK, "cut": cut})
            assert env.step(fmt.EOS)[1] == 0.0
            env.reset(options={"task": TASK, "cut": cut})
            junk = fmt.Frame("return", "junk\n", {}, "'0'")
            assert env.step(fmt.emit_continuation(env.trace.frames[:cut], [junk], False))[1] == 0.0
            env.reset(options={"task": TASK, "cut": cut})
            assert env.step(env.reference_response(env.task))[1] == 1.0
    finally:
        env.close()


def test_trace_env_rejects_bad_options(trace_env):
    with pytest.raises(UsageError):
        trace_env.reset(options={"task": TASK, "cut": 0})
    with pytest.raises(UsageError):
        trace_env.reset(options={"task": "no-such-id"})
    with pytest.raises(UsageError):
        TraceEnv(mode="sideways")


# -- execution prediction --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def out_env():
    env = OutputPredictionEnv(tasks=[TASK])
    yield env
    env.close()
    env.close()


def _block(text: str) -> str:
    return f"```python\n{text}\n```"


@pytest.mark.parametrize("answer", ["[3, 4]", "[3,4]", "[1 + 2, 4]", "assert f([3, 1, 4], 2) == [3, 4]",
                                    "list((3, 4))"])
def test_output_prediction_rewards_any_equal_value(out_env, answer):
    out_env.reset(options={"task": TASK})
    _, reward, _, _, info = out_env.step(_block(answer))
    assert reward == 1.0, info["details"]


@pytest.mark.parametrize("answer, why", [
    ("f([3, 1, 4], 2)", "name 'f'"),                                  # compares the function with itself
    ("__import__('os')._exit(0)", "not allowed"),                        # exits before the assertion
    ("[3, 4]) or (1", "not a Python expression"),                        # breaks out of the parentheses
    ("[].__class__", "attribute"),
    ("exec('print(1)')", "name 'exec'"),
    ("[3, 5]", "assertion failed"),
    ("[10 ** 5000]", "too large to show"),                               # repr() refuses it: no crash
])
def test_output_prediction_hacks_and_wrong_answers_fail(out_env, answer, why):
    out_env.reset(options={"task": TASK})
    _, reward, _, _, info = out_env.step(_block(answer))
    assert reward == -1.0 and why in info["details"]


def test_output_prediction_format_rules(out_env):
    out_env.reset(options={"task": TASK})
    assert out_env.step("[3, 4]")[1] == -1.0  # no code block
    out_env.reset(options={"task": TASK})
    assert out_env.step(_block("[3, 4]") + "\n" + _block("[3, 4]"))[1] == -1.0  # two blocks
    strict = OutputPredictionEnv(tasks=[TASK], require_think=True, reward_scheme="binary")
    try:
        strict.reset()
        assert strict.step(_block("[3, 4]"))[1] == 0.0
        strict.reset()
        assert strict.step("<think>\nfilter\n</think>\n" + _block("[3, 4]"))[1] == 1.0
    finally:
        strict.close()


def test_input_prediction_accepts_any_working_input():
    env = InputPredictionEnv(tasks=[TASK])
    try:
        for answer, expected in (("[0, 3, 1, 4], 2", 1.0), ("xs=[3, 4], k=0", 1.0), ("[3], 2", -1.0),
                                 ("[3, 4], k", -1.0)):
            env.reset()
            assert env.step(_block(answer))[1] == expected, answer
    finally:
        env.close()


def test_generated_prediction_tasks_are_seeded():
    env = gymnasium.make("cwm/OutputPrediction-v0")
    try:
        a, _ = env.reset(seed=5)
        b, _ = env.reset(seed=5)
        assert a == b and "assert f(" in a
        _, reward, *_ = env.step(env.unwrapped.reference_response(env.unwrapped.task))
        assert reward == 1.0
    finally:
        env.close()


# -- prediction judging holds no secret in the candidate's process ------------------------------------------
# Fixed strings that read the judge's frame or builtins through introspection (no underscore needed).
INTROSPECTION = [
    "[g.gi_frame.f_globals for g in [(x for x in [0])]][0]",
    "[g.gi_frame.f_back.f_locals for g in [(x for x in [0])]][0]",
    "[g.gi_frame.f_builtins['eval']('__cwm_want') for g in [(x for x in [0])]][0]",
    "[c.cr_frame.f_globals for c in [(lambda: (yield))()]][0]",
    "'{0.gi_frame.f_globals}'.format((x for x in [0]))",
]
# With the expression check switched off, what a fixed string could still try: find the judge's secret or
# reference in its own process, or hand back something that is not plain data.
ESCAPES = [
    "[g.gi_frame.f_builtins['__import__']('gc').get_objects() for g in [(x for x in [0])]][0][-1]",
    "[g.gi_frame.f_globals.get('__cwm_want', g.gi_frame.f_globals.get('__cwm_got')) for g in [(x for x in [0])]][0]",
    "[type('A', (), {'__eq__': lambda s, o: True})() for _ in [0]][0]",
    "[g.gi_frame.f_builtins['__import__']('os').environ.copy() for g in [(x for x in [0])]][0]",
]


@pytest.fixture(scope="module")
def crux_tasks(data_dir):
    from cwm_envs.sources.code import load_cruxeval

    return load_cruxeval(None)[:25]


@pytest.mark.parametrize("mode", ["output", "input"])
def test_introspection_strings_are_refused_and_never_paid(crux_tasks, mode):
    env = OutputPredictionEnv(tasks=crux_tasks) if mode == "output" else InputPredictionEnv(tasks=crux_tasks)
    try:
        for attack in INTROSPECTION:
            text = attack if mode == "output" else f"*{attack}"
            results = [env.judge(t, _block(text)) for t in crux_tasks]
            assert all(r.value == -1.0 for r in results), attack
            assert "not allowed" in results[0].details, results[0].details
    finally:
        env.close()


@pytest.mark.parametrize("mode", ["output", "input"])
def test_with_the_expression_check_off_no_fixed_string_is_paid(crux_tasks, mode, monkeypatch):
    """The process boundary alone holds: the candidate's process has nothing of the judge's to read."""
    import rewards.prediction as rp

    monkeypatch.setattr(rp, "unsafe_reason", lambda tree, allowed: None)
    env = OutputPredictionEnv(tasks=crux_tasks) if mode == "output" else InputPredictionEnv(tasks=crux_tasks)
    try:
        for attack in ESCAPES + INTROSPECTION:
            text = attack if mode == "output" else f"*{attack}"
            paid = [t.id for t in crux_tasks if env.judge(t, _block(text)).value > 0]
            assert not paid, (attack, paid)
        assert all(env.judge(t, env.reference_response(t)).value == 1.0 for t in crux_tasks)
    finally:
        env.close()


def test_a_value_that_is_not_plain_data_is_minus_one_with_evidence(out_env):
    out_env.reset(options={"task": TASK})
    _, reward, _, _, info = out_env.step(_block("lambda: [3, 4]"))
    assert reward == -1.0 and "not plain data: function" in info["details"]


def test_imports_of_the_task_code_are_not_usable_in_a_predicted_input():
    task = Task(id="t/os", prompt="", metadata={"code": "import os\ndef f(x):\n    return x + 1\n",
                                                "input": "1", "output": "2"})
    env = InputPredictionEnv(tasks=[task])
    try:
        for answer, why in (("(os, 1)[1]", "name 'os' is not allowed"), ("1", "")):
            r = env.judge(task, _block(answer))
            assert (r.value == 1.0) == (not why) and why in r.details
    finally:
        env.close()


@pytest.mark.parametrize("backend", ["local", pytest.param("docker", marks=pytest.mark.docker)])
def test_a_file_planted_in_the_sandbox_cannot_take_over_the_judge(backend, request):
    from cwm_envs.sandbox import make_sandbox

    if backend == "docker":
        request.getfixturevalue("docker_engine")
    sandbox = make_sandbox(backend)
    try:
        forged = "import sys\nsys.stdout.write('forged')\ndef dumps(*a, **k):\n    return '[\"l\", []]'\n"
        for name in ("json.py", "encodings.py", "sitecustomize.py"):
            sandbox.write_file(name, forged)
        env = OutputPredictionEnv(tasks=[TASK], sandbox=sandbox)
        assert env.judge(TASK, _block("[]")).value == -1.0
        assert env.judge(TASK, _block("[3, 4]")).value == 1.0
        env.close()
    finally:
        sandbox.close()
