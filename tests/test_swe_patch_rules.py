"""What a model patch may change before grading (cwm_envs/swe/patch_rules.py) and the seal check (grading.py):
pure functions, no Docker. The Docker side of each attack is in tests/test_swe_harness.py and test_swe_env.py."""
from __future__ import annotations

import pytest

from cwm_envs.swe import patch_rules
from cwm_envs.swe.dataset import instance_from_row
from cwm_envs.swe.grading import Seal, seal_applies, unconfirmed_tests


def new_file(path: str, text: str = "x", mode: str = "100644") -> str:
    return (f"diff --git a/{path} b/{path}\nnew file mode {mode}\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1 @@\n+{text}\n")


def edit(path: str) -> str:
    return f"diff --git a/{path} b/{path}\n--- a/{path}\n+++ b/{path}\n@@ -1 +1 @@\n-a\n+b\n"


REFUSED = {
    # test-runner configuration, at any depth
    "conftest at the root": new_file("conftest.py"),
    "conftest in tests": new_file("tests/conftest.py"),
    "conftest deep down": new_file("pkg/sub/deeper/conftest.py"),
    "conftest as a folder": new_file("conftest.py/__init__.py"),
    "conftest by rename": "diff --git a/pkg/h.py b/conftest.py\nsimilarity index 100%\nrename from pkg/h.py\nrename to conftest.py\n",
    "pytest.ini": new_file("pytest.ini", "[pytest]"),
    ".pytest.ini": new_file(".pytest.ini", "[pytest]"),
    "pytest.toml": new_file("sub/pytest.toml", "[pytest]"),
    "tox.ini edited": edit("tox.ini"),
    "noxfile": edit("noxfile.py"),
    "pytest11 entry point": edit("setup.py").replace("+b", "+    entry_points={'pytest11': ['x = pkg.plugin']},"),
    "metadata entry points": new_file("pkg.egg-info/entry_points.txt", "[console_scripts]"),
    # git's own files, however the patch names them
    "git hook": new_file(".git/hooks/post-checkout", "#!/bin/sh", "100755"),
    "git config": edit(".git/config"),
    "git config, other case": edit(".GIT/config"),
    "git info/attributes": new_file(".git/info/attributes", "* filter=x"),
    "nested git dir": new_file("pkg/.git", "gitdir: /tmp/x"),
    "gitattributes": new_file("pkg/.gitattributes", "*.py filter=x"),
    "gitmodules": new_file(".gitmodules"),
    "git path quoted": 'diff --git "a/.git/config" "b/.git/config"\n--- "a/.git/config"\n+++ "b/.git/config"\n@@ -1 +1 @@\n-a\n+b\n',
    "plain diff, Index line": "Index: .git/config\n--- config\n+++ config\n@@ -1 +1 @@\n-a\n+b\n",
    "context diff": "*** a/.git/config\n--- b/.git/config\n***************\n*** 1 ****\n! a\n--- 1 ----\n! b\n",
    "climbs out": "--- a/pkg/../../etc/passwd\n+++ b/pkg/../../etc/passwd\n@@ -1 +1 @@\n-a\n+b\n",
    # interpreter start-up hooks and compiled code
    "sitecustomize": new_file("sitecustomize.py"),
    "usercustomize": new_file("src/usercustomize.py"),
    "pth file": new_file("pkg/zz.pth", "import pkg.evil"),
    "pyc": new_file("pkg/__pycache__/mod.cpython-311.pyc"),
    "legacy pyc": new_file("pkg/mod.pyc"),
    # symlinks, wherever they point
    "symlink out": new_file("pkg/lib", "/usr/lib/python3", "120000"),
    "symlink in": new_file("pkg/alias.py", "../tests/test_x.py", "120000"),
}


@pytest.mark.parametrize("name", sorted(REFUSED))
def test_patches_that_change_what_runs_are_refused(name):
    assert patch_rules.patch_violations(REFUSED[name]), name


def test_the_script_the_test_command_runs_is_the_runner():
    django = ": '>>>>> Start Test Output'\n./tests/runtests.py --verbosity 2 a.b\n: '>>>>> End Test Output'\n"
    sympy = (": '>>>>> Start Test Output'\nPYTHONWARNINGS='ignore::UserWarning' bin/test -C --verbose x.py\n"
             ": '>>>>> End Test Output'\n")
    assert patch_rules.patch_violations(edit("bin/test"), patch_rules.runner_scripts(sympy))
    assert patch_rules.patch_violations(edit("tests/runtests.py"), patch_rules.runner_scripts(django))
    assert not patch_rules.patch_violations(edit("bin/test"), patch_rules.runner_scripts(django))


def test_ordinary_changes_pass():
    ok = (edit("pkg/mod.py") + new_file("pkg/new_module.py") + edit("setup.cfg") + edit("pyproject.toml")
          + edit(".gitignore") + edit("pkg/sub/argparse.py") + edit("argparse.py"))   # an existing module: code
    assert patch_rules.patch_violations(ok) == []


@pytest.mark.parametrize("path, module", [("pytest.py", "pytest"), ("_pytest/__init__.py", "_pytest"),
                                          ("argparse.py", "argparse"), ("json.cpython-311-x86_64-linux-gnu.so", "json"),
                                          ("sitecustomize/__init__.py", "sitecustomize")])
def test_new_modules_that_shadow_the_runner_or_the_stdlib_are_named(path, module):
    """Relative to a folder on sys.path (the harness removes them before the tests run)."""
    assert patch_rules.shadowing(path) == f"a new module that shadows the installed {module!r} ({path})"
    assert patch_rules.shadowing("reproduce.py") is None and patch_rules.shadowing("pkg/argparse.py") is None


def test_test_code_is_told_apart_from_code():
    tests = ["tests/test_x.py", "pkg/tests/helpers.py", "testing/util.py", "pkg/test_y.py", "pkg/y_test.py", "test.py"]
    code = ["pkg/testing_utils.py", "src/_pytest/python.py", "sympy/utilities/randtest.py", "pkg/contest.py"]
    assert all(patch_rules.is_test_path(p) for p in tests) and not any(patch_rules.is_test_path(p) for p in code)


SETUP_CFG = "[metadata]\nname = x\n\n[options]\ninstall_requires =\n    a\n\n[tool:pytest]\nmarkers = slow\n"
PYPROJECT = '[project]\nname = "x"\nversion = "1"\n\n[tool.pytest.ini_options]\nmarkers = ["slow"]\n'


@pytest.mark.parametrize("path, before, after, refused", [
    ("setup.cfg", SETUP_CFG, SETUP_CFG.replace("    a\n", "    a\n    appdirs>=1.4\n"), False),   # pylint-4661's kind
    ("setup.cfg", SETUP_CFG, SETUP_CFG + "addopts = -p pkg.evil\n", True),
    ("setup.cfg", SETUP_CFG, SETUP_CFG.replace("[tool:pytest]\nmarkers = slow\n", ""), True),
    ("pkg/setup.cfg", None, "[pytest]\naddopts = -p pkg.evil\n", True),                  # a new one, deeper
    ("setup.cfg", SETUP_CFG, SETUP_CFG + "\n[tox:tox]\nenvlist = py\n", True),
    ("setup.cfg", SETUP_CFG, "[metadata\nbroken", True),
    ("pyproject.toml", PYPROJECT, PYPROJECT.replace('version = "1"', 'version = "2"'), False),
    ("pyproject.toml", PYPROJECT, PYPROJECT + 'addopts = "--deselect tests/test_x.py::test_a"\n', True),
    ("sub/pyproject.toml", None, '[tool.pytest.ini_options]\naddopts = "-k not_a"\n', True),
    ("pyproject.toml", PYPROJECT, PYPROJECT + '\n[tool.tox]\nlegacy_tox_ini = "x"\n', True),
])
def test_shared_config_may_change_except_its_runner_sections(path, before, after, refused):
    assert bool(patch_rules.runner_config_change(path, before, after)) is refused


def test_no_gold_patch_of_swe_bench_is_refused(data_dir):
    """Every gold patch of SWE-bench Verified (500) and Lite (test, dev) passes the text rules; the only config
    file they touch is pylint-4661's setup.cfg ([options]/[isort], checked above)."""
    import pyarrow.parquet as pq

    seen, config = 0, []
    for name in ("SWE-bench_Verified_test", "SWE-bench_Lite_test", "SWE-bench_Lite_dev"):
        for row in pq.read_table(data_dir / f"{name}.parquet").to_pylist():
            scripts = patch_rules.runner_scripts(row["eval_script"])
            assert patch_rules.patch_violations(row["patch"], scripts) == [], row["instance_id"]
            assert not any(patch_rules.refused_path(p, scripts) for p in patch_rules.patch_paths(row["patch"]))
            config += [(row["instance_id"], p) for p in patch_rules.patch_paths(row["patch"])
                       if p.rsplit("/", 1)[-1] in patch_rules.SHARED_CONFIG]
            seen += 1
    assert seen == 823 and config == [("pylint-dev__pylint-4661", "setup.cfg")]


def _instance(test_cmd: str, parser: str = "parse_log_pytest"):
    return instance_from_row({"instance_id": "o__r-1", "repo": "o/r", "base_commit": "0" * 40, "test_cmd": test_cmd,
                              "FAIL_TO_PASS": ["t.py::a"], "PASS_TO_PASS": ["t.py::b"], "log_parser": parser})


@pytest.mark.parametrize("cmd, parser, applies", [
    ("pytest -rA t.py", "parse_log_pytest", True),
    ("python -m pytest -rA -p no:cacheprovider tests", "parse_log_pytest", True),
    ("PYTHONWARNINGS=x py.test -rA t.py", "parse_log_pytest_v2", True),
    ("pytest -rA tests/test_blueprints.py", "parse_log_flask", True),          # a repository's alias
    ("pytest -rA t.py", "parse_log_sympy", False),
    ("tox --current-env -epy39 -v -- t.py", "parse_log_sphinx", False),       # tox starts pytest itself
    ("./tests/runtests.py --verbosity 2 a", "parse_log_django", False),
    ("pytest -rA a.py; pytest -rA b.py", "parse_log_pytest", False),          # one seal, one session
])
def test_a_seal_is_asked_of_single_direct_pytest_runs(cmd, parser, applies):
    assert seal_applies(_instance(cmd, parser)) is applies


def test_the_seal_confirms_only_what_the_runner_recorded():
    import hashlib
    import hmac
    import json

    inst = _instance("pytest -rA t.py")
    seal = Seal()
    body = json.dumps({"passed": ["t.py::b"], "xfailed": [], "failed": ["t.py::a"], "exitstatus": 1})
    seal.read(f"{hmac.new(seal.key, body.encode(), hashlib.sha256).hexdigest()}\n{body}".encode())
    assert seal.results["passed"] == ["t.py::b"]
    # the log claims both passed (a printed PASSED line): only b is confirmed
    assert unconfirmed_tests(inst, {"t.py::a": "PASSED", "t.py::b": "PASSED"}, seal) == ["t.py::a"]
    forged = Seal()
    forged.read(f"{'0' * 64}\n{body}".encode())
    assert forged.results is None and "forged" in forged.why
    missing = Seal()
    missing.read(None)
    assert missing.results is None and "no seal" in missing.why


def test_the_seal_plugin_is_valid_for_old_pythons():
    """Old SWE-bench environments run Python 3.5: the plugin avoids f-strings and newer syntax."""
    import ast

    src = Seal().plugin_source()
    ast.parse(src, feature_version=(3, 5))
    assert "f\"" not in src and "f'" not in src


@pytest.mark.parametrize("module", ["cwm_envs.swe.patch_rules", "cwm_envs.swe.grading"])
def test_doctests(module):
    import doctest
    import importlib

    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0

