"""Watching a run: TensorBoard event files and decoded episodes beside metrics.jsonl, and the page `cwm view`
writes, loaded in a real headless Chromium (no console error, no request, the run's episodes shown and
filterable, a policy's `<script>` shown as text and never run)."""
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import gymnasium
import pytest
import torch

from agents.metrics import TRAJECTORIES, TrajectorySampler, episode_record, tag
from agents.policy import OraclePolicy
from agents.rollout import EnvSpec, Request, RolloutWorker
from agents.view import write_view
from chromium import Chromium, chromium_missing
from cwm_envs.wrappers import ByteTokenizer

PROJECT = Path(__file__).resolve().parent.parent
EASY = {"source": "generated", "kinds": ["add_sub"], "difficulty": 0}
HOSTILE = '</pre><script>window.pwned = 1</script><img src=x onerror="window.pwned = 2">'
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- a short real run, and real tool-using episodes -------------------------------------------------------

@pytest.fixture(scope="module")
def short_run(tmp_path_factory, ray_session, one_torch_thread):
    """`cwm train rl`'s loop for 2 updates of 2 tasks x 2 samples on cwm/Math-v0 with a one-layer model."""
    import cwm_envs  # noqa: F401  (registers the ids)
    from agents.rl_args import GRPOArgs, RLArgs
    from agents.train_rl import run
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    env = gymnasium.make("cwm/Math-v0", **EASY)
    texts = [env.reset(seed=i)[0] for i in range(20)] + ["The answer is 7.\n</think>\n\\boxed{7}"] * 5
    env.close()
    tok = train_tokenizer(texts, vocab_size=400)
    torch.manual_seed(0)
    model = tmp_path_factory.mktemp("model")
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1).save_pretrained(model)
    tok.save_pretrained(model)
    out = tmp_path_factory.mktemp("run")
    (out / "events.out.tfevents.1.stale").write_bytes(b"an earlier run's curves")   # a fresh run drops these
    (out / TRAJECTORIES).write_text('{"step": 99, "env_id": "earlier run"}\n')
    run(RLArgs(out=out, env="cwm/Math-v0", env_kwargs=EASY, model=str(model), tasks=2, group=2, steps=2,
               workers=1, num_cpus=2, torch_threads=1, log_trajectories=3, update=GRPOArgs(max_new_tokens=8)))
    return out


def _tool_then_box(turn, hint) -> str:
    """Prints the answer with the python tool, then boxes it."""
    if "tool: python<|end_header_id|>" not in turn.observation:
        return f"Let me compute it.\n<tool: python>\nprint({hint.task.answer})\n</tool>"
    return f"Done.\n</think>\n\\boxed{{{hint.task.answer}}}"


@pytest.fixture(scope="module")
def tool_run(tmp_path_factory):
    """Real cwm/MathTool-v0 episodes (local sandbox) of every outcome, written by the sampler: a tool-using
    solver (pass), a policy that writes HTML and script (fail), one cut by the turn budget (cut), and one whose
    env cannot be made (error)."""
    tok = ByteTokenizer()
    out = tmp_path_factory.mktemp("tools")
    specs = [EnvSpec("cwm/MathTool-v0", kwargs=EASY), EnvSpec("cwm/MathTool-v0", kwargs={"kinds": ["no-such-kind"]})]
    plays = [(_tool_then_box, 8, 0), (lambda t, h: f"{HOSTILE}\n</think>\n\\boxed{{nope}}", 8, 0),
             (lambda t, h: "<tool: python>\nprint(1)\n</tool>", 1, 0), (_tool_then_box, 8, 1)]
    sampler = TrajectorySampler(out, tok.decode, per_update=10)
    trajs = []
    for step, (respond, max_turns, env) in enumerate(plays, 1):
        worker = RolloutWorker(specs, lambda r=respond: OraclePolicy(tok.encode, r), encode=tok.encode,
                               max_turns=max_turns)
        try:
            got, _ = worker.run([Request(env=env, seed=step, group=step, n=1)])
        finally:
            worker.close()
        assert sampler.write(got, step) == 1
        trajs += got
    return out, trajs


def episodes(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / TRAJECTORIES).read_text().splitlines()]


# --- what the loop writes ---------------------------------------------------------------------------------

def read_events(run: Path) -> dict[str, list[tuple[int, float]]]:
    """The scalars of every TensorBoard event file in `run` (TFRecord framing, checksums verified)."""
    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c

    scalars: dict[str, list] = {}
    files = sorted(run.glob("events.out.tfevents.*"))
    assert files, f"no event file in {run}"
    for f in files:
        data = io.BytesIO(f.read_bytes())
        while header := data.read(8):
            (length,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data.read(4))[0] == masked_crc32c(header)
            body = data.read(length)
            assert struct.unpack("<I", data.read(4))[0] == masked_crc32c(body)
            event = Event.FromString(body)
            for v in event.summary.value:
                scalars.setdefault(v.tag, []).append((event.step, v.simple_value))
    return scalars


@pytest.mark.ray
def test_a_short_run_logs_tensorboard_scalars_and_decoded_episodes(short_run):
    assert not (short_run / "events.out.tfevents.1.stale").exists()
    rows = [json.loads(line) for line in (short_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["length_mean"] > 0 for r in rows)
    scalars = read_events(short_run)
    for key in ("reward_mean", "pass_rate", "length_mean", "staleness_mean", "tokens_per_s"):
        assert [s for s, _ in scalars[tag(key)]] == [1, 2], key
    for r in rows:                                   # every number of every row, at its step
        for key, value in r.items():
            if key != "step" and isinstance(value, (int, float)):
                assert dict(scalars[tag(key)])[r["step"]] == pytest.approx(value, rel=1e-5, abs=1e-6), key

    eps = episodes(short_run)
    assert [e["step"] for e in eps] == [1, 1, 1, 2, 2, 2]      # 3 of each update's 4 episodes, none stale
    env = gymnasium.make("cwm/Math-v0", **EASY)
    for e in eps:                                                # decoded from the ids: the env's exact prompt
        assert e["prompt"] == env.reset(seed=e["seed"])[0]
        assert e["env_id"] == "cwm/Math-v0" and e["outcome"] in ("pass", "fail") and len(e["turns"]) == 1
        assert e["turns"][0]["tokens"] == e["policy_tokens"] > 0 and e["turns"][0]["reward"] == e["reward"]
        assert "outcomes" in e["evidence"]
    env.close()


def test_the_record_of_a_tool_using_episode_keeps_turns_calls_replies_and_rewards(tool_run):
    _, trajs = tool_run
    solved = episode_record(trajs[0], ByteTokenizer().decode, step=1)
    assert solved["outcome"] == "pass" and solved["reward"] == 1.0
    first, last = solved["turns"]
    answer = trajs[0].info["answer"]
    assert first["tool_calls"] == [{"name": "python", "arg": f"print({answer})"}] and first["reward"] == 0.0
    assert "tool: python" in first["reply"] and answer in first["reply"]   # what the sandbox printed
    assert f"\\boxed{{{answer}}}" in last["action"] and last["reward"] == 1.0 and last["reply"] == ""
    assert solved["evidence"]["outcomes"]                                 # the reward's evidence
    assert [e["outcome"] for e in episodes(tool_run[0])] == ["pass", "fail", "cut", "error"]


def test_the_sampler_is_bounded_and_shows_failures_first(tool_run):
    from agents.metrics import pick

    _, trajs = tool_run
    many = trajs * 50
    chosen = pick(many, 4)
    assert len(chosen) == 4 and chosen[0].error is not None
    assert pick(many, 0) == [] and pick([], 4) == []


# --- the page in a browser --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser():
    missing = chromium_missing()
    if missing:
        if IN_CI:
            pytest.fail(missing)
        pytest.skip(missing)
    with Chromium() as b:
        yield b


def shown(page) -> int:
    return page.eval('document.querySelectorAll(".traj:not([hidden])").length')


def choose(page, select: str, value: str) -> int:
    took = page.eval(f'(() => {{ const s = document.getElementById("{select}"); s.value = {json.dumps(value)};'
                     f' s.dispatchEvent(new Event("change")); return s.value; }})()')
    assert took == value, f"{select} has no option {value!r}"
    return shown(page)


def options(page, select: str) -> list[str]:
    return page.eval(f'[...document.querySelectorAll("#{select} option")].map(o => o.value)')


def badge_pixels(png: bytes) -> int:
    """Pixels of the pass/fail badges' colours in a screenshot."""
    from PIL import Image

    colours = Image.open(io.BytesIO(png)).convert("RGB").getcolors(1 << 20)
    return sum(n for n, rgb in colours if rgb in ((0x2E, 0x7D, 0x32), (0xC6, 0x28, 0x28)))


@pytest.mark.ray
def test_the_view_of_a_short_run_loads_cleanly_and_shows_its_episodes(short_run, browser):
    path = write_view(short_run)
    page = browser.open(path.as_uri())
    assert page.errors == []
    assert page.requests == [path.as_uri()]                     # self-contained: nothing else is fetched
    assert shown(page) == len(episodes(short_run)) == 6
    assert page.eval('document.querySelectorAll(".curves svg").length') == 1
    assert page.eval('document.querySelector(".curves").innerText.includes("staleness")')
    page.eval('document.getElementById("episodes").scrollIntoView()')
    before = badge_pixels(page.screenshot())
    assert before > 100, "no episode badge visible on the screenshot"
    page.eval('document.querySelector(".traj").open = true')
    assert page.eval('document.querySelector(".traj pre.action").getBoundingClientRect().height') > 0
    outcomes = options(page, "outcome")[1:]
    assert outcomes and set(outcomes) <= {"pass", "fail"}
    assert sum(choose(page, "outcome", o) for o in outcomes) == 6 and choose(page, "outcome", "") == 6
    assert page.errors == []


def test_filters_select_by_env_and_outcome_and_policy_html_stays_text(tool_run, browser):
    run, _ = tool_run
    page = browser.open(write_view(run).as_uri())
    assert page.errors == [] and shown(page) == 4
    assert options(page, "outcome") == ["", "pass", "fail", "cut", "error"]
    assert [choose(page, "outcome", o) for o in ("pass", "fail", "cut", "error", "")] == [1, 1, 1, 1, 4]
    assert choose(page, "env", "cwm/MathTool-v0") == 4 and choose(page, "env", "") == 4
    page.eval('document.querySelectorAll(".traj").forEach(d => d.open = true)')
    text = page.eval("document.body.innerText")
    assert HOSTILE in text                                      # shown as the policy wrote it
    assert page.eval("typeof window.pwned") == "undefined"      # and never run
    assert page.eval('document.querySelectorAll("#episodes script, #episodes img").length') == 0
    assert "tool call python" in text and "[stdout]" in text and "error (not trained on)" in text
    assert page.errors == [] and page.requests == [write_view(run).as_uri()]


# --- the command --------------------------------------------------------------------------------------------

def test_cwm_view_command_and_its_user_errors(tool_run, tmp_path):
    run, _ = tool_run
    (run / "metrics.jsonl").write_text('{"step": 1, "reward_mean": 0.5, "pass_rate": 1.0}\n{"step": 2, "rew')
    cmd = [sys.executable, "-m", "agents.view"]
    done = subprocess.run(cmd + [str(run), "--out", str(tmp_path / "v.html")], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    page = (tmp_path / "v.html").read_text()
    assert "1 unreadable line(s) in metrics.jsonl skipped" in page and page.count('class="traj"') == 4
    for args, needle in (([str(tmp_path / "none")], "not a directory"), ([str(tmp_path)], "not an RL run"),
                         ([str(run), "--limit", "0"], "--limit")):
        bad = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120)
        assert bad.returncode == 2 and needle in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_view_is_a_cwm_command():
    """`cwm view` comes from the `cwm.commands` entry points (pyproject.toml), as every other command."""
    tomllib = pytest.importorskip("tomllib", reason="Python 3.11's TOML reader")
    eps = tomllib.loads((PROJECT / "pyproject.toml").read_text())["project"]["entry-points"]["cwm.commands"]
    assert eps["view"] == "agents.view:register"
    import argparse

    from agents.view import register

    sub = argparse.ArgumentParser().add_subparsers()
    register(sub)
    assert sub.choices["view"].parse_args(["runs/x"]).run_dir == "runs/x"


def test_wandb_writes_an_offline_run_when_installed(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is optional: without it only TensorBoard files are written")
    from agents.metrics import MetricsSink

    monkeypatch.delenv("WANDB_MODE", raising=False)
    sink = MetricsSink(tmp_path, {"lr": 1e-4})
    sink.log({"step": 1, "reward_mean": 0.5})
    sink.close()
    assert list((tmp_path / "wandb").glob("offline-run-*"))
