'''The embedded default repository: a small pure-Python package with pytest tests, written out by code.

`cwm swe mutate` turns it into the default task set of `cwm/SWE-v0`, so the environment works with no
download. It is generated rather than shipped as a folder so that it travels inside the Python package
(no package-data rules) and never gets collected by the project's own test run.

>>> sorted(FILES)[:3]
['.gitignore', 'README.md', 'pyproject.toml']
'''
from __future__ import annotations

import subprocess
from pathlib import Path

NAME = "tinylib"
TEST_CMD = "python -m pytest -rA -p no:cacheprovider tests"
INSTALL: tuple[str, ...] = ()   # `python -m pytest` from the repository root imports the package as it is
VERSION = 1            # bump whenever FILES change: the default task set is cached under it

FILES: dict[str, str] = {}

FILES[".gitignore"] = "*.egg-info/\n__pycache__/\n.pytest_cache/\nbuild/\ndist/\n"

FILES["README.md"] = """# tinylib

Small helpers for text, numbers and sequences. Run the tests with `python -m pytest tests`.
"""

FILES["pyproject.toml"] = """[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "tinylib"
version = "0.1.0"
description = "Small helpers for text, numbers and sequences"
requires-python = ">=3.9"

[tool.setuptools]
packages = ["tinylib"]
"""

FILES["tinylib/__init__.py"] = '''"""Small helpers for text, numbers and sequences."""
from tinylib.numbers import clamp, gcd, is_prime, mean, median, from_roman, to_roman
from tinylib.seqs import binary_search, chunk, dedupe, flatten, merge_intervals, rotate
from tinylib.text import count_words, is_palindrome, rle_decode, rle_encode, slugify, wrap

__all__ = ["clamp", "gcd", "is_prime", "mean", "median", "from_roman", "to_roman", "binary_search", "chunk",
           "dedupe", "flatten", "merge_intervals", "rotate", "count_words", "is_palindrome", "rle_decode",
           "rle_encode", "slugify", "wrap"]
'''

FILES["tinylib/text.py"] = '''"""Text helpers."""
import re


def slugify(text, sep="-"):
    """Lower-case words of `text` joined by `sep`: "Hello, World!" -> "hello-world"."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return sep.join(words)


def wrap(text, width):
    """Split `text` into lines of at most `width` characters, breaking between words."""
    if width < 1:
        raise ValueError("width must be at least 1")
    lines = []
    current = ""
    for word in text.split():
        if not current:
            current = word
        elif len(current) + 1 + len(word) <= width:
            current = current + " " + word
        else:
            lines.append(current)
            current = word
    if current:
        lines.append(current)
    return lines


def count_words(text):
    """How often each lower-cased word occurs in `text`."""
    counts = {}
    for word in re.findall(r"[a-z']+", text.lower()):
        counts[word] = counts.get(word, 0) + 1
    return counts


def is_palindrome(text):
    """True if the letters and digits of `text` read the same both ways, ignoring case."""
    chars = [c.lower() for c in text if c.isalnum()]
    return chars == chars[::-1]


def rle_encode(text):
    """Run-length encoding: "aaab" -> [("a", 3), ("b", 1)]."""
    runs = []
    for char in text:
        if runs and runs[-1][0] == char:
            runs[-1] = (char, runs[-1][1] + 1)
        else:
            runs.append((char, 1))
    return runs


def rle_decode(runs):
    """The text that `rle_encode` turned into `runs`."""
    return "".join(char * count for char, count in runs)
'''

FILES["tinylib/numbers.py"] = '''"""Number helpers."""

ROMAN = [(1000, "M"), (900, "CM"), (500, "D"), (400, "CD"), (100, "C"), (90, "XC"), (50, "L"), (40, "XL"),
         (10, "X"), (9, "IX"), (5, "V"), (4, "IV"), (1, "I")]


def mean(values):
    """The arithmetic mean of a non-empty sequence."""
    if not values:
        raise ValueError("mean of an empty sequence")
    return sum(values) / len(values)


def median(values):
    """The middle value of the sorted values (the mean of the two middle ones for an even count)."""
    if not values:
        raise ValueError("median of an empty sequence")
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2 == 1:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def clamp(value, low, high):
    """`value` limited to the range [low, high]."""
    if low > high:
        raise ValueError("low must not exceed high")
    return max(low, min(value, high))


def gcd(a, b):
    """The greatest common divisor of two integers (always >= 0)."""
    a, b = abs(a), abs(b)
    while b:
        a, b = b, a % b
    return a


def is_prime(n):
    """True if `n` is a prime number."""
    if n < 2:
        return False
    k = 2
    while k * k <= n:
        if n % k == 0:
            return False
        k += 1
    return True


def to_roman(n):
    """The Roman numeral of 1 <= n <= 3999."""
    if not 0 < n < 4000:
        raise ValueError("Roman numerals cover 1 to 3999")
    parts = []
    for value, letters in ROMAN:
        while n >= value:
            parts.append(letters)
            n -= value
    return "".join(parts)


def from_roman(numeral):
    """The integer value of a Roman numeral."""
    values = {letters: value for value, letters in ROMAN if len(letters) == 1}
    total = 0
    previous = 0
    for letter in reversed(numeral.upper()):
        value = values[letter]
        if value < previous:
            total -= value
        else:
            total += value
            previous = value
    return total
'''

FILES["tinylib/seqs.py"] = '''"""Sequence helpers."""


def chunk(items, size):
    """Consecutive pieces of `items` with `size` elements each (the last one may be shorter)."""
    if size < 1:
        raise ValueError("size must be at least 1")
    return [items[i:i + size] for i in range(0, len(items), size)]


def flatten(nested):
    """All non-list elements of arbitrarily nested lists, in order."""
    flat = []
    for item in nested:
        if isinstance(item, list):
            flat.extend(flatten(item))
        else:
            flat.append(item)
    return flat


def dedupe(items):
    """`items` without repeats, keeping the first occurrence of each."""
    seen = set()
    out = []
    for item in items:
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out


def merge_intervals(intervals):
    """Merge overlapping or touching (start, end) intervals; the result is sorted."""
    merged = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def binary_search(items, target):
    """The index of `target` in the sorted list `items`, or -1 if it is not there."""
    low, high = 0, len(items) - 1
    while low <= high:
        mid = (low + high) // 2
        if items[mid] == target:
            return mid
        if items[mid] < target:
            low = mid + 1
        else:
            high = mid - 1
    return -1


def rotate(items, k):
    """`items` rotated right by `k` places."""
    if not items:
        return []
    k = k % len(items)
    return items[-k:] + items[:-k]
'''

FILES["tests/test_text.py"] = '''import pytest

from tinylib.text import count_words, is_palindrome, rle_decode, rle_encode, slugify, wrap


def test_slugify_joins_lower_case_words():
    assert slugify("Hello, World!") == "hello-world"


def test_slugify_custom_separator():
    assert slugify("Read the Docs", sep="_") == "read_the_docs"


def test_wrap_breaks_between_words():
    assert wrap("the quick brown fox jumps", 10) == ["the quick", "brown fox", "jumps"]


def test_wrap_keeps_long_words_whole():
    assert wrap("a extraordinary b", 5) == ["a", "extraordinary", "b"]


def test_wrap_rejects_zero_width():
    with pytest.raises(ValueError):
        wrap("text", 0)


def test_count_words_is_case_insensitive():
    assert count_words("The cat and the hat") == {"the": 2, "cat": 1, "and": 1, "hat": 1}


def test_palindromes():
    assert is_palindrome("A man, a plan, a canal: Panama")
    assert not is_palindrome("palindrome")


def test_rle_encode_counts_runs():
    assert rle_encode("aaabccdddd") == [("a", 3), ("b", 1), ("c", 2), ("d", 4)]


def test_rle_round_trip():
    for text in ["", "x", "aabbbc", "zzzzzzzzzz"]:
        assert rle_decode(rle_encode(text)) == text, text
'''

FILES["tests/test_numbers.py"] = '''import pytest

from tinylib.numbers import clamp, from_roman, gcd, is_prime, mean, median, to_roman


def test_mean():
    assert mean([1, 2, 3, 6]) == 3


def test_mean_of_nothing_is_an_error():
    with pytest.raises(ValueError):
        mean([])


def test_median_odd_count():
    assert median([5, 1, 3]) == 3


def test_median_even_count():
    assert median([4, 1, 3, 2]) == 2.5


def test_clamp_inside_and_outside():
    assert clamp(5, 0, 10) == 5
    assert clamp(-3, 0, 10) == 0
    assert clamp(42, 0, 10) == 10


def test_clamp_rejects_empty_range():
    with pytest.raises(ValueError):
        clamp(1, 5, 2)


def test_gcd():
    assert gcd(12, 18) == 6
    assert gcd(-4, 6) == 2
    assert gcd(7, 0) == 7


def test_primes_below_30():
    assert [n for n in range(30) if is_prime(n)] == [2, 3, 5, 7, 11, 13, 17, 19, 23, 29]


def test_to_roman():
    assert to_roman(1994) == "MCMXCIV"
    assert to_roman(8) == "VIII"


def test_to_roman_range():
    with pytest.raises(ValueError):
        to_roman(0)


def test_from_roman():
    assert from_roman("MCMXCIV") == 1994
    assert from_roman("xiv") == 14


def test_roman_round_trip():
    for n in [1, 4, 9, 14, 40, 90, 400, 1999, 2024, 3999]:
        assert from_roman(to_roman(n)) == n, n
'''

FILES["tests/test_seqs.py"] = '''import pytest

from tinylib.seqs import binary_search, chunk, dedupe, flatten, merge_intervals, rotate


def test_chunk():
    assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]


def test_chunk_rejects_zero_size():
    with pytest.raises(ValueError):
        chunk([1], 0)


def test_flatten_nested_lists():
    assert flatten([1, [2, [3, 4]], [], 5]) == [1, 2, 3, 4, 5]


def test_dedupe_keeps_first_occurrences():
    assert dedupe([3, 1, 3, 2, 1]) == [3, 1, 2]


def test_merge_overlapping_intervals():
    assert merge_intervals([(5, 8), (1, 3), (2, 4)]) == [(1, 4), (5, 8)]


def test_merge_touching_intervals():
    assert merge_intervals([(1, 2), (2, 3)]) == [(1, 3)]


def test_binary_search_finds_every_element():
    items = [1, 3, 5, 7, 9, 11]
    for index, value in enumerate(items):
        assert binary_search(items, value) == index, value


def test_binary_search_missing():
    assert binary_search([1, 3, 5], 4) == -1
    assert binary_search([], 1) == -1


def test_rotate():
    assert rotate([1, 2, 3, 4, 5], 2) == [4, 5, 1, 2, 3]
    assert rotate([1, 2, 3], 3) == [1, 2, 3]
    assert rotate([], 4) == []
'''


def write_default_repo(dest: str | Path) -> Path:
    """Write the package into `dest` (a new or empty directory) as a git repository with one commit."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for rel, text in FILES.items():
        path = dest / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    env = {"GIT_AUTHOR_NAME": "tinylib", "GIT_AUTHOR_EMAIL": "tinylib@example.com",
           "GIT_COMMITTER_NAME": "tinylib", "GIT_COMMITTER_EMAIL": "tinylib@example.com",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z",
           "PATH": "/usr/local/bin:/usr/bin:/bin"}
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "tinylib 0.1.0"]):
        subprocess.run(["git", "-c", "init.defaultBranch=main", *args], cwd=dest, env=env, check=True,
                       capture_output=True)
    return dest
