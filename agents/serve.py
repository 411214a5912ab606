"""`cwm serve DIR --port P`: an OpenAI-compatible HTTP server over a local checkpoint (FastAPI + uvicorn).

Endpoints: `GET /health`, `GET /v1/models`, `POST /v1/completions` (prompt as text or token ids),
`POST /v1/chat/completions` (the checkpoint's chat template; CWM's format when it has none). Both take
`n`, `temperature` (0: greedy), `top_p`, `max_tokens`, `stop`, `seed` and `logprobs`, and answer, as vLLM
does when asked with `return_token_ids`, each choice's sampled `token_ids` (the stop token included) and
`prompt_token_ids`, and `stop_reason` (the stop string or token that ended it). vLLM's
`include_stop_str_in_output` and `skip_special_tokens` are honoured.

Log-probs are the sampler's: `log softmax(logits / T)` of each sampled token (the model's own at T=1 or
greedy, where they equal in-process scoring); `top_logprobs` holds the sampled token only.

Dynamic batching: one generation thread takes every request waiting in the queue, or arriving within
`batch_wait_s` of the first (10 ms), up to `max_batch` rows, and samples them together (`LMPolicy.generate`:
left-padded batch, KV cache, finished rows leave the batch); requests that arrive meanwhile form the next batch. Requests are grouped by what must be shared in
one batch (greedy or not, temperature, top-p, stops); a request with a `seed` draws from its own generator,
so it repeats whatever shares its batch (up to the rounding of batched arithmetic).

Binds 127.0.0.1 unless told otherwise: the server has no authentication.
"""
# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations (`Request`) at run time.

import asyncio
import queue
import threading
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from cwm_envs.chat import EOS, EOT, format_chat
from cwm_envs.errors import UsageError


@dataclass
class Job:
    """One request's rows (a prompt times n) waiting for the generation thread."""

    prompts: list[list[int]]
    n: int
    max_tokens: int
    greedy: bool
    temperature: float
    top_p: float
    stop: tuple[str, ...]
    seed: int | None
    future: Future = field(default_factory=Future)

    @property
    def key(self) -> tuple:
        """What rows sampled together must share (a seed need not: each request draws from its own generator)."""
        return (self.greedy, 1.0 if self.greedy else self.temperature, 1.0 if self.greedy else self.top_p, self.stop)


class Engine:
    """The model, its tokenizer and the batching thread (see the module docstring)."""

    def __init__(self, model, tokenizer, name: str, *, max_batch: int = 64, max_context: int | None = None,
                 batch_wait_s: float = 0.01):
        import torch

        self.model, self.tokenizer, self.name = model.eval(), tokenizer, name
        self.max_batch, self.batch_wait_s = int(max_batch), float(batch_wait_s)
        cfg = model.config
        self.max_context = max_context or getattr(cfg, "max_position_embeddings", None) or 4096
        self._torch = torch
        self._policies: dict[tuple, Any] = {}
        self._queue: "queue.Queue[Job | None]" = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="cwm-serve-engine", daemon=True)
        self.batches = 0          # batches run, and rows in them: what dynamic batching did
        self.rows = 0
        self.version = 0          # of the weights (an RL learner pushes new ones: set_weights)
        self._pending: tuple[dict, int] | None = None
        self._weights_lock = threading.Lock()
        self._thread.start()

    def set_weights(self, weights: dict, version: int) -> None:
        """New weights (the learner's layout: `lm.` + the model's keys), loaded before the next batch: a batch
        being sampled finishes with the weights it started with, and every choice names its version."""
        with self._weights_lock:
            if self._pending is None or version >= self._pending[1]:
                self._pending = (weights, version)

    def _load_pending(self) -> None:
        with self._weights_lock:
            pending, self._pending = self._pending, None
        if pending is not None:
            torch = self._torch
            state = {k[3:]: torch.as_tensor(v) for k, v in pending[0].items() if k.startswith("lm.")}
            self.model.load_state_dict(state, strict=True)
            self.version = pending[1]

    @classmethod
    def from_pretrained(cls, path: str, name: str | None = None, **kwargs) -> "Engine":
        from pathlib import Path

        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if not (Path(path) / "config.json").is_file():
            raise UsageError(f"{path}: not a transformers checkpoint directory (no config.json)")
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), name or str(path), **kwargs)

    # -- text <-> ids ----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat_prompt(self, messages: list[dict]) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return format_chat(messages, add_generation_prompt=True)

    # -- generation ------------------------------------------------------------------------------------

    def submit(self, job: Job) -> Future:
        self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _policy(self, stop: tuple[str, ...]):
        from agents.policy import LMPolicy

        if stop not in self._policies:
            self._policies[stop] = LMPolicy(self.model, self.tokenizer, stop=stop, max_batch=self.max_batch)
        return self._policies[stop]

    def _loop(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            jobs, rows = [job], len(job.prompts) * job.n
            deadline = time.monotonic() + self.batch_wait_s
            while rows < self.max_batch:  # what is waiting, or arrives within batch_wait_s, joins this batch
                try:
                    more = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                jobs.append(more)
                rows += len(more.prompts) * more.n
            groups: dict[tuple, list[Job]] = {}
            for j in jobs:
                groups.setdefault(j.key, []).append(j)
            for group in groups.values():
                try:
                    self._run(group)
                except Exception as exc:  # a request that breaks generation fails alone, the server stays up
                    for j in group:
                        if not j.future.done():
                            j.future.set_exception(exc)

    def _run(self, jobs: list[Job]) -> None:
        torch = self._torch
        self._load_pending()
        first = jobs[0]
        policy = self._policy(first.stop)
        policy.temperature = first.temperature if not first.greedy else 1.0
        policy.top_p = first.top_p if not first.greedy else 1.0
        contexts = [p for j in jobs for p in j.prompts for _ in range(j.n)]
        generator = None
        if not first.greedy and any(j.seed is not None for j in jobs):  # each request's rows draw from its own
            gens = [torch.Generator().manual_seed(j.seed) if j.seed is not None else None for j in jobs]
            generator = [g for j, g in zip(jobs, gens) for _ in range(len(j.prompts) * j.n)]
        max_new = max(j.max_tokens for j in jobs)
        with torch.no_grad():
            comps = policy.generate(contexts, greedy=first.greedy, generator=generator, max_new_tokens=max_new)
        self.batches += 1
        self.rows += len(contexts)
        for c in comps:
            c.version = self.version
        k = 0
        for j in jobs:
            out = comps[k: k + len(j.prompts) * j.n]
            k += len(out)
            j.future.set_result([_cut(c, j.max_tokens) for c in out])


def _cut(c, max_tokens: int):
    """A row sampled in a batch with a longer budget, cut to its own request's budget."""
    if len(c.ids) <= max_tokens:
        return c
    from agents.policy import Completion

    return Completion(ids=c.ids[:max_tokens], logprobs=c.logprobs[:max_tokens], text="", finish="length",
                      version=c.version)


# -- the HTTP layer --------------------------------------------------------------------------------------------

def _stops(raw) -> tuple[str, ...]:
    if raw is None:
        return ()
    stops = [raw] if isinstance(raw, str) else list(raw)
    if not all(isinstance(s, str) and s for s in stops) or len(stops) > 16:
        raise ValueError("stop must be a string or a list of at most 16 non-empty strings")
    return tuple(stops)


def _prompts(raw, engine: Engine) -> list[list[int]]:
    """A completions `prompt`: a string, a list of strings, a list of token ids, or a list of those."""
    if isinstance(raw, str):
        raw = [raw]
    elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
        raw = [raw]
    if not isinstance(raw, list) or not raw:
        raise ValueError("prompt must be a non-empty string, token-id list, or a list of those")
    out = []
    for p in raw:
        ids = engine.encode(p) if isinstance(p, str) else p
        if not isinstance(ids, list) or not ids or not all(isinstance(x, int) for x in ids):
            raise ValueError("every prompt needs at least one token")
        vocab = engine.model.config.vocab_size
        if any(x < 0 or x >= vocab for x in ids):
            raise ValueError(f"prompt token ids must be in [0, {vocab})")
        out.append(ids)
    return out


def _job(body: dict, prompts: list[list[int]], engine: Engine, max_key: str = "max_tokens") -> Job:
    n = body.get("n") if body.get("n") is not None else 1
    max_tokens = next((body[k] for k in (max_key, "max_completion_tokens", "max_tokens") if body.get(k) is not None), 16)
    if not isinstance(n, int) or isinstance(n, bool):
        raise ValueError("n must be an integer")
    temperature = float(body.get("temperature", 1.0) if body.get("temperature") is not None else 1.0)
    top_p = float(body.get("top_p") if body.get("top_p") is not None else 1.0)
    if not 1 <= n <= 256:
        raise ValueError("n must be in [1, 256]")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        raise ValueError("max_tokens must be a positive integer")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ValueError("temperature must be >= 0 and top_p in (0, 1]")
    longest = max(len(p) for p in prompts)
    if longest + max_tokens > engine.max_context:
        raise ValueError(f"prompt ({longest} tokens) + max_tokens ({max_tokens}) exceeds the model's context "
                         f"({engine.max_context})")
    seed = body.get("seed")
    return Job(prompts=prompts, n=n, max_tokens=max_tokens, greedy=temperature == 0, temperature=temperature,
               top_p=top_p, stop=(EOT,) + _stops(body.get("stop")), seed=int(seed) if seed is not None else None)


def _choice_text(engine: Engine, c, job: Job, body: dict) -> tuple[str, Any, list[str]]:
    """The choice's text as OpenAI/vLLM give it (the matched stop left out unless `include_stop_str_in_output`,
    special tokens dropped unless `skip_special_tokens` is false), its stop reason, and each token's text."""
    tok = engine.tokenizer
    raw = tok.decode(c.ids, skip_special_tokens=False)
    text = tok.decode(c.ids, skip_special_tokens=bool(body.get("skip_special_tokens", True)))
    stop_reason = None
    if c.finish == "stop":
        stop_reason = next((s for s in (*job.stop, EOS) if raw.endswith(s)), None)
        if stop_reason and not body.get("include_stop_str_in_output") and text.endswith(stop_reason):
            text = text[: -len(stop_reason)]
    return text, stop_reason, [tok.decode([i], skip_special_tokens=False) for i in c.ids]


def create_app(engine: Engine):
    """The FastAPI app over `engine`."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    app = FastAPI(title="cwm serve", version="1")

    def error(status: int, message: str, kind: str = "invalid_request_error"):
        return JSONResponse({"error": {"message": message, "type": kind, "code": status}}, status_code=status)

    async def run(body: dict, prompts: list[list[int]]):
        job = _job(body, prompts, engine)
        comps = await asyncio.wrap_future(engine.submit(job))
        return job, comps

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": engine.name, "batches": engine.batches, "rows": engine.rows}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": engine.name, "object": "model", "created": 0, "owned_by": "cwm",
                                            "max_model_len": engine.max_context}]}

    async def parse(request: Request) -> dict | JSONResponse:
        try:
            body = await request.json()
        except Exception:
            return error(400, "the body is not JSON")
        if not isinstance(body, dict):
            return error(400, "the body must be a JSON object")
        if body.get("model") not in (None, engine.name):
            return error(404, f"the model {body.get('model')!r} does not exist; this server serves {engine.name!r}",
                         "not_found_error")
        if body.get("stream"):
            return error(400, "stream is not supported")
        return body

    @app.post("/v1/completions")
    async def completions(request: Request):
        body = await parse(request)
        if isinstance(body, JSONResponse):
            return body
        if body.get("echo") or body.get("suffix"):
            return error(400, "echo and suffix are not supported")
        try:
            prompts = _prompts(body.get("prompt"), engine)
            job, comps = await run(body, prompts)
        except (ValueError, TypeError) as exc:
            return error(400, str(exc))
        want_lp = body.get("logprobs") is not None and body.get("logprobs") is not False
        choices, k = [], 0
        for p in prompts:
            for _ in range(job.n):
                c = comps[k]
                text, stop_reason, pieces = _choice_text(engine, c, job, body)
                offsets, pos = [], 0
                for piece in pieces:
                    offsets.append(pos)
                    pos += len(piece)
                choices.append({
                    "index": k, "text": text, "finish_reason": c.finish, "stop_reason": stop_reason,
                    "token_ids": list(c.ids), "prompt_token_ids": p, "cwm_version": c.version,
                    "logprobs": {"tokens": pieces, "token_logprobs": list(c.logprobs),
                                 "top_logprobs": [{t: lp} for t, lp in zip(pieces, c.logprobs)],
                                 "text_offset": offsets} if want_lp else None})
                k += 1
        return _response("text_completion", engine, choices, prompts, comps)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await parse(request)
        if isinstance(body, JSONResponse):
            return body
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(
                isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                for m in messages):
            return error(400, "messages must be a non-empty list of {role, content} objects with text content")
        try:
            prompts = _prompts(engine.chat_prompt(messages), engine)
            job, comps = await run(body, prompts)
        except (ValueError, TypeError) as exc:
            return error(400, str(exc))
        choices = []
        for k, c in enumerate(comps):
            text, stop_reason, pieces = _choice_text(engine, c, job, body)
            lp = {"content": [{"token": t, "logprob": v, "bytes": list(t.encode()), "top_logprobs": []}
                              for t, v in zip(pieces, c.logprobs)]} if body.get("logprobs") else None
            choices.append({"index": k, "message": {"role": "assistant", "content": text}, "finish_reason": c.finish,
                            "stop_reason": stop_reason, "token_ids": list(c.ids), "logprobs": lp})
        return _response("chat.completion", engine, choices, prompts, comps)

    return app


def _response(kind: str, engine: Engine, choices: list[dict], prompts, comps) -> dict:
    completion = sum(len(c.ids) for c in comps)
    prompt = sum(len(p) for p in prompts)
    return {"id": f"cmpl-{uuid.uuid4().hex}", "object": kind, "created": int(time.time()), "model": engine.name,
            "choices": choices, "prompt_token_ids": prompts[0] if len(prompts) == 1 else prompts,
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}


class Server:
    """A `cwm serve` in this process, on a background thread (tests, benchmarks, a Ray node's shared server).

    >>> # with Server(Engine.from_pretrained("runs/sft")) as s: make_policy(f"openai:{s.url}")
    """

    def __init__(self, engine: Engine, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.engine = engine
        config = uvicorn.Config(create_app(engine), host=host, port=port, log_level=log_level, access_log=False)
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name="cwm-serve-http", daemon=True)

    def __enter__(self) -> "Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the server did not start")
            time.sleep(0.02)

    @property
    def port(self) -> int:
        return self._server.servers[0].sockets[0].getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)
        self.engine.close()


class ServerPool:
    """One `cwm serve` per Ray node, shared by the rollout workers there (`cwm train rl --policy serve`).

    Each server is a Ray actor pinned to its node, holding the policy's model and serving it on that node's
    loopback; a worker reaches the server of its own node (`policy_factory`), sending token ids (token-in)
    and reading back the sampled ids, log-probs and the weights' version of each choice. After each update
    the learner's weights go to every server once, through the object store (`set_weights`).
    """

    def __init__(self, policy, version: int, weights: dict, cpus: float = 1.0, max_batch: int = 256):
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        actor = ray.remote(_NodeServer)
        ref = ray.put(weights)
        self.actors, self.urls = [], {}
        for node in [n for n in ray.nodes() if n.get("Alive")]:
            a = actor.options(num_cpus=cpus, scheduling_strategy=NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
                              ).remote(policy.model.config, policy.tokenizer, ref, version, max_batch)
            self.actors.append(a)
            self.urls[node["NodeID"]] = a
        self.urls = dict(zip(self.urls, ray.get([a.url.remote() for a in self.actors], timeout=300)))
        self.tokenizer, self.temperature, self.top_p = policy.tokenizer, policy.temperature, policy.top_p
        self.max_new_tokens = policy.max_new_tokens

    def policy_factory(self):
        """A picklable factory that a rollout worker calls to get an OpenAI-compatible policy on its node's server."""
        import functools

        return functools.partial(_served_policy, self.urls, self.tokenizer, self.temperature, self.top_p,
                                 self.max_new_tokens)

    def set_weights(self, weights: dict, version: int) -> None:
        import ray

        ref = ray.put(weights)
        ray.get([a.set_weights.remote(ref, version) for a in self.actors])

    def close(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.get(a.close.remote(), timeout=30)
            except Exception:
                pass
            ray.kill(a)
        self.actors = []


class _NodeServer:
    """A Ray actor: `Server(Engine)` over a model built from a config and the learner's weights."""

    def __init__(self, config, tokenizer, weights, version: int, max_batch: int):
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(1)
        model = AutoModelForCausalLM.from_config(config)
        engine = Engine(model, tokenizer, "policy", max_batch=max_batch)
        engine.set_weights(weights, version)
        engine._load_pending()
        self.server = Server(engine)
        self.server.start()

    def url(self) -> str:
        return self.server.url

    def set_weights(self, weights, version: int) -> None:
        self.server.engine.set_weights(weights, version)

    def close(self) -> None:
        self.server.stop()


def _served_policy(urls: dict, tokenizer, temperature: float, top_p: float, max_tokens: int):
    import ray

    from agents.policies import OpenAIPolicy, Sampling

    node = ray.get_runtime_context().get_node_id()
    if node not in urls:
        raise RuntimeError(f"no policy server on this node ({node}); the servers are on {sorted(urls)}")
    return OpenAIPolicy(urls[node], "policy", tokenizer=tokenizer, concurrency=64, timeout=600.0,
                        sampling=Sampling(temperature=temperature, top_p=top_p, max_tokens=max_tokens))


def run_serve(args) -> int:
    """`cwm serve DIR`: load the checkpoint and serve it until interrupted."""
    import uvicorn

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    engine = Engine.from_pretrained(args.dir, args.name, max_batch=args.max_batch,
                                    batch_wait_s=args.batch_wait_ms / 1000)
    print(f"cwm serve: {engine.name} on http://{args.host}:{args.port}/v1", flush=True)
    try:
        uvicorn.run(create_app(engine), host=args.host, port=args.port, log_level=args.log_level)
    finally:
        engine.close()
    return 0


def register(sub) -> None:
    """Add `cwm serve`."""
    p = sub.add_parser("serve", help="an OpenAI-compatible server over a local checkpoint (dynamic batching)",
                       description=__doc__.split("\n\n")[0])
    p.add_argument("dir", help="a transformers checkpoint directory (model and tokenizer)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--name", help="the model's name in the API (default: DIR as given)")
    p.add_argument("--max-batch", type=int, default=64, help="rows sampled together at most (default 64)")
    p.add_argument("--batch-wait-ms", type=float, default=10.0,
                   help="how long a batch waits for more requests after its first (default 10 ms)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    p.add_argument("--log-level", default="info", help="uvicorn's log level (default info)")
    p.set_defaults(func=run_serve)


def main(argv: list[str] | None = None) -> int:
    """`python -m agents.serve DIR ...`: the same as `cwm serve DIR ...` (what ServerPool starts)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="cwm")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"cwm serve: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
