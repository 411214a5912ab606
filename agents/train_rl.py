"""The RL stage: `cwm train rl --env cwm/Math-v0 --model CKPT|preset --algo grpo|ppo --workers N --group G`.

One update: the rollout pool (Ray actors, agents/rollout.py) samples `--tasks` groups of `--group` episodes
with the current weights; the learner (an RLlib LearnerGroup, agents/grpo.py or agents/ppo.py) takes one
update on them; the new weights go back to the workers through the object store, tagged with the version.
`RLRun.train` is the one training loop (this command, `cwm bench rl` and the demo all use it). The settings
and their flags are the dataclasses of agents/rl_args.py.

Layout of `--out DIR` (as the other stages): the final model and tokenizer (`from_pretrained(DIR)`),
`stage.json`, `metrics.jsonl` (one row per update: reward mean/std, pass rate, KL to the start, entropy,
response length, tokens/s, staleness, ...) and the same rows as TensorBoard event files (and W&B offline when
installed; agents/metrics.py), `trajectories.jsonl` (a few decoded episodes per update, for `cwm view DIR`),
`reward.png`, and `checkpoints/step-NNNNNN/` (model, tokenizer,
`trainer_state.pt` with the learner's optimizer state); a rerun with the same `--out` resumes from the newest.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from agents.cluster import env_spec, env_specs, start_ray
from agents.metrics import TRAJECTORIES, MetricsSink, TrajectorySampler
from agents.rl_args import RLArgs, add_rl_flags, rl_args_from
from cwm_envs.errors import UsageError

EVAL_SEED_BASE = 2 * 10**9  # reset seeds of held-out evaluation tasks (training draws seeds below 2**31 - 1)


# --- model ------------------------------------------------------------------------------------------------

def load_policy(spec: str, *, seed: int, value_head: bool, **sampling):
    """An LMPolicy from a model directory, or a fresh preset with a tokenizer trained on the env's text."""
    import torch

    from agents.policy import LMPolicy

    path = Path(spec)
    head = None
    if (path / "config.json").is_file():
        from model.config import load_model
        from model.tokenizer import load_tokenizer

        model, tok = load_model(path), load_tokenizer(path)
        if value_head:
            head = _value_head(model.config.hidden_size)
            if (path / "value_head.pt").is_file():
                head.load_state_dict(torch.load(path / "value_head.pt"))
    else:
        from model.config import PRESETS, TOKENIZER_VOCAB, build_model
        from model.tokenizer import train_tokenizer

        if spec not in PRESETS:
            raise UsageError(f"--model {spec!r} is neither a model directory (no config.json) nor a preset "
                             f"({', '.join(PRESETS)})")
        from cwm_envs.chat import REASONING_SYSTEM_PROMPT

        tok = train_tokenizer([REASONING_SYSTEM_PROMPT, "0123456789 +-*/=()\\boxed{} </think> What is"] * 4,
                              vocab_size=max(300, min(TOKENIZER_VOCAB.get(spec, 1024), 512)))
        torch.manual_seed(seed)
        model = build_model(spec, vocab_size=len(tok))
        head = _value_head(model.config.hidden_size) if value_head else None
    return LMPolicy(model, tok, value_head=head, **sampling)


def _value_head(hidden: int):
    import torch

    head = torch.nn.Linear(hidden, 1)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)  # values start at 0
    return head


# --- the run ----------------------------------------------------------------------------------------------

class RLRun:
    """Driver of one run: rollout pool + learner group + metrics and checkpoints."""

    def __init__(self, args: RLArgs):
        import torch

        from agents import grpo, ppo
        from agents.lm_module import build_learner_group
        from agents.rollout import RolloutPool
        from model.train_loop import resume_point

        self.args = args
        self.out = Path(args.out)
        self.out.mkdir(parents=True, exist_ok=True)
        specs = env_specs(args)
        for spec in specs:
            _check_env(spec.id, spec.kwargs)
        self.ckpt = resume_point(self.out) if args.resume else None
        if self.ckpt and (self.ckpt / "learners").is_dir() != (args.shard != "ddp"):  # before Ray starts
            was = "sharded" if (self.ckpt / "learners").is_dir() else "unsharded"
            raise UsageError(f"{self.ckpt} holds {was} learners: resume it with the --shard it was saved with "
                             "(a sharded one resumes on any --num-learners)")
        self.metrics = self.out / "metrics.jsonl"
        if not self.ckpt:  # a fresh run: nothing of an earlier one may show in its curves or samples
            for old in (self.metrics, self.out / TRAJECTORIES, *self.out.glob("events.out.tfevents.*")):
                old.unlink(missing_ok=True)
        self.evals: dict[str, dict] = {}  # held-out evaluations of this call, by tag ("start", "step20", "end")
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        torch.manual_seed(args.seed)
        u = args.update
        if not u.loss_rows:  # the constant normaliser: what an update draws, per optimizer step
            u = replace(u, loss_rows=max(1, args.tasks * args.group // u.minibatches))
        self.update_args = u
        self.algo, learner_cls = {"grpo": (grpo, grpo.GRPOLearner), "ppo": (ppo, ppo.PPOLearner)}[args.algo]
        self.sharded = args.shard != "ddp"
        if self.sharded:  # FSDP2 learners (agents/sharded.py): the learners read their sharding from `u`
            from agents import sharded

            u = sharded.shard_update(u, args.shard, shard_group=args.shard_group, cpu_offload=args.cpu_offload,
                                     activation_checkpointing=args.activation_checkpointing,
                                     mixed_precision=args.mixed_precision)
            learner_cls = sharded.SHARDED_LEARNERS[learner_cls]
        self.policy = load_policy(str(self.ckpt or args.model), seed=args.seed, value_head=args.algo == "ppo",
                                  temperature=u.temperature, top_p=args.top_p, max_new_tokens=u.max_new_tokens)

        self.started_ray = start_ray(args)
        self.learners = build_learner_group(learner_cls, self.policy.model.config, u, num_learners=args.num_learners,
                                            value_head=args.algo == "ppo", seed=args.seed,
                                            resources_per_learner=args.learner_resources)
        self.step, self.version, self.elapsed = 0, 0, 0.0
        start_weights = self.policy.get_weights()
        if self.ckpt:  # KL is measured to the start of the whole run, not of this resumption
            start_weights = _load_start(self.out / "start", self.policy)
        self._set_learner_weights(start_weights)
        self._on_learners(lambda learner: learner.snapshot_reference())
        if self.ckpt:
            self._restore(self.ckpt)
            for log in (self.metrics, self.out / TRAJECTORIES):  # a crash after the checkpoint logged updates
                _drop_rows_after(log, self.step)                  # that this run does again
        else:
            self._save_start()
        self.budgets = dict(max_turns=args.max_turns, max_episode_tokens=args.max_episode_tokens,
                            max_context=args.max_context or self.policy.model.config.max_position_embeddings)
        self.servers = None
        worker_policy, cpus = self.policy.spec(), 1
        if args.policy == "serve":  # one server per node, shared by the workers there; they only run envs
            from agents.serve import ServerPool

            self.servers = ServerPool(self.policy, self.version, start_weights if not self.ckpt else
                                      self.policy.get_weights())
            worker_policy, cpus = self.servers.policy_factory(), 0.25
        self.pool = RolloutPool(specs, worker_policy,
                                self.policy.get_weights() if args.policy != "serve" else None, version=self.version,
                                num_workers=args.workers, mode=args.mode, max_staleness=args.max_staleness,
                                seed=args.seed, cpus_per_worker=cpus, max_retries=args.worker_retries,
                                env_threads=args.env_threads, **self.budgets)
        self.sink = MetricsSink(self.out, _jsonable(asdict(args)))
        self.samples = TrajectorySampler(self.out, self.policy.decode, args.log_trajectories)
        if self.ckpt:
            self.pool.rng.bit_generator.state = self._pool_state["rng"]
            self.pool._group = self._pool_state["group"]
        eval_kwargs = args.eval_env_kwargs if args.eval_env_kwargs is not None else args.env_kwargs
        self.eval_pool = self.pool if eval_kwargs == args.env_kwargs and not args.env_mix else None
        self.eval_env = env_specs(replace(args, env_kwargs=eval_kwargs, env_mix={}))[0]

    # -- one update ------------------------------------------------------------------------------------

    def update(self) -> dict[str, Any]:
        from agents.lm_module import update_learners

        a = self.update_args
        t0 = time.perf_counter()
        trajs, st = self.pool.sample(self.args.tasks, self.args.group)
        _raise_if_all_failed(trajs, f"update {self.step + 1}")
        t1 = time.perf_counter()
        stale = [t.staleness(self.version) for t in trajs if t.ok]  # versions behind the weights we update
        cut = [t for t in trajs if t.ok and t.cut]
        train = [t for t in trajs if not (t.cut and self.args.on_cut == "drop")]
        multiple = a.minibatches * max(1, self.args.num_learners)
        arrays, info = self.algo.prepare_batch(train, a, multiple)
        learner: dict[str, float] = {}
        if arrays is not None:
            learner = update_learners(self.learners, arrays, minibatches=a.minibatches, epochs=a.epochs,
                                      updates_done=self.version)
            self.version += 1
        t2 = time.perf_counter()
        if arrays is not None:
            weights = self.learner_weights()
            if self.servers is not None:
                self.servers.set_weights(weights, self.version)
            self.pool.set_weights(weights if self.servers is None else {}, self.version)  # served: a version only
        t3 = time.perf_counter()
        self.step += 1

        ok = [t for t in trajs if t.ok]
        rewards = np.array([t.reward for t in ok]) if ok else np.zeros(0)
        self.samples.write(trajs, self.step)
        row = {
            "step": self.step, "version": self.version,
            "reward_mean": float(rewards.mean()) if len(rewards) else None,
            "reward_std": float(rewards.std()) if len(rewards) else None,
            "pass_rate": float((rewards > 0).mean()) if len(rewards) else None,
            "length_mean": float(np.mean([t.num_policy_tokens for t in ok])) if ok else None,
            "turns_mean": float(np.mean([len(t.turn_ends) for t in ok])) if ok else None,
            "kl_to_start": learner.get("kl_to_start"), "entropy": learner.get("entropy"),
            "policy_loss": learner.get("policy_loss"), "clip_frac": learner.get("clip_frac"),
            "vf_loss": learner.get("vf_loss"), "grad_norm": learner.get("gradients_default_optimizer_global_norm"),
            "tokens_per_s": st.policy_tokens / max(st.wall_s, 1e-9),
            "env_steps_per_s": st.env_steps / max(st.wall_s, 1e-9),
            "staleness_mean": float(np.mean(stale)) if stale else 0.0, "staleness_max": int(max(stale, default=0)),
            "staleness_hist": {str(k): int(v) for k, v in zip(*np.unique(stale, return_counts=True))} if stale else {},
            "cut": len(cut), "dropped_cut": len(cut) if self.args.on_cut == "drop" else 0,
            "failed": st.failed, "worker_restarts": st.worker_restarts, "episodes_lost": st.episodes_lost,
            "episodes": len(trajs), "trained_rows": info.get("rows", 0), "skipped_groups": info.get("skipped_groups", 0),
            "sample_s": t1 - t0, "update_s": t2 - t1, "sync_s": t3 - t2,
        }
        return {k: v for k, v in row.items() if v is not None}

    def train(self, on_update: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
        """Update until `args.steps` updates or `args.minutes` of wall clock, whichever ends first (a resumed run
        counts the updates and time it already had); returns this call's rows.

        Each row goes to metrics.jsonl, then to `on_update` (a progress bar, a bench's log); held-out evaluation
        every `eval_every` updates and a checkpoint every `save_every`, as the args say.
        """
        a = self.args
        budget = a.minutes * 60 if a.minutes else math.inf
        t_start = time.perf_counter() - self.elapsed
        rows = []
        while self.step < a.steps and time.perf_counter() - t_start < budget:
            row = self.update()
            self.elapsed = time.perf_counter() - t_start
            row["elapsed_s"] = round(self.elapsed, 2)
            rows.append(row)
            self.record(row)
            if on_update:
                on_update(row)
            if a.eval_every and a.eval_tasks and self.step % a.eval_every == 0:
                self.evaluate_and_record(f"step{self.step}")
            if a.save_every and self.step % a.save_every == 0:
                self.save_checkpoint()
        return rows

    def record(self, row: dict) -> None:
        with self.metrics.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        self.sink.log(row)

    def evaluate_and_record(self, tag: str) -> dict[str, float]:
        """Held-out pass rates, sampled and greedy, on `args.eval_tasks` tasks: to metrics.jsonl and `evals[tag]`."""
        self.sync_eval_pool()
        res = {"step": self.step, "eval_sampled": self.evaluate(self.args.eval_tasks, greedy=False)["pass_rate"],
               "eval_greedy": self.evaluate(self.args.eval_tasks, greedy=True)["pass_rate"]}
        self.record(res)
        self.evals[tag] = res
        return res

    def evaluate(self, tasks: int, greedy: bool) -> dict[str, float]:
        """Held-out tasks (reset seeds from EVAL_SEED_BASE): pass rate, one sample each (or greedy)."""
        pool = self.eval_pool or self._eval_pool()
        trajs, _ = pool.sample(tasks, 1, greedy=greedy, seeds=[EVAL_SEED_BASE + i for i in range(tasks)])
        _raise_if_all_failed(trajs, "the held-out evaluation")
        ok = [t for t in trajs if t.ok]
        return {"pass_rate": sum(t.reward > 0 for t in ok) / max(1, len(ok)),
                "reward_mean": float(np.mean([t.reward for t in ok])) if ok else 0.0, "tasks": len(ok)}

    def _eval_pool(self):
        """Workers for held-out tasks posed with other env settings than training's. They hold no Ray CPU: they
        run between updates, while the training workers wait (with their CPUs, a local Ray sized for the
        training workers could not place them)."""
        from agents.rollout import RolloutPool

        self.eval_pool = RolloutPool([self.eval_env], self.policy.spec(), self.policy.get_weights(),
                                     version=self.version, num_workers=self.args.workers, seed=self.args.seed,
                                     cpus_per_worker=0, max_retries=self.args.worker_retries,
                                     env_threads=self.args.env_threads, **self.budgets)
        return self.eval_pool

    def sync_eval_pool(self) -> None:
        if self.eval_pool is not None and self.eval_pool is not self.pool:
            self.eval_pool.set_weights(self.learner_weights(), self.version)

    # -- checkpoints -----------------------------------------------------------------------------------

    # -- the learners' weights: one copy per learner, or slices that every sharded learner must help gather --

    def learner_weights(self) -> dict:
        """The learners' current weights, whole, in the policy layout (`lm.*`, `value_head.*`)."""
        if self.sharded:
            from agents import sharded

            return sharded.gather_lm_weights(self.learners)
        from agents.lm_module import get_lm_weights

        return get_lm_weights(self.learners)

    def _set_learner_weights(self, weights: dict) -> None:
        if self.sharded:
            from agents import sharded

            sharded.set_lm_weights(self.learners, weights)
        else:
            from agents.lm_module import set_lm_weights

            set_lm_weights(self.learners, weights)

    def _on_learners(self, func) -> None:
        if self.sharded:
            from agents import sharded

            sharded.on_every_learner(self.learners, func)
        else:
            self.learners.foreach_learner(func)

    def current_policy(self):
        self.policy.set_weights(self.learner_weights(), self.version)
        return self.policy

    def save_model(self, path: Path) -> None:
        import torch

        policy = self.current_policy()
        policy.model.save_pretrained(path)
        policy.tokenizer.save_pretrained(path)
        if policy.value_head is not None:
            torch.save(policy.value_head.state_dict(), path / "value_head.pt")

    def save_checkpoint(self) -> Path:
        import torch

        from model.train_loop import checkpoints

        root = self.out / "checkpoints"
        final, tmp = root / f"step-{self.step:06d}", root / f".tmp-step-{self.step:06d}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.save_model(tmp)
        learner_state = None  # sharded: every learner writes its slices of weights and Adam state (DCP)
        if self.sharded:
            from agents import sharded

            sharded.save_learners(self.learners, tmp / "learners")
        else:
            learner_state = self.learners.get_state()
        torch.save({"step": self.step, "version": self.version, "elapsed": self.elapsed, "learner": learner_state,
                    "pool": {"rng": self.pool.rng.bit_generator.state, "group": self.pool._group},
                    "args": _jsonable(asdict(self.args))}, tmp / "trainer_state.pt")
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in checkpoints(self.out)[: -self.args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return final

    def _restore(self, ckpt: Path) -> None:
        import torch

        state = torch.load(ckpt / "trainer_state.pt", weights_only=False)
        if self.sharded:
            from agents import sharded

            sharded.load_learners(self.learners, ckpt / "learners")
        else:
            self.learners.set_state(state["learner"])
        self.step, self.version, self.elapsed = state["step"], state["version"], state["elapsed"]
        self._pool_state = state["pool"]

    def _save_start(self) -> None:
        import torch

        start = self.out / "start"
        if not (start / "config.json").is_file():
            self.policy.model.save_pretrained(start)
            if self.policy.value_head is not None:
                torch.save(self.policy.value_head.state_dict(), start / "value_head.pt")

    def close(self) -> None:
        import ray

        for pool in {id(p): p for p in (self.pool, self.eval_pool) if p is not None}.values():
            pool.close()
        if self.servers is not None:
            self.servers.close()
        self.learners.shutdown()
        self.sink.close()
        if self.started_ray:
            ray.shutdown()


def _load_start(path: Path, policy) -> dict:
    import torch

    from model.config import load_model

    lm = load_model(path)
    weights = {f"lm.{k}": v for k, v in lm.state_dict().items()}
    if (path / "value_head.pt").is_file():
        weights.update({f"value_head.{k}": v for k, v in torch.load(path / "value_head.pt").items()})
    return weights


def _drop_rows_after(path: Path, step: int) -> None:
    """Keep the JSON lines of `path` up to update `step` (a resumed run writes the later ones again), and
    none that a crash cut short."""
    if not path.is_file():
        return
    lines = path.read_text().splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and row.get("step", 0) <= step:
            kept.append(line)
    if len(kept) != len(lines):
        path.write_text("".join(kept))


def _jsonable(d: dict) -> dict:
    return json.loads(json.dumps(d, default=str))


def _check_env(env_id: str, kwargs: dict) -> None:
    """Fail fast, with one line, on an unknown env id or bad kwargs (before starting Ray). A Docker env is
    only looked up: this process need not have Docker (its workers run on the Docker nodes)."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from agents.cluster import needs_docker

    if needs_docker(env_id, kwargs):
        if env_id not in gymnasium.registry:
            raise UsageError(f"cannot make env {env_id!r}: no such registered env")
        return
    try:
        gymnasium.make(env_id, **kwargs).close()
    except gymnasium.error.Error as exc:
        raise UsageError(f"cannot make env {env_id!r}: {exc}") from None
    except TypeError as exc:
        raise UsageError(f"bad --env-kwargs for {env_id}: {exc}") from None


def plot_rewards(metrics_path: Path, png: Path, title: str = "") -> None:
    """reward.png: training reward and pass rate per update, held-out pass rates where evaluated."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()]
    fig, ax = plt.subplots(figsize=(6, 4))
    train = [r for r in rows if "reward_mean" in r]
    if train:
        ax.plot([r["step"] for r in train], [r["reward_mean"] for r in train], lw=1, label="train reward (mean)")
        ax.plot([r["step"] for r in train], [r["pass_rate"] for r in train], lw=1, label="train pass rate")
    for key, style in (("eval_sampled", "o-"), ("eval_greedy", "s--")):
        pts = [r for r in rows if key in r]
        if pts:
            ax.plot([r["step"] for r in pts], [r[key] for r in pts], style, label=f"held-out {key[5:]} pass rate")
    ax.set_xlabel("update")
    ax.set_ylabel("reward / pass rate")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def evaluate_only(args: RLArgs) -> dict[str, Any]:
    """`--steps 0` with a policy the learner cannot train (openai:URL, oracle, noisy:P, ...): the held-out
    rollouts alone, through the same workers and budgets, to stage.json and metrics.jsonl."""
    import functools

    from agents.policies import Sampling, make_policy
    from agents.rollout import RolloutPool

    if not args.eval_tasks:
        raise UsageError(f"--policy {args.policy} only evaluates: give --eval-tasks N")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    _check_env(args.env, args.env_kwargs)
    eval_kwargs = args.eval_env_kwargs if args.eval_env_kwargs is not None else args.env_kwargs
    tokenizer = None
    if (Path(args.model) / "config.json").is_file():  # the served model's tokenizer: token ids in and out
        from model.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(args.model)
    u = args.update
    sampling = Sampling(temperature=u.temperature, top_p=args.top_p, max_tokens=u.max_new_tokens, seed=args.seed)
    make_policy(args.policy, sampling, tokenizer=tokenizer)  # here first: an unreachable server is one clear line
    factory = functools.partial(make_policy, args.policy, sampling, tokenizer=tokenizer)
    encode = (lambda text: tokenizer.encode(text, add_special_tokens=False)) if tokenizer is not None else None
    started = start_ray(args)
    pool = RolloutPool([env_spec(args.env, eval_kwargs)], factory, num_workers=args.workers, seed=args.seed,
                       env_threads=args.env_threads,
                       cpus_per_worker=0.5, encode=encode, max_turns=args.max_turns, max_context=args.max_context,
                       max_episode_tokens=args.max_episode_tokens)
    try:
        res: dict[str, Any] = {"step": 0}
        seeds = [EVAL_SEED_BASE + i for i in range(args.eval_tasks)]
        for tag, greedy in (("eval_sampled", False), ("eval_greedy", True)):
            trajs, _ = pool.sample(args.eval_tasks, 1, greedy=greedy, seeds=seeds)
            ok = [t for t in trajs if t.ok]
            res[tag] = sum(t.reward > 0 for t in ok) / max(1, len(ok))
            res[tag.replace("eval_", "cut_")] = sum(t.cut is not None for t in ok)
            res[tag.replace("eval_", "failed_")] = len(trajs) - len(ok)
    finally:
        pool.close()
        if started:
            import ray

            ray.shutdown()
    (out / "metrics.jsonl").write_text(json.dumps(res) + "\n")
    summary = {"stage": "rl", "args": _jsonable(asdict(args)), "evaluation_only": True, "eval_end": res,
               "steps": 0, "elapsed_s": 0.0, "first_reward": None, "last_reward": None}
    (out / "stage.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary


def _raise_if_all_failed(trajs, what: str) -> None:
    """A batch in which every episode failed (an env that cannot be made, a dead server) is an infrastructure
    fault: stop with its first error rather than log updates that learn nothing and evaluations of 0."""
    if trajs and not any(t.ok for t in trajs):
        from cwm_envs.errors import InfraError

        raise InfraError(f"every episode of {what} failed ({len(trajs)} episodes); the first: {trajs[0].error}")


def run(args: RLArgs, on_update: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """The stage: held-out evaluation, training, evaluation, final checkpoint and model, reward.png; returns
    the stage summary (also stage.json). A policy the learner cannot train only evaluates (`evaluate_only`)."""
    from agents.rl_args import TRAINABLE, policy_kind

    if policy_kind(args.policy) not in TRAINABLE:
        return evaluate_only(args)
    rl = RLRun(args)
    summary: dict[str, Any] = {"stage": "rl", "args": _jsonable(asdict(args)), "resumed_from": str(rl.ckpt or "")}
    try:
        if args.eval_tasks and not rl.ckpt:
            rl.evaluate_and_record("start")
        rows = rl.train(on_update)
        if args.eval_tasks:
            rl.evaluate_and_record("end")
        rl.save_checkpoint()
        rl.save_model(rl.out)
        plot_rewards(rl.metrics, rl.out / "reward.png", title=f"{args.algo} on {args.env}")
        summary.update({f"eval_{tag}": res for tag, res in rl.evals.items()})
        summary.update({
            "steps": rl.step, "version": rl.version, "elapsed_s": round(rl.elapsed, 1),
            "updates_this_run": len(rows),
            "first_reward": rows[0].get("reward_mean") if rows else None,
            "last_reward": rows[-1].get("reward_mean") if rows else None,
            "pool": asdict(rl.pool.stats),
        })
        (rl.out / "stage.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    finally:
        rl.close()
    return summary


# --- command line -----------------------------------------------------------------------------------------

def cmd_rl(ns) -> int:
    """`cwm train rl`: one run, with a progress bar, then its summary line."""
    from tqdm import tqdm

    args = rl_args_from(ns)
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    with tqdm(total=args.steps, desc="rl", unit="update", disable=not show, dynamic_ncols=True) as bar:
        def progress(row: dict) -> None:
            if bar.n == 0 and row["step"] > 1:  # resumed: count from there, so the ETA is this run's pace
                bar.n = bar.initial = bar.last_print_n = row["step"] - 1
            bar.update(row["step"] - bar.n)
            post = {"reward": f"{row.get('reward_mean', float('nan')):.3f}",
                    "pass": f"{row.get('pass_rate', float('nan')):.2f}", "episodes": row["episodes"],
                    "tok/s": f"{row['tokens_per_s']:.0f}"}
            if args.minutes:  # the wall-clock budget may end the run before --steps does (elapsed_s: resumes too)
                post["budget_left"] = f"{max(0.0, args.minutes - row['elapsed_s'] / 60):.1f}min"
            bar.set_postfix(post)

        s = run(args, progress)
    if s.get("evaluation_only"):
        e = s["eval_end"]
        print(f"rl: evaluation only ({args.policy}): held-out pass rate sampled {e['eval_sampled']:.3f}, greedy "
              f"{e['eval_greedy']:.3f} on {args.eval_tasks} tasks -> {args.out}")
        return 0
    line = (f"rl: {s['steps']} updates in {s['elapsed_s']} s, train reward {s['first_reward']} -> {s['last_reward']}")
    if "eval_end" in s:
        start = s.get("eval_start", {})
        line += (f"; held-out pass rate sampled {start.get('eval_sampled', '?')} -> {s['eval_end']['eval_sampled']}, "
                 f"greedy {start.get('eval_greedy', '?')} -> {s['eval_end']['eval_greedy']}")
    print(line + f" -> {args.out}")
    return 0


def add_parser(train_group) -> None:
    """Add `cwm train rl` to the `cwm train` subcommands: one flag per field of RLArgs and of the update settings."""
    p = train_group.add_parser("rl", help="GRPO or PPO with Ray rollouts in a registered env",
                               description=__doc__.split("\n\n")[0])
    add_rl_flags(p)
    p.set_defaults(func=cmd_rl)
