"""The SWE harness end to end on a tiny repository made here: real git, real images, real containers.

The package `calc` has a bug (`add` subtracts); the gold patch fixes it; the test patch adds the failing
test and a new test file. The first test builds the environment and instance images (about a minute on
a fresh machine, seconds once cached); every other test reuses them.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cwm_envs.swe.dataset import instance_from_row

pytestmark = [pytest.mark.docker]

BUGGY = "def add(a, b):\n    return a - b\n\n\ndef sub(a, b):\n    return a - b\n"
FIXED = "def add(a, b):\n    return a + b\n\n\ndef sub(a, b):\n    return a - b\n"
TESTS = ("from calc import add, sub\n\n\ndef test_sub():\n    assert sub(3, 1) == 2\n\n\n"
         "def test_known_broken():\n    assert False, 'broken before and after the fix'\n")
NEW_TEST = "from calc import add\n\n\ndef test_add_more():\n    assert add(2, 2) == 4\n"
F2P = ["tests/test_calc.py::test_add", "tests/test_new.py::test_add_more"]
P2P = ["tests/test_calc.py::test_sub"]
# A pytest plugin that reports every test as passed: what each runner-config attack below tries to load.
PASS_ALL = ("import pytest\n\n\n@pytest.hookimpl(hookwrapper=True)\ndef pytest_runtest_makereport(item, call):\n"
            "    outcome = yield\n    outcome.get_result().outcome = 'passed'\n")
# Code that makes pytest report every test as passed, from inside the process that runs them.
REWRITE_REPORTS = ("\nimport _pytest.reports\n\n_made = _pytest.reports.TestReport.from_item_and_call.__func__\n\n\n"
                   "def _passed(cls, item, call):\n    report = _made(cls, item, call)\n"
                   "    report.outcome, report.longrepr = 'passed', None\n    return report\n\n\n"
                   "_pytest.reports.TestReport.from_item_and_call = classmethod(_passed)\n")
# The log lines a parser would read as "every target test passed".
FAKE_LINES = "".join(f"PASSED {t}\\n" for t in F2P + P2P)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def diff_of(repo: Path, edits: dict[str, str]) -> str:
    """The `git diff` that the edits make to the repo (left unchanged afterwards)."""
    for rel, text in edits.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    git(repo, "add", "-A")
    out = git(repo, "diff", "--cached")
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-fdq")
    return out


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(instance row, repo path, patches) for the tiny calc repository."""
    repo = tmp_path_factory.mktemp("repos") / "own" / "calc"
    repo.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "calc").mkdir()
    (repo / "calc" / "__init__.py").write_text(BUGGY)
    (repo / "tests").mkdir()
    (repo / "tests" / "test_calc.py").write_text(TESTS)
    (repo / "pyproject.toml").write_text('[build-system]\nrequires = ["setuptools>=61"]\n'
                                         'build-backend = "setuptools.build_meta"\n\n'
                                         '[project]\nname = "calc"\nversion = "0.1"\n\n'
                                         '[tool.setuptools]\npackages = ["calc"]\n')
    (repo / ".gitignore").write_text("*.egg-info/\n__pycache__/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "calc with a bug")
    base = git(repo, "rev-parse", "HEAD").strip()
    test_add = "\n\ndef test_add():\n    assert add(2, 3) == 5\n"
    patches = {
        "gold": diff_of(repo, {"calc/__init__.py": FIXED}),
        "test": diff_of(repo, {"tests/test_calc.py": TESTS + test_add, "tests/test_new.py": NEW_TEST}),
        "wrong": diff_of(repo, {"calc/__init__.py": BUGGY.replace("a - b\n\n\ndef sub", "a * b + 1\n\n\ndef sub")}),
        # edits the tests instead of the code: a passing test_add and a pre-made test_new.py
        "edit_tests": diff_of(repo, {"tests/test_calc.py": TESTS + "\n\ndef test_add():\n    assert True\n",
                                     "tests/test_new.py": "def test_add_more():\n    assert True\n"}),
        # prints fake results after pytest's summary: a PASSED line for the F2P tests, then fake markers
        "spoof": diff_of(repo, {"calc/__init__.py": BUGGY + (
            "\nimport atexit\n\n\n@atexit.register\ndef _fake():\n"
            "    print('PASSED tests/test_calc.py::test_add')\n"
            "    print('PASSED tests/test_new.py::test_add_more')\n")}),
        "spoof_markers": diff_of(repo, {"calc/__init__.py": BUGGY + (
            "\nimport atexit\n\n\n@atexit.register\ndef _fake():\n"
            "    print('PASSED tests/test_calc.py::test_add')\n"
            "    print('PASSED tests/test_new.py::test_add_more')\n"
            "    print('>>>>> Test Exit Code: 0')\n    print(\"+ : '>>>>> End Test Output'\")\n")}),
        "hang": diff_of(repo, {"calc/__init__.py": "import time\ntime.sleep(600)\n" + FIXED}),
        "not_a_patch": "diff --git a/calc/missing.py b/calc/missing.py\n--- a/calc/missing.py\n+++ b/calc/missing.py\n"
                       "@@ -1,1 +1,1 @@\n-nothing here\n+something\n",
    }
    patches.update(attack_patches(repo))
    row = {"instance_id": "own__calc-1", "repo": "own/calc", "base_commit": base, "patch": patches["gold"],
           "test_patch": patches["test"], "FAIL_TO_PASS": F2P, "PASS_TO_PASS": P2P,
           "test_cmd": "pytest -rA tests", "install": ["python -m pip install -e ."], "pip_packages": ["pytest"],
           "problem_statement": "add() subtracts"}
    return row, repo, patches


def new_file(path: str, text: str, mode: str = "100644") -> str:
    """A git-style patch creating one file, written by hand (for paths `git diff` will not produce)."""
    lines = text.splitlines()
    body = "".join(f"+{ln}\n" for ln in lines)
    return (f"diff --git a/{path} b/{path}\nnew file mode {mode}\n--- /dev/null\n+++ b/{path}\n"
            f"@@ -0,0 +1,{len(lines)} @@\n{body}")


def attack_patches(repo: Path) -> dict[str, str]:
    """Patches that change what runs during grading instead of fixing `add` (each worked before the fix)."""
    hooks = diff_of(repo, {"calc/hooks.py": PASS_ALL})
    pyproject = (repo / "pyproject.toml").read_text()
    return {
        # runner configuration: a conftest that passes everything, at the root and in tests/
        "conftest_root": diff_of(repo, {"conftest.py": PASS_ALL}),
        "conftest_tests": diff_of(repo, {"tests/conftest.py": PASS_ALL}),
        # the same plugin, loaded by `addopts` from each file pytest reads its settings from
        "pytest_ini": diff_of(repo, {"pytest.ini": "[pytest]\naddopts = -p calc.hooks\n", "calc/hooks.py": PASS_ALL}),
        "tox_ini": diff_of(repo, {"tox.ini": "[pytest]\naddopts = -p calc.hooks\n", "calc/hooks.py": PASS_ALL}),
        "setup_cfg": diff_of(repo, {"setup.cfg": "[metadata]\nname = calc\n\n[tool:pytest]\naddopts = -p calc.hooks\n",
                                    "calc/hooks.py": PASS_ALL}),
        "pyproject": diff_of(repo, {"pyproject.toml": pyproject + '\n[tool.pytest.ini_options]\naddopts = "-p calc.hooks"\n',
                                    "calc/hooks.py": PASS_ALL}),
        "entry_point": diff_of(repo, {"pyproject.toml": pyproject + '\n[project.entry-points.pytest11]\ncwm = "calc.hooks"\n',
                                      "calc/hooks.py": PASS_ALL}),
        # git runs while grading: a hook that drops the conftest in (written by `patch`, which `git apply` refuses)
        "git_hook": hooks + new_file(".git/hooks/post-checkout", "#!/bin/sh\ncp /testbed/calc/hooks.py /testbed/conftest.py",
                                     "100755"),
        "git_hooks_path": hooks + new_file("calc/githooks/post-checkout",
                                           "#!/bin/sh\ncp /testbed/calc/hooks.py /testbed/conftest.py", "100755")
        + "diff --git a/.git/config b/.git/config\n--- a/.git/config\n+++ b/.git/config\n@@ -1,2 +1,4 @@\n [core]\n"
          "+\thooksPath = calc/githooks\n+\tfsmonitor = calc/githooks/post-checkout\n \trepositoryformatversion = 0\n",
        "gitattributes": diff_of(repo, {".gitattributes": "tests/*.py filter=cwm\n"}),
        # interpreter start-up hooks and compiled code
        "sitecustomize": diff_of(repo, {"sitecustomize.py": "import calc.hooks\n", "calc/cwm.pth": "import calc.hooks\n"}),
        "pyc": new_file("calc/__pycache__/__init__.cpython-311.pyc", "not really bytecode"),
        # a symlink out of the tree (into the environment's site-packages)
        "symlink_out": "diff --git a/calc/site b/calc/site\nnew file mode 120000\n--- /dev/null\n+++ b/calc/site\n"
                       "@@ -0,0 +1 @@\n+/opt/miniconda3/envs/testbed/lib\n\\ No newline at end of file\n",
        # modules that shadow the runner or what it imports (`python -m pytest` puts the root first on sys.path)
        "shadow_pytest": diff_of(repo, {"pytest.py": f"import sys\nsys.stdout.write('{FAKE_LINES}')\nsys.exit(0)\n"}),
        "shadow_stdlib": diff_of(repo, {"argparse.py": f"import os\nos.write(1, b'{FAKE_LINES}')\nos._exit(0)\n"}),
        "shadow_installed": diff_of(repo, {"wheel.py": "raise SystemExit(0)\n"}),
        # code under test that prints the runner's PASSED lines past pytest's capture, then ends the run
        "early_exit": diff_of(repo, {"calc/__init__.py": BUGGY + (
            "\nimport os\n\n_out = os.open('/proc/%d/fd/1' % os.getppid(), os.O_WRONLY)\n"
            f"os.write(_out, b'{FAKE_LINES}1 passed in 0.01s\\n')\nos._exit(0)\n")}),
        # code under test that rewrites pytest's reports from inside the test process: every test "passes"
        "rewrite_reports": diff_of(repo, {"calc/__init__.py": BUGGY + REWRITE_REPORTS}),
        # a setup.py that, when the eval reinstalls the package, appends the same rewrite to pytest's own code
        "setup_py_library": diff_of(repo, {"setup.py": (
            "import os, sysconfig\nfrom setuptools import setup\n\n"
            "with open(os.path.join(sysconfig.get_paths()['purelib'], '_pytest', 'reports.py'), 'a') as f:\n"
            f"    f.write({REWRITE_REPORTS!r})\nsetup()\n")}),
        # a setup.py that, run as root by the reinstall, writes what every process or interpreter loads at
        # start outside the tree and the libraries: Debian's stdlib sitecustomize.py is a link into /etc
        "setup_py_system": diff_of(repo, {"calc/hooks.py": PASS_ALL, "setup.py": (
            "import os, sysconfig\nfrom setuptools import setup\n\n"
            "with open(os.path.join(sysconfig.get_paths()['stdlib'], 'sitecustomize.py'), 'a') as f:\n"
            "    f.write('\\nimport os\\nos.environ[\"PYTEST_ADDOPTS\"] = os.environ.get(\"PYTEST_ADDOPTS\", \"\") + \" -p calc.hooks\"\\n')\n"
            "open('/etc/ld.so.preload', 'a').close()\nsetup()\n")}),
        # a fix that lives in a new test file (collected, so it runs): test code is never the model's to change
        "fix_in_test_file": diff_of(repo, {"tests/test_zz_fix.py": "import calc\n\n"
                                           "calc.add.__code__ = (lambda a, b: a + b).__code__\n"}),
        # a setup.py that, when the eval script reinstalls the package (as most SWE-bench ones do), drops a
        # conftest, a .pth that loads the plugin at every start of Python, and a fake `pytest` command
        "setup_py": diff_of(repo, {"calc/hooks.py": PASS_ALL, "setup.py": (
            "import os, sysconfig\nfrom setuptools import setup\n\npaths = sysconfig.get_paths()\n"
            "with open('/testbed/conftest.py', 'w') as f:\n    f.write('from calc.hooks import *\\n')\n"
            "with open(os.path.join(paths['purelib'], 'zz_cwm.pth'), 'w') as f:\n"
            "    f.write('import os; os.environ[\"PYTEST_ADDOPTS\"] = \"-p calc.hooks\"\\n')\n"
            "with open(os.path.join(paths['scripts'], 'pytest'), 'w') as f:\n"
            f"    f.write(\"#!/bin/sh\\nprintf '{FAKE_LINES}'\\n\")\nsetup()\n")}),
        # a setup.py that drops a finder of its own beside setuptools' ones, loaded by the .pth line they use
        "setup_py_finder": diff_of(repo, {"calc/hooks.py": PASS_ALL, "setup.py": (
            "import os, sysconfig\nfrom setuptools import setup\n\nlib = sysconfig.get_paths()['purelib']\n"
            "with open(os.path.join(lib, '__editable___zz_finder.py'), 'w') as f:\n"
            "    f.write('import os\\nos.environ[\"PYTEST_ADDOPTS\"] = os.environ.get(\"PYTEST_ADDOPTS\", \"\") + "
            "\" -p calc.hooks\"\\ndef install():\\n    pass\\n')\n"
            "with open(os.path.join(lib, '__editable__.zz.pth'), 'w') as f:\n"
            "    f.write('import __editable___zz_finder; __editable___zz_finder.install()\\n')\nsetup()\n")}),
        # legitimate: the fix plus metadata, an ignore rule, a helper module and a test of the model's own
        "gold_plus_extras": diff_of(repo, {"calc/__init__.py": FIXED, "calc/util.py": "ANSWER = 42\n",
                                           "pyproject.toml": pyproject.replace('version = "0.1"', 'version = "0.2"'),
                                           ".gitignore": "*.egg-info/\n__pycache__/\n.venv/\n",
                                           "tests/test_mine.py": "def test_mine():\n    assert False\n"}),
    }


@pytest.fixture(scope="module")
def image(tiny, docker_engine):
    from cwm_envs.swe.images import build_instance_image

    row, repo, _ = tiny
    tag = build_instance_image(instance_from_row(row), repo.parent.parent)
    yield tag
    import docker  # the repo is new each run (a new base commit): drop its image

    docker.from_env().images.remove(tag, force=True)


def _grade(tiny, image, patch_name: str, timeout: float = 120.0) -> dict:
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.harness import grade

    row, _, patches = tiny
    inst = instance_from_row(row)
    with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
        return grade(inst, sb, patches.get(patch_name, patch_name), timeout=timeout)[inst.instance_id]


def test_image_has_the_repo_at_base_commit_and_the_conda_shim(tiny, image):
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox

    row, _, _ = tiny
    with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
        res = sb.run("source /opt/miniconda3/bin/activate && conda activate testbed && "
                     "git log --format=%H -n 2 && git remote && python -c 'import calc, sys; print(calc.__file__)' "
                     "&& pip --version && git status --porcelain", timeout=60)
        net = sb.run("python3 -c \"import socket; socket.create_connection(('1.1.1.1', 53), 2)\"", timeout=30)
    lines = res.stdout.split()
    assert res.exit_code == 0, res.stderr
    assert lines[1] == row["base_commit"]                  # HEAD~1 is the base; HEAD is SWE-bench's setup commit
    assert "/testbed/calc/__init__.py" in res.stdout and "/opt/miniconda3/envs/testbed" in res.stdout
    assert net.exit_code != 0                              # no network while grading


def test_gold_patch_resolves(tiny, image):
    rep = _grade(tiny, image, "gold")
    assert rep["resolved"] and rep["patch_successfully_applied"] and rep["seal"] == "verified"
    assert sorted(rep["tests_status"]["FAIL_TO_PASS"]["success"]) == sorted(F2P)
    assert rep["tests_status"]["PASS_TO_PASS"]["success"] == P2P


def test_empty_wrong_and_unappliable_patches_do_not_resolve(tiny, image):
    assert _grade(tiny, image, "")["resolved"] is False
    wrong = _grade(tiny, image, "wrong")
    assert wrong["patch_successfully_applied"] and not wrong["resolved"]
    assert sorted(wrong["tests_status"]["FAIL_TO_PASS"]["failure"]) == sorted(F2P)
    bad = _grade(tiny, image, "not_a_patch")
    assert not bad["patch_successfully_applied"] and not bad["resolved"] and "patch" in bad["apply_log"]


def test_a_patch_that_edits_the_tests_does_not_count(tiny, image):
    rep = _grade(tiny, image, "edit_tests")
    assert not rep["resolved"]
    assert sorted(rep["tests_reset"]) == ["tests/test_calc.py", "tests/test_new.py"]


@pytest.mark.parametrize("name", ["spoof", "spoof_markers"])
def test_code_printing_fake_passed_lines_does_not_resolve(tiny, image, name):
    rep = _grade(tiny, image, name)
    assert not rep["resolved"]
    assert rep.get("conflicting_tests") or rep.get("guard")


# Refused on the patch's text alone: nothing of it is applied (`patch` would have written into .git/).
REFUSED_BEFORE_APPLY = {"conftest_root": "test-runner configuration", "conftest_tests": "test-runner configuration",
                        "pytest_ini": "test-runner configuration", "tox_ini": "test-runner configuration",
                        "entry_point": "pytest11", "git_hook": "git itself", "git_hooks_path": "git itself",
                        "gitattributes": "git configuration", "sitecustomize": "start-up hook",
                        "pyc": "compiled Python", "symlink_out": "a symlink"}


def test_patches_that_change_what_runs_are_refused_before_they_touch_the_tree(tiny, image):
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.harness import grade

    row, _, patches = tiny
    inst = instance_from_row(row)
    with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:      # one container: nothing may change it
        for name, why in REFUSED_BEFORE_APPLY.items():
            rep = grade(inst, sb, patches[name], timeout=120)[inst.instance_id]
            assert not rep["resolved"] and not rep["patch_successfully_applied"], name
            assert any(why in r for r in rep["refused"]), (name, rep["refused"])
        res = sb.run("git status --porcelain -uall; ls .git/hooks | grep -v sample; git config --get core.hooksPath",
                     timeout=60)
    assert res.stdout == ""                    # no file written, no hook, no setting


@pytest.mark.parametrize("name, why", [("setup_cfg", "setup.cfg: its test-runner sections change"),
                                       ("pyproject", "pyproject.toml: its test-runner sections change")])
def test_patches_whose_applied_files_change_the_runner_are_refused(tiny, image, name, why):
    rep = _grade(tiny, image, name)
    assert not rep["resolved"] and not rep["patch_successfully_applied"]
    assert any(why in r for r in rep["refused"]), rep["refused"]


def test_new_modules_that_shadow_installed_ones_are_removed(tiny, image):
    """With `python -m pytest` the root comes first on sys.path: a `pytest.py` there is the runner."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.harness import grade

    row, _, patches = tiny
    inst = instance_from_row({**row, "test_cmd": "python -m pytest -rA tests"})
    for name, module in (("shadow_pytest", "pytest.py"), ("shadow_stdlib", "argparse.py"), ("shadow_installed", "wheel.py")):
        with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
            rep = grade(inst, sb, patches[name], timeout=120)[inst.instance_id]
        assert not rep["resolved"] and rep["seal"] == "verified", name
        assert rep["removed"] == [f"{module}: a new module that shadows the installed '{module[:-3]}' ({module})"]
        assert sorted(rep["tests_status"]["FAIL_TO_PASS"]["failure"]) == sorted(F2P)


def test_git_runs_without_hooks_while_grading(tiny, image):
    """Even a hook already in the container (the image's, say) never runs: every git of the grader and of
    the eval script runs with core.hooksPath=/dev/null and no fsmonitor."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.harness import grade

    row, _, patches = tiny
    inst = instance_from_row(row)
    hook = "#!/bin/sh\necho ran >> /tmp/hook-ran\n"
    with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
        for name in ("post-checkout", "post-applypatch", "pre-commit", "fsmonitor"):
            sb.write_file(f"/testbed/.git/hooks/{name}", hook)
        sb.run("chmod +x .git/hooks/* && git config core.fsmonitor .git/hooks/fsmonitor", timeout=30)
        rep = grade(inst, sb, patches["gold"], timeout=120)[inst.instance_id]
        ran = sb.run("cat /tmp/hook-ran", timeout=30)
    assert rep["resolved"] and ran.exit_code != 0, ran.stdout


def test_a_run_that_ends_early_cannot_report_tests_as_passed(tiny, image):
    """The code under test prints every target test's PASSED line past pytest's capture, then os._exit(0)s:
    a clean log with exit status 0. The grader's seal never came, so nothing counts."""
    rep = _grade(tiny, image, "early_exit")
    assert not rep["resolved"] and "no seal" in rep["guard"]


def test_code_that_rewrites_pytest_from_inside_does_not_resolve(tiny, image):
    """The log and the runner's own reports say every test passed; the seal saw pytest's machinery replaced."""
    rep = _grade(tiny, image, "rewrite_reports")
    assert not rep["resolved"] and "replaced pytest's own machinery" in rep["guard"]


# What Verified's oldest pytest environments pin (astropy 1.3: pytest 3.3.1, before `_pytest.reports` existed).
OLD_PYTEST = ["pytest==3.3.1", "pluggy==0.6.0", "py==1.5.4", "attrs==19.1.0", "six==1.16.0"]
OLD_RUNNER = {"test_cmd": "pytest -rA -vv -o console_output_style=classic --tb=no tests",   # astropy's, as then
              "log_parser": "parse_log_astropy"}
# pytest 3.x's own way to the same attack: its TestReport lives in `_pytest.runner`.
REWRITE_OLD_REPORTS = ("\nimport _pytest.runner\n\n_init = _pytest.runner.TestReport.__init__\n\n\n"
                       "def _passed(self, *args, **kwargs):\n    _init(self, *args, **kwargs)\n"
                       "    self.outcome, self.longrepr = 'passed', None\n\n\n"
                       "_pytest.runner.TestReport.__init__ = _passed\n")


@pytest.mark.slow
def test_the_seal_works_on_old_pytest_and_still_sees_tampering(tiny, docker_engine):
    """The seal plugin loads and verifies on pytest 3.x (the gold patch resolves), and code that rewrites
    that pytest's reports is still caught."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.harness import grade
    from cwm_envs.swe.images import build_instance_image

    row, repo, patches = tiny
    inst = instance_from_row({**row, "instance_id": "own__calc-oldpytest", "pip_packages": OLD_PYTEST,
                            "python": "3.9", **OLD_RUNNER})
    rewrite = diff_of(repo, {"calc/__init__.py": BUGGY + REWRITE_OLD_REPORTS})
    tag = build_instance_image(inst, repo.parent.parent)
    try:
        reps = {}
        for name, patch in (("gold", patches["gold"]), ("rewrite", rewrite)):
            with DockerSandbox(tag, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
                reps[name] = grade(inst, sb, patch, timeout=120)[inst.instance_id]
    finally:
        import docker

        docker.from_env().images.remove(tag, force=True)
    assert reps["gold"]["resolved"] and reps["gold"]["seal"] == "verified", reps["gold"]
    assert not reps["rewrite"]["resolved"] and "replaced pytest's own machinery" in reps["rewrite"]["guard"]


def test_test_code_the_patch_adds_or_edits_is_put_back(tiny, image):
    rep = _grade(tiny, image, "fix_in_test_file")            # the "fix" lives in a new, collected test file
    assert not rep["resolved"] and rep["tests_reset"] == ["tests/test_zz_fix.py"]
    assert sorted(rep["tests_status"]["FAIL_TO_PASS"]["failure"]) == sorted(F2P)
    ok = _grade(tiny, image, "gold_plus_extras")             # metadata, ignore rules, helpers, own tests: fine
    assert ok["resolved"] and ok["seal"] == "verified" and ok["tests_reset"] == ["tests/test_mine.py"]


def test_the_patchs_install_step_cannot_change_what_runs(tiny, image):
    """SWE-bench eval scripts reinstall the package, running the patch's setup.py as root before the tests.
    What it changed is checked between the script's setup and its tests: the gold patch still resolves."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.dataset import make_eval_script
    from cwm_envs.swe.harness import grade

    row, _, patches = tiny
    script = make_eval_script(row["base_commit"], row["test_patch"], row["test_cmd"], ["tests/test_calc.py", "tests/test_new.py"])
    inst = instance_from_row({**row, "eval_script": script.replace("cd /testbed\n", "cd /testbed\npython -m pip install -e .\n")})
    reports = {}
    for name in ("gold", "gold_plus_extras", "setup_py", "setup_py_library", "setup_py_system", "setup_py_finder"):
        with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
            reports[name] = grade(inst, sb, patches[name], timeout=300)[inst.instance_id]
    assert reports["gold"]["resolved"] and reports["gold"]["seal"] == "verified"
    # a new version renames setuptools' finder (xarray's setuptools_scm versions do, on a dirty tree): still fine
    assert reports["gold_plus_extras"]["resolved"], reports["gold_plus_extras"].get("refused")
    finder = "\n".join(reports["setup_py_finder"].get("refused", []))
    assert not reports["setup_py_finder"]["resolved"] and "editable finder unlike the environment's own" in finder
    refused = "\n".join(reports["setup_py"]["refused"])
    assert not reports["setup_py"]["resolved"]
    for why in ("conftest.py: test-runner configuration", "zz_cwm.pth: a .pth line that runs code",
                "bin/pytest: replaced"):
        assert why in refused, refused
    library = "\n".join(reports["setup_py_library"]["refused"])
    assert not reports["setup_py_library"]["resolved"]
    assert "_pytest/reports.py: an installed library's code changed during the setup" in library, library
    system = "\n".join(reports["setup_py_system"]["refused"])
    assert not reports["setup_py_system"]["resolved"]
    for why in ("sitecustomize.py: an interpreter start-up hook", "/etc/ld.so.preload: system configuration"):
        assert why in system, system


def test_a_reinstall_of_the_project_itself_is_not_a_library_change(tiny, image):
    """requests' eval scripts reinstall the package non-editable (`pip install .`), rewriting its copy in
    site-packages: the gold patch resolves. A library's code is still refused, also when the patch adds a
    file of the same name to the tree to pass it off as the project's own."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.dataset import make_eval_script
    from cwm_envs.swe.harness import grade
    from cwm_envs.swe.images import build_instance_image

    row, repo, patches = tiny
    script = make_eval_script(row["base_commit"], row["test_patch"], row["test_cmd"], ["tests/test_calc.py", "tests/test_new.py"])
    inst = instance_from_row({**row, "instance_id": "own__calc-copy", "install": ["python -m pip install ."],
                              "eval_script": script.replace("cd /testbed\n", "cd /testbed\npython -m pip install .\n")})
    disguised = patches["setup_py_library"] + new_file("lib/_pytest/reports.py", "# mine")
    tag = build_instance_image(inst, repo.parent.parent)
    try:
        reports = {}
        for name, patch in (("gold", patches["gold"]), ("library", patches["setup_py_library"]), ("disguised", disguised)):
            with DockerSandbox(tag, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
                reports[name] = grade(inst, sb, patch, timeout=300)[inst.instance_id]
    finally:
        import docker

        docker.from_env().images.remove(tag, force=True)
    assert reports["gold"]["resolved"] and reports["gold"]["seal"] == "verified", reports["gold"]
    for name in ("library", "disguised"):
        refused = "\n".join(reports[name].get("refused", []))
        assert not reports[name]["resolved"]
        assert "site-packages/_pytest/reports.py: an installed library's code changed" in refused, (name, refused)


def test_cli_eval_gold_then_resume_then_predictions(tiny, image, tmp_path, capsys):
    from cwm_envs.cli import main

    row, repo, patches = tiny
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "out"
    args = ["swe", "eval", "--dataset", str(data), "--repos", str(repo.parent.parent)]
    assert main(args + ["--gold", "--out", str(out)]) == 0
    assert "resolved 1/1" in capsys.readouterr().out
    summary = json.loads((out / "gold.cwm.json").read_text())
    assert summary["resolved_ids"] == ["own__calc-1"] and summary["schema_version"] == 2
    logs = out / "logs" / "own__calc-1"
    assert {"report.json", "test_output.txt", "patch.diff", "eval.sh"} <= {p.name for p in logs.iterdir()}
    mtime = (logs / "report.json").stat().st_mtime
    assert main(args + ["--gold", "--out", str(out)]) == 0              # resumable: nothing is run again
    assert "resolved 1/1" in capsys.readouterr().out
    assert (logs / "report.json").stat().st_mtime == mtime
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": "own__calc-1", "model_patch": "", "model_name_or_path": "m"}) + "\n")
    assert main(args + ["--predictions", str(preds), "--out", str(tmp_path / "o2")]) == 0
    assert "resolved 0/1" in capsys.readouterr().out and (tmp_path / "o2" / "m.cwm.json").exists()
    # the same grader as the env's: a patch that ends the run after printing PASSED lines resolves nothing
    preds.write_text(json.dumps({"instance_id": "own__calc-1", "model_patch": patches["early_exit"],
                                 "model_name_or_path": "m"}) + "\n")
    assert main(args + ["--predictions", str(preds), "--out", str(tmp_path / "o4")]) == 0
    assert "resolved 0/1" in capsys.readouterr().out
    report = json.loads((tmp_path / "o4" / "logs" / "own__calc-1" / "report.json").read_text())["own__calc-1"]
    assert "no seal" in report["guard"] and "PASSED tests/test_calc.py::test_add" in \
        (tmp_path / "o4" / "logs" / "own__calc-1" / "test_output.txt").read_text()
    bad = subprocess.run([sys.executable, "-m", "cwm_envs.cli", *args, "--out", str(tmp_path / "o3")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "either --predictions FILE or --gold" in bad.stderr


def test_infra_failures_are_retried_once_and_never_scored(tiny, image, tmp_path):
    from cwm_envs.swe.run import run_evaluation

    row, repo, patches = tiny
    hang = instance_from_row(row)
    broken = instance_from_row({**row, "instance_id": "own__calc-2", "install": ["exit 3"]})   # image cannot build
    preds = {"own__calc-1": {"instance_id": "own__calc-1", "model_patch": patches["hang"], "model_name_or_path": "m"},
             "own__calc-2": {"instance_id": "own__calc-2", "model_patch": patches["gold"], "model_name_or_path": "m"}}
    out = run_evaluation([hang, broken], preds, repos_dir=repo.parent.parent, out_dir=tmp_path, timeout=2)
    s, res = out["summary"], out["results"]
    assert s["error_ids"] == ["own__calc-1", "own__calc-2"] and s["unresolved_ids"] == [] and s["resolved_ids"] == []
    assert res["own__calc-1"].attempts == 2 and "EvalTimeout" in res["own__calc-1"].error
    assert res["own__calc-2"].attempts == 2 and "docker build" in res["own__calc-2"].error
    assert not (tmp_path / "logs" / "own__calc-1" / "report.json").exists()      # a rerun will try again
    _assert_no_containers_of(os.getpid())


def _assert_no_containers_of(pid: int) -> None:
    import docker

    client = docker.from_env()
    left = client.containers.list(all=True, filters={"label": f"cwm-envs.owner-pid={pid}"})
    assert left == [], [c.name for c in left]


def test_sigterm_mid_run_leaves_no_containers(tiny, image, tmp_path):
    row, repo, patches = tiny
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps(row) + "\n")
    preds = tmp_path / "preds.jsonl"
    preds.write_text(json.dumps({"instance_id": "own__calc-1", "model_patch": patches["hang"]}) + "\n")
    proc = subprocess.Popen([sys.executable, "-m", "cwm_envs.cli", "swe", "eval", "--dataset", str(data),
                             "--repos", str(repo.parent.parent), "--predictions", str(preds), "--out",
                             str(tmp_path / "out")], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    import docker

    client = docker.from_env()
    deadline = time.monotonic() + 120
    while not client.containers.list(filters={"label": f"cwm-envs.owner-pid={proc.pid}"}):
        assert time.monotonic() < deadline and proc.poll() is None, "the run never started a container"
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert proc.returncode != 0
    _assert_no_containers_of(proc.pid)
