"""Where a SWE task's repository comes from: a local clone under `--repos`, a row's own `repo_path`, or a bare
clone of its public remote kept in the cache (`$CWM_SWE_REMOTE` overrides the remote).

>>> split_repo("psf/requests"), split_repo("psf__requests")
(('psf', 'requests'), ('psf', 'requests'))
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from cwm_envs.errors import UsageError
from cwm_envs.swe.cache import cache_dir, named_lock
from cwm_envs.swe.dataset import SWEInstance


def split_repo(name: str) -> tuple[str, str]:
    """"owner/name" or "owner__name" -> (owner, name)."""
    owner, sep, repo = name.partition("/") if "/" in name else name.partition("__")
    if not sep or not owner or not repo:
        raise UsageError(f"not a repository name (owner/name or owner__name): {name!r}")
    return owner, repo


def find_repo(instance: SWEInstance, repos_dir: str | Path | None) -> Path:
    """The local clone (bare or not) of an instance's repository.

    Looked for as `repos_dir/owner/name`, `owner__name`, `owner__name.git` or `name`; a row's own
    `repo_path` wins. Without `repos_dir`, the repository is cloned from its public remote into the cache
    (`clone_repo`). The base commit must be in it.
    """
    owner, name = split_repo(instance.repo)
    candidates = [Path(instance.repo_path)] if instance.repo_path else []
    if repos_dir:
        root = Path(repos_dir)
        if not root.is_dir():
            raise UsageError(f"--repos {root}: no such directory")
        candidates += [root / owner / name, root / owner / f"{name}.git", root / f"{owner}__{name}",
                       root / f"{owner}__{name}.git", root / name, root / f"{name}.git"]
    elif not candidates:
        candidates = [clone_repo(instance.repo, instance.base_commit)]
    for path in candidates:
        if path.exists() and subprocess.run(["git", "-C", str(path), "rev-parse", "--git-dir"],
                                            capture_output=True).returncode == 0:
            kind = subprocess.run(["git", "-C", str(path), "cat-file", "-t", instance.base_commit],
                                  capture_output=True, text=True).stdout.strip()
            if kind != "commit":
                raise UsageError(f"{instance.instance_id}: base commit {instance.base_commit[:12]} is not in {path} "
                                 "(a shallow or stale clone?); fetch it first")
            return path
    raise UsageError(f"{instance.instance_id}: no clone of {instance.repo} under {repos_dir} "
                     f"(looked for {owner}/{name}, {owner}__{name}, {name})")


def remote_url(repo: str) -> str:
    """Where `clone_repo` clones from: `$CWM_SWE_REMOTE` with `{repo}` filled in, else the public remote."""
    template = os.environ.get("CWM_SWE_REMOTE") or "https://github.com/{repo}.git"
    return template.format(repo=repo)


def clone_repo(repo: str, commit: str = "", timeout: float = 1800.0) -> Path:
    """A bare clone of `repo` in the cache (cloned once, fetched again when `commit` is missing from it).

    Without a network this ends in one line that names the repository and what to do instead."""
    owner, name = split_repo(repo)
    dest = cache_dir() / "repos" / f"{owner}__{name}.git"
    url = remote_url(repo)
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}

    def have(rev: str) -> bool:
        return subprocess.run(["git", "-C", str(dest), "cat-file", "-e", f"{rev}^{{commit}}"],
                              capture_output=True).returncode == 0

    with named_lock(f"clone:{dest}"):
        try:
            if not dest.exists():
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = Path(tempfile.mkdtemp(prefix=dest.name + ".", dir=dest.parent))
                try:
                    proc = subprocess.run(["git", "clone", "-q", "--bare", url, str(tmp)], capture_output=True,
                                          text=True, timeout=timeout, env=env)
                    if proc.returncode != 0:
                        raise UsageError(f"cannot clone {repo} from {url} ({_last_line(proc.stderr)}); without a "
                                         "network, pass --repos DIR holding a clone of it")
                    tmp.rename(dest)
                finally:
                    shutil.rmtree(tmp, ignore_errors=True)
            elif commit and not have(commit):
                proc = subprocess.run(["git", "-C", str(dest), "fetch", "-q", url, "+refs/heads/*:refs/heads/*",
                                       "+refs/tags/*:refs/tags/*"], capture_output=True, text=True, timeout=timeout,
                                      env=env)
                if proc.returncode != 0:
                    raise UsageError(f"cannot update the clone of {repo} from {url} ({_last_line(proc.stderr)}); "
                                     "pass --repos DIR holding a clone with the base commit")
        except subprocess.TimeoutExpired:
            raise UsageError(f"cannot clone {repo} from {url} (no answer in {timeout:.0f} s); without a network, "
                             "pass --repos DIR holding a clone of it") from None
    return dest


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else "no output"
