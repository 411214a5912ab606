"""Mutate-fix tasks from any Python repository with tests (CWM's ForagerAgent idea), and the default task set.

`cwm swe mutate --repo PATH --tests CMD --out tasks.jsonl`:

1. The repository's committed files (or its files, if it is not a git repository) become an orphan commit
   in a bare task repository beside the output (`tasks.repo/`); its image is built as for any SWE task.
2. Mutations are found in the AST of every non-test Python file, inside functions only: remove a
   statement, swap two call arguments or two variables, flip an operator or a comparison, drop a return,
   change a constant. Each is a minimal text edit, so the gold patch touches only the mutated lines.
3. Each mutation runs the test command in a container of the clean image; it is kept only if at least one
   test that passes on the clean code fails: FAIL_TO_PASS = those tests, PASS_TO_PASS = the other passing
   ones. Mutations that make the tests hang are dropped.
4. A kept mutation becomes its own orphan commit (no history, so `git log` / `git diff` cannot reveal the
   original code) and a SWE-bench-format row: the problem statement names the failing tests and their
   assertion messages, never the mutation; the gold patch is the reverse diff; the eval script restores the
   test files and test configuration to the base commit and removes new conftest/config files first.

The rows load with `cwm_envs.swe.dataset.load_instances` and run through the SWE harness unchanged
(`cwm swe eval --dataset tasks.jsonl --gold` resolves every one). `default_task_file()` builds the
default set from the embedded repository (default_repo.py) on first use and caches it. The mutations are
found in `mutations.py`, the task repository is `task_repo.py`; `cwm swe mutate` is in `cli.py`.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import re
import shutil
import sys
import tempfile
import textwrap
import threading
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from cwm_envs.errors import UsageError
from cwm_envs.swe.mutations import KINDS, Mutation, Schedule, find_mutations
from cwm_envs.swe.task_repo import CONFIG_FILES, TaskRepo, eval_script, is_test_path, snapshot_repo, source_date

DEFAULT_TASKS = 8                       # size of the embedded default task set
ACTIVATE = "source /opt/miniconda3/bin/activate && conda activate testbed && cd /testbed"
PASSING = ("PASSED", "XFAIL")
# what decides the default task set: its cache key hashes these modules' sources
_TASK_MODULES = ("mutate.py", "mutations.py", "task_repo.py")


# --- running the tests --------------------------------------------------------------------------------------

_SUMMARY = re.compile(r"^(FAILED|ERROR) (\S+)(?: - (.*))?$", re.M)
_BLOCK = re.compile(r"^_{3,} (?:ERROR at \w+ of )?(\S+(?: \S+)*?) _{3,}$", re.M)


def failure_messages(log: str, lines: int = 4) -> dict[str, str]:
    """What pytest said about each failed test: the `E` lines of its traceback (the assertion and its
    explanation), else the message of its `-rA` summary line. Keys are the test ids of the summary.

    >>> log = ("____ test_a ____\\n    assert f() == 2\\nE   assert 1 == 2\\nE    +  where 1 = f()\\n"
    ...        "=== short test summary info ===\\nFAILED t.py::test_a - assert 1 == 2\\nERROR t.py::test_b")
    >>> failure_messages(log)
    {'t.py::test_a': 'assert 1 == 2\\n +  where 1 = f()', 't.py::test_b': ''}
    """
    blocks: dict[str, str] = {}
    heads = list(_BLOCK.finditer(log))
    for k, head in enumerate(heads):
        end = heads[k + 1].start() if k + 1 < len(heads) else len(log)
        body = log[head.end():end].split("\n=", 1)[0]
        err = [ln[1:].rstrip() for ln in body.splitlines() if ln.startswith("E ")]
        if err:
            blocks.setdefault(head.group(1), textwrap.dedent("\n".join(err[:lines])).strip("\n"))
    out = {}
    for m in _SUMMARY.finditer(log):
        test = m.group(2)
        name = test.split("::", 1)[-1].replace("::", ".")
        out[test] = blocks.get(name) or blocks.get(name.rsplit(".", 1)[-1]) or (m.group(3) or "").strip()
    return out


def problem_statement(name: str, failing: list[str], messages: dict[str, str], test_cmd: str,
                      shown: int = 6) -> str:
    """What a user reporting the failures would write: the failing tests and their messages, no cause."""
    lines = [f"Some tests of {name} fail on the current code, although they are correct:", ""]
    for test in failing[:shown]:
        msg = (messages.get(test) or messages.get(test.split("::")[0], ""))[:600]
        lines.append(f"- `{test}`" + (":\n" + textwrap.indent(msg, "      ") if msg else " fails"))
    if len(failing) > shown:
        lines.append(f"- and {len(failing) - shown} more")
    lines += ["", f"The tests run with `{test_cmd}`. Find the defect in the library code and fix it so that "
              "these tests pass and the others keep passing. Do not change the tests."]
    return "\n".join(lines)


def _statuses(instance, log: str) -> dict[str, str]:
    from swebench.harness.log_parsers import PARSER_REGISTRY

    parser = PARSER_REGISTRY.get(instance.log_parser)
    if parser is None:
        raise UsageError(f"unknown log parser {instance.log_parser!r}")
    return parser(log, instance.test_spec())


# --- the whole run ------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.").lower() or "repo"


def mutate_repo(repo: str | Path, test_cmd: str, out: str | Path, *, max_tasks: int = 20, seed: int = 0,
                max_candidates: int | None = None, pip_packages: tuple[str, ...] = ("pytest",),
                install: tuple[str, ...] | None = None, python: str | None = None, name: str | None = None,
                log_parser: str = "parse_log_pytest", files: tuple[str, ...] = (), progress: bool | None = None,
                log: Callable[[str], None] = lambda _m: None) -> dict:
    """Make mutate-fix tasks for `repo`; write OUT (JSONL rows) and OUT's task repository. Returns a summary."""
    from tqdm import tqdm

    from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox
    from cwm_envs.swe.dataset import instance_from_row
    from cwm_envs.swe.harness import EVAL_LIMITS
    from cwm_envs.swe.images import build_instance_image

    repo, out = Path(repo).resolve(), Path(out).resolve()
    if not repo.is_dir():
        raise UsageError(f"--repo {repo}: no such directory")
    if not test_cmd.strip() or "\n" in test_cmd.strip():
        raise UsageError("--tests must be one command line (e.g. `python -m pytest -rA tests`)")
    if max_tasks < 1:
        raise UsageError("--max-tasks must be at least 1")
    name = name or repo.name
    slug = _slug(name)
    repo_dir = out.with_name(out.name.split(".")[0] + ".repo")
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="cwm-mutate-") as tmp:
        snap = Path(tmp) / "src"
        snap.mkdir()
        from_git = snapshot_repo(repo, snap)
        created_at = source_date(repo, from_git)
        if repo_dir.exists():
            if not (repo_dir / "refs" / "cwm").is_dir():
                raise UsageError(f"{repo_dir} exists and is not a task repository of ours; choose another --out")
            shutil.rmtree(repo_dir)
        tasks_repo = TaskRepo(repo_dir)
        try:
            tree0 = tasks_repo.import_tree(snap, force=from_git)
            clean = tasks_repo.commit(tree0, name, "refs/cwm/clean")
            paths = tasks_repo.files(tree0)
            if install is None:
                has_build = any(p in ("pyproject.toml", "setup.py", "setup.cfg") for p in paths)
                install = ("python -m pip install -e .",) if has_build else ()
            protected = [p for p in paths if is_test_path(p) or p in CONFIG_FILES]
            sources = [p for p in paths if p.endswith(".py") and not is_test_path(p) and p != "setup.py"
                       and (not files or any(p == f or p.startswith(f.rstrip("/") + "/") for f in files))]
            if not sources:
                raise UsageError(f"{repo}: no Python source files outside the tests to mutate")
            candidates = []
            for p in sources:
                candidates += find_mutations((snap / p).read_text(encoding="utf-8", errors="replace"), p)
            schedule = Schedule(candidates, seed)
            limit = min(len(candidates), max_candidates or len(candidates))
            base_row = {"repo": f"local/{slug}", "test_patch": "", "PASS_TO_PASS": [], "test_cmd": test_cmd,
                        "install": list(install), "pip_packages": list(pip_packages), "repo_path": str(repo_dir),
                        "log_parser": log_parser, "created_at": created_at, **({"python": python} if python else {})}
            clean_inst = instance_from_row({**base_row, "instance_id": f"{slug}-clean", "base_commit": clean,
                                            "FAIL_TO_PASS": []})
            log(f"building the image of the clean repository ({len(candidates)} candidate mutations)")
            image = build_instance_image(clean_inst, log=log)
            rows, skipped = [], {"no_test_failed": 0, "timed_out": 0}
            with DockerSandbox(image, pool_size=0, workdir="/testbed", limits=EVAL_LIMITS, **REPO_SANDBOX) as sb:
                base_log, base_s, _ = _run_tests(sb, test_cmd, timeout=1800)
                baseline = _statuses(clean_inst, base_log)
                passing = sorted(t for t, s in baseline.items() if s in PASSING)
                if not passing:
                    raise UsageError(f"`{test_cmd}` reported no passing test on the clean repository (for pytest, "
                                     f"add -rA so that each result is printed). Output tail:\n{base_log[-1500:]}")
                timeout = max(10.0, 5 * base_s)     # a mutation that makes the tests hang is dropped
                bar = tqdm(total=limit, desc="mutate", unit="mut", disable=not (progress if progress is not None
                                                                                else sys.stderr.isatty()))
                tried = 0
                while len(rows) < max_tasks and tried < limit:
                    m = schedule.next()
                    tried += 1
                    bar.update(1)
                    sb.write_file(f"/testbed/{m.path}", m.source)
                    mlog, _, timed_out = _run_tests(sb, test_cmd, timeout=timeout)
                    sb.run(f"{ACTIVATE} && git checkout -q -- . && git clean -fdq", timeout=60)
                    if timed_out:
                        skipped["timed_out"] += 1
                        continue
                    after = _statuses(clean_inst, mlog)
                    failing = [t for t in passing if after.get(t) not in PASSING]
                    if not failing:
                        skipped["no_test_failed"] += 1
                        continue
                    schedule.keep(m)
                    n = len(rows) + 1
                    iid = f"{slug}-mutate-{n:03d}"
                    tree = tasks_repo.with_file(tree0, m.path, m.source)
                    base = tasks_repo.commit(tree, name, f"refs/cwm/tasks/{iid}")
                    rows.append({**base_row, "instance_id": iid, "base_commit": base,
                                 "patch": tasks_repo.diff(base, clean),
                                 "FAIL_TO_PASS": failing, "PASS_TO_PASS": [t for t in passing if t not in failing],
                                 "problem_statement": problem_statement(name, failing, failure_messages(mlog), test_cmd),
                                 "eval_script": eval_script(base, test_cmd, protected),
                                 "mutation": {k: v for k, v in asdict(m).items() if k != "source"}})
                    bar.set_postfix(kept=len(rows))
                bar.close()
        finally:
            tasks_repo.close()
    if not rows:
        raise UsageError(f"{repo}: none of {tried} mutations made a test fail; are the tests thorough, "
                         "and does the test command run them?")
    for row in rows:                         # every row must load as a SWE instance
        instance_from_row(row, f"{out}:{row['instance_id']}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_name(out.name + ".tmp")
    tmp_out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp_out.replace(out)
    kinds: dict[str, int] = {}
    for r in rows:
        kinds[r["mutation"]["kind"]] = kinds.get(r["mutation"]["kind"], 0) + 1
    return {"tasks": len(rows), "tried": tried, "candidates": len(candidates),
            "skipped": skipped, "kinds": kinds, "tests": len(passing), "out": str(out), "repo": str(repo_dir),
            "clean_image": image, "seconds": round(time.perf_counter() - t0, 1)}


def _run_tests(sb, test_cmd: str, timeout: float) -> tuple[str, float, bool]:
    res = sb.run(f"{ACTIVATE} && {test_cmd} 2>&1", timeout=timeout)
    if res.limit_hit == "memory":
        return res.stdout, res.duration_s, True
    return res.stdout + res.stderr, res.duration_s, res.timed_out


# --- the embedded default task set --------------------------------------------------------------------------

_default_lock = threading.Lock()


def default_task_file(log: Callable[[str], None] = lambda _m: None) -> Path:
    """The default task set's JSONL (mutations of the embedded `tinylib`), built on first use and cached.

    Cached under the SWE cache directory by a hash of the repository's files and of the modules that make
    the tasks, so a change to either makes a new set; a file lock lets parallel processes build it once.
    """
    from cwm_envs.swe import default_repo
    from cwm_envs.swe.cache import cache_dir

    key = hashlib.sha256(json.dumps([default_repo.VERSION, default_repo.FILES, default_repo.TEST_CMD, DEFAULT_TASKS,
                                     *(Path(__file__).with_name(m).read_text() for m in _TASK_MODULES)],
                                    sort_keys=True).encode()).hexdigest()[:12]
    folder = cache_dir() / "swe-default" / key
    path = folder / "tasks.jsonl"
    if path.exists():
        return path
    folder.mkdir(parents=True, exist_ok=True)
    with _default_lock, open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if not path.exists():
                log(f"building the default SWE task set in {folder} (once; about a minute)")
                with tempfile.TemporaryDirectory(prefix="cwm-tinylib-") as tmp:
                    src = default_repo.write_default_repo(Path(tmp) / default_repo.NAME)
                    mutate_repo(src, default_repo.TEST_CMD, path, max_tasks=DEFAULT_TASKS, seed=0,
                                name=default_repo.NAME, install=default_repo.INSTALL, log=log)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return path


__all__ = ["KINDS", "Mutation", "Schedule", "find_mutations", "is_test_path", "failure_messages",
           "problem_statement", "mutate_repo", "default_task_file", "DEFAULT_TASKS"]
