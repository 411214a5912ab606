"""Official images from a registry, repositories cloned into the cache, `cwm swe validate` and `prune`.

The registry is Debian's `docker-registry`, started here on loopback; the "official" image in it is the tiny
calc instance of test_swe_harness built here and pushed under SWE-bench's official name.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from cwm_envs.errors import InfraError, UsageError
from cwm_envs.swe.dataset import instance_from_row
from cwm_envs.swe.official import ImageSource, instance_image, official_image, official_name
from tests.test_swe_harness import image, tiny  # noqa: F401  (fixtures: the calc repo and its image)


def test_official_names_follow_swebench():
    assert official_name("django__django-11099") == "swebench/sweb.eval.x86_64.django_1776_django-11099:latest"
    row = {"instance_id": "a__b-1", "repo": "a/b", "base_commit": "c", "test_patch": "", "FAIL_TO_PASS": "[]",
           "PASS_TO_PASS": "[]", "test_cmd": "pytest", "image": "swebench/sweb.eval.x86_64.a_1776_b-1"}
    assert official_image(instance_from_row(row)) == "swebench/sweb.eval.x86_64.a_1776_b-1:latest"
    with pytest.raises(UsageError):
        ImageSource.parse("docker-hub")
    with pytest.raises(UsageError):
        ImageSource.parse("official", "host/with/path")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def registry(tmp_path):
    """A registry on 127.0.0.1 (Debian's docker-registry), storage in tmp; stopped and removed after."""
    exe = shutil.which("docker-registry")
    if not exe:
        pytest.skip("Debian's docker-registry is not installed (scripts/ensure_system.sh installs it)")
    port = _free_port()
    config = tmp_path / "registry.yml"
    config.write_text(f"version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {tmp_path}/data\n"
                      f"  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        else:
            pytest.fail("the registry did not start listening")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.mark.docker
def test_official_and_auto_sources_pull_from_a_loopback_registry(tiny, image, registry, tmp_path):  # noqa: F811  (fixtures)
    import docker

    from cwm_envs.swe.run import evaluate_instance

    client = docker.from_env()
    row, repo, _ = tiny
    inst = instance_from_row(row)
    name = official_name(inst.instance_id)
    remote = f"{registry}/{name}"
    client.images.get(image).tag(*remote.rsplit(":", 1))
    try:
        for line in client.images.push(remote.rsplit(":", 1)[0], tag="latest", stream=True, decode=True):
            assert "error" not in line, line
        client.images.remove(remote)
        source = ImageSource.parse("official", registry)
        timings: dict = {}
        tag = instance_image(inst, None, source, client=client, timings=timings)   # no repos: nothing is built
        assert tag == name and timings["source"] == "official"
        assert client.images.get(name).id == client.images.get(image).id
        res = evaluate_instance(inst, {"instance_id": inst.instance_id, "model_patch": row["patch"],
                                       "model_name_or_path": "gold"}, repos_dir=None, log_dir=tmp_path / "gold",
                                image_source=source)
        assert res.status == "resolved", res.error
        client.images.remove(name)
        # an instance the registry lacks: `official` names it, `auto` builds it instead
        other = instance_from_row(dict(row, instance_id="own__calc-2"))
        with pytest.raises(InfraError, match="sweb.eval.x86_64.own_1776_calc-2"):
            instance_image(other, repo.parent.parent, source, client=client)
        built = instance_image(other, repo.parent.parent, ImageSource.parse("auto", registry), client=client)
        assert built.startswith("cwm-envs/swe-instance:own__calc-2-")
        client.images.remove(built)
    finally:
        for ref in (remote, name):
            try:
                client.images.remove(ref)
            except docker.errors.ImageNotFound:
                pass


def test_without_repos_the_repository_is_cloned_into_the_cache(tiny, tmp_path, monkeypatch):  # noqa: F811  (fixtures)
    from cwm_envs.swe.repos import find_repo

    row, repo, _ = tiny
    monkeypatch.setenv("CWM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CWM_SWE_REMOTE", f"file://{repo.parent.parent}/{{repo}}")
    path = find_repo(instance_from_row(row), None)
    assert path == tmp_path / "cache" / "repos" / "own__calc.git"
    assert subprocess.run(["git", "-C", str(path), "cat-file", "-t", row["base_commit"]], capture_output=True,
                          text=True).stdout.strip() == "commit"
    assert find_repo(instance_from_row(row), None) == path          # cloned once, then reused


def test_repository_names_and_their_doctests():
    import doctest

    from cwm_envs.swe import repos

    result = doctest.testmod(repos)
    assert result.attempted > 0 and result.failed == 0
    with pytest.raises(UsageError):
        repos.split_repo("requests")


def test_an_unreachable_remote_is_one_line_naming_the_repository(tmp_path):
    env = {**os.environ, "CWM_CACHE": str(tmp_path / "cache"), "CWM_SWE_REMOTE": f"file://{tmp_path}/nowhere/{{repo}}"}
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"instance_id": "own__gone-1", "repo": "own/gone", "base_commit": "a" * 40,
                                "test_patch": "", "FAIL_TO_PASS": [], "PASS_TO_PASS": [],
                                "test_cmd": "pytest"}) + "\n")
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "swe", "build", "--dataset", str(data)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode != 0
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "own/gone" in err[0] and "--repos" in err[0], proc.stderr
    assert not (tmp_path / "cache" / "repos" / "own__gone.git").exists()


@pytest.mark.docker
def test_validate_reports_gold_and_noop_per_repository_and_prune_removes_the_run(tiny, image, tmp_path):  # noqa: F811  (fixtures)
    row, repo, _ = tiny
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps(row) + "\n")
    out = tmp_path / "val"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "swe", "validate", "--dataset", str(data),
                           "--repos", str(repo.parent.parent), "--out", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((out / "report.json").read_text())
    assert report["summary"]["gold_resolved"] == 1 and report["summary"]["noop_resolved"] == 0
    (table,) = report["tables"]["repositories"]
    assert table["repo"] == "own/calc" and table["built"] == 1 and table["failures"] == "-"
    assert "| own/calc |" in (out / "report.md").read_text()
    used = json.loads((out / "images.json").read_text())
    assert image in used
    dry = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "swe", "prune", "--run", str(out), "--dry-run"],
                         capture_output=True, text=True, timeout=120)
    assert dry.returncode == 0 and f"would remove {len(used)} image(s)" in dry.stdout, dry.stdout + dry.stderr


def test_stratified_sample_spreads_over_repositories_and_versions():
    from cwm_envs.swe.validate import stratified_sample

    rows = [instance_from_row({"instance_id": f"o__{r}-{i}", "repo": f"o/{r}", "base_commit": "c", "version": v,
                               "test_patch": "", "FAIL_TO_PASS": "[]", "PASS_TO_PASS": "[]", "test_cmd": "pytest"})
            for r in ("a", "b") for i, v in enumerate(["1.0"] * 5 + ["2.0"] * 5 + ["3.0"])]
    picked = stratified_sample(rows, 3)
    assert [p.repo for p in picked] == ["o/a"] * 3 + ["o/b"] * 3
    assert {p.version for p in picked if p.repo == "o/a"} == {"1.0", "2.0", "3.0"}
    assert picked == stratified_sample(rows, 3)                       # deterministic for a seed
    assert len(stratified_sample(rows, 50)) == len(rows)


def test_validate_tells_a_grading_defect_from_an_environment_one(tmp_path):
    """A gold patch the grader refused or did not trust is the grading's to fix, not the environment's."""
    from cwm_envs.swe.validate import _failure_class_of_log

    cases = {"grader refused": ({"refused": ["during the eval's setup: x.py: an installed library's code changed"]}, ""),
             "grader guard": ({"guard": "the test runner never finished its session (no seal)"}, ""),
             "network": ({}, "OSError: [Errno 101] Network is unreachable\n"),
             "gold fails tests": ({}, "FAILED t.py::test_a - assert 1 == 2\n")}
    for kind, (report, log) in cases.items():
        folder = tmp_path / kind.replace(" ", "_")
        folder.mkdir()
        (folder / "report.json").write_text(json.dumps({"own__x-1": {"resolved": False, **report}}))
        (folder / "test_output.txt").write_text(log)
        assert _failure_class_of_log(folder) == kind


def test_prune_selects_by_age_and_by_run_children_first():
    import datetime as dt

    from cwm_envs.swe.prune import select

    class Image:
        def __init__(self, tag, layer, days):
            self.tags, self.labels = [tag], {"cwm-envs.swe.layer": layer}
            created = dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc) - dt.timedelta(days=days)
            self.attrs = {"Created": created.strftime("%Y-%m-%dT%H:%M:%S.%fZ")}

    ims = [Image("t", "tools", 30), Image("e", "env", 10), Image("i", "instance", 1)]
    now = dt.datetime(2026, 1, 31, tzinfo=dt.timezone.utc)
    assert [im.tags[0] for im in select(ims, older_than_days=5, now=now)] == ["e", "t"]
    assert [im.tags[0] for im in select(ims, run_tags={"i", "e"}, now=now)] == ["i", "e"]
    assert [im.tags[0] for im in select(ims, everything=True, now=now)] == ["i", "e", "t"]
    with pytest.raises(UsageError):
        from cwm_envs.swe.prune import prune

        prune(older_than_days=1, everything=True)


CEXT = """#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *add(PyObject *self, PyObject *args) {
    long a, b;
    if (!PyArg_ParseTuple(args, "ll", &a, &b)) return NULL;
    return PyLong_FromLong(a OP b);
}

static PyMethodDef methods[] = {{"add", add, METH_VARARGS, "a + b"}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fast", NULL, -1, methods};
PyMODINIT_FUNC PyInit__fast(void) { return PyModule_Create(&module); }
"""


@pytest.mark.docker
def test_a_compiled_repository_builds_its_extension_in_the_image(tmp_path):
    """The instance path of astropy / scikit-learn / matplotlib on a repository of our own: a C extension
    compiled by the tools layer's gcc when the instance image installs the repository in place."""
    from cwm_envs.swe.run import evaluate_instance
    from cwm_envs.swe.validate import NOOP_PATCH as NOOP
    from tests.test_swe_harness import diff_of, git

    repo = tmp_path / "repos" / "own" / "cext"
    (repo / "fast").mkdir(parents=True)
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "t")
    (repo / "fast" / "__init__.py").write_text("from fast._fast import add\n")
    (repo / "fast" / "_fast.c").write_text(CEXT.replace("OP", "-"))
    (repo / "setup.py").write_text("from setuptools import Extension, setup\n\nsetup(name='fast', version='0.1', "
                                   "packages=['fast'], ext_modules=[Extension('fast._fast', ['fast/_fast.c'])])\n")
    (repo / ".gitignore").write_text("build/\n*.so\n*.egg-info/\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "fast add, wrong")
    base = git(repo, "rev-parse", "HEAD").strip()
    gold = diff_of(repo, {"fast/_fast.c": CEXT.replace("OP", "+")})
    tests = diff_of(repo, {"tests/test_fast.py": "from fast import add\n\n\ndef test_add():\n    assert add(2, 3) == 5\n"})
    row = {"instance_id": "own__cext-1", "repo": "own/cext", "base_commit": base, "patch": gold, "test_patch": tests,
           "FAIL_TO_PASS": ["tests/test_fast.py::test_add"], "PASS_TO_PASS": [],
           # the eval script rebuilds the extension after the patch, as SWE-bench's do for compiled repositories
           "test_cmd": "python -m pip install -q --no-build-isolation -e . && pytest -rA tests",
           "install": ["python -m pip install -v --no-build-isolation -e ."], "pip_packages": ["pytest"]}
    inst = instance_from_row(row)
    import docker

    client = docker.from_env()
    timings: dict = {}
    tag = instance_image(inst, repo.parent.parent, "build", client=client, timings=timings)
    try:
        out = client.containers.run(tag, ["bash", "-c", "ls /testbed/fast/*.so && gcc --version | head -1"],
                                    remove=True, network_disabled=True).decode()
        assert "_fast" in out and "gcc" in out
        for name, patch, want in (("gold", gold, "resolved"), ("none", NOOP, "unresolved")):
            res = evaluate_instance(inst, {"instance_id": inst.instance_id, "model_patch": patch,
                                           "model_name_or_path": name}, repos_dir=repo.parent.parent,
                                    log_dir=tmp_path / name)
            assert res.status == want, (name, res.error)
    finally:
        client.images.remove(tag, force=True)


def test_the_environment_survives_a_link_to_its_interpreter(image):  # noqa: F811  (fixture)
    """tox-current-env (sphinx >= 4's eval scripts) runs tests through `.tox/py39/bin/python`, a link to the
    environment's interpreter; a bare venv loses its packages that way ("No module named pytest")."""
    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox

    with DockerSandbox(image, pool_size=0, workdir="/testbed", **REPO_SANDBOX) as sb:
        res = sb.run("source /opt/miniconda3/bin/activate && conda activate testbed && mkdir -p /tmp/tox/bin && "
                     "ln -s \"$(command -v python)\" /tmp/tox/bin/python && cd / && "
                     "/tmp/tox/bin/python -c 'import pytest, calc; print(pytest.__file__)' && "
                     "python3 -c 'import pytest'", timeout=60)
    assert res.exit_code == 0, res.stdout + res.stderr
    assert res.stdout.startswith("/opt/miniconda3/envs/testbed/lib/python")


def test_the_official_harness_phases_are_read_from_its_log(tmp_path):
    from benchmarks.swebench_bench import official_phases_of

    log = tmp_path / "run_instance.log"
    log.write_text("2025-01-01 10:00:00,000 - INFO - Creating container for x...\n"
                   "2025-01-01 10:00:01,500 - INFO - Container for x started: abc\n"
                   "2025-01-01 10:00:02,000 - INFO - Eval script for x written to /e; copying to container...\n"
                   "2025-01-01 10:00:12,500 - INFO - Test runtime: 10.00 seconds\n"
                   "2025-01-01 10:00:13,000 - INFO - Attempting to stop container sweb.eval.x...\n"
                   "2025-01-01 10:00:28,000 - INFO - Container sweb.eval.x removed.\n")
    assert official_phases_of(log) == {"container_start_s": 1.5, "patch_s": 0.5, "eval_script_s": 10.0,
                                       "after_s": 1.0, "teardown_s": 15.0}
    log.write_text("2025-01-01 10:00:00,000 - INFO - Creating container for x...\n")      # cut short: nothing
    assert official_phases_of(log) == {} and official_phases_of(tmp_path / "missing.log") == {}
