"""rewards.code: the format rule, the tolerant stdout compare and the two reward schemes (pure functions)."""
import doctest

import pytest

import rewards.code
from rewards.code import TestOutcome, code_reward, extract_code, outputs_match


def test_doctests():
    assert doctest.testmod(rewards.code).failed == 0


@pytest.mark.parametrize("response, code", [
    ("```python\nx = 1\n```", "x = 1\n"),
    ("text\n```py\nx = 1\n```\nmore text", "x = 1\n"),
    ("```\nx = 1\n```", "x = 1\n"),
    ("~~~python\nx = 1\n~~~", "x = 1\n"),
    ("````python\ns = '```'\n````", "s = '```'\n"),  # a longer fence may hold a shorter one
    ("<think>\n```python\nbad\n```\n</think>\n```python\ngood\n```", "good\n"),
])
def test_one_block_is_found(response, code):
    assert extract_code(response).code == code


@pytest.mark.parametrize("response, n", [
    ("plain text, no code", 0),
    ("```python\na\n```\n```python\nb\n```", 2),
    ("```python\nunclosed", 0),
    ("<think>\n```python\na\n```\n</think>\n", 0),  # code only inside the reasoning does not count
])
def test_other_than_one_block_is_a_parse_failure(response, n):
    e = extract_code(response)
    assert e.code is None and e.n_blocks == n and "exactly one code block" in e.reason


def test_think_rules():
    assert extract_code("</think></think>```python\na\n```").code is None
    assert extract_code("```python\na\n```", require_think=True).code is None
    assert extract_code("<think>\nhm\n</think>\n```python\na\n```", require_think=True).code == "a\n"


@pytest.mark.parametrize("got, expected, tol, ok", [
    ("1 2 3\n", "1 2 3", None, True),
    ("1  2\t3   \r\n\n\n", "1 2 3\n", None, True),
    ("1.0000001\n", "1", None, False),      # an expected integer needs an integer token ...
    ("1.0000001\n", "1", 1e-6, False),      # ... even where the task allows a float tolerance
    ("3.0", "3", None, False),
    ("1e-7\n", "0", 1e-6, False),
    ("007", "7", None, True),                # the same integer
    ("100000001", "100000000", None, False),  # integers compare exactly
    ("0.50", "0.5", None, True),             # the same exact value
    ("0.3333333", "0.333333333", None, False),  # no tolerance unless the task gives one
    ("0.3333333", "0.333333333", 1e-6, True),
    ("1.5", "1.50001", 1e-6, False),
    ("YES", "yes", None, False),
    ("", "0", None, False),
    ("0\n\n1", "0\n1", None, False),      # a blank line inside the output matters
    ("nan", "nan", None, True),
    ("inf", "1e308", 1e-6, False),
    ("9" * 5000, "1", None, False),        # longer than int() converts: compared as digits, never a crash
    ("9" * 5000, "9" * 5000, None, True),
    ("-" + "0" * 5000, "0", None, True),
])
def test_outputs_match(got, expected, tol, ok):
    assert outputs_match(got, expected, tol) is ok


def test_code_reward_schemes_and_evidence():
    tests = [TestOutcome("a", True, public=True), TestOutcome("b", False, status="wrong answer", detail="got 3"),
             TestOutcome("c", True)]
    cwm = code_reward(True, True, tests)
    assert cwm.value == -1.0 and cwm.outcomes["public_pass"] is True and cwm.outcomes["passed"] == 2
    assert cwm.outcomes["failures"] == [{"name": "b", "status": "wrong answer", "detail": "got 3"}]
    assert "first failure b: wrong answer" in cwm.details
    assert code_reward(True, True, tests, scheme="fraction").value == pytest.approx(2 / 3)
    assert code_reward(True, False, [], reason="SyntaxError").outcomes["compile"] is False
    assert code_reward(True, True, []).value == -1.0  # nothing ran is never a pass
    assert code_reward(True, True, [TestOutcome("a", True)]).outcomes["public_pass"] is None
    with pytest.raises(ValueError):
        code_reward(True, True, tests, scheme="majority")
