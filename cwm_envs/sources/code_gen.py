"""The embedded default of `cwm/Code-v0`: a seeded generator of small problems with tests and a reference
solution (no file needed). Half are function completions (tests call the function), half read stdin; the
first `N_PUBLIC_TESTS` tests are public (shown as examples in the prompt), the others hidden.
"""
from __future__ import annotations

import random
from typing import Any

from cwm_envs.tasks import Task

_CALL_TEMPLATES = [
    ("sum_above", "nums: list, k: int", "int", "Return the sum of the numbers in `nums` that are greater than `k`.",
     "    return sum(x for x in nums if x > k)\n",
     lambda r: ([r.randint(-20, 20) for _ in range(r.randint(0, 8))], r.randint(-5, 5))),
    ("count_vowels", "s: str", "int", "Return how many characters of `s` are vowels (a, e, i, o, u, either case).",
     "    return sum(c in 'aeiouAEIOU' for c in s)\n",
     lambda r: ("".join(r.choice("abcdeiouxyzAEIOU ") for _ in range(r.randint(0, 15))),)),
    ("reverse_words", "s: str", "str", "Return the words of `s` in reverse order, joined by single spaces.",
     "    return ' '.join(reversed(s.split()))\n",
     lambda r: (" ".join(r.choice(["cat", "dog", "owl", "a", "bee"]) for _ in range(r.randint(0, 6))),)),
    ("running_max", "nums: list", "list", "Return the list whose i-th item is the largest of nums[0..i].",
     "    out, best = [], None\n    for x in nums:\n        best = x if best is None or x > best else best\n"
     "        out.append(best)\n    return out\n",
     lambda r: ([r.randint(-50, 50) for _ in range(r.randint(0, 9))],)),
    ("second_largest", "nums: list", "int | None",
     "Return the second largest distinct value of `nums`, or None if there is none.",
     "    values = sorted(set(nums))\n    return values[-2] if len(values) > 1 else None\n",
     lambda r: ([r.randint(0, 6) for _ in range(r.randint(0, 6))],)),
    ("is_palindrome", "s: str", "bool",
     "Return True if `s` reads the same backwards, ignoring case and anything that is not a letter or digit.",
     "    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n",
     lambda r: (r.choice(["Racecar", "No lemon, no melon", "abca", "", "ab", "Was it a rat I saw?", "xyz"]),)),
    ("digit_sum", "n: int", "int", "Return the sum of the decimal digits of abs(n).",
     "    return sum(int(d) for d in str(abs(n)))\n",
     lambda r: (r.randint(-10**6, 10**6),)),
    ("char_counts", "s: str", "dict", "Return a dict mapping each character of `s` to how often it occurs.",
     "    out = {}\n    for c in s:\n        out[c] = out.get(c, 0) + 1\n    return out\n",
     lambda r: ("".join(r.choice("abcab") for _ in range(r.randint(0, 8))),)),
]

_STDIN_TEMPLATES = [
    ("sum_list", "The first line holds n, the second n integers. Print their sum.",
     "def solve(data):\n    t = data.split()\n    return str(sum(int(x) for x in t[1:1 + int(t[0])]))\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-1000, 1000) for _ in range(r.randint(1, 10))])),
    ("min_max", "The first line holds n, the second n integers. Print the smallest and the largest, separated by a space.",
     "def solve(data):\n    t = [int(x) for x in data.split()[1:]]\n    return f'{min(t)} {max(t)}'\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(-99, 99) for _ in range(r.randint(1, 8))])),
    ("products", "The first line holds T; each of the next T lines holds two integers a and b. Print a*b for each, one per line.",
     "def solve(data):\n    t = data.split()\n    n = int(t[0])\n"
     "    return '\\n'.join(str(int(t[1 + 2 * i]) * int(t[2 + 2 * i])) for i in range(n))\n",
     lambda r: (lambda ps: f"{len(ps)}\n" + "".join(f"{a} {b}\n" for a, b in ps))(
         [(r.randint(-10**9, 10**9), r.randint(-10**9, 10**9)) for _ in range(r.randint(1, 5))])),
    ("mean", "The first line holds n, the second n integers. Print their mean (an absolute or relative error of 1e-6 is accepted).",
     "def solve(data):\n    t = [int(x) for x in data.split()[1:]]\n    return repr(sum(t) / len(t))\n",
     lambda r: (lambda xs: f"{len(xs)}\n{' '.join(map(str, xs))}\n")([r.randint(0, 100) for _ in range(r.randint(1, 7))])),
]

N_GENERATED_TESTS = 8
N_PUBLIC_TESTS = 2


def generate_task(seed: int) -> Task:
    """A small problem with tests and a reference solution, the same for the same seed.

    Half are function completions (tests call the function), half read stdin; the first two tests are
    public (shown as examples in the prompt), the others hidden.
    """
    rng = random.Random(seed)
    if rng.random() < 0.5:
        name, params, ret, doc, body, gen = rng.choice(_CALL_TEMPLATES)
        ns: dict[str, Any] = {}
        exec(f"def {name}({params}):\n{body}", ns)  # our own reference code: computes the expected values
        argsets = [gen(rng) for _ in range(N_GENERATED_TESTS)]
        examples = "".join(f"    >>> {name}({', '.join(map(repr, a))})\n    {ns[name](*a)!r}\n" for a in argsets[:N_PUBLIC_TESTS])
        prompt = f'def {name}({params}) -> {ret}:\n    """{doc}\n\n{examples}    """\n'
        check = "def check(candidate):\n" + "".join(
            f"    assert candidate({', '.join(map(repr, a))}) == {ns[name](*a)!r}\n" for a in argsets)
        return Task(id=f"gen/{name}/{seed}", prompt=prompt, answer=f"def {name}({params}) -> {ret}:\n{body}",
                    tests=check, metadata={"entry_point": name, "public_tests": N_PUBLIC_TESTS, "source": "generated"})
    name, statement, solve_src, gen = rng.choice(_STDIN_TEMPLATES)
    ns = {}
    exec(solve_src, ns)
    inputs = [gen(rng) for _ in range(N_GENERATED_TESTS)]
    tests = [{"input": i, "output": ns["solve"](i) + "\n", "testtype": "stdin", "public": k < N_PUBLIC_TESTS}
             for k, i in enumerate(inputs)]
    examples = "".join(f"\n\nExample {k + 1}\nInput:\n{t['input'].rstrip()}\nOutput:\n{t['output'].rstrip()}"
                       for k, t in enumerate(tests[:N_PUBLIC_TESTS]))
    program = f"import sys\n\n{solve_src}\nprint(solve(sys.stdin.read()))\n"
    tolerance = {"float_tolerance": 1e-6} if "error of 1e-6 is accepted" in statement else {}
    return Task(id=f"gen/{name}/{seed}", prompt=statement + examples, answer=program, tests=tests,
                metadata={"source": "generated", **tolerance})


__all__ = ["N_GENERATED_TESTS", "N_PUBLIC_TESTS", "generate_task"]
