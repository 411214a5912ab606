"""The training stages through the real `cwm train ...` command with budgets of seconds: pretrain (with
metrics, loss curve and checkpoints), resume, midtrain on real traces with context extension, and the
trace benchmark on the results. The loop itself: resuming gives the same weights as not stopping."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model.config import load_model
from model.corpus import stdlib_dir
from model.midtrain import is_heldout, trajectory_document
from model.tokenizer import load_tokenizer

CLI = [sys.executable, "-m", "cwm_envs.cli"]
TINY = ["--max-steps", "4", "--batch-size", "2", "--seq-len", "128", "--eval-every", "2", "--eval-rows", "2",
        "--save-every", "2", "--log-every", "1", "--warmup-steps", "2"]


def cwm(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"cwm {' '.join(args)} failed:\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """A small directory corpus: three real standard-library modules."""
    root = tmp_path_factory.mktemp("corpus")
    for name in ("bisect.py", "heapq.py", "colorsys.py", "textwrap.py"):
        shutil.copy(stdlib_dir() / name, root / name)
    return root


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory, corpus) -> Path:
    out = tmp_path_factory.mktemp("pre")
    proc = cwm("train", "pretrain", "--preset", "cwm-micro", "--corpus", str(corpus), "--vocab-size", "400",
               "--out", str(out), *TINY)
    assert "pretrain: 4 steps" in proc.stdout
    return out


FUNCTIONS = [
    ("def f{k}(n):\n    total = 0\n    for i in range(n):\n        total += i * {k}\n    return total\n", "{n}"),
    ("def f{k}(xs):\n    out = []\n    for x in xs:\n        if x % {m} == 0:\n            out.append(x)\n    return out\n",
     "[{n}, {k}, 6, 9]"),
    ("def f{k}(s):\n    n = len(s)\n    return s[::-1] + str(n + {k})\n", "'ab{n}'"),
]


@pytest.fixture(scope="module")
def traces(tmp_path_factory) -> Path:
    """A trace corpus made by the real tracer, with functions on both sides of the held-out split."""
    from cwm_envs.tracing import Tracer

    path = tmp_path_factory.mktemp("traces") / "traces.jsonl"
    rows = []
    with Tracer() as tracer:
        for k in range(1, 31):
            template, args = FUNCTIONS[k % len(FUNCTIONS)]
            code = template.format(k=k, m=k % 3 + 2)
            res = tracer.trace_call(code, f"f{k}", args.format(n=k % 5 + 1, k=k))
            assert res.status == "ok", res.error
            rows.append({"id": f"t{k}", "source": "test", "code": code, "entry": f"f{k}", "input": args,
                         "trace": res.text})
    assert any(is_heldout(r) for r in rows) and not all(is_heldout(r) for r in rows)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pretrain_writes_model_metrics_curve_and_checkpoints(pretrained):
    metrics = [json.loads(x) for x in (pretrained / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == [1, 2, 3, 4]
    assert [m["step"] for m in metrics if "eval_loss" in m] == [2, 4]
    first, last = metrics[0]["loss"], [m for m in metrics if "loss" in m][-1]["loss"]
    assert last < first, "four steps at a high learning rate should lower the loss"
    assert (pretrained / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (pretrained / "checkpoints").iterdir()) == ["step-000002", "step-000004"]
    stage = json.loads((pretrained / "stage.json").read_text())
    assert stage["steps"] == 4 and stage["precision"] == "fp32" and stage["tokens"] == 4 * 2 * 128
    model, tok = load_model(pretrained), load_tokenizer(pretrained)
    assert model.config.vocab_size == len(tok) == 400 + 256
    assert model.config.eos_token_id[0] == tok.eos_token_id


def test_rerun_resumes_from_the_last_checkpoint(pretrained, tmp_path, corpus):
    out = tmp_path / "pre"
    shutil.copytree(pretrained, out)
    args = [a if a != "4" else "6" for a in TINY]  # --max-steps 6
    proc = cwm("train", "pretrain", "--preset", "cwm-micro", "--corpus", str(corpus), "--out", str(out), *args)
    assert "resuming from" in proc.stdout and "step-000004" in proc.stdout
    stage = json.loads((out / "stage.json").read_text())
    assert stage["steps"] == 6 and stage["resumed_from"].endswith("step-000004")
    steps = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps[-2:] == [6, 6] and 5 in steps


def test_resuming_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    from model.config import build_model
    from model.tokenizer import train_tokenizer
    from model.train_args import TrainArgs
    from model.train_loop import resume_point, train

    tok = train_tokenizer(["def f(x):\n    return x + 1\n" * 20], vocab_size=300)
    g = torch.Generator().manual_seed(0)
    rows = [(r, r) for r in torch.randint(0, 300, (40, 32), generator=g).tolist()]

    def run(out: Path, steps: int):
        ckpt = resume_point(out)
        torch.manual_seed(0)
        model = load_model(ckpt) if ckpt else build_model("cwm-micro", vocab_size=len(tok))
        args = TrainArgs(out=out, max_steps=steps, batch_size=2, seq_len=32, warmup_steps=2, eval_rows=0,
                         save_every=100, log_every=1)
        train(model, tok, iter(rows), [], args, resume_from=ckpt)
        return model

    straight = run(tmp_path / "a", 6)
    run(tmp_path / "b", 3)
    resumed = run(tmp_path / "b", 6)
    for (name, p), q in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(p, q, atol=1e-6), name


def test_trajectory_loss_mask_covers_actions_and_a_share_of_observations(pretrained):
    import random

    tok = load_tokenizer(pretrained)
    messages = [{"role": "user", "content": "fix the bug"}, {"role": "assistant", "content": "<tool: bash>\nls\n</tool>"},
                {"role": "tool: bash", "content": "<output>\na.py\n</output>"}, {"role": "assistant", "content": "done"}]

    def learnt(share: float) -> str:
        ids, mask = trajectory_document(tok, messages, share, random.Random(0))
        return tok.decode([i for i, m in zip(ids, mask) if m])

    all_obs, no_obs = learnt(0.0), learnt(1.0)
    assert "a.py" in all_obs and "a.py" not in no_obs
    for text in (all_obs, no_obs):
        assert "ls" in text and "done" in text and "fix the bug" not in text
    masked = sum("a.py" not in tok.decode([i for i, m in zip(*trajectory_document(
        tok, messages, 0.5, random.Random(s))) if m]) for s in range(200))
    assert 70 < masked < 130, "about half of the observations should be masked"


def test_midtrain_on_traces_extends_the_context(pretrained, traces, corpus, tmp_path):
    traj = tmp_path / "traj.jsonl"
    traj.write_text(json.dumps({"messages": [{"role": "user", "content": "list files"},
                                             {"role": "assistant", "content": "<tool: bash>\nls\n</tool>"},
                                             {"role": "tool: bash", "content": "<output>\na.py\n</output>"}]}) + "\n")
    out = tmp_path / "mid"
    cwm("train", "midtrain", "--from", str(pretrained), "--traces", str(traces), "--trajectories", str(traj),
        "--corpus", str(corpus), "--out", str(out), "--max-steps", "2", "--batch-size", "1", "--seq-len", "1024",
        "--eval-rows", "1", "--eval-every", "2", "--warmup-steps", "1")
    model = load_model(out)
    assert model.config.max_position_embeddings == 1024  # parent: 512
    assert model.config.rope_parameters["rope_type"] == "llama3" and model.config.rope_parameters["factor"] == 2.0
    stage = json.loads((out / "stage.json").read_text())
    extra = stage["args"]["extra"]
    assert set(extra["mix"]) == {"traces", "trajectories", "replay"}
    assert extra["train_traces"] + extra["heldout_traces"] == 30 and extra["heldout_traces"] > 0
    assert stage["final_eval_loss"] is not None

    report = tmp_path / "bench"
    proc = cwm("bench", "traces", "--model", str(out), "--baseline", str(pretrained), "--traces", str(traces),
               "--out", str(report))
    summary = json.loads((report / "report.json").read_text())["summary"]
    assert summary["held_out_traces"] == extra["heldout_traces"] and summary["window_tokens"] == 512
    for role in ("model", "baseline"):
        assert 0.0 <= summary[f"{role}_next_line_acc"] <= 1.0 and 0.0 <= summary[f"{role}_next_line_token_acc"] <= 1.0
        assert summary[f"{role}_trace_loss"] > 0
    assert summary["line_frames"] > 0 and "next-line" in proc.stdout
    assert (report / "report.md").read_text().startswith("# Trace prediction")


def test_broken_trace_file_is_one_clear_error(pretrained, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x", "code": "def f(): pass", "trace": "not a trace"}\n')
    proc = subprocess.run([*CLI, "train", "midtrain", "--from", str(pretrained), "--traces", str(bad),
                           "--out", str(tmp_path / "o"), "--max-steps", "1"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "row 1 has no trace" in proc.stderr and "Traceback" not in proc.stderr


def test_frame_spans_pick_out_locals_lines_and_return_values(pretrained):
    from benchmarks.trace_model_bench import frame_spans
    from cwm_envs.tracing import trace_call
    from model.tokenizer import special_token_ids

    tok = load_tokenizer(pretrained)
    res = trace_call("def f(a, b):\n    y = a * b\n    return y + 1\n", "f", "2, 3")
    ids = [tok.bos_token_id, *tok(res.text, add_special_tokens=False)["input_ids"]]
    spans = [(kind, tok.decode(ids[a:b + 1])) for kind, a, b in frame_spans(ids, special_token_ids(tok))]
    assert spans == [
        ("next_locals", '{"a": "..", "b": ".."}<|action_sep|>'), ("next_line", "    y = a * b\n<|frame_sep|>"),
        ("next_locals", '{"a": "..", "b": "..", "y": "6"}<|action_sep|>'), ("next_line", "    return y + 1\n<|frame_sep|>"),
        ("return_value", '"7"<|frame_sep|>'),
    ]


@pytest.mark.slow
def test_data_parallel_under_torchrun(tmp_path, corpus):
    """Two CPU ranks (gloo): one tokenizer, one writer, the global batch counted once, one summary line."""
    out = tmp_path / "ddp"
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29561",
         "-m", "cwm_envs.cli", "train", "pretrain", "--preset", "cwm-micro", "--corpus", str(corpus),
         "--vocab-size", "400", "--out", str(out), "--minutes", "5", *TINY],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TMPDIR": str(tmp_path)})  # torchrun leaves its torchelastic_* log dir in TMPDIR
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("pretrain: 4 steps") == 1 and proc.stdout.count("trained a 656-token") == 1
    stage = json.loads((out / "stage.json").read_text())
    assert stage["world_size"] == 2 and stage["tokens"] == 4 * 2 * 2 * 128
    assert load_model(out).config.vocab_size == 656


SFT_ENVS = '''
"""Two small third-party envs for the SFT stage: a one-step addition task (oracle: reference_response) and a
two-turn echo task (oracle: reference_episode); both pay +1 only for the right reply."""
import gymnasium as gym
from cwm_envs.chat import format_chat, tool_message, assistant_header
from cwm_envs.spaces import AnyText
from cwm_envs.tasks import Task


class Add(gym.Env):
    observation_space = action_space = AnyText(4096)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        a, b = (int(x) for x in self.np_random.integers(0, 10, 2))
        self.task = Task(id=f"add-{a}-{b}", prompt=f"What is {a}+{b}?", answer=str(a + b))
        return format_chat([{"role": "user", "content": self.task.prompt}]), {"task_id": self.task.id}

    def reference_response(self, task):
        return "The answer is %s.\\n</think>\\n\\\\boxed{%s}" % (task.answer, task.answer)

    def step(self, action):
        ok = action.count("</think>") == 1 and action.endswith("\\\\boxed{%s}" % self.task.answer)
        return "", 1.0 if ok else -1.0, True, False, {"task_id": self.task.id}


class Echo(gym.Env):
    observation_space = action_space = AnyText(4096)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.words, self.turn = [str(x) for x in self.np_random.integers(0, 100, 2)], 0
        return format_chat([{"role": "user", "content": "say " + self.words[0]}]), {}

    def reference_episode(self, task):
        return list(self.words)

    def step(self, action):
        ok = action == self.words[self.turn]
        self.turn += 1
        if self.turn == 2 or not ok:
            return "", float(ok and self.turn == 2), True, False, {}
        return tool_message("echo", "now say " + self.words[1]) + assistant_header(), 0.0, False, False, {}


gym.register("sfttest/Add-v0", entry_point=Add)
gym.register("sfttest/Echo-v0", entry_point=Echo)
'''


@pytest.fixture
def sft_envs(tmp_path, monkeypatch):
    (tmp_path / "sft_test_envs.py").write_text(SFT_ENVS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", f"{tmp_path}:{Path.cwd()}")
    return tmp_path


def test_sft_episodes_put_loss_on_actions_only(pretrained, sft_envs):
    from model.sft import collect_episodes, episode_document

    tok = load_tokenizer(pretrained)
    kept, counts = collect_episodes("sft_test_envs:sfttest/Echo-v0", 5, seed=0)
    assert counts == {"episodes": 5, "kept": 5, "mean_oracle_reward": 1.0}
    assert [len(t) for t in kept] == [2] * 5  # two turns each, from reference_episode()
    ids, mask = episode_document(tok, kept[0])
    learnt = tok.decode([i for i, m in zip(ids, mask) if m])
    (obs0, a0), (obs1, a1) = kept[0]
    assert learnt == f"{a0}<|eot_id|>{a1}<|eot_id|>"
    assert tok.decode([i for i, m in zip(ids, mask) if not m]) == obs0 + obs1


def test_sft_stage_through_the_cli(pretrained, sft_envs, tmp_path):
    out = tmp_path / "sft"
    proc = cwm("train", "sft", "--from", str(pretrained), "--env", "sft_test_envs:sfttest/Add-v0", "--episodes", "20",
               "--eval-episodes", "3", "--out", str(out), *TINY)
    assert "oracle: 20/20 episodes rewarded" in proc.stdout and "greedy success on 3 unseen tasks" in proc.stdout
    stage = json.loads((out / "stage.json").read_text())
    assert stage["steps"] == 4 and stage["args"]["extra"]["oracle"]["kept"] == 20
    assert stage["greedy_eval"]["episodes"] == 3 and 0.0 <= stage["greedy_eval"]["success_rate"] <= 1.0
    assert load_model(out).config.vocab_size == len(load_tokenizer(out))
    bad = subprocess.run([*CLI, "train", "sft", "--from", str(pretrained), "--env", "cwm/NoSuchEnv-v0",
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "cannot make env" in bad.stderr


def test_sft_rows_hold_whole_episodes_so_an_answer_always_sees_its_prompt(pretrained, sft_envs):
    """GPT-style packing cut episodes across rows: an answer whose prompt went to the row before taught the model
    to make up what it should copy. SFT rows now hold whole episodes, padded, with no loss on the padding."""
    from model.sft import collect_episodes, episode_document
    from model.train_loop import IGNORE, pack

    tok = load_tokenizer(pretrained)
    kept, _ = collect_episodes("sft_test_envs:sfttest/Echo-v0", 40, seed=0)
    docs = [episode_document(tok, t) for t in kept]
    seq_len = 2 * len(docs[0][0]) + 3  # two episodes and a little: every row ends in padding
    rows = list(pack(iter(docs), seq_len, pad_id=tok.pad_token_id))
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    seen = []
    for ids, labels in rows:
        assert len(ids) == len(labels) == seq_len and ids[0] == bos  # every row starts an episode
        starts = [i for i, t in enumerate(ids) if t == bos] + [seq_len]
        for a, b in zip(starts, starts[1:]):
            body = ids[a:b]
            while body and body[-1] == tok.pad_token_id:
                body = body[:-1]
            seen.append(body)
        pads = [i for i, t in enumerate(ids) if t == tok.pad_token_id]
        assert pads and all(labels[i] == IGNORE for i in pads)
    # each episode whole and in order, none cut (the stream's unfinished last row is not emitted, as in `pack`)
    assert len(seen) == len(docs) - 2 and seen == [d[0] for d in docs][:len(seen)]
