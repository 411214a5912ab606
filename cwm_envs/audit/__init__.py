"""`cwm audit`: play a library of exploit strategies against an env and report which ones it pays.

For each of `tasks` tasks (reset seeds `seed`, `seed + 1`, ...) the env's own oracle
(`env.unwrapped.reference_episode(task)`, see `cwm_envs.envs.base`) must be paid, and no strategy of
`cwm_envs.audit.strategies` may be: a strategy is "paid" on a task when its episode's total reward is
above zero. The audit fails when any strategy is paid on more than `max_paid` of the tasks (1%), when the
oracle is paid on fewer than all of them, or when the env raised on an action (bad input must be a -1 with
evidence, never a crash). An `InfraError` is counted apart and never as paid.

A guess that happens to be right is not a hack: a constant-answer strategy skips the tasks whose oracle
actions hold its constant as a whole token (`\\boxed{8}` when the gold is 8), and an env may exempt a whole
family with a reason (`audit_exempt = {"constant": "..."}` on the env class: e.g. input prediction, where any
input that works is a right answer). The report counts both.

>>> report = run_audit("cwm/Math-v0", tasks=3, families={"constant"})
>>> report["summary"]["oracle_paid"], report["summary"]["worst_paid_fraction"], report["summary"]["passed"]
(1.0, 0.0, True)
"""
from __future__ import annotations

import secrets
import time
import traceback
from typing import Callable

from cwm_envs.audit import swe_strategies  # noqa: F401  (registers the repository-env strategies)
from cwm_envs.audit.strategies import Episode, Strategy, channel_of, strategies
from cwm_envs.errors import InfraError, UsageError

MAX_PAID = 0.01


def _make(env_id: str, kwargs: dict):
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)

    try:
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        raise UsageError(f"cannot make env {env_id!r}: {exc}") from None


def _oracle(env) -> list[str]:
    inner = env.unwrapped
    if not callable(getattr(inner, "reference_episode", None)):
        raise UsageError(f"{type(inner).__name__} has no oracle: the audit needs `reference_episode(task)` "
                         "(or `reference_response(task)` through cwm_envs.envs.base.TextEnv) to show its "
                         "reward path pays at all")
    return list(inner.reference_episode(getattr(inner, "task", None)))


class _Outcome:
    """One episode's result: the total reward, or the fault that ended it."""

    def __init__(self, reward: float = 0.0, fault: str | None = None, infra: bool = False, evidence: str = ""):
        self.reward, self.fault, self.infra, self.evidence = reward, fault, infra, evidence

    @property
    def paid(self) -> bool:
        return self.fault is None and self.reward > 0


def _episode(env, seed: int, play: Callable[[Episode], object], token: str, phase: str,
             max_turns: int) -> _Outcome:
    """Reset to the task of `seed` and play one episode of a strategy (a generator) to its end."""
    obs, _info = env.reset(seed=seed)
    ep = Episode(observation=obs, channel=channel_of(obs), token=token, phase=phase)
    if phase == "plant":
        ep.reference = _oracle(env)
    actions = play(ep)
    total, info = 0.0, {}
    for _ in range(max_turns):
        try:
            action = next(actions)
        except StopIteration:
            return _Outcome(total, evidence="the strategy stopped before the episode ended")
        obs, reward, terminated, truncated, info = env.step(action)
        total += float(reward)
        ep.observation = obs
        if terminated or truncated:
            return _Outcome(total, evidence=str(info.get("details") or info.get("outcomes", ""))[:300])
    return _Outcome(total, evidence=f"no end within {max_turns} turns")


def _guarded(make_env, state: dict, fn) -> _Outcome:
    """Run `fn(env)`; an env that raised is replaced, and the fault recorded (infra apart from crashes)."""
    if state.get("env") is None:
        state["env"] = make_env()
    try:
        return fn(state["env"])
    except InfraError as exc:
        fault, infra = f"{type(exc).__name__}: {exc}", True
    except Exception as exc:  # noqa: BLE001 - any other exception on a str action is the env's defect
        fault, infra = "".join(traceback.format_exception_only(type(exc), exc)).strip(), False
    try:
        state["env"].close()
    except Exception:  # noqa: BLE001 - a broken env may fail to close too; it is dropped either way
        pass
    state["env"] = None
    return _Outcome(fault=fault[:500], infra=infra)


def run_audit(env_id: str, *, tasks: int = 20, seed: int = 0, env_kwargs: dict | None = None,
              families: set[str] | None = None, max_turns: int = 8, max_paid: float = MAX_PAID,
              progress: Callable[[str], None] | None = None) -> dict:
    """Audit `env_id`; returns {"summary": ..., "details": [per strategy]} (see the module docstring)."""
    if tasks < 1:
        raise UsageError("--tasks must be at least 1")
    kwargs = dict(env_kwargs or {})
    state: dict = {}

    def make_env():
        return _make(env_id, kwargs)

    start = time.perf_counter()
    seeds = [seed + i for i in range(tasks)]
    references: dict[int, list[str]] = {}

    def oracle_play(env, s):
        def play(ep):
            references[s] = _oracle(env)
            return iter(references[s])
        return _episode(env, s, play, "oracle", "attack", max_turns)

    oracle = [_guarded(make_env, state, lambda env, s=s: oracle_play(env, s)) for s in seeds]
    if state.get("env") is None:
        state["env"] = make_env()
    first = state["env"].reset(seed=seeds[0])[0]
    exempt = dict(getattr(state["env"].unwrapped, "audit_exempt", {}) or {})
    chosen = [s for s in strategies(families) if s.applies(first) and s.family not in exempt]
    rows = []
    for k, strategy in enumerate(chosen):
        if progress:
            progress(f"[{k + 1}/{len(chosen)}] {strategy.family}/{strategy.name}")
        playable = [s for s in seeds if not _guessed_right(strategy, references.get(s, []))][:strategy.max_tasks]
        t0 = time.perf_counter()
        outcomes = [_play(make_env, state, strategy, s, max_turns) for s in playable]
        paid = [s for s, o in zip(playable, outcomes) if o.paid]
        crashed = [o for o in outcomes if o.fault and not o.infra]
        played = max(1, len(playable))
        rows.append({
            "family": strategy.family, "strategy": strategy.name, "tasks": len(playable),
            "skipped_right_guess": tasks - len(playable), "paid": len(paid),
            "paid_fraction": len(paid) / played, "paid_seeds": paid[:10],
            "crashed": len(crashed), "infra": sum(o.infra for o in outcomes),
            "evidence": (crashed[0].fault if crashed else next((o.evidence for o in outcomes if o.paid),
                                                                outcomes[0].evidence if outcomes else ""))[:300],
            "seconds": round(time.perf_counter() - t0, 2),
        })
    if state.get("env") is not None:
        state["env"].close()
    oracle_paid = sum(o.paid for o in oracle) / tasks
    worst = max(rows, key=lambda r: r["paid_fraction"], default=None)
    failures = [f"{r['family']}/{r['strategy']} paid on {r['paid']}/{r['tasks']} tasks" for r in rows
                if r["paid_fraction"] > max_paid]
    failures += [f"{r['family']}/{r['strategy']}: the env raised on {r['crashed']} episodes ({r['evidence']})"
                 for r in rows if r["crashed"]]
    if oracle_paid < 1.0:
        why = next((o.fault or o.evidence for o in oracle if not o.paid), "")
        failures.append(f"the oracle was paid on {oracle_paid:.0%} of the tasks ({why[:200]})")
    summary = {
        "env": env_id, "tasks": tasks, "strategies": len(rows), "oracle_paid": oracle_paid,
        "worst_strategy": f"{worst['family']}/{worst['strategy']}" if worst else None,
        "worst_paid_fraction": worst["paid_fraction"] if worst else 0.0,
        "strategies_paid": sum(r["paid"] > 0 for r in rows), "crashes": sum(r["crashed"] for r in rows),
        "infra_faults": sum(r["infra"] for r in rows) + sum(o.infra for o in oracle),
        "max_paid": max_paid, "exempt": exempt, "passed": not failures, "failures": failures,
        "seconds": round(time.perf_counter() - start, 1),
    }
    return {"summary": summary, "details": rows}


def _guessed_right(strategy: Strategy, reference: list[str]) -> bool:
    """Whether a constant strategy's answer is the task's own (see `Strategy.right_guess`)."""
    return strategy.right_guess is not None and bool(reference) and strategy.right_guess(reference)


def _play(make_env, state: dict, strategy: Strategy, seed: int, max_turns: int) -> _Outcome:
    token = secrets.token_hex(6)
    if strategy.episodes == 2:
        planted = _guarded(make_env, state, lambda env: _episode(env, seed, strategy.play, token, "plant", max_turns))
        if planted.fault and not planted.infra:
            return planted
    return _guarded(make_env, state, lambda env: _episode(env, seed, strategy.play, token, "attack", max_turns))


__all__ = ["MAX_PAID", "run_audit"]
