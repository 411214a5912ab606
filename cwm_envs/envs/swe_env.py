"""`cwm/SWE-v0`: fix an issue in a repository container with CWM's tools; the SWE harness grades the patch.

The container comes from the task's instance image (cwm_envs.swe.images: built offline, cached by content
hash) through a `DockerSandbox` with the network off and a warm pool, so that `reset()` on a cached image
swaps in a pristine container instead of starting one. Tool parsing and execution live in
cwm_envs/swe/tools.py, grading in cwm_envs/swe/harness.py, the reward in rewards/swe.py.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Callable, Sequence

from cwm_envs import chat
from cwm_envs.envs.base import TextEnv
from cwm_envs.errors import InfraError, SandboxError, UsageError
from cwm_envs.sandbox.base import Limits
from cwm_envs.swe import tools
from cwm_envs.swe.dataset import SWEInstance, instance_from_row, load_instances
from rewards.base import RewardResult
from rewards.swe import swe_reward

MAX_ISSUE_CHARS = 65_536
REPO_ROOT = "/testbed"
ORACLE_PATCH_FILE = "/tmp/cwm_reference.patch"
STOP_SUFFIXES = (chat.EOT, chat.EOS)
_light_images: set[str] = set()         # images whose containers need only the quick git clean-up (ToolBox.prepare)


def approx_tokens(text: str) -> int:
    """A tokenizer-free estimate (UTF-8 bytes / 4) used when no `count_tokens` is given.

    >>> approx_tokens(""), approx_tokens("abcd"), approx_tokens("abcde")
    (0, 1, 2)
    """
    return (len(text.encode("utf-8", "replace")) + 3) // 4


class SWEEnv(TextEnv):
    """Resolve a repository issue with bash/edit/create/submit tools; +1 if the hidden tests then pass.

    ## Observation Space
    `AnyText(262144)`. The first observation is the conversation in CWM's chat format (cwm_envs/chat.py):
    a system message with the tool instructions and budgets, the issue as the user message, then the
    assistant header the model continues from. Each later observation is the tool's result
    (`<|start_header_id|>tool: NAME<|end_header_id|>` + `<output>...</output>` + `<budget>` with the
    remaining turns and tokens), or a user message naming a format error, then the next assistant header.

    ## Action Space
    `AnyText(262144)`: one assistant turn, holding exactly one tool call
    `<tool: NAME>\\nARGUMENT\\n</tool>` (bash, edit, create, submit; see cwm_envs/swe/tools.py). With
    `think=True` the turn must contain exactly one `</think>` and only the text after it is read. A trailing
    `<|eot_id|>` is ignored.

    ## Rewards
    0 on every turn but the last. At the end: +1 if the submitted patch resolves the task (every FAIL_TO_PASS
    and PASS_TO_PASS test passes), else -1; with `similarity_weight` > 0 an unresolved submission gets
    `-1 + weight * similarity` to the gold patch (SWE-RL style, rewards/swe.py). Grading is `cwm swe eval`'s
    (cwm_envs/swe/harness.py) on the submitted patch alone, in a fresh container of the task's image: a
    patch that touches git's files, test-runner configuration or start-up hooks is refused, its edits to
    test code are undone, the hidden test patch is applied, and for pytest the runner's own sealed record
    must confirm every passing test. `info["outcomes"]` holds the evidence: `resolved`, `submitted`,
    `tests_status` (which tests passed or failed), `patch_applied`, `refused`, `guard`, `grade_s`, and why
    the episode ended (`reason`).

    ## Episode End
    Terminated: on a valid submission (or, with `review_turn`, on the reply without a tool call that follows
    it), on a format error under `strict_format`, or when `max_timeouts` commands have timed out. Truncated
    (reward -1): when the turns (`max_turns`), the tokens (`context_tokens`: observations and actions) or the
    wall time (`max_episode_s`) run out. A machinery fault (Docker, image build, grading infrastructure)
    raises `InfraError`: it is never scored.

    ## Arguments
    - `tasks`: None for the embedded default set (mutate-fix tasks of a small package, built on first use
      and cached; see cwm_envs/swe/mutate.py), a dataset file (.jsonl/.parquet/.json, SWE-bench rows or
      `cwm swe mutate` output), or a list of `SWEInstance`s or rows. `repos`: folder of git clones that
      SWE-bench rows need for their image builds.
    - `max_turns` (128), `context_tokens` (131072), `command_timeout_s` (120), `max_timeouts` (3),
      `max_episode_s` (3600), `eval_timeout_s` (600): CWM's budgets; an eval that runs past
      `eval_timeout_s` (twice) raises InfraError, as in `cwm swe eval`: it is not scored.
    - `review_turn`: after a submission, show it and let the agent revise; a reply without a tool call ends
      the episode (CWM's review turn). `strict_format`: a format error ends the episode with -1 (CWM's
      `strict_format`; under it a final reply must also contain a `##` summary). `think`: reasoning mode.
    - `similarity_weight`: patch-similarity shaping for unresolved patches (0: off).
    - `count_tokens`: the policy tokenizer's counter, e.g. `lambda s: len(tok.encode(s))`; default
      `approx_tokens`. `max_output_chars`: longest tool output shown (the middle of longer output is cut).
    - `pool_size`, `cpus`, `memory_mb`: the container pool and each container's CPU and memory limits.
    - `reset(options={"task": SWEInstance | instance id | index})` poses a given task.

    ## Version History
    - v0: initial version.
    """

    reward_schemes = ("cwm",)
    max_observation_chars = 1 << 18
    max_action_chars = 1 << 18

    def __init__(self, tasks: str | Path | Sequence[SWEInstance | dict] | None = None, repos: str | Path | None = None,
                 *, max_turns: int = 128, context_tokens: int = 131_072, command_timeout_s: float = 120.0,
                 max_timeouts: int = 3, max_episode_s: float | None = 3600.0, eval_timeout_s: float = 600.0,
                 review_turn: bool = False, strict_format: bool = False, think: bool = False,
                 similarity_weight: float = 0.0, count_tokens: Callable[[str], int] | None = None,
                 max_output_chars: int = tools.DEFAULT_OUTPUT_CHARS, pool_size: int = 1, cpus: float = 1.0,
                 memory_mb: int = 4096, render_mode: str | None = None, log: Callable[[str], None] | None = None):
        if max_turns < 1 or context_tokens < 1 or command_timeout_s <= 0 or max_timeouts < 1:
            raise UsageError("max_turns, context_tokens, command_timeout_s and max_timeouts must be positive")
        if not 0.0 <= similarity_weight < 2.0:
            raise UsageError("similarity_weight must be in [0, 2)")
        self.log = log or (lambda _m: None)
        super().__init__(tasks=self._load_tasks(tasks), render_mode=render_mode)
        self.repos = repos
        self.max_turns, self.context_tokens = int(max_turns), int(context_tokens)
        self.command_timeout_s, self.max_timeouts = float(command_timeout_s), int(max_timeouts)
        self.max_episode_s, self.eval_timeout_s = max_episode_s, float(eval_timeout_s)
        self.review_turn, self.strict_format, self.think = review_turn, strict_format, think
        self.similarity_weight = float(similarity_weight)
        self.count_tokens = count_tokens or approx_tokens
        self.max_output_chars = int(max_output_chars)
        self.pool_size, self.cpus = int(pool_size), float(cpus)
        self.limits = Limits(memory_mb=memory_mb, processes=1024, output_bytes=64 << 20)
        self._images: dict[str, str] = {}
        self._fresh = False                   # the current container is untouched (no reset needed)
        self._closers: list[threading.Thread] = []

    # -- the text-env contract (cwm_envs/envs/base.py) --------------------------------------------------

    def draw_task(self, choice) -> SWEInstance:
        return choice if isinstance(choice, SWEInstance) else super().draw_task(choice)

    def pose(self, task: SWEInstance) -> str:
        """Ready a pristine container of the task's image for the episode, and the first observation."""
        t0 = time.perf_counter()
        image = self.image_for(task)
        self._container_for(image)
        self._toolbox = tools.ToolBox(self._sandbox, REPO_ROOT, self.command_timeout_s, self.max_output_chars)
        if image in _light_images:            # a container is a copy of its image: inspect each image once
            self._toolbox.prepare(light=True)
        elif self._toolbox.prepare() == "light":
            _light_images.add(image)
        self._fresh = False
        self._timeouts, self._submission = 0, None
        self._start = time.monotonic()
        issue = tools.clip(task.problem_statement or "(no issue text)", MAX_ISSUE_CHARS)
        messages = [{"role": "system", "content": tools.system_prompt(self.max_turns, self.context_tokens,
                                                                      self.command_timeout_s, self.think,
                                                                      self.review_turn, self.strict_format)},
                    {"role": "user", "content": tools.issue_prompt(issue, REPO_ROOT)}]
        self._last = chat.format_chat(messages, add_generation_prompt=True, think=self.think)
        self._tokens = self.count_tokens(self._last)
        self._reset_s = round(time.perf_counter() - t0, 4)
        return self._last

    def episode_info(self) -> dict:
        info = super().episode_info()
        if self.turn == 0:
            info.update(max_turns=self.max_turns, remaining_tokens=self.context_tokens - self._tokens,
                        reset_s=self._reset_s)
        return info

    def judge(self, task: SWEInstance, response: str) -> RewardResult:
        """The reward of submitting the patch `response` (graded as at the end of an episode)."""
        self._container_for(self.image_for(task))
        report = self._grade(task, response)
        return swe_reward(bool(report.get("resolved")), response, task.patch, self.similarity_weight, "judged")

    def reference_response(self, task: SWEInstance) -> str:
        """The gold patch: `judge` pays it."""
        return task.patch

    def reference_episode(self, task: SWEInstance) -> list[str]:
        """Write the gold patch to a file, submit it (and, with a review turn, close with a summary)."""
        opener = "The fix is known.\n</think>\n" if self.think else ""
        actions = [f"{opener}<tool: create>\n{ORACLE_PATCH_FILE}\n{task.patch.rstrip(chr(10))}\n</tool>",
                   f"{opener}<tool: submit>\n{ORACLE_PATCH_FILE}\n</tool>"]
        if self.review_turn:
            actions.append(f"{opener}## Summary\nSubmitted the fix.")
        return actions

    def respond(self, action: str):
        action = action.encode("utf-8", "replace").decode("utf-8")   # lone surrogates cannot reach a container
        for stop in STOP_SUFFIXES:
            action = action[:-len(stop)] if action.endswith(stop) else action
        self._tokens += self.count_tokens(action)
        info: dict = {}
        if self._tokens > self.context_tokens:
            return self._end(f"context exceeded ({self._tokens} > {self.context_tokens} tokens)", info, truncated=True)
        answer, call = self._read(action)
        if isinstance(call, str):                              # a format error, or the final reply after a review
            reasoned = not self.think or action.count("</think>") == 1
            if self._submission is not None and reasoned and (not self.strict_format or "##" in answer):
                return self._end("final reply after submission", info, patch=self._submission)
            info["format_error"] = call
            if self.strict_format:
                return self._end(f"format error: {call}", info)
            return self._continue(chat.format_message("user", f"Format error: {call}"), info)
        try:
            result = self._toolbox.call(call)
        except SandboxError:
            if self._container_stopped():     # e.g. `kill 1`: the agent ended its own container
                return self._end("the container stopped (a command ended its init process)", info)
            raise
        info.update(tool=call.name, tool_success=result.success)
        if result.timed_out:
            self._timeouts += 1
            if self._timeouts >= self.max_timeouts:
                return self._end(f"{self._timeouts} commands timed out", info)
        if result.patch is not None:
            if not self.review_turn:
                return self._end("submitted", info, patch=result.patch)
            self._submission = result.patch
            feedback = tools.SUBMITTED.format(patch=tools.clip(result.patch, self.max_output_chars))
        else:
            feedback = result.output
        return self._continue(self._tool_observation(call.name, feedback), info)

    def close(self):
        """Remove every container of this env (the current sandbox, and any being closed in the background)."""
        super().close()
        while self._closers:
            self._closers.pop().join(timeout=120)
        self._done = True

    def _fresh_sandbox(self) -> None:
        """Containers are per image: `pose` readies the episode's (see `_container_for`)."""

    # -- tasks and containers ---------------------------------------------------------------------------

    def _load_tasks(self, tasks) -> list[SWEInstance]:
        if tasks is None:
            from cwm_envs.swe.mutate import default_task_file

            return load_instances(default_task_file(log=self.log))
        if isinstance(tasks, (str, Path)):
            loaded = load_instances(tasks)
        else:
            loaded = [t if isinstance(t, SWEInstance) else instance_from_row(t, f"tasks[{i}]")
                      for i, t in enumerate(tasks)]
        if not loaded:
            raise UsageError("tasks is empty")
        return loaded

    def image_for(self, task: SWEInstance) -> str:
        """The task's instance image, built (offline, cached by content hash) the first time it is needed."""
        tag = self._images.get(task.instance_id)
        if tag is None:
            from cwm_envs.swe.images import build_instance_image

            tag = self._images[task.instance_id] = build_instance_image(task, self.repos, log=self.log)
        return tag

    def _container_for(self, image: str) -> None:
        """A pristine container of `image`: from the current sandbox's warm pool, or a new sandbox."""
        from cwm_envs.sandbox.docker_backend import REPO_SANDBOX, DockerSandbox

        if self._sandbox is not None and self._sandbox.image == image:
            if not self._fresh:
                self._sandbox.reset()
            return
        old, self._sandbox = self._sandbox, None
        if old is not None:                   # removing containers takes a while: not on the reset path
            closer = threading.Thread(target=old.close, name="cwm-swe-close", daemon=True)
            closer.start()
            self._closers = [t for t in self._closers if t.is_alive()] + [closer]
        self._sandbox = DockerSandbox(image, pool_size=self.pool_size, workdir=REPO_ROOT, limits=self.limits,
                                      cpus=self.cpus, **REPO_SANDBOX)
        self._fresh = True

    def _container_stopped(self) -> bool:
        """Whether the episode's container has exited (then the agent stopped it; else Docker is at fault)."""
        try:
            sb = self._sandbox
            return sb.client.containers.get(sb.container_id).status != "running"
        except Exception:                     # cannot tell: leave it to the caller's infrastructure error
            return False

    # -- turns ------------------------------------------------------------------------------------------

    def _read(self, action: str) -> tuple[str, tools.ToolCall | str]:
        """The part of the turn after the reasoning, and its tool call (or what is wrong with it)."""
        if self.think:
            n = action.count("</think>")
            if n != 1:
                return action, f"Expected exactly one </think> closing the reasoning, found {n}."
            action = action.split("</think>", 1)[1]
        return action, tools.parse_tool_call(action)

    def _tool_observation(self, name: str, feedback: str) -> str:
        remaining_turns = self.max_turns - self.turn
        body = tools.format_result(feedback, remaining_turns, 0)
        estimate = self.count_tokens(chat.tool_message(name, body) + chat.assistant_header())
        remaining_tokens = max(0, self.context_tokens - self._tokens - estimate)
        return chat.tool_message(name, tools.format_result(feedback, remaining_turns, remaining_tokens))

    def _continue(self, message: str, info: dict):
        """Hand the next observation back, or end the episode when a budget has run out."""
        self._last = message + chat.assistant_header() + ("<think>\n" if self.think else "")
        self._tokens += self.count_tokens(self._last)
        elapsed = time.monotonic() - self._start
        info.update(remaining_turns=self.max_turns - self.turn, remaining_tokens=self.context_tokens - self._tokens,
                    timeouts=self._timeouts)   # wall time only at the end: a step's info is deterministic
        if self.turn >= self.max_turns:
            return self._end(f"no turns left ({self.max_turns})", info, truncated=True, obs=self._last)
        if self._tokens > self.context_tokens:
            return self._end(f"context exceeded ({self._tokens} > {self.context_tokens} tokens)", info,
                             truncated=True, obs=self._last)
        if self.max_episode_s is not None and elapsed > self.max_episode_s:
            return self._end(f"wall time exceeded ({elapsed:.0f} > {self.max_episode_s:g} s)", info, truncated=True,
                             obs=self._last)
        return self._last, 0.0, False, False, info

    def _end(self, reason: str, info: dict, patch: str | None = None, truncated: bool = False, obs: str = ""):
        """Finish the episode: grade the patch if there is one, and put the evidence in `info`."""
        self._done = True
        report = self._grade(self.task, patch) if patch is not None else {}
        result = swe_reward(bool(report.get("resolved")), patch, self.task.patch, self.similarity_weight, reason)
        outcomes = {**result.outcomes, "reason": reason, "patch_applied": report.get("patch_successfully_applied"),
                    "tests_status": report.get("tests_status")}
        for key in ("refused", "tests_reset", "removed", "guard", "conflicting_tests", "unconfirmed_tests", "seal",
                    "eval_seconds", "grade_s"):
            if key in report:
                outcomes[key] = report[key]
        info.update(outcomes=outcomes, resolved=outcomes["resolved"], reason=reason, submission=patch,
                    elapsed_s=round(time.monotonic() - self._start, 3), timeouts=self._timeouts)
        self._last = obs
        return obs, float(result.value), not truncated, truncated, info

    def _grade(self, task: SWEInstance, patch: str) -> dict:
        """Grade with the harness (one code path with `cwm swe eval`) in a fresh container of the task's image,
        never the agent's: nothing the agent left in its container (processes, site-packages, git config,
        PATH) reaches the grading. An infrastructure fault (Docker, an eval past `eval_timeout_s`, a broken
        test environment) is retried once, then raised as InfraError: never scored."""
        from cwm_envs.swe.harness import grade

        iid = task.instance_id
        for attempt in range(2):
            t0 = time.perf_counter()
            self._sandbox.reset()            # the agent's container is retired; a pristine one grades
            try:
                report = grade(task, self._sandbox, patch, timeout=self.eval_timeout_s)[iid]
            except InfraError as exc:
                if attempt:
                    raise InfraError(f"{iid}: grading failed twice, the episode is not scored: {exc}") from exc
                self.log(f"{iid}: grading failed ({exc}); retrying once")
                continue
            report["grade_s"] = round(time.perf_counter() - t0, 3)
            return report
        raise AssertionError("unreachable")
