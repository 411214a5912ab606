"""What a model patch may change before its tests run: the grader, never the patch, decides what runs.

A patch is paid for the code it changes. Whatever else could run during grading or steer the test runner
is refused (the patch counts as not applied, and the report says why) or neutralised (put back as the
base commit has it) before the tests start. The same rules serve `cwm swe eval` and `cwm/SWE-v0`
(through `cwm_envs.swe.harness.grade`), on the paths the patch names and, after it is applied, on the
paths it actually changed.

Refused:
- git's own files: anything under `.git/` (hooks, config, info/attributes, objects), `.gitattributes`,
  `.gitmodules`: they decide what git (which the grader runs) executes and checks out;
- test-runner configuration at any depth: `conftest.py`, `pytest.ini`, `.pytest.ini`, `pytest.toml`,
  `.pytest.toml`, `tox.ini`, `noxfile.py`, the runner sections of `setup.cfg` and `pyproject.toml`
  (`[tool:pytest]`, `[tool.pytest...]`, tox's), a `pytest11` plugin entry point, and the script the
  test command runs (django's `tests/runtests.py`, sympy's `bin/test`);
- interpreter start-up hooks and compiled code: `sitecustomize.py`, `usercustomize.py`, `*.pth`, `*.pyc`,
  `*.pyo`, `__pycache__/`;
- package metadata (`*.dist-info/`, `*.egg-info/`: their entry points name the plugins pytest loads);
- a symlink (out of the tree, into `.git`, onto test files: no gold patch needs one), and a path that
  climbs out (`..`, absolute).
Neutralised (what an honest agent may leave behind, undone before the tests run):
- test code (test files, `test.py`, anything under a test folder): the patch's edits are undone and its new
  test files removed, so the tests that run are the task's (SWE-bench's gold patches never touch them);
- a new top-level module that shadows one the test environment has (stdlib, pytest, pluggy...; a scratch
  `code.py` at the root, say): removed, since with `python -m pytest` the root comes first on `sys.path`.

Checked against every gold patch of SWE-bench Verified/Lite (tests/test_swe_patch_rules.py): none is
refused or neutralised.

>>> refused_path("tests/conftest.py"), refused_path("pkg/mod.py")
('test-runner configuration (conftest.py)', None)
>>> refused_path(".git/hooks/post-checkout")
'a file of git itself (.git/)'
>>> is_test_path("tests/helpers.py"), is_test_path("pkg/testing_utils.py")
(True, False)
"""
from __future__ import annotations

import codecs
import configparser
import posixpath
import re
import sys

GIT_FILES = {".gitattributes", ".gitmodules"}
RUNNER_FILES = {"conftest.py", "pytest.ini", ".pytest.ini", "pytest.toml", ".pytest.toml", "tox.ini", "noxfile.py"}
STARTUP_FILES = {"sitecustomize.py", "usercustomize.py"}
SHARED_CONFIG = {"setup.cfg", "pyproject.toml"}          # allowed, except for their test-runner sections
TEST_DIRS = {"test", "tests", "testing"}
BUILD_DIRS = {"build", "dist", ".eggs"}                   # where an install step puts its copies and downloads
# What the test runner imports besides the standard library: a new top-level module of that name shadows it.
RUNNER_MODULES = {"sitecustomize", "usercustomize", "pytest", "_pytest", "py", "pluggy", "iniconfig", "packaging",
                  "attr", "attrs", "more_itertools", "exceptiongroup", "tomli", "tomllib", "six", "setuptools",
                  "pkg_resources", "_distutils_hack", "pip", "coverage", "pytest_cov", "xdist", "execnet", "hypothesis",
                  "mock", "nose", "tox", "pygments", "colorama", "typing_extensions", "importlib_metadata", "zipp"}
SYMLINK = "a symlink (links lead the grader's file operations elsewhere; no gold patch makes one)"
_STDLIB = set(getattr(sys, "stdlib_module_names", ())) | set(sys.builtin_module_names)
# Every header line from which `git apply` or GNU `patch` (unified or context format) takes a file name.
_HEADER = re.compile(r"^(?:diff --git (.+)|(?:---|\*\*\*) (.+)|\+\+\+ (.+)|(?:rename|copy) (?:from|to) (.+)"
                     r"|Index: (.+))$", re.M)


def _unquote(name: str) -> str:
    """A path as git writes it in a header: C-quoted when it holds odd characters."""
    name = name.strip()
    if len(name) >= 2 and name[0] == name[-1] == '"':
        raw = codecs.escape_decode(name[1:-1].encode("utf-8", "surrogateescape"))[0]
        return raw.decode("utf-8", "replace")
    return name.split("\t", 1)[0]                      # `--- a/x\t2024-01-01 ...` (GNU diff's date)


def _split_diff_git(rest: str) -> list[str]:
    """The two names of `diff --git a/X b/Y` (quoted or not; X == Y unless renamed)."""
    if rest.startswith('"'):
        m = re.match(r'("(?:[^"\\]|\\.)*")\s+(.+)$', rest)
        return [m.group(1), m.group(2)] if m else [rest]
    m = re.match(r"(a/.*) (b/.*)$", rest)
    return [m.group(1), m.group(2)] if m else rest.split(" ")


def patch_paths(patch: str) -> list[str]:
    """Every repository path the patch names in any header that `git apply` or `patch -p1` may act on.

    >>> patch_paths("diff --git a/x.py b/y.py\\nrename from x.py\\nrename to y.py\\n--- a/x.py\\n+++ b/y.py\\n")
    ['x.py', 'y.py']
    >>> patch_paths('--- "a/q\\\\tx.py"\\n+++ /dev/null\\n')
    ['q\\tx.py']
    """
    names: list[str] = []
    for m in _HEADER.finditer(patch or ""):
        diff_git, old, new, moved, index = m.groups()
        if diff_git is not None:
            raw = [_unquote(n) for n in _split_diff_git(diff_git)]
            strip = True
        elif moved is not None or index is not None:
            raw, strip = [_unquote(moved if moved is not None else index)], False
        else:
            raw, strip = [_unquote(old if old is not None else new)], True
        for name in raw:
            if name == "/dev/null":
                continue
            if strip:                                   # -p1: `a/x` and `b/x` are `x`
                name = name.split("/", 1)[1] if "/" in name else name
            names.append(name)
    return list(dict.fromkeys(names))


def is_test_path(path: str) -> bool:
    """Test code: a test file, or anything under a test folder (SWE-bench's split between gold and test patch).

    >>> [is_test_path(p) for p in ("tests/util.py", "pkg/test_x.py", "pkg/x_test.py", "test.py", "pkg/x.py")]
    [True, True, True, True, False]
    """
    parts = path.split("/")
    name = parts[-1]
    return (any(p in TEST_DIRS for p in parts[:-1]) or name.startswith("test_") or name.endswith("_test.py")
            or name in ("test.py", "tests.py"))


def refused_path(path: str, runner_scripts: tuple[str, ...] = (), build_products: bool = False) -> str | None:
    """Why a patch may not create, change or delete `path` (relative to the repository root), or None.
    `build_products`: allow what an install step writes into the tree itself (package metadata, bytecode,
    copies under build/, which pytest never collects from: the tests named by the eval script live elsewhere).

    >>> refused_path("build/lib/pkg/conftest.py", build_products=True), refused_path("conftest.py", build_products=True)
    (None, 'test-runner configuration (conftest.py)')
    """
    if not path or path.startswith("/") or "\\" in path:
        return f"a path outside the repository ({path!r})"
    parts = path.split("/")
    if build_products and parts[0] in BUILD_DIRS and len(parts) > 1:
        return None
    lowered = [p.lower() for p in parts]
    if ".." in parts:
        return f"a path that climbs out of the repository ({path})"
    if ".git" in lowered:
        return "a file of git itself (.git/)"
    name = lowered[-1]
    for part in lowered:                                # a folder of that name counts too (`conftest.py/`)
        if part in GIT_FILES:
            return f"git configuration ({part})"
        if part in RUNNER_FILES:
            return f"test-runner configuration ({part})"
        if part in STARTUP_FILES or part.endswith(".pth"):
            return f"an interpreter start-up hook ({part})"
        if part.endswith((".dist-info", ".egg-info")) and not build_products:
            return f"package metadata ({part}: it names the plugins pytest loads)"
    if posixpath.normpath(path) in {posixpath.normpath(s) for s in runner_scripts}:
        return f"the test runner itself ({path})"
    if ("__pycache__" in lowered or name.endswith((".pyc", ".pyo"))) and not build_products:
        return f"compiled Python ({path})"
    return None


def top_level_module(path: str) -> str | None:
    """The module a file defines when its folder is on sys.path: `x.py`, `x/__init__.py`, `x.cpython-311-....so`.

    >>> top_level_module("pytest.py"), top_level_module("_pytest/__init__.py"), top_level_module("pkg/mod.py")
    ('pytest', '_pytest', None)
    """
    parts = path.split("/")
    if len(parts) == 2 and parts[1].startswith("__init__."):
        return parts[0]
    if len(parts) == 1 and parts[0].endswith(".py"):
        return parts[0][:-3]
    if len(parts) == 1 and parts[0].endswith((".so", ".pyd")):
        return parts[0].split(".", 1)[0]
    return None


def shadowing(path: str, known: set[str] | frozenset[str] = frozenset()) -> str | None:
    """Why a new file at `path` (relative to a sys.path folder) shadows a module the tests rely on, or None.

    >>> shadowing("pytest.py"), shadowing("code.py") is not None, shadowing("reproduce.py")
    ("a new module that shadows the installed 'pytest' (pytest.py)", True, None)
    """
    module = top_level_module(path)
    if module and (module in _STDLIB or module in RUNNER_MODULES or module in known):
        return f"a new module that shadows the installed {module!r} ({path})"
    return None


def _blocks(patch: str) -> list[tuple[str, str]]:
    """The patch split per file: (path, block text), for a git-style patch."""
    heads = list(re.finditer(r"^diff --git (.+)$", patch, re.M))
    out = []
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(patch)
        names = [_unquote(n) for n in _split_diff_git(head.group(1))]
        path = names[-1].split("/", 1)[1] if "/" in names[-1] else names[-1]
        out.append((path, patch[head.start():end]))
    return out


def patch_violations(patch: str, runner_scripts: tuple[str, ...] = ()) -> list[str]:
    """Why the patch text alone is refused (empty: go on). Checked before anything is applied.

    >>> patch_violations("diff --git a/conftest.py b/conftest.py\\nnew file mode 100644\\n")
    ['conftest.py: test-runner configuration (conftest.py)']
    """
    found = [f"{path}: {why}" for path in patch_paths(patch) if (why := refused_path(path, runner_scripts))]
    for path, block in _blocks(patch):
        if re.search(r"^(?:new file mode|new mode) 120000$", block, re.M):
            found.append(f"{path}: {SYMLINK}")
    if re.search(r"^\+.*\bpytest11\b", patch or "", re.M):
        found.append("a pytest plugin entry point (pytest11): it would load code into the test runner")
    return list(dict.fromkeys(found))


# --- the runner sections of the shared configuration files --------------------------------------------------

def _cfg_sections(text: str) -> dict:
    parser = configparser.RawConfigParser(strict=False, interpolation=None)
    parser.optionxform = str                            # keep keys as written
    parser.read_string(text)
    return {name: dict(parser.items(name)) for name in parser.sections()
            if name in ("pytest", "tool:pytest", "tox", "tox:tox") or name.startswith("testenv")}


def _toml_sections(text: str) -> dict:
    import tomllib

    tool = tomllib.loads(text).get("tool", {})
    return {name: tool.get(name) for name in ("pytest", "tox")}


def runner_config_change(path: str, before: str | None, after: str | None) -> str | None:
    """Why the change of a shared configuration file (setup.cfg, pyproject.toml) is refused, or None: it may
    change anything but the sections the test runner reads.

    >>> runner_config_change("setup.cfg", "[metadata]\\nname = x\\n", "[metadata]\\nname = y\\n") is None
    True
    >>> runner_config_change("setup.cfg", "", "[tool:pytest]\\naddopts = -p evil\\n")
    'setup.cfg: its test-runner sections change (pytest/tox settings)'
    """
    name = path.rsplit("/", 1)[-1].lower()
    if name not in SHARED_CONFIG:
        return None
    read = _toml_sections if name == "pyproject.toml" else _cfg_sections
    try:
        old, new = read(before or ""), read(after or "")
    except Exception as exc:                            # noqa: BLE001 - unreadable: the runner might read it otherwise
        return f"{path}: cannot be read as {name} ({type(exc).__name__}): its runner sections cannot be checked"
    if old != new:
        return f"{path}: its test-runner sections change (pytest/tox settings)"
    return None


def runner_scripts(eval_script: str) -> tuple[str, ...]:
    """The repository scripts the test command runs (`./tests/runtests.py`, `bin/test`), from the eval script.

    >>> runner_scripts(": '>>>>> Start Test Output'\\n./tests/runtests.py --verbosity 2 x\\n: '>>>>> End Test Output'")
    ('tests/runtests.py',)
    >>> runner_scripts(": '>>>>> Start Test Output'\\nPYTHONWARNINGS=x bin/test -C a.py\\n: '>>>>> End Test Output'")
    ('bin/test',)
    """
    section = eval_script.split(">>>>> Start Test Output", 1)[-1].split(">>>>> End Test Output", 1)[0]
    found = []
    for line in section.splitlines()[1:]:
        words = [w for w in line.split() if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", w)]
        if words and words[0] in ("python", "python3") and len(words) > 1:
            words = words[1:]
        if words and "/" in words[0] and not words[0].startswith("/") and not words[0].startswith("-"):
            found.append(posixpath.normpath(words[0]))
    return tuple(dict.fromkeys(found))


# --- what an install step may leave in the test environment ---------------------------------------------------

# The lines setuptools and pip write into .pth files (editable installs, easy-install.pth): nothing else imports.
_PTH_IMPORTS = re.compile(r"import __editable___[\w.-]+_finder; __editable___[\w.-]+_finder\.install\([^()]*\)"
                          r"|import sys; sys\.__plen = len\(sys\.path\)"
                          r"|import sys; new = sys\.path\[sys\.__plen:\]; del sys\.path\[sys\.__plen:\]; "
                          r"p = getattr\(sys, '__egginsert', 0\); sys\.path\[p:p\] = new; "
                          r"sys\.__egginsert = p \+ len\(new\)")


def install_record_problem(path: str, text: str) -> str | None:
    """Why a file an install step wrote into the test environment would change what runs: a start-up hook
    (sitecustomize, usercustomize), a .pth line that imports anything but setuptools' own finder, an entry
    point that registers a pytest plugin.

    >>> install_record_problem("easy-install.pth", "/testbed\\nimport sys; sys.__plen = len(sys.path)\\n") is None
    True
    >>> install_record_problem("x.pth", "import calc.hooks\\n")
    'x.pth: a .pth line that runs code at every start of Python'
    """
    name = path.rsplit("/", 1)[-1]
    if name in STARTUP_FILES:
        return f"{path}: an interpreter start-up hook"
    if path.endswith(".pth"):
        for line in text.splitlines():
            if line.startswith(("import ", "import\t")) and not _PTH_IMPORTS.fullmatch(line.strip()):
                return f"{path}: a .pth line that runs code at every start of Python"
    if path.endswith("entry_points.txt") and re.search(r"^\s*\[\s*pytest11\s*\]", text, re.M):
        return f"{path}: registers a pytest plugin (pytest11)"
    return None

