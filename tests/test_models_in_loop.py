"""Models in the loop: `--policy hf:DIR` and `--policy openai:URL` against `cwm serve` over loopback HTTP,
the same answers both ways, the server's log-probs equal to in-process scoring, and faults of the
machinery (429s, dropped connections) counted as infrastructure, never scored."""
import argparse
import json
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from agents.policies import Sampling, make_policy, parse_spec
from agents.policy import Turn, token_logprobs
from agents.serve import Engine, Server
from cwm_envs.errors import UsageError


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    """A tiny CWM checkpoint with a tokenizer trained here (random weights: it answers gibberish, but
    deterministically, which is what agreement needs)."""
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    out = tmp_path_factory.mktemp("tiny")
    tok = train_tokenizer(["What is 3 + 4? The answer is 7. </think> \\boxed{7} user assistant tool"] * 4,
                          vocab_size=300)
    torch.manual_seed(0)
    build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1).save_pretrained(out)
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def server(ckpt):
    with Server(Engine.from_pretrained(str(ckpt), name="tiny")) as s:
        yield s


def _math_args(out, policy, **kw):
    base = dict(out=str(out), data="generated", policy=policy, model=None, samples=1, temperature=0.0, top_p=1.0,
                max_tokens=8, seed=0, concurrency=4, request_timeout=30.0, retries=1, tokenizer=None, k="1", baseline="none",
                limit=6, workers=1, batch=16, timeout_s=5.0, think=True)
    return argparse.Namespace(**{**base, **kw})


def _rows(out, name="samples"):
    return {(r["task_id"], r["sample"]): r for r in map(json.loads, (out / f"{name}.jsonl").read_text().splitlines())}


def test_spec_grammar_rejects_what_it_cannot_build():
    assert parse_spec("openai:http://x/v1") == ("openai", "http://x/v1")
    for bad in ("telepathy", "hf:", "noisy:2", "noisy:x", "oracle:1"):
        with pytest.raises(UsageError):
            parse_spec(bad)


def test_served_greedy_answers_equal_in_process_ones_row_by_row(ckpt, server, tmp_path):
    from benchmarks import math_bench

    assert math_bench.run_bench(_math_args(tmp_path / "hf", f"hf:{ckpt}")) == 0
    assert math_bench.run_bench(_math_args(tmp_path / "api", f"openai:{server.url}", model="tiny")) == 0
    hf, api = _rows(tmp_path / "hf"), _rows(tmp_path / "api")
    assert len(hf) == 6 and hf.keys() == api.keys()
    assert all(hf[k]["completion"] == api[k]["completion"] and hf[k]["reward"] == api[k]["reward"] for k in hf)
    assert all(r["status"] == "scored" and r["policy_tokens"] > 0 for r in api.values())


def test_server_logprobs_and_token_ids_match_in_process_scoring(ckpt, server):
    hf = make_policy(f"hf:{ckpt}")
    prompt = hf.encode("What is 3 + 4?")
    for greedy, tokenizer in ((True, None), (False, str(ckpt))):  # text-in and token-in
        api = make_policy(f"openai:{server.url}", Sampling(temperature=1.0, max_tokens=10, seed=3), tokenizer=tokenizer)
        c, = api.act([Turn(prompt, "", {}, "What is 3 + 4?")], greedy=greedy, generator=torch.Generator().manual_seed(1))
        api.close()
        assert c.finish in ("stop", "length") and len(c.ids) == len(c.logprobs) > 0
        with torch.no_grad():
            logits = hf.model(torch.tensor([prompt + c.ids])).logits[0, len(prompt) - 1:-1]
        ref = token_logprobs(logits, torch.tensor(c.ids))
        assert torch.allclose(ref, torch.tensor(c.logprobs), atol=1e-4)


def test_samples_per_prompt_go_as_one_request_and_a_seed_repeats_in_any_company(server):
    api = make_policy(f"openai:{server.url}", Sampling(temperature=1.0, max_tokens=6))
    turns = [Turn([1], "", {}, "The answer is")] * 4
    rows0 = server.engine.rows
    a = api.act(turns, generator=torch.Generator().manual_seed(5))
    assert server.engine.rows - rows0 == 4 and len({tuple(c.ids) for c in a}) > 1  # n samples, not copies of one
    others = [Turn([1], "", {}, f"What is {i} + 4?") for i in range(6)]
    batches0 = server.engine.batches
    b = api.act(turns + others, generator=torch.Generator().manual_seed(5))   # same seed for the first request
    api.close()
    assert server.engine.batches - batches0 < 7                                 # it shared a batch with others
    assert [c.ids for c in a] == [c.ids for c in b[:4]]


def test_concurrent_requests_are_batched_together(server):
    import openai

    client = openai.OpenAI(base_url=server.url, api_key="x")
    batches0 = server.engine.batches
    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(lambda i: client.completions.create(model="tiny", prompt=f"What is {i} + 4?", max_tokens=32,
                                                                 temperature=0), range(8)))
    assert all(o.choices[0].finish_reason in ("stop", "length") for o in outs)
    assert server.engine.batches - batches0 < 8  # some requests shared a batch


def test_chat_health_and_wrong_model(server):
    import urllib.error
    import urllib.request

    root = server.url.rsplit("/v1", 1)[0]

    def post(path, body):
        req = urllib.request.Request(root + path, json.dumps(body).encode(), {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    with urllib.request.urlopen(root + "/health") as r:
        assert json.loads(r.read())["status"] == "ok"
    status, chat = post("/v1/chat/completions", {"model": "tiny", "messages": [{"role": "user", "content": "hi"}],
                                                 "max_tokens": 4, "logprobs": True})
    choice = chat["choices"][0]
    assert status == 200 and len(choice["logprobs"]["content"]) == len(choice["token_ids"]) > 0
    status, err = post("/v1/completions", {"model": "tiny", "prompt": [], "max_tokens": 2})
    assert status == 400 and "prompt" in err["error"]["message"]
    for bad in ({"prompt": [10 ** 6]}, {"prompt": "hi", "max_tokens": 10 ** 6}, {"prompt": "hi", "n": 0}, {"prompt": "hi", "max_tokens": 0},
                {"prompt": "hi", "stop": [""]}):  # out-of-vocab ids, past the context, no sample, empty stop
        status, err = post("/v1/completions", {"model": "tiny", "max_tokens": 2, **bad})
        assert status == 400 and err["error"]["message"], bad
    with urllib.request.urlopen(root + "/health") as r:   # and the server is still up
        assert r.status == 200
    with pytest.raises(UsageError, match="does not serve model 'gpt-9'"):
        make_policy(f"openai:{server.url}", model="gpt-9")


def test_unreachable_server_is_one_clear_line(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "math", "--data", "generated", "--limit", "2",
                           "--policy", f"openai:http://127.0.0.1:{port}/v1", "--out", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "cannot reach" in proc.stderr


class FlakyProxy:
    """A TCP proxy in front of a server that closes the connection of chosen requests without a response
    (a dropped connection), or answers them 429, and forwards the rest (one request per connection).
    `fail(request line, seen before)` chooses."""

    def __init__(self, upstream_port: int, fault: str, fail):
        self.upstream, self.fault, self.fail, self.count = upstream_port, fault, fail, 0
        self.seen: set[bytes] = set()
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/v1"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn):
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, body = data.partition(b"\r\n\r\n")
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length:")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            self.count += 1
            seen, line = body in self.seen, head.split(b"\r\n", 1)[0]
            self.seen.add(body)
            if self.fail(line, seen):
                if self.fault == "429":
                    conn.sendall(b"HTTP/1.1 429 Too Many Requests\r\ncontent-type: application/json\r\n"
                                 b"retry-after: 0\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}")
                return  # "drop": closed without a word
            head = b"\r\n".join(line for line in head.split(b"\r\n") if not line.lower().startswith(b"connection:"))
            with socket.create_connection(("127.0.0.1", self.upstream)) as up:
                up.sendall(head + b"\r\nconnection: close\r\n\r\n" + body)
                while chunk := up.recv(65536):
                    conn.sendall(chunk)

    def close(self):
        self.sock.close()


@pytest.mark.parametrize("fault", ["drop", "429"])
def test_flaky_server_gives_the_clean_answers_and_a_dead_one_only_infra_faults(server, tmp_path, fault):
    from benchmarks import math_bench

    flaky = FlakyProxy(server.port, fault, fail=lambda line, seen: line.startswith(b"POST") and not seen)  # once each
    dead = FlakyProxy(server.port, fault, fail=lambda line, seen: line.startswith(b"POST"))  # all but the listing
    try:  # one retry (`retries=1` in _math_args) keeps the dead run short: the client backs off between tries
        assert math_bench.run_bench(_math_args(tmp_path / "clean", f"openai:{server.url}", limit=4)) == 0
        assert math_bench.run_bench(_math_args(tmp_path / "flaky", f"openai:{flaky.url}", limit=4)) == 0
        assert math_bench.run_bench(_math_args(tmp_path / "dead", f"openai:{dead.url}", limit=4)) == 0
    finally:
        flaky.close()
        dead.close()
    clean, got = _rows(tmp_path / "clean"), _rows(tmp_path / "flaky")
    assert flaky.count >= 9 and {k: r["completion"] for k, r in got.items()} == {k: r["completion"] for k, r in clean.items()}
    report = json.loads((tmp_path / "dead" / "report.json").read_text())["summary"]
    assert report["infra_faults"] == 4 and report["scored_samples"] == 0 and report["pass@1"] is None
    assert all(r["status"] == "infra" and r["reward"] is None for r in _rows(tmp_path / "dead").values())


def test_a_stopped_run_resumes_and_retries_only_what_failed(server, tmp_path):
    from benchmarks import math_bench

    args = _math_args(tmp_path, "noisy:0.5", samples=3, k="1,3", temperature=1.0, limit=5)
    assert math_bench.run_bench(args) == 0
    path = tmp_path / "samples.jsonl"
    lines = path.read_text().splitlines()
    broken = [json.dumps({**json.loads(line), "status": "infra"}) for line in lines[:4]]
    path.write_text("\n".join(broken + lines[4:10]) + "\n" + lines[10][:20])  # 4 failed, 5 lost, one cut line
    assert math_bench.run_bench(args) == 0
    after = path.read_text().splitlines()
    keys = [(r["task_id"], r["sample"]) for r in map(json.loads, after)]
    assert len(after) == 15 and len(set(keys)) == 15 and after[:6] == lines[4:10]  # kept verbatim, the rest redone
    summary = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert summary["scored_samples"] == 15 and summary["infra_faults"] == 0
    with pytest.raises(UsageError, match="other settings"):
        math_bench.run_bench(_math_args(tmp_path, "noisy:0.5", samples=3, k="1,3", temperature=0.7, limit=5))


def test_livecodebench_rows_our_generator_writes_window_and_judge(tmp_path):
    from benchmarks.livecodebench_bench import generated_rows, in_window
    from cwm_envs.sources.code import load_livecodebench

    path = tmp_path / "lcb.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in generated_rows(6)))
    tasks = load_livecodebench(path)
    assert all(any(not t["public"] for t in task.tests) for task in tasks)  # private tests came back decompressed
    late = [t for t in tasks if in_window(t, "2024-01-03", "2024-01-06")]
    assert [t.metadata["contest_date"][:10] for t in late] == ["2024-01-03", "2024-01-04", "2024-01-05"]
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "livecodebench", "--data", str(path),
                           "--after", "2024-01-03", "--out", str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "r" / "report.json").read_text())["summary"]
    assert (s["tasks"], s["pass@1"], s["baseline_pass@1"]) == (4, 1.0, 0.0)


def test_prompt_templates_are_replaceable_files(tmp_path):
    import gymnasium

    import cwm_envs  # noqa: F401  (registers the ids)

    (tmp_path / "math_cot.txt").write_text("Solve: {problem}\nBox it: $\\boxed{{}}$")
    (tmp_path / "system.txt").write_text("You think first.")
    env = gymnasium.make("cwm/Math-v0", prompts=str(tmp_path))
    obs, _ = env.reset(seed=0)
    task = env.unwrapped.task
    assert f"Solve: {task.prompt}\nBox it: $\\boxed{{}}$" in obs and "You think first." in obs
    assert env.step(env.unwrapped.reference_response(task))[1] == 1.0   # the reward path is the same
    env.close()
    crux = gymnasium.make("cwm/OutputPrediction-v0", prompts={"prediction_output": "f = {entry}; {code} | {input}"})
    obs, _ = crux.reset(seed=1)
    assert obs.startswith("f = f; ")
    crux.close()
    (tmp_path / "math_cot.txt").write_text("{question}")     # a field the template does not have
    for bad in (str(tmp_path), {"math_typo": "x"}, str(tmp_path / "missing")):
        with pytest.raises(UsageError):
            gymnasium.make("cwm/Math-v0", prompts=bad)


def test_trace_env_bench_pays_the_oracle_and_not_another_tasks_trace(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "bench", "trace-env", "--limit", "6", "--samples", "2",
                           "--k", "1,2", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    s = json.loads((tmp_path / "report.json").read_text())["summary"]
    assert (s["tasks"], s["pass@1"], s["pass@2"], s["baseline_pass@1"]) == (6, 1.0, 1.0, 0.0)


def test_an_answer_that_crashes_the_judge_counts_as_failed_not_dropped(tmp_path):
    """The cheapest way up a leaderboard that drops errors: answer so that the judge raises. It must fail."""
    from agents.policy import Completion
    from benchmarks.math_bench import evaluate, load_tasks
    from cwm_envs.envs import math_env

    class Crasher:
        version = 0

        def encode(self, text):
            return list(text.encode())

        def act(self, turns, **_):
            return [Completion(ids=[1], logprobs=[0.0], text="CRASH" if i % 2 else "<think>\n</think>\n$\\boxed{1}$",
                               finish="stop") for i, _ in enumerate(turns)]

    real = math_env.MathEnv.judge

    def judge(self, task, response):
        if response == "CRASH":
            raise RuntimeError("the judge fell over")
        return real(self, task, response)

    tasks = load_tasks("generated", limit=4)
    math_env.MathEnv.judge = judge
    try:
        run = evaluate(tasks, Crasher(), argparse.Namespace(think=True, timeout_s=5.0, seed=0, workers=1, batch=4),
                       samples=2)
    finally:
        math_env.MathEnv.judge = real
    assert run.errors == 4 and run.infra == 0 and sum(run.scored) == 8 and sum(run.passed) <= 4


def test_serve_command_help_is_light_and_a_bad_dir_is_one_line(tmp_path):
    code = "import sys, agents.serve, agents.policies, benchmarks.runner; print(sorted({'torch', 'fastapi', 'openai'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout.strip() == "[]"
    assert subprocess.run([sys.executable, "-m", "agents.serve", "--help"], capture_output=True).returncode == 0
    bad = subprocess.run([sys.executable, "-m", "agents.serve", str(tmp_path)], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "config.json" in bad.stderr
