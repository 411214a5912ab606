"""Resolving old environments as of their date, and classifying why an instance never reached grading.

The resolver tests ask the package index for real (uv pip compile); they skip when it cannot be reached.
"""
from __future__ import annotations

import os
import subprocess

import pytest

from cwm_envs.swe.dataset import instance_from_row
from cwm_envs.swe.failures import CLASSES, CompileError, MissingDistribution, ResolverConflict, classify
from cwm_envs.swe.images import _safe_edits, dropped_needed_by_tests, install_extras
from cwm_envs.swe.resolve import iso_date, parse_lock, req_name, resolve
from cwm_envs.swe.specs import env_spec_for, pick_suite, split_pre_install


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """The package index answers (else skip), and locks are cached in a fresh directory."""
    import os

    from cwm_envs.swe.resolve import uv_binary

    proc = subprocess.run([uv_binary(), "pip", "compile", "-", "--quiet", "--no-header", "--python-version", "3.9"],
                          input="six==1.16.0\n", capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"no package index reachable: {proc.stderr.strip()[-200:]}")
    old = os.environ.get("CWM_CACHE")
    os.environ["CWM_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if old is None:
        os.environ.pop("CWM_CACHE", None)
    else:
        os.environ["CWM_CACHE"] = old


def test_a_plugin_resolves_as_of_the_instance_date_not_today(index):
    # today's sphinxcontrib-applehelp needs Sphinx >= 5; in May 2020 it was 1.0.2, which works with Sphinx 3
    lock = resolve(["sphinxcontrib-applehelp", "docutils"], python="3.8", glibc=31, date="2020-05-01T00:00:00Z")
    assert lock.versions()["sphinxcontrib-applehelp"] == "1.0.2"
    assert lock.versions()["docutils"] == "0.16"
    assert any("resolved as of 2020-05-01" in n and "sphinxcontrib-applehelp==1.0.2" in n for n in lock.notes)


def test_a_date_before_the_python_had_wheels_is_raised_to_its_floor(index):
    # an instance of 2013 runs on Python 3.9 here: pytest of 2013 (2.3, no `pytest` command) would not do
    lock = resolve(["pytest"], python="3.9", glibc=31, date="2013-01-01T00:00:00Z")
    assert lock.cutoff == "2021-01-01T00:00:00Z"
    assert lock.versions()["pytest"].startswith("6.2.")
    assert any("before Python 3.9 had wheels" in n for n in lock.notes)


def test_a_pin_newer_than_the_date_moves_the_cutoff_and_says_so(index):
    lock = resolve(["tox==4.16.0", "Jinja2==3.0.3"], python="3.9", glibc=31, date="2020-05-01T00:00:00Z")
    assert lock.versions()["tox"] == "4.16.0" and lock.versions()["jinja2"] == "3.0.3"
    assert lock.cutoff.startswith("2024-07-06")      # + a few days for late wheels
    assert any("tox==4.16.0 was published 2024-07-03" in n and "cutoff moved" in n for n in lock.notes)


def test_a_lower_bound_newer_than_the_date_moves_that_package_alone(index):
    # requests 2.26's code (base commit of 2021-07) with an issue filed in 2020: charset-normalizer>=2 came later
    lock = resolve(["charset-normalizer>=2.0.0,<2.1", "idna"], python="3.9", glibc=31, date="2021-01-01")
    assert lock.versions()["charset-normalizer"].startswith("2.0.")
    assert lock.versions()["idna"] == "2.10"                    # the others stay as of the date
    assert any("needs a charset-normalizer newer than 2021-01-01" in n for n in lock.notes)


def test_a_requirement_missing_from_the_index_is_dropped_and_named(index):
    lock = resolve(["six", "cwm-no-such-package-on-any-index"], python="3.9", glibc=31, date="2021-01-01")
    assert lock.dropped == ("cwm-no-such-package-on-any-index",)
    assert "six" in lock.versions()
    assert any("dropped: cwm-no-such-package-on-any-index" in n for n in lock.notes)


def test_a_pin_with_no_wheel_for_the_python_is_dropped_not_compiled_on_the_host(index):
    # numpy 1.16 predates Python 3.9: no cp39 wheel, and the host never builds the numeric stack from source
    lock = resolve(["numpy==1.16.0", "six"], python="3.9", glibc=31, date="2021-01-01")
    assert lock.dropped == ("numpy==1.16.0",) and "numpy" not in lock.versions()
    assert any("no usable wheel for Python 3.9" in n for n in lock.notes)


def test_an_unpinned_sdist_the_host_cannot_read_moves_to_a_later_release(index):
    # xarray's environment.yml asks for bottleneck; as of May 2021 that is 1.3.2, whose build pins a numpy with
    # no wheel for the host's Python. It was dropped, and xarray's bottleneck tests failed for want of it.
    # scitools-iris has no release the host can read for long after: moved a bounded way, then dropped
    lock = resolve(["bottleneck", "scitools-iris"], python="3.9", glibc=31, date="2021-05-04")
    version = tuple(int(p) for p in lock.versions()["bottleneck"].split(".")[:3])
    assert lock.dropped == ("scitools-iris",) and version > (1, 3, 2)
    assert any("bottleneck could not be built on the host as of 2021-05-04" in n for n in lock.notes), lock.notes


def test_unsatisfiable_pins_are_a_resolver_conflict(index):
    with pytest.raises(ResolverConflict) as err:
        resolve(["flask==2.3.0", "werkzeug==2.0.0"], python="3.9", glibc=31, date="2023-06-01")
    assert classify(err.value) == "resolver conflict"
    assert "werkzeug" in str(err.value)


def test_a_pin_whose_wheels_came_after_its_first_upload_still_resolves(index):
    # contourpy 1.1.0: its first file is of 2023-06-13, its cp39 manylinux wheels of later
    lock = resolve(["contourpy==1.1.0", "numpy"], python="3.9", glibc=31, date="2022-12-19T00:00:00Z")
    assert lock.versions()["contourpy"] == "1.1.0"


def test_preferred_pins_of_an_earlier_layer_are_kept_when_they_fit(index):
    lock = resolve(["jinja2>=2.3"], python="3.9", glibc=31, date="2020-05-01", prefer=["jinja2==3.0.3", "markupsafe==2.1.5"])
    assert lock.versions()["jinja2"] == "3.0.3"


def test_lock_parsing_and_dates():
    assert parse_lock("Foo==1.0 ; python_version < '3.8'\n./testbed\n# x\nbar==2\n") == ("foo==1.0", "bar==2")
    assert iso_date("2023-07-30T08:01:02Z") == "2023-07-30T08:01:02Z"
    assert iso_date("2023-07-30T10:01:02+02:00") == "2023-07-30T08:01:02Z"
    assert req_name("Jinja2[i18n]<3.0 ; python_version>'3'") == "jinja2"
    from cwm_envs.errors import UsageError

    with pytest.raises(UsageError):
        iso_date("yesterday")


@pytest.mark.parametrize("text, kind", [
    ("ResolverConflict: requirements as of 2020-01-01: No solution found when resolving dependencies", "resolver conflict"),
    ("InfraError: pip download failed: ERROR: No matching distribution found for numpy==1.16.0", "missing distribution"),
    ("InfraError: docker build x failed: error: command '/usr/bin/gcc' failed with exit code 1", "compile error"),
    ("InfraError: docker build y failed: fatal error: Python.h: No such file or directory", "compile error"),
    ("EvalTimeout: sympy__sympy-1: the eval script ran past 1800 s", "eval timeout"),
    ("SandboxError: container vanished", "other"),
])
def test_failures_are_classified(text, kind):
    assert classify(text) == kind
    assert kind in CLASSES


def test_typed_failures_classify_by_their_kind():
    assert classify(MissingDistribution("x")) == "missing distribution"
    assert classify(CompileError("x")) == "compile error"
    assert classify(None) == "other"


def test_python_versions_debian_lacks_use_the_nearest_and_say_so():
    assert pick_suite("3.9")[:2] == ("3.9", "bullseye")
    python, suite, notes = pick_suite("3.6")
    assert (python, suite) == ("3.9", "bullseye") and "3.6" in notes[0]
    # 3.10 is as near to 3.9 as to 3.11: the older one, whose wheels the spec's pins of the time had
    assert pick_suite("3.10")[:2] == ("3.9", "bullseye")


def test_pre_install_apt_steps_become_the_tools_layer_and_downloads_are_skipped():
    steps = ("apt-get -y update && apt-get install -y imagemagick texlive cm-super",
             'wget -O "$QHULL_TAR" "$QHULL_URL"', "sed -i 's/pytest/pytest -rA/' tox.ini")
    keep, apt, notes = split_pre_install(steps)
    assert keep == ("sed -i 's/pytest/pytest -rA/' tox.ini",)
    assert apt == ("imagemagick",)
    assert any("texlive" in n for n in notes) and any("wget" in n for n in notes)


def test_only_plain_file_edits_of_pre_install_run_on_the_host():
    safe = "grep -q 'a>=2' setup.py && sed -i 's/a>=2/a>=2,<3/' setup.py || sed -i 's/a/a<3/' setup.py"
    assert _safe_edits((safe,)) == [safe]
    for hostile in ("sed -i s/a/b/ f; rm -rf /", "sed -i s/a/b/ f && curl x | sh", "sed s/a/b/ f > /etc/x",
                    "python -c 'import os'", "sed -i s/a/b/ $(touch /tmp/pwned)"):
        assert _safe_edits((hostile,)) == [], hostile


def test_extras_of_the_install_command():
    assert install_extras(("python -m pip install -e .[test] --verbose",)) == "[test]"
    assert install_extras(("python -m pip install -e .",)) == ""
    assert install_extras(("python -m pip install -v --no-use-pep517 --no-build-isolation -e .",)) == ""


def test_a_dropped_package_the_tests_import_is_named():
    from cwm_envs.swe.dataset import instance_from_row

    patch = ("diff --git a/tests/test_x.py b/tests/test_x.py\n--- a/tests/test_x.py\n+++ b/tests/test_x.py\n"
             "@@ -1 +1,4 @@\n import os\n+import netCDF4\n+def test_x():\n+    import cfgrib\n")
    inst = instance_from_row({"instance_id": "a__b-1", "repo": "a/b", "base_commit": "0" * 40, "test_patch": patch,
                              "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]", "test_cmd": "pytest"})
    # a top-level import is a need; one inside a test (guarded by a skip marker, as xarray does) is not
    assert dropped_needed_by_tests(inst, ".", ["netCDF4>=1.5", "cfgrib"]) == ["netCDF4>=1.5"]


def test_the_spec_of_a_version_carries_its_date_and_tools_packages():
    spec = env_spec_for("sphinx-doc/sphinx", "7.2", date="2023-08-01T00:00:00Z")
    assert spec.date == "2023-08-01T00:00:00Z"
    assert spec.apt_packages == ("graphviz",)
    assert all("apt-get" not in step for step in spec.pre_install)


def test_without_a_clone_requirement_files_come_from_the_release_sdist(index):
    spec = env_spec_for("pallets/flask", "2.3", date="2023-03-01T00:00:00Z")
    assert any("read from the first sdist of flask 2.3.*" in n for n in spec.notes)
    assert spec.date >= "2023-03-01"                     # never before the sdist's own files


def test_a_row_without_created_at_resolves_as_of_its_base_commit_not_today(tmp_path):
    from cwm_envs.swe.specs import env_spec

    repo = tmp_path / "repo"
    repo.mkdir()
    when = {"GIT_AUTHOR_DATE": "2021-06-01T12:00:00Z", "GIT_COMMITTER_DATE": "2021-06-01T12:00:00Z"}
    env = {**os.environ, **when, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@e"}
    run = dict(cwd=repo, check=True, capture_output=True, env=env)
    subprocess.run(["git", "init", "-q"], **run)
    (repo / "a.py").write_text("x = 1\n")
    subprocess.run(["git", "add", "a.py"], **run)
    subprocess.run(["git", "commit", "-qm", "a"], **run)
    base = subprocess.run(["git", "rev-parse", "HEAD"], **run, text=True).stdout.strip()
    row = {"instance_id": "own__a-1", "repo": "own/a", "base_commit": base, "FAIL_TO_PASS": "[]",
           "PASS_TO_PASS": "[]", "test_cmd": "pytest -rA", "pip_packages": ["pytest"]}
    spec = env_spec(instance_from_row(row), repo)
    assert iso_date(spec.date) == "2021-06-01T12:00:00Z"
    assert any("base commit's date, 2021-06-01" in n for n in spec.notes)
    dated = env_spec(instance_from_row({**row, "created_at": "2022-02-02T00:00:00Z"}), repo)
    assert dated.date == "2022-02-02T00:00:00Z"          # the row's own date wins when it has one
