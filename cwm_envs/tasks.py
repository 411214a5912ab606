"""The Task record every task source yields, and small helpers shared by the loaders."""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from cwm_envs.errors import UsageError


@dataclass(frozen=True)
class Task:
    """One problem an environment can pose.

    Only `id` and `prompt` are universal; each family fills the fields it needs (`answer` for math and
    prediction tasks, `tests` for code, `patch` for SWE) and keeps anything else in `metadata`.
    """

    id: str
    prompt: str
    answer: str | None = None
    tests: Any = None
    patch: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def pick_task(tasks: Sequence, choice, rng, id_of: Callable[[Any], str] = lambda t: t.id):
    """The task that `reset(options={"task": choice})` asks for, from a list.

    None draws one with the env's seeded RNG; an int is an index; a str is a task id. Anything else, an
    index out of range or an unknown id is a UsageError naming it.
    """
    if choice is None:
        return tasks[int(rng.integers(len(tasks)))]
    if isinstance(choice, int) and not isinstance(choice, bool):
        if not 0 <= choice < len(tasks):
            raise UsageError(f"task index {choice} out of range (0..{len(tasks) - 1})")
        return tasks[choice]
    if isinstance(choice, str):
        for task in tasks:
            if id_of(task) == choice:
                return task
        raise UsageError(f"no task with id {choice!r}")
    raise UsageError(f"options['task'] must be a task, an index or an id, got {type(choice).__name__}")


def read_jsonl(path: str | Path) -> Iterator[dict]:
    """Yield the JSON objects of a .jsonl or .jsonl.gz file; a broken line raises a UsageError naming it."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"no such file: {path}")
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise UsageError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise UsageError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            yield row


def shared_data_dir() -> Path:
    """Where the benchmark files lie: $CWM_DATA, else ../shared/data beside the project checkout."""
    import os

    env = os.environ.get("CWM_DATA")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent.parent
    for candidate in (here.parent / "shared" / "data", Path.cwd().parent / "shared" / "data", Path.cwd() / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return here.parent / "shared" / "data"
