"""Scripted agents for `cwm/SWE-v0`, to validate the environment and its grading end to end.

- `OracleSWEAgent` knows the gold patch and edits its way there with the env's own tools: one `edit` per
  hunk (search = the hunk's old lines, replace = its new lines), `create` for new files, `rm` for deleted
  ones; a file it cannot edit that way (binary, renamed, no final newline, a search block that is not
  unique) is patched with `git apply` through bash instead. Then it writes `git diff` to a file and submits
  it, and ends the review turn when the env has one. Reward +1 on every task whose gold patch resolves it.
- `DoNothingSWEAgent` looks at the repository and changes nothing until the turns run out: reward -1.

Both act only through `env.step(text)`; `run_episode` drives one episode and records its shape.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

PATCH_FILE = "/tmp/oracle.patch"
_HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")


@dataclass
class FilePatch:
    """One file of a unified diff: its path, kind, hunks as (old lines, new lines), and its raw text."""

    path: str
    kind: str                                   # modify | create | delete | other (rename, binary, mode)
    hunks: list[tuple[list[str], list[str]]] = field(default_factory=list)
    text: str = ""
    exact: bool = True                          # False: "\ No newline at end of file" somewhere


def parse_patch(patch: str) -> list[FilePatch]:
    """Split a git diff into FilePatches.

    >>> fp, = parse_patch("diff --git a/x.py b/x.py\\n--- a/x.py\\n+++ b/x.py\\n@@ -1,2 +1,2 @@\\n a\\n-b\\n+c\\n")
    >>> fp.path, fp.kind, fp.hunks
    ('x.py', 'modify', [(['a', 'b'], ['a', 'c'])])
    """
    chunks = re.split(r"(?m)^(?=diff --git )", patch)
    files = []
    for chunk in chunks:
        if not chunk.startswith("diff --git "):
            continue
        lines = chunk.splitlines()
        m = re.match(r"diff --git a/(.*) b/(.*)$", lines[0])
        if not m:
            files.append(FilePatch("", "other", text=chunk))
            continue
        src, dst = m.group(1), m.group(2)
        head = "\n".join(ln for ln in lines[:8] if not ln.startswith("@@"))
        kind = "modify"
        if "new file mode" in head or "--- /dev/null" in head:
            kind = "create"
        elif "deleted file mode" in head or "+++ /dev/null" in head:
            kind = "delete"
        if src != dst or "Binary files" in chunk or "GIT binary patch" in chunk or "old mode" in head:
            kind = "other"
        fp = FilePatch(dst if kind != "delete" else src, kind, text=chunk if chunk.endswith("\n") else chunk + "\n")
        i = 0
        while i < len(lines):
            h = _HUNK.match(lines[i])
            if not h:
                i += 1
                continue
            old_n = int(h.group(2)) if h.group(2) is not None else 1
            new_n = int(h.group(4)) if h.group(4) is not None else 1
            old, new = [], []
            i += 1
            while i < len(lines) and (len(old) < old_n or len(new) < new_n or lines[i].startswith("\\")):
                line = lines[i]
                if line.startswith("\\"):
                    fp.exact = False
                elif line.startswith("-"):
                    old.append(line[1:])
                elif line.startswith("+"):
                    new.append(line[1:])
                else:                           # context (a blank context line may have lost its space)
                    old.append(line[1:])
                    new.append(line[1:])
                i += 1
            fp.hunks.append((old, new))
        files.append(fp)
    return files


def tool(name: str, arg: str) -> str:
    """One tool call in CWM's format."""
    return f"<tool: {name}>\n{arg}\n</tool>"


def _quote(path: str) -> str:
    return "'" + path.replace("'", "'\\''") + "'"


class OracleSWEAgent:
    """Reaches the gold patch with bash/edit/create, then submits (see the module docstring).

    Usage: `agent.reset(task)` with the env's task (`env.unwrapped.task`), then
    `action = agent.act(observation, info)` until the episode ends.
    """

    def __init__(self, think: bool = False):
        self.think = think

    def reset(self, task) -> None:
        self.files = parse_patch(task.patch)
        self.queue: list[tuple[str, str, FilePatch | None]] = []     # (action, what, file it serves)
        for fp in self.files:
            if fp.kind == "modify" and fp.exact and fp.hunks:
                for old, new in fp.hunks:
                    block = f"{fp.path}\n<<<<<<< SEARCH\n" + "\n".join(old) + "\n=======\n" + "\n".join(new) + \
                            "\n>>>>>>> REPLACE"
                    self.queue.append((tool("edit", block), "edit", fp))
            elif fp.kind == "create" and fp.exact and len(fp.hunks) == 1:
                self.queue.append((tool("create", fp.path + "\n" + "\n".join(fp.hunks[0][1])), "create", fp))
            elif fp.kind == "delete":
                self.queue.append((tool("bash", f"rm -- {_quote(fp.path)}"), "delete", fp))
            else:
                self.queue.append((self._apply(fp), "apply", fp))
        new_files = " ".join(_quote(fp.path) for fp in self.files if fp.kind == "create")
        intent = f"git add -N -- {new_files} && " if new_files else ""
        self.queue.append((tool("bash", f"cd /testbed && {intent}git diff > {PATCH_FILE} && git diff --stat"), "diff", None))
        self.queue.append((tool("submit", PATCH_FILE), "submit", None))
        self.queue.append(("## Summary\nApplied the fix and submitted it.", "final", None))
        self.fallbacks: list[str] = []
        self._pending: FilePatch | None = None

    @staticmethod
    def _apply(fp: FilePatch) -> str:
        """Restore a file and apply its part of the gold patch with git (the fallback)."""
        restore = f"git checkout -q -- {_quote(fp.path)} 2>/dev/null; " if fp.kind != "create" else f"rm -f -- {_quote(fp.path)}; "
        return tool("bash", f"cd /testbed && {restore}git apply -v <<'CWM_ORACLE_EOF'\n{fp.text}CWM_ORACLE_EOF")

    def act(self, observation: str, info: dict) -> str:
        if self._pending is not None and info.get("tool_success") is False:
            fp, self._pending = self._pending, None
            self.fallbacks.append(fp.path)    # the edit did not go through: patch this file with git instead
            self.queue = [q for q in self.queue if q[2] is not fp]
            self.queue.insert(0, (self._apply(fp), "apply", fp))
        action, what, fp = self.queue.pop(0) if self.queue else ("## Summary\nDone.", "final", None)
        self._pending = fp if what in ("edit", "create") else None
        return ("<think>\nApply the next part of the known fix.\n</think>\n" + action) if self.think else action


class DoNothingSWEAgent:
    """Looks around and changes nothing, until the env's budget ends the episode (reward -1)."""

    def reset(self, task) -> None:
        self.turn = 0

    def act(self, observation: str, info: dict) -> str:
        self.turn += 1
        return tool("bash", "git status --short && ls" if self.turn == 1 else "true")


@dataclass
class Episode:
    """What one episode did: the reward, the actions' tools, and how it ended."""

    task_id: str
    reward: float
    steps: int
    tools: list[str]
    info: dict
    observation_chars: list[int]


def run_episode(env, agent, options: dict | None = None, seed: int | None = None, max_steps: int = 1000) -> Episode:
    """Reset `env`, let `agent` act until the episode ends, return its record."""
    obs, info = env.reset(seed=seed, options=options)
    agent.reset(env.unwrapped.task)
    lengths, used, reward = [len(obs)], [], 0.0
    for _ in range(max_steps):
        obs, reward, terminated, truncated, info = env.step(agent.act(obs, info))
        used.append(info.get("tool") or ("(format error)" if "format_error" in info else "(reply)"))
        lengths.append(len(obs))
        if terminated or truncated:
            break
    return Episode(info.get("task_id", ""), float(reward), len(used), used, info, lengths)
