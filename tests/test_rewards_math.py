"""rewards.math: labelled answer pairs, adversarial pairs, constant answers on real data, math-verify as a baseline,
time limits, bad input."""
from __future__ import annotations

import asyncio
import doctest
import logging
import os
import threading
import time

import pytest
import sympy

import rewards.math as rm
from cwm_envs.sources.math import load_math
from math_pairs import ADVERSARIAL, BOXED_CATEGORIES, CONSTANT_HACKS, RESPONSES, boxed
from rewards.math import cwm_reward, extract_answer, is_equivalent, verify
from rewards.math_attacks import CONSTANT_RESPONSES, constant_answer_sweep, same_constant
from rewards.math_compare import POINTS, _random_points


def _mismatches(pairs, wrap=True):
    out = []
    for gold, answer, label in pairs:
        r = verify(gold, boxed(answer) if wrap else answer)
        if r.value != float(label):
            out.append((gold, answer, label, r.outcomes.get("how")))
    return out


@pytest.mark.parametrize("category", sorted(BOXED_CATEGORIES))
def test_labelled_pairs(category):
    assert _mismatches(BOXED_CATEGORIES[category]) == []


def test_responses_without_a_box_and_with_thinking():
    assert _mismatches(RESPONSES, wrap=False) == []


def test_no_false_positive_on_adversarial_pairs():
    """A reward hack is a wrong answer scored as right: none of these may score above 0."""
    accepted = [(g, a) for g, a, _ in ADVERSARIAL + CONSTANT_HACKS if verify(g, boxed(a)).value != 0.0]
    assert accepted == []


def test_identity_points_are_drawn_afresh_on_both_sides_of_zero():
    """An answer built to vanish on known points (the old fixed ones, small integers, a half-line) meets
    points it could not know: new ones on every call, each symbol negative at half of them."""
    x, y = syms = sympy.symbols("x y")
    first, second = _random_points(syms, POINTS), _random_points(syms, POINTS)
    assert first != second
    for s in (x, y):
        signs = [p[s] > 0 for p in first]
        assert signs.count(True) == signs.count(False) == POINTS // 2
    for _ in range(20):   # `|x|` agrees with `x` at every positive point: it must never pass
        assert verify("x", boxed("|x|")).value == 0.0 and verify("x", boxed("x + \\sin(1000! \\pi x)")).value == 0.0
    assert verify("(x+1)^2", boxed("x^2+2x+1")).value == 1.0


DATASETS = ("math500", "gsm8k", "aime24", "amc23")


def test_the_gold_answer_is_paid_on_every_row(data_dir):
    """The oracle of the constant-answer sweep: each row's own gold, boxed in a CWM response, earns +1."""
    for name in DATASETS:
        golds = [t.answer for t in load_math(name)]
        unpaid = [g for g in golds if cwm_reward(g, f"<think>\nso\n</think>\nIt is $\\boxed{{{g}}}$.").value != 1.0]
        assert unpaid == [], name


@pytest.mark.slow   # about 15 s on 2 cores; the full sweep is `cwm bench math-attacks` (about 3.5 minutes)
def test_no_constant_answer_is_paid_on_real_data(data_dir):
    """Issue #12: `\\boxed{9_2}` was paid on 55% of MATH-500 and 93% of GSM8K rows. Every answer of the bank,
    on a fixed sample of the rows of each dataset, is paid only where it is that row's gold."""
    every = {"math500": 25, "gsm8k": 250, "aime24": 15, "amc23": 20}
    golds = {name: [t.answer for t in load_math(name)][::k] for name, k in every.items()}
    report = constant_answer_sweep(golds)
    for name in DATASETS:
        worst, share = report.worst(name)
        assert share <= 0.01, (name, worst, report.dishonest[name])
    assert len(CONSTANT_RESPONSES) > 400
    # the small numbers of the bank are the gold of some sampled rows: the sweep does see payments
    assert sum(len(rows) for paid in report.honest.values() for rows in paid.values()) > 10


def test_same_constant_reads_the_verifiers_own_rules():
    assert same_constant("x=5", "5") and same_constant("\\text{(E)}", "e") and same_constant("40_9", "40")
    assert same_constant("90^\\circ", "\\frac{\\pi}{2}") and same_constant("1", "100\\%")
    assert same_constant("\\$32,\\!348", "32348") and same_constant("\\frac14", "0.25")
    assert not same_constant("9", "9_2") and not same_constant("2", "x = 1 = 2") and not same_constant("180", "\\pi")


@pytest.mark.slow  # math-verify itself takes 0.1-0.5 s on many of these pairs
def test_at_least_as_accurate_as_math_verify_on_every_category():
    mv = pytest.importorskip("math_verify")
    logging.getLogger("math_verify").setLevel(logging.CRITICAL)
    for name, pairs in {**BOXED_CATEGORIES, "responses": RESPONSES}.items():
        ours = theirs = 0
        for gold, answer, label in pairs:
            response = answer if name == "responses" else boxed(answer)
            ours += verify(gold, response).value == label
            try:
                theirs += int(mv.verify(mv.parse(f"${gold}$"), mv.parse(response))) == label
            except Exception:  # math-verify raising counts as a wrong verdict
                pass
        assert ours >= theirs, f"{name}: ours {ours} < math-verify {theirs} of {len(pairs)}"
        if name == "adversarial":
            assert ours == len(pairs)


def test_evidence_names_the_extracted_span():
    response = r"Trying $x=3$ fails. With $x = 4$ it works, so the answer is $\boxed{\frac{4}{3}}$."
    r = verify(r"\frac43", response)
    assert r.value == 1.0
    start, end = r.outcomes["span"]
    assert response[start:end] == r"\boxed{\frac{4}{3}}"
    assert r.outcomes["extracted"] == r"\frac{4}{3}" and r.outcomes["extraction"] == "boxed"
    assert "correct" in r.details


def test_extractors_can_be_restricted_and_reward_values_changed():
    assert verify("34", "The answer is 34.").value == 1.0
    r = verify("34", "The answer is 34.", extractors=("boxed",))
    assert r.value == 0.0 and r.outcomes["how"] == "no answer found"
    assert verify("34", r"\boxed{35}", correct=1.0, wrong=-1.0).value == -1.0
    with pytest.raises(ValueError):
        extract_answer("x", extractors=("telepathy",))


def test_is_equivalent_on_bare_answers():
    assert is_equivalent("y = 2x + 3", "y=3+2x")
    assert is_equivalent("2x - y = 4", "y = 2x - 4")
    assert not is_equivalent(r"\frac{1}{2004!}", r"\frac{1}{2006!}")
    assert not is_equivalent("5", None)


@pytest.mark.parametrize("bad", [None, b"\\boxed{1}", 12, "", "}" * 5000, "{" * 20000, "\\frac" * 3000,
                                 "\\boxed{" + "(" * 3000 + "}", "\\boxed{" + "x^" * 2000 + "2}", "\x00\\boxed{\x00}",
                                 "\\boxed{\\begin{pmatrix}1&2\\\\3\\end{pmatrix}}", "\\boxed{1/0}", "\\boxed{0^{-1}}",
                                 "\\boxed{" * 30000, "final answer is " * 10000, "\\[" * 40000, "$$ x " * 20000,
                                 "1," * 1500 + "2", "\\boxed{" + "1," * 1500 + "2}"])
def test_bad_input_never_raises(bad):
    r = verify("1", bad)
    assert r.value == 0.0 and isinstance(r.details, str)
    r = verify(bad, r"\boxed{1}") if not isinstance(bad, str) or bad != "" else verify("", r"\boxed{1}")
    assert r.value == 0.0


def test_hard_time_limit_in_threads_and_asyncio():
    """A pathological answer is cut off at the limit from any thread and from asyncio (no signal.alarm)."""
    gold, slow = "5", r"\boxed{\sum_{k=1}^{10^{9}} k^{k}}"   # sympy's evalf of this runs for minutes
    results = {}

    def worker(key):
        t = time.perf_counter()
        results[key] = (verify(gold, slow, timeout=1.0), time.perf_counter() - t)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)

    async def main():
        t = time.perf_counter()
        r = await asyncio.to_thread(verify, gold, slow, timeout=1.0)
        return r, time.perf_counter() - t

    results["asyncio"] = asyncio.run(main())
    for key, (r, seconds) in results.items():
        assert r.value == 0.0 and r.outcomes["timed_out"], (key, r.outcomes)
        assert seconds < 10, (key, seconds)   # limit 1 s, plus a helper's start after the kill
    # the killed helpers are replaced and the verifier keeps working
    assert verify("2", r"\boxed{\sqrt{4}}").value == 1.0


def test_helpers_stop_on_shutdown():
    assert verify("3", r"\boxed{\frac{6}{2}}").value == 1.0
    pids = rm.helper_pids()
    assert pids
    rm.shutdown()
    time.sleep(0.2)
    for pid in pids:
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
    assert verify("3", r"\boxed{3}").value == 1.0   # a later call starts a fresh pool


def test_thread_and_inline_isolation_give_the_same_verdicts():
    sample = [p for pairs in BOXED_CATEGORIES.values() for p in pairs[:3]]
    try:
        for mode in ("thread", "inline"):
            rm.configure(isolation=mode)
            assert _mismatches(sample) == [], mode
    finally:
        rm.configure(isolation="process")


def test_many_threads_at_once():
    pairs = [p for pairs in BOXED_CATEGORIES.values() for p in pairs[:4]]
    errors = []

    def run(chunk):
        errors.extend(_mismatches(chunk))

    threads = [threading.Thread(target=run, args=(pairs[k::6],)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert errors == []


def test_cwm_reward_format_rules():
    ok = "<think>\n3 + 4 = 7\n</think>\nThe sum is $\\boxed{7}$."
    assert cwm_reward("7", ok).value == 1.0
    assert cwm_reward("7", ok, scheme="binary").value == 1.0
    assert cwm_reward("8", ok).value == -1.0 and cwm_reward("8", ok, scheme="binary").value == 0.0
    no_think = "The sum is $\\boxed{7}$."
    assert cwm_reward("7", no_think).value == -1.0                       # thinking on: </think> required
    assert cwm_reward("7", no_think, think=False).value == 1.0
    two_ends = "<think>a</think>b</think>\\boxed{7}"
    assert cwm_reward("7", two_ends).outcomes["think_ends"] == 2 and cwm_reward("7", two_ends).value == -1.0
    two_boxes = "<think>x</think>\\boxed{7} or \\boxed{8}"
    assert cwm_reward("7", two_boxes).value == -1.0 and cwm_reward("7", two_boxes).outcomes["boxed"] == 2
    boxed_in_thought_only = "<think>\\boxed{7}</think>I think it is seven."
    assert cwm_reward("7", boxed_in_thought_only).value == -1.0
    r = cwm_reward("7", ok)
    assert ok[r.outcomes["span"][0]:r.outcomes["span"][1]] == "\\boxed{7}"


def test_docstring_examples():
    modules = [__import__(f"rewards.{name}", fromlist=["x"]) for name in ("math", "math_extract", "math_attacks")]
    for module in modules:
        failures, _ = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert failures == 0, module.__name__


@pytest.mark.ray
def test_time_limit_inside_a_threaded_ray_actor(ray_session):
    """Where math-verify's signal.alarm fails (a Ray actor's worker threads), the limit still holds."""
    ray = ray_session

    @ray.remote(max_concurrency=2)
    class Grader:
        def grade(self, gold, response, timeout):
            import threading

            from rewards.math import verify as v

            r = v(gold, response, timeout=timeout)
            return r.value, r.outcomes["timed_out"], threading.current_thread() is threading.main_thread()

    grader = Grader.remote()
    slow = grader.grade.remote("5", r"\boxed{\sum_{k=1}^{10^{9}} k^{k}}", 1.0)
    fast = grader.grade.remote(r"\frac{1}{3}", r"\boxed{\frac{2}{6}}", 5.0)
    (slow_value, slow_timed_out, _), (fast_value, _, in_main) = ray.get([slow, fast], timeout=120)
    assert (slow_value, slow_timed_out) == (0.0, True)
    assert fast_value == 1.0 and in_main is False
    ray.kill(grader)
