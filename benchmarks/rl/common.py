"""What the RL benches share: the settings (easy math in one turn; MathTool tasks that need the tool), the SFT
warm start, held-out evaluation, and the RLArgs every bench trains with."""
from __future__ import annotations

import contextlib
import io
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from agents.rl_args import ALGOS, RLArgs, UpdateArgs
from benchmarks.report import pass_at_k

# torch, Ray, transformers and TRL are imported inside the functions that use them: `cwm` imports these modules
# to build its parsers, and `cwm --help` should not wait for them.

MATH = "cwm/Math-v0"
# Single-digit addition/subtraction. Thinking off and the short prompt ("Wrap your answer in $\boxed{}$.") keep
# a prompt near 20 tokens instead of ~80 with the reasoning system prompt: on a 2-core CPU every update's
# sampling and learner pass scale with it. The reward is the env's own (+1/-1, exactly one \boxed{}).
EASY = {"source": "generated", "kinds": ["add_sub"], "difficulty": 0, "think": False, "prompt_style": "direct"}
TOOL_ENV = "cwm/MathTool-v0"
# MathTool tasks a ~1M-parameter model cannot do in its head (a product of a 3-digit and a 2-digit number, a
# power with a 3-digit exponent modulo a 2-digit number) but can hand to the Python tool and copy back:
# `<tool: python>\nprint(a * b)\n</tool>`, then `\boxed{N}`. Every digit of the call and of the answer is
# copied, and copying is what the tiny model learns slowly: with 4-digit products (difficulty 1) its calibration
# accuracy was still 0.00 after 1000 SFT steps. Thinking off and the short prompt, as EASY; three turns at most.
TOOL = {"source": "generated", "kinds": ["needs_tool"], "difficulty": 0, "think": False, "prompt_style": "direct",
        "max_turns": 3}


@dataclass(frozen=True)
class Setting:
    """One bench setting: the env, its kwargs, the per-turn token budget (a tool call such as
    `print(pow(93, 5041, 879))` takes 28 tokens), tasks per update, the SFT episodes, and, for the tool setting,
    the share of SFT demonstrations that call the tool (the others box the answer directly: a tiny model learns
    from them to guess, and RL has a better behaviour to find)."""

    env: str
    kwargs: dict
    max_new_tokens: int
    tasks: int
    tool_share: float | None = None
    sft_episodes: int = 1000
    sft_steps: tuple[int, int, int] = (150, 10, 400)  # SFT steps before the first check, between checks, at most
    sft_seq_len: int = 256  # rows of 4096 tokens a step either way; long episodes pack better in longer rows


# (tool setting: 8 tasks x 8 samples per update; each live MathTool episode holds its own sandbox, ~30 MB)
SETTINGS = {MATH: Setting(MATH, EASY, 32, 32),
            TOOL_ENV: Setting(TOOL_ENV, TOOL, 32, 8, tool_share=0.3, sft_episodes=4000, sft_steps=(400, 100, 2000),
                              sft_seq_len=512)}
LR = UpdateArgs.lr  # the RL default, measured here: 5e-4 (the probe's) and 2e-4 rise, then fall; 1e-4 keeps rising


def noise_band(problems: int) -> float:
    """One standard error of an accuracy near 0.5 on `problems` problems (0.035 on 200)."""
    return (0.25 / problems) ** 0.5


def rl_args(out: Path, model: Path, seed: int, minutes: float | None, steps: int, workers: int, threads: int = 1,
            lr: float = LR, algo: str = "grpo", env: str = MATH, mode: str = "sync") -> RLArgs:
    """The benches' RL run: the setting's tasks x 8 samples per update, 2 minibatches, its token budget."""
    st = SETTINGS[env]
    return RLArgs(out=out, env=st.env, env_kwargs=dict(st.kwargs), model=str(model), algo=algo,
                  update=ALGOS[algo](lr=lr, minibatches=2, max_new_tokens=st.max_new_tokens), workers=workers,
                  group=8, tasks=st.tasks, steps=steps, minutes=minutes, seed=seed, resume=False, num_cpus=2,
                  torch_threads=threads, mode=mode)


def setup_of(args: RLArgs) -> dict:
    """The settings a report lists, read from the run's own RLArgs."""
    return {"env": args.env, "env_kwargs": args.env_kwargs, "tasks": args.tasks, "group": args.group,
            "minibatches": args.update.minibatches, "lr": args.update.lr,
            "warmup_updates": args.update.warmup_updates}


# --- the warm start: tokenizer + cwm-micro + short SFT ----------------------------------------------------

def env_texts(n: int, seed: int = 0, env: str = MATH) -> list[str]:
    """The observations and oracle actions of `n` episodes of the setting (what the tokenizer is trained on)."""
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    e = gymnasium.make(env, **SETTINGS[env].kwargs)
    texts = []
    for i in range(n):
        obs, _ = e.reset(seed=seed + i)
        for action in e.unwrapped.reference_episode(e.unwrapped.task):
            texts += [obs, action]
            obs, *_ = e.step(action)
        texts.append("\\boxed{" + e.unwrapped.task.answer + "}")
    e.close()
    return texts


def tool_mix(share: float):
    """An oracle's `respond` for the tool setting: on a share of the tasks (by task id) the env's tool-using
    episode, on the others the answer boxed at once (what `MathTool-v0`'s oracle does without the tool)."""
    def respond(turn, hint) -> str:
        if zlib.crc32(hint.task.id.encode()) % 1000 < share * 1000:
            return hint.action
        return "\\boxed{" + hint.task.answer + "}"
    return respond


def demonstrations(env: str):
    """SFT rows of the setting: the env's oracle, or for the tool setting the tool/no-tool mix (`tool_mix`),
    gathered by a rollout worker (so laid out exactly as RL lays out an episode)."""
    st = SETTINGS[env]
    if st.tool_share is None:
        return None
    from agents.policy import OraclePolicy
    from agents.rollout import EnvSpec, rollout_documents

    make = rollout_documents([EnvSpec(env, kwargs=dict(st.kwargs))],
                             lambda tok: OraclePolicy(lambda s: tok.encode(s, add_special_tokens=False),
                                                      tool_mix(st.tool_share)), env_threads=4)
    made: dict = {}  # the warm start resumes SFT chunk by chunk: the same rows each time, gathered once

    def documents(tokenizer, episodes: int, seed: int):
        if (episodes, seed) not in made:
            made[(episodes, seed)] = make(tokenizer, episodes, seed)
        return made[(episodes, seed)]
    return documents


CALIBRATION_SEED_BASE = 3 * 10**9  # reset seeds of the problems that decide when the warm start is warm enough


def warm_start(out: Path, seed: int, target: float | None = 0.3, sft_lr: float = 1.5e-3, first: int | None = None,
               chunk: int | None = None, max_steps: int | None = None, quiet: bool = True, env: str = MATH) -> Path:
    """cwm-micro with a tokenizer trained on the env's text, SFT'd on oracle episodes until its sampled accuracy
    on calibration problems reaches `target` (checked every `chunk` steps after `first`), or for `first`
    steps when `target` is None. Returns the model directory (save_pretrained), the RL stage's start.

    The SFT learning rate is constant after warm-up so that the run can be extended chunk by chunk; how many
    steps a seed needs varies (the accuracy rises steeply once the model starts to add).
    """
    import torch

    from model import sft
    from model.config import TOKENIZER_VOCAB, build_model
    from model.tokenizer import train_tokenizer
    from model.train_loop import TrainArgs

    out = Path(out)
    given = (first, chunk, max_steps)
    first, chunk, max_steps = (d if g is None else g for g, d in zip(given, SETTINGS[env].sft_steps))
    done = out / "sft" / "warm_start.json"
    if done.is_file():
        return out / "sft"
    if not (out / "base" / "config.json").is_file():
        tok = train_tokenizer(env_texts(400, env=env), vocab_size=TOKENIZER_VOCAB["cwm-micro"])
        torch.manual_seed(seed)
        model = build_model("cwm-micro", vocab_size=len(tok))
        model.save_pretrained(out / "base")
        tok.save_pretrained(out / "base")
    steps, history = first, []
    documents = demonstrations(env)
    seq_len = SETTINGS[env].sft_seq_len
    while True:
        args = TrainArgs(out=out / "sft", max_steps=steps, batch_size=4096 // seq_len, seq_len=seq_len, lr=sft_lr,
                         min_lr_ratio=1.0, warmup_steps=5, eval_every=10**9, eval_rows=0, save_every=10**9,
                         keep_checkpoints=1, log_every=10, seed=seed, resume=True)
        with silence(quiet):
            sft.run(args, str(out / "base"), env, episodes=SETTINGS[env].sft_episodes, env_kwargs=SETTINGS[env].kwargs,
                    eval_episodes=0, documents=documents)
        if target is None:
            break
        acc = calibration_accuracy(out / "sft", env=env)
        history.append({"steps": steps, "sampled": acc})
        print(f"  warm start: {steps} SFT steps, calibration sampled accuracy {acc:.2f} (target {target})", flush=True)
        if acc >= target or steps >= max_steps:
            break
        steps += chunk
    done.write_text(json.dumps({"steps": steps, "target": target, "history": history}) + "\n")
    return out / "sft"


def calibration_accuracy(model_dir: Path, problems: int = 100, samples: int = 4, env: str = MATH) -> float:
    """Sampled accuracy on calibration problems, in this process (no Ray needed for a few hundred episodes)."""
    if env != MATH:  # multi-turn episodes, a sandbox each: fewer of them
        problems, samples = 64, 2
    from agents.policy import LMPolicy
    from agents.rollout import EnvSpec, RolloutWorker, draw_requests

    st = SETTINGS[env]
    policy = LMPolicy.from_pretrained(model_dir, max_new_tokens=st.max_new_tokens)
    worker = RolloutWorker([EnvSpec(env, kwargs=dict(st.kwargs))], policy.spec(), policy.get_weights(),
                           env_threads=4 if env != MATH else 1)
    seeds = [CALIBRATION_SEED_BASE + i for i in range(problems)]
    trajs, _ = worker.run(draw_requests(None, [1.0], problems, samples, seeds=seeds, env=0), sample_seed=0)
    worker.close()
    return float(np.mean([t.ok and t.reward > 0 for t in trajs]))


def silence(on: bool = True):
    """Silence a stage's own prints (the benchmark prints its own lines)."""
    return contextlib.redirect_stdout(io.StringIO()) if on else contextlib.nullcontext()


# --- held-out evaluation ------------------------------------------------------------------------------------

def heldout(pool, problems: int, samples: int = 8) -> dict[str, float]:
    """Accuracy on held-out problems (reset seeds from EVAL_SEED_BASE): sampled (mean over `samples` draws),
    greedy (one argmax answer), and pass@`samples`."""
    return heldout_detail(pool, problems, samples)[0]


def heldout_detail(pool, problems: int, samples: int = 8) -> tuple[dict[str, float], dict[str, list[float]]]:
    """`heldout`, plus each problem's sampled and greedy accuracy in reset-seed order (for paired comparisons
    of two models on the same problems)."""
    from agents.train_rl import EVAL_SEED_BASE

    seeds = [EVAL_SEED_BASE + i for i in range(problems)]
    # a few problems at a time where every live episode holds a sandbox (MathTool): bounded processes and memory
    step = problems if pool.env_specs[0].id == MATH else 8
    sampled, greedy = [], []
    for k in range(0, problems, step):
        sampled += pool.sample(len(seeds[k:k + step]), samples, seeds=seeds[k:k + step])[0]
        greedy += pool.sample(len(seeds[k:k + step]), 1, seeds=seeds[k:k + step], greedy=True)[0]
    by_task: dict[int, list[bool]] = {}
    for t in sampled:
        by_task.setdefault(t.seed, []).append(t.ok and t.reward > 0)
    greedy_by_task = {t.seed: float(t.ok and t.reward > 0) for t in greedy}
    per_problem = {"sampled": [float(np.mean(by_task[s])) for s in sorted(by_task)],
                   "greedy": [greedy_by_task[s] for s in sorted(greedy_by_task)]}
    summary = {
        "sampled": float(np.mean([c for cs in by_task.values() for c in cs])),
        "greedy": float(np.mean(per_problem["greedy"])),
        f"pass@{samples}": float(np.mean([pass_at_k(len(cs), sum(cs), samples) for cs in by_task.values()])),
        "tool_rate": float(np.mean([t.ok and "<tool: python>" in t.text for t in sampled])),  # sampled episodes
    }
    return summary, per_problem
