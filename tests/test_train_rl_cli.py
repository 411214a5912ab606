"""`cwm train rl` through a subprocess with a tiny budget: outputs, resume, PPO, and user errors; its flags are
the settings dataclasses, one each, and parse back into the same objects."""
import json
import subprocess
import sys
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import pytest

from agents.rl_args import ALGOS, RLArgs
from cwm_envs.cli import main

CWM = [sys.executable, "-m", "cwm_envs.cli"]
EASY = '{"source": "generated", "kinds": ["add_sub"], "difficulty": 0}'


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A one-layer cwm-micro with a tokenizer trained on the env's text, saved as a model directory."""
    import gymnasium
    import torch

    import cwm_envs  # noqa: F401  (registers the cwm/* ids)
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    env = gymnasium.make("cwm/Math-v0", **json.loads(EASY))
    texts = [env.reset(seed=i)[0] for i in range(20)] + ["The answer is 7.\n</think>\n\\boxed{7}"] * 5
    env.close()
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model")
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def rl(out, model_dir, *extra):
    cmd = CWM + ["train", "rl", "--env", "cwm/Math-v0", "--env-kwargs", EASY, "--model", str(model_dir),
                 "--tasks", "2", "--group", "2", "--workers", "1", "--max-new-tokens", "8", "--num-cpus", "2", "--torch-threads", "1",
                 "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


def rows(out):
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.ray
def test_grpo_run_writes_metrics_plot_checkpoints_and_resumes(tmp_path, model_dir):
    out = tmp_path / "run"
    # held-out tasks posed with their own env settings go through a second pool, which must fit beside the
    # training workers on a local Ray sized for them (it did not: the straggler bench could not start)
    other = '{"source": "generated", "kinds": ["add_sub"], "difficulty": 1}'
    done = rl(out, model_dir, "--steps", "2", "--eval-tasks", "4", "--workers", "2", "--eval-env-kwargs", other)
    assert done.returncode == 0, done.stderr[-2000:]
    train = [r for r in rows(out) if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2]
    for key in ("reward_mean", "reward_std", "pass_rate", "tokens_per_s", "staleness_mean", "episodes"):
        assert key in train[0]
    assert all(r["episodes"] == 4 for r in train)
    evals = [r for r in rows(out) if "eval_greedy" in r]
    assert [r["step"] for r in evals] == [0, 2] and all(0 <= r["eval_sampled"] <= 1 for r in evals)
    assert (out / "reward.png").stat().st_size > 0 and (out / "config.json").is_file()
    assert (out / "checkpoints" / "step-000002" / "trainer_state.pt").is_file()
    assert "held-out pass rate" in done.stdout
    assert list(out.glob("events.out.tfevents.*"))                 # TensorBoard, beside metrics.jsonl
    logged = lambda: [json.loads(line)["step"] for line in (out / "trajectories.jsonl").read_text().splitlines()]  # noqa: E731  (a one-line helper)
    assert logged() == [1] * 4 + [2] * 4                            # --log-trajectories 4 of the 4 episodes

    again = rl(out, model_dir, "--steps", "3", "--progress", "--minutes", "30")
    assert again.returncode == 0, again.stderr[-2000:]
    bar = again.stderr.replace("\r", "\n").splitlines()
    assert any("3/3" in line and "update" in line and "budget_left" in line for line in bar), bar[-5:]  # forced on
    stage = json.loads((out / "stage.json").read_text())
    assert stage["resumed_from"].endswith("step-000002") and stage["steps"] == 3 and stage["updates_this_run"] == 1
    assert [r["step"] for r in rows(out) if "reward_mean" in r] == [1, 2, 3]
    assert logged() == [1] * 4 + [2] * 4 + [3] * 4                  # a resumed run appends


@pytest.mark.ray
def test_a_batch_in_which_every_episode_failed_stops_the_run_with_its_error(tmp_path, model_dir):
    """An env registered only in the driver cannot be made by the rollout workers: every episode fails. The run
    used to go on, logging updates that learnt nothing (the straggler bench reported 0.07 s per update)."""
    import gymnasium

    from agents.grpo import GRPOArgs
    from agents.train_rl import run
    from cwm_envs.errors import InfraError

    gymnasium.register(id="cwmtest/DriverOnly-v0", entry_point="cwm_envs.envs.math_env:MathEnv")
    args = RLArgs(out=tmp_path / "run", env="tests.test_train_rl_cli:cwmtest/DriverOnly-v0",
                  env_kwargs=json.loads(EASY), model=str(model_dir), update=GRPOArgs(max_new_tokens=8), tasks=2,
                  group=2, workers=1, steps=2, num_cpus=2, torch_threads=1)
    with pytest.raises(InfraError, match=r"every episode of update 1 failed \(4 episodes\); the first: NamespaceNotFound"):
        run(args)


@pytest.mark.slow
@pytest.mark.ray
def test_async_ppo_run_trains_the_value_head_within_the_staleness_bound(tmp_path, model_dir):
    out = tmp_path / "ppo"
    done = rl(out, model_dir, "--algo", "ppo", "--steps", "3", "--mode", "async", "--max-staleness", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    train = [r for r in rows(out) if "reward_mean" in r]
    assert len(train) == 3 and all("vf_loss" in r for r in train)
    assert all(r["staleness_max"] <= 1 for r in train) and any(r["staleness_max"] == 1 for r in train)
    assert all(sum(r["staleness_hist"].values()) == r["episodes"] for r in train)
    assert (out / "value_head.pt").is_file()


def test_a_served_policy_trains_async_with_weights_pushed_to_the_shared_server(tmp_path, model_dir):
    """--policy serve: the workers sample from one `cwm serve` on the node (the weight push itself:
    tests/test_rollout.py); the versions its choices carry are what the staleness histogram counts."""
    out = tmp_path / "served"
    done = rl(out, model_dir, "--policy", "serve", "--mode", "async", "--max-staleness", "1", "--steps", "3")
    assert done.returncode == 0, done.stderr[-2000:]
    train = [r for r in rows(out) if "reward_mean" in r]
    assert [r["step"] for r in train] == [1, 2, 3] and all(r["episodes"] == 4 for r in train)
    for r in train:
        assert sum(r["staleness_hist"].values()) == 4 and max(int(k) for k in r["staleness_hist"]) <= 1
    assert "cut" in train[0] and train[-1]["failed"] == 0


def test_cut_episodes_are_paid_the_failure_reward_and_dropped_on_request(tmp_path, model_dir):
    """--max-context shorter than every prompt: each episode is cut before its first turn, paid the env's
    failure reward (-1 under CWM's scheme: never 0 by accident) and, with --on-cut drop, left out of the update."""
    out = tmp_path / "drop"
    done = rl(out, model_dir, "--steps", "1", "--max-context", "8", "--on-cut", "drop")
    assert done.returncode == 0, done.stderr[-2000:]
    (row,) = [r for r in rows(out) if "reward_mean" in r]
    assert row["cut"] == row["dropped_cut"] == row["episodes"] == 4
    assert row["reward_mean"] == -1.0 and row["trained_rows"] == 0 and row["version"] == 0


def _dead_owner_containers(since: float) -> list[str]:
    """cwm-envs containers created after `since` whose owner process is gone: leaked ones (other runs may be
    using the engine at the same time: their containers have live owners)."""
    import os
    from datetime import datetime

    fmt = '{{.ID}} {{.CreatedAt}} {{.Label "cwm-envs.owner-pid"}}'
    out = subprocess.run(["docker", "ps", "-a", "--filter", "label=cwm-envs", "--format", fmt],
                         capture_output=True, text=True, timeout=60).stdout
    leaked = []
    for line in out.splitlines():
        cid, day, clock, zone, _, pid = line.split()
        created = datetime.strptime(f"{day} {clock} {zone}", "%Y-%m-%d %H:%M:%S %z").timestamp()
        if created >= since and not os.path.exists(f"/proc/{pid}"):
            leaked.append(cid)
    return leaked


@pytest.mark.docker
@pytest.mark.slow
def test_grpo_on_swe_runs_end_to_end_with_budgets_and_removes_its_containers(tmp_path, docker_engine):
    """cwm/SWE-v0 (embedded tasks, one container per episode), 2 workers, a tiny model (no learning claim):
    the update runs, --max-turns cuts every episode at 2 turns (paid -1), and no container outlives the run."""
    import time

    import torch

    from model.config import build_model
    from model.tokenizer import train_tokenizer

    started = time.time() - 1
    torch.manual_seed(0)
    model = tmp_path / "model"  # the SWE prompt is ~1.8k tokens: a context that holds it and two short turns
    tok = train_tokenizer(["<tool: bash>\nls\n</tool>", "def f(x):\n    return x"] * 4, vocab_size=300)
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1, max_position_embeddings=4096).save_pretrained(model)
    tok.save_pretrained(model)
    out = tmp_path / "swe"
    cmd = CWM + ["train", "rl", "--env", "cwm/SWE-v0", "--model", str(model), "--workers", "2", "--tasks", "1",
                 "--group", "2", "--steps", "1", "--max-turns", "2", "--max-new-tokens", "8", "--num-cpus", "2",
                 "--torch-threads", "1", "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    train = [r for r in rows(out) if "reward_mean" in r]
    assert [r["step"] for r in train] == [1] and all(r["failed"] == 0 for r in train)
    assert all(r["turns_mean"] == 2 and r["cut"] == r["episodes"] == 2 and r["reward_mean"] == -1.0 for r in train)
    assert (out / "stage.json").is_file()
    assert _dead_owner_containers(started) == []


def test_a_policy_the_learner_cannot_train_only_evaluates(tmp_path, model_dir):
    """--policy oracle --steps 0: the held-out rollouts through the same workers (here a multi-turn,
    tool-using oracle in cwm/MathTool-v0), no learner."""
    out = tmp_path / "oracle"
    cmd = CWM + ["train", "rl", "--env", "cwm/MathTool-v0", "--env-kwargs", '{"kinds": ["needs_tool"], "think": false}',
                 "--model", str(model_dir), "--policy", "oracle", "--steps", "0", "--eval-tasks", "4", "--num-cpus", "2",
                 "--out", str(out)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    stage = json.loads((out / "stage.json").read_text())
    assert stage["evaluation_only"] and stage["eval_end"]["eval_greedy"] == 1.0 and stage["eval_end"]["cut_greedy"] == 0
    assert "evaluation only" in done.stdout


def test_user_errors_are_one_line(tmp_path, model_dir, capsys):
    base = ["train", "rl", "--env-kwargs", EASY, "--model", str(model_dir), "--out", str(tmp_path / "bad")]
    for extra, needle in ((["--env", "cwm/Nope-v0"], "cwm/Nope-v0"), (["--model", str(tmp_path / "none")], "preset"),
                          (["--env-kwargs", "{oops"], "--env-kwargs"), (["--group", "1"], "group"),
                          (["--gamma", "0.9"], "--gamma"),  # a PPO setting given to GRPO is refused, not ignored
                          (["--minibatches", "0"], "--minibatches"), (["--temperature", "0"], "--temperature"),
                          (["--eval-env-kwargs", "[1]"], "--eval-env-kwargs"),
                          (["--env-mix", '{"cwm/SWE-v0": 2}'], "--env-mix"),
                          (["--env-mix", '{"cwm/SWE-v0": {"weight": -1}}'], "weight"),
                          (["--env-mix", '{"cwm/Nope-v0": {}}'], "cwm/Nope-v0"),
                          (["--docker-slots", "0"], "--docker-slots"),
                          (["--max-turns", "0"], "--max-turns"),
                          (["--policy", "gpt"], "gpt"),
                          (["--policy", "oracle"], "--steps 0"),  # a policy the learner cannot train only evaluates
                          (["--policy", "serve", "--algo", "ppo"], "PPO"),
                          (["--policy", "hf:/elsewhere"], "different models")):
        assert main(base + extra) == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and needle in err and "Traceback" not in err


def test_the_rl_commands_register_without_importing_torch_or_ray():
    """`cwm` imports these modules to build its parsers; `cwm --help` should not wait for torch or Ray."""
    code = ("import sys, argparse; import agents.train_rl, benchmarks.rl.cli as b; from cwm_envs.cli import group; "
            "sub = argparse.ArgumentParser().add_subparsers(); b.register(sub); "
            "agents.train_rl.add_parser(group(sub, 'train', 'x')); "
            "print(sorted(m for m in ('torch', 'ray', 'transformers', 'trl') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


# --- the flags are the settings dataclasses ----------------------------------------------------------------

def parse(argv):
    """RLArgs as `cwm train rl ARGV` builds them (the command's own parser and conversion)."""
    from agents.rl_args import rl_args_from
    from cwm_envs.cli import build_parser

    return rl_args_from(build_parser().parse_args(["train", "rl", *argv]))


def changed(cls, **given):
    """An instance of settings dataclass `cls` with every field not `given` off its default (a value per type)."""
    hints = typing.get_type_hints(cls)
    for f in fields(cls):
        if f.name in given:
            continue
        default = f.default_factory() if f.default_factory is not MISSING else f.default
        hint = hints[f.name]
        kind = ([t for t in typing.get_args(hint) if t is not type(None)] or [hint])[0]
        if typing.get_origin(hint) is typing.Literal:
            given[f.name] = next(v for v in typing.get_args(hint) if v != default)
        elif kind is bool:
            given[f.name] = not default
        elif kind in (int, float):
            given[f.name] = kind((default or 0) + 3)
        elif kind is str:
            given[f.name] = f"{default or f.name}-x"
        elif kind is dict:
            given[f.name] = {"source": "generated", f.name: [1, "a"]}
        else:
            raise AssertionError(f"no test value for {cls.__name__}.{f.name} ({hint}): teach this test its type")
    return cls(**given)


def argv_of(args: RLArgs) -> list[str]:
    """The command line of `args`: the flag of each field (of RLArgs, then of its update settings)."""
    argv = []
    for obj in (args, args.update):
        for f in fields(obj):
            value, flag = getattr(obj, f.name), "--" + f.name.replace("_", "-")
            if f.name == "update" or value is None:
                continue
            if isinstance(value, bool):
                argv.append(flag if value else "--no-" + flag[2:])
            else:
                argv += [flag, json.dumps(value) if isinstance(value, dict) else str(value)]
    return argv


@pytest.mark.parametrize("algo", list(ALGOS))
def test_every_setting_has_a_flag_and_the_parsed_args_round_trip(algo):
    update = changed(ALGOS[algo])
    args = changed(RLArgs, algo=algo, update=update, out=Path("/runs/rl"), model="/runs/sft", policy="hf:/runs/sft",
                   env_mix={"cwm/Code-v0": {"weight": 0.5, "kwargs": {"sandbox": "docker"}}})
    assert parse(argv_of(args)) == args
    # nothing given: the dataclasses' own defaults, for either algo (the parser holds no second copy)
    assert parse(["--out", "/runs/rl", "--algo", algo]) == RLArgs(out=Path("/runs/rl"), algo=algo)


def test_the_help_lists_every_update_setting(capsys):
    with pytest.raises(SystemExit):
        main(["train", "rl", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--eps-low", "--eps-high", "--gamma", "--gae-lambda", "--vf-coef", "--vf-clip", "--grad-clip",
                 "--kl-coef", "--epochs", "--std-normalise", "--whiten", "--keep-checkpoints", "--progress"):
        assert flag in text
    assert "(default: grpo 0.25, ppo 0.2)" in text  # each algo's own clip, from its dataclass
    assert "(ppo only; default: 0.95)" in text


def test_a_resumed_run_drops_the_rows_a_crashed_driver_logged_after_its_checkpoint(tmp_path):
    """A driver killed after checkpoint 2 may have logged update 3 (and half a line): the resumed run does
    update 3 again, so the old row would show twice in metrics.jsonl, the curves and `cwm view`."""
    from agents.train_rl import _drop_rows_after

    log = tmp_path / "metrics.jsonl"
    log.write_text("".join(json.dumps({"step": s, "reward_mean": 0.1 * s}) + "\n" for s in (1, 2, 3))
                   + '{"step": 2, "eval_greedy": 0.5}\n{"step": 4, "rew')
    _drop_rows_after(log, 2)
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"step": 1, "reward_mean": 0.1}, {"step": 2, "reward_mean": 0.2}, {"step": 2, "eval_greedy": 0.5}]
    _drop_rows_after(tmp_path / "absent.jsonl", 2)  # nothing logged yet: nothing to do
    assert not (tmp_path / "absent.jsonl").exists()
