"""The task repository of mutate-fix tasks: a bare git repository with the clean tree and one orphan commit
per task (no history, so `git log` / `git diff` cannot reveal the original code), the snapshot of a source
repository it starts from, and the SWE-bench-format eval script that resets the tests around the run.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cwm_envs.errors import InfraError

GIT_ENV = {"GIT_AUTHOR_NAME": "cwm-envs", "GIT_AUTHOR_EMAIL": "cwm-envs@example.com",
           "GIT_COMMITTER_NAME": "cwm-envs", "GIT_COMMITTER_EMAIL": "cwm-envs@example.com",
           "GIT_AUTHOR_DATE": "2024-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2024-01-01T00:00:00Z"}
CONFIG_FILES = ("pyproject.toml", "setup.cfg", "tox.ini", "pytest.ini")
# files a patch must not add: they could change how the tests run or what they report
INJECTED = r"(^|/)(conftest\.py|pytest\.ini|tox\.ini|setup\.cfg|sitecustomize\.py|usercustomize\.py|[^/]*\.pth)$"
SKIP_DIRS = {".git", ".hg", ".svn", ".venv", "venv", "env", "__pycache__", ".tox", ".nox", "build", "dist",
             "node_modules", ".mypy_cache", ".pytest_cache", ".eggs"}


def is_test_path(path: str) -> bool:
    """Whether a repository path is test code (a test file, conftest, or anything under a tests folder).

    >>> [is_test_path(p) for p in ("tests/util.py", "pkg/test_x.py", "pkg/x_test.py", "conftest.py", "pkg/x.py")]
    [True, True, True, True, False]
    """
    parts = path.split("/")
    name = parts[-1]
    return (any(p in ("test", "tests", "testing") for p in parts[:-1]) or name.startswith("test_")
            or name.endswith("_test.py") or name == "conftest.py")


class TaskRepo:
    """A bare git repository holding the clean tree and one orphan commit per mutation."""

    def __init__(self, path: Path):
        self.path = path
        if not (path / "HEAD").exists():
            path.mkdir(parents=True, exist_ok=True)
            self.git("init", "-q", "--bare")
        self._index = tempfile.mkdtemp(prefix="cwm-mutate-index-")

    def git(self, *args: str, input: bytes | None = None, env: dict | None = None, cwd: Path | None = None) -> str:
        proc = subprocess.run(["git", "--git-dir", str(self.path), *args], input=input, capture_output=True,
                              env={**os.environ, **GIT_ENV, **(env or {})}, cwd=cwd)
        if proc.returncode != 0:
            raise InfraError(f"git {' '.join(args[:2])} failed: {proc.stderr.decode(errors='replace').strip()[-400:]}")
        return proc.stdout.decode()

    def import_tree(self, snapshot: Path, force: bool) -> str:
        """The tree of a directory's files -> tree id; its .gitignore applies unless `force`."""
        env = {"GIT_INDEX_FILE": f"{self._index}/clean", "GIT_WORK_TREE": str(snapshot)}
        self.git("add", "-A", *(["-f"] if force else []), ".", env=env, cwd=snapshot)
        return self.git("write-tree", env=env).strip()

    def commit(self, tree: str, message: str, ref: str) -> str:
        sha = self.git("commit-tree", tree, "-m", message).strip()
        self.git("update-ref", ref, sha)
        return sha

    def with_file(self, tree: str, path: str, content: str) -> str:
        """`tree` with one file's content replaced -> new tree id (the file keeps its mode)."""
        mode = self.git("ls-tree", tree, "--", path).split()[0]
        blob = self.git("hash-object", "-w", "--stdin", input=content.encode()).strip()
        env = {"GIT_INDEX_FILE": f"{self._index}/task"}
        self.git("read-tree", tree, env=env)
        self.git("update-index", "--cacheinfo", f"{mode},{blob},{path}", env=env)
        return self.git("write-tree", env=env).strip()

    def files(self, tree: str) -> list[str]:
        return self.git("ls-tree", "-r", "--name-only", "-z", tree).split("\0")[:-1]

    def diff(self, a: str, b: str) -> str:
        return self.git("diff", "--no-color", "--no-ext-diff", a, b)

    def close(self) -> None:
        shutil.rmtree(self._index, ignore_errors=True)


def snapshot_repo(repo: Path, dest: Path) -> bool:
    """The repository's committed files at HEAD (a git repository: returns True) or its files (any other folder)."""
    if subprocess.run(["git", "-C", str(repo), "rev-parse", "--verify", "-q", "HEAD"], capture_output=True).returncode == 0:
        tar = subprocess.Popen(["git", "-C", str(repo), "archive", "--format=tar", "HEAD"], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(dest)], stdin=tar.stdout, capture_output=True)
        tar.stdout.close()
        if tar.wait() != 0 or untar.returncode != 0:
            raise InfraError(f"git archive of {repo} failed: {untar.stderr.decode(errors='replace')[-300:]}")
        return True
    for root, dirs, files in os.walk(repo):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.endswith(".egg-info"))
        rel = Path(root).relative_to(repo)
        (dest / rel).mkdir(parents=True, exist_ok=True)
        for name in files:
            if not name.endswith((".pyc", ".pyo")):
                shutil.copy2(Path(root) / name, dest / rel / name, follow_symlinks=False)
    return False


def source_date(repo: Path, from_git: bool) -> str:
    """The tasks' `created_at`: the source's HEAD commit date (a git repository), else now. Their environments
    resolve as of it, so they do not drift with the package index (the task commits carry a fixed date)."""
    import datetime as dt

    from cwm_envs.swe.specs import commit_date

    when = commit_date(repo, "HEAD") if from_git else ""
    return when or dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def eval_script(base: str, test_cmd: str, protected: list[str]) -> str:
    """SWE-bench's eval script shape; test files and test configuration are reset to `base` around the run."""
    from cwm_envs.swe.dataset import END, START

    quoted = " ".join("'" + p.replace("'", "'\\''") + "'" for p in protected)
    reset = f"git checkout {base} -- {quoted}" if protected else ": nothing to reset"
    strip = f"git ls-files --others -z | grep -zE '{INJECTED}' | xargs -0 -r rm -f --"
    lines = ["#!/bin/bash", "set -uxo pipefail", "source /opt/miniconda3/bin/activate", "conda activate testbed",
             "cd /testbed", reset, strip, f": '{START}'", test_cmd, f": '{END}'", reset]
    return "\n".join(lines) + "\n"
