"""Policies by name: one `--policy SPEC` grammar for every runner, `cwm train` and Python (`make_policy`).

| spec | what acts |
|---|---|
| `oracle` | the env's own oracle (`env.unwrapped.reference_episode(task)`, handed through `OracleHint`) |
| `wrong` | the oracle's action for another task of the same env, one that this task's judge does not pay |
| `empty` | an empty turn (every env pays it its failure reward) |
| `noisy:P` | `oracle` with probability P, else `wrong` (seeded by the sampler's generator): exercises pass@k |
| `hf:DIR` | a local transformers causal LM directory, sampled in-process (`LMPolicy`: batched, KV cache, stop strings, sampler token ids and log-probs) |
| `openai:URL` | any OpenAI-compatible server (vLLM, SGLang, TGI, `cwm serve`) through the `openai` client; `model=` names the served model (default: the first it lists) |

Sampling (`Sampling`, the flags `--samples --temperature --top-p --max-tokens --seed` in every runner):
ours default to temperature 1.0, top-p 1.0; CWM's published evaluations sample at temperature 1.0, top-p 0.95.
Temperature 0 means greedy decoding.

Every policy has `act(turns, *, greedy, generator, oracle=None) -> [Completion]` (agents/policy.py), `encode`
(text -> the token ids it keeps), `set_weights` and `version`. A turn the policy could not produce because
the machinery failed (a server unreachable, 429/5xx after retries, a timeout) comes back as a Completion
with `finish="error"` and `error` set: the caller counts it as an infrastructure fault, never as an answer.

This module imports no torch until a policy is built, so `cwm --help` stays light.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

from cwm_envs.chat import EOS, EOT
from cwm_envs.errors import UsageError

SCRIPTED = ("oracle", "wrong", "empty", "noisy")
MODEL_KINDS = ("hf", "openai")
SPEC_HELP = "oracle, wrong, empty, noisy:P, hf:DIR (local checkpoint) or openai:URL (an OpenAI-compatible server)"


@dataclass(frozen=True)
class Sampling:
    """How a model policy samples (the same flags in every runner)."""

    samples: int = 1            # samples per task (pass@k needs k of them)
    temperature: float = 1.0    # 0: greedy. CWM's evaluations: 1.0
    top_p: float = 1.0          # nucleus mass. CWM's evaluations: 0.95
    max_tokens: int = 1024      # new tokens per turn
    seed: int = 0               # seeds the sampler (hf: torch generator; openai: the `seed` of each request)

    def __post_init__(self):
        if self.samples < 1 or self.max_tokens < 1:
            raise UsageError("--samples and --max-tokens must be at least 1")
        if self.temperature < 0 or not 0 < self.top_p <= 1:
            raise UsageError("--temperature must be >= 0 and --top-p in (0, 1]")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def parse_spec(spec: str) -> tuple[str, str]:
    """`(kind, argument)` of a policy spec, checked without building anything.

    >>> parse_spec("noisy:0.3"), parse_spec("hf:runs/sft"), parse_spec("oracle")
    (('noisy', '0.3'), ('hf', 'runs/sft'), ('oracle', ''))
    """
    kind, _, arg = str(spec).partition(":")
    if kind not in SCRIPTED + MODEL_KINDS:
        raise UsageError(f"unknown policy {spec!r}: expected {SPEC_HELP}")
    if kind in MODEL_KINDS and not arg:
        raise UsageError(f"policy {spec!r} needs its argument: {kind}:{'DIR' if kind == 'hf' else 'URL'}")
    if kind == "noisy":
        try:
            p = float(arg)
        except ValueError:
            raise UsageError(f"policy {spec!r}: noisy needs a probability, e.g. noisy:0.5") from None
        if not 0 <= p <= 1:
            raise UsageError(f"policy {spec!r}: the probability must be in [0, 1]")
    elif kind in ("oracle", "wrong", "empty") and arg:
        raise UsageError(f"policy {spec!r}: {kind} takes no argument")
    return kind, arg


def add_policy_args(parser, *, flag: str = "--policy", default: str = "oracle", samples_unit: str = "task") -> None:
    """The policy and sampling flags every runner shares (read back with `sampling_from`)."""
    parser.add_argument(flag, default=default, help=f"{SPEC_HELP} (default {default})")
    parser.add_argument("--model", help="openai: the served model's name (default: the first the server lists)")
    parser.add_argument("--samples", type=int, default=1, help=f"samples per {samples_unit} (default 1)")
    parser.add_argument("--temperature", type=float, default=1.0,
                        help="sampling temperature, 0 for greedy (default 1.0; CWM's evaluations: 1.0)")
    parser.add_argument("--top-p", type=float, default=1.0, help="nucleus mass (default 1.0; CWM's evaluations: 0.95)")
    parser.add_argument("--max-tokens", type=int, default=1024, help="new tokens per turn (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    parser.add_argument("--concurrency", type=int, default=8, help="openai: requests in flight at once (default 8)")
    parser.add_argument("--request-timeout", type=float, default=600.0,
                        help="openai: seconds per request before it counts as an infrastructure fault")
    parser.add_argument("--retries", type=int, default=4,
                        help="openai: retries of a request on 429, 5xx, a dropped connection or a timeout, with "
                             "exponential backoff (default 4); what still fails is an infrastructure fault")
    parser.add_argument("--tokenizer", help="openai: tokenizer directory of the served model, to send token ids "
                                            "(token-in) instead of text")


def sampling_from(args) -> Sampling:
    """The `Sampling` of the flags `add_policy_args` adds."""
    return Sampling(samples=args.samples, temperature=args.temperature, top_p=args.top_p,
                    max_tokens=args.max_tokens, seed=args.seed)


def policy_from_args(args, spec: str | None = None, **overrides):
    """`make_policy` with the flags of `add_policy_args`."""
    return make_policy(spec or args.policy, sampling_from(args), model=getattr(args, "model", None),
                       tokenizer=getattr(args, "tokenizer", None), concurrency=getattr(args, "concurrency", 8),
                       timeout=getattr(args, "request_timeout", 600.0), retries=getattr(args, "retries", 4),
                       **overrides)


def make_policy(spec: str, sampling: Sampling | None = None, *, model: str | None = None, tokenizer: Any = None,
                concurrency: int = 8, timeout: float = 600.0, retries: int = 4, stop: Sequence[str] | None = None):
    """Build the policy a spec names (see the module docstring). `tokenizer` (a directory or a tokenizer)
    gives scripted and openai policies real token ids; `stop` overrides the stop markers (default: end of
    turn and `</tool>`)."""
    from agents.policy import DEFAULT_STOP

    sampling = sampling or Sampling()
    kind, arg = parse_spec(spec)
    stop = tuple(stop) if stop is not None else DEFAULT_STOP
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = _load_tokenizer(tokenizer)
    if kind == "hf":
        return _hf_policy(arg, sampling, stop)
    if kind == "openai":
        return OpenAIPolicy(arg, model, sampling=sampling, stop=stop, tokenizer=tokenizer, concurrency=concurrency,
                            timeout=timeout, retries=retries)
    return ScriptedPolicy(kind, float(arg) if kind == "noisy" else 1.0, tokenizer=tokenizer)


def _load_tokenizer(path):
    from pathlib import Path

    if not Path(path).is_dir():
        raise UsageError(f"--tokenizer {path}: not a directory")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def _hf_policy(path: str, sampling: Sampling, stop):
    from pathlib import Path

    from agents.policy import LMPolicy

    if not (Path(path) / "config.json").is_file():
        raise UsageError(f"hf:{path}: not a transformers checkpoint directory (no config.json)")
    return LMPolicy.from_pretrained(path, temperature=sampling.temperature or 1.0, top_p=sampling.top_p,
                                    max_new_tokens=sampling.max_tokens, stop=stop)


def _byte_ids(text: str) -> list[int]:
    """Token ids for a policy without a tokenizer: the UTF-8 bytes (only counts and lengths use them)."""
    return list(text.encode("utf-8"))


class ScriptedPolicy:
    """`oracle`, `wrong`, `empty` or `noisy:P` (see the module docstring); acts on the oracle channel only."""

    needs_oracle = True

    def __init__(self, kind: str, p_correct: float = 1.0, tokenizer=None):
        self.kind, self.p_correct, self.version = kind, p_correct, 0
        self.needs_wrong = kind in ("wrong", "noisy")
        self.encode = (lambda s: tokenizer.encode(s, add_special_tokens=False)) if tokenizer is not None else _byte_ids

    def _text(self, hint, generator) -> str:
        kind = self.kind
        if kind == "noisy":
            import torch

            kind = "oracle" if float(torch.rand(1, generator=generator)) < self.p_correct else "wrong"
        if kind == "empty":
            return ""
        action = hint.action if kind == "oracle" else hint.wrong
        if action is None:
            raise ValueError(f"the env offers no {'reference' if kind == 'oracle' else 'wrong'} action for this turn")
        return action

    def act(self, turns, *, oracle=None, generator=None, **_ignored):
        from agents.policy import Completion

        if oracle is None or len(oracle) != len(turns):
            raise ValueError(f"the {self.kind} policy needs each episode's hint (oracle=...)")
        out = []
        for hint in oracle:
            text = self._text(hint, generator)
            ids = self.encode(text + EOT)
            out.append(Completion(ids=ids, logprobs=[0.0] * len(ids), text=text, finish="stop", raw=text + EOT))
        return out

    def set_weights(self, weights, version: int) -> None:
        self.version = version


# -- openai ---------------------------------------------------------------------------------------------------

def _is_infra(exc: BaseException) -> bool:
    """A fault of the machinery between us and the model (counted apart, never scored)."""
    import openai

    if isinstance(exc, (openai.APIConnectionError, openai.APITimeoutError, openai.RateLimitError,
                        openai.InternalServerError)):
        return True
    return isinstance(exc, openai.APIStatusError) and exc.status_code >= 500


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300]


class OpenAIPolicy:
    """Completions from an OpenAI-compatible server over the exact prompt text (or token ids: token-in).

    - `prompt`: the episode's text so far (`Turn.text`), or its token ids when a `tokenizer` of the served
      model is given (the server then never re-tokenises; vLLM and `cwm serve` accept a token-id prompt).
    - Identical prompts in one `act` (a GRPO group, pass@k samples) go as one request with `n`.
    - Per-token log-probs (`logprobs`) and the sampled token ids (vLLM's `return_token_ids`, also answered
      by `cwm serve`) are kept when the server offers them; without ids, the tokenizer's (or bytes) stand in.
    - `concurrency` requests in flight; the client retries 429, 5xx, dropped connections and timeouts with
      exponential backoff (`retries` times); what still fails is an infra fault (`finish="error"`).
    - An unreachable server or an unknown model name is a `UsageError` at construction: one clear line.
    """

    def __init__(self, base_url: str, model: str | None = None, *, sampling: Sampling | None = None,
                 stop: Sequence[str] = (EOT, "</tool>"), tokenizer=None, concurrency: int = 8, timeout: float = 600.0,
                 retries: int = 4, api_key: str | None = None):
        import openai

        self.sampling = sampling or Sampling()
        self.base_url, self.stop, self.tokenizer = base_url.rstrip("/"), list(stop), tokenizer
        self.concurrency, self.version = max(1, int(concurrency)), 0
        self.client = openai.OpenAI(base_url=self.base_url, api_key=api_key or os.environ.get("OPENAI_API_KEY", "EMPTY"),
                                    max_retries=retries, timeout=timeout)
        try:
            served = [m.id for m in self.client.with_options(max_retries=1, timeout=min(timeout, 30)).models.list()]
        except openai.APIError as exc:
            raise UsageError(f"cannot reach an OpenAI-compatible server at {self.base_url} ({_one_line(exc)}); "
                             "is it running, and does the URL end in /v1?") from None
        if not served:
            raise UsageError(f"the server at {self.base_url} lists no model")
        if model is not None and model not in served:
            raise UsageError(f"the server at {self.base_url} does not serve model {model!r}; it serves: "
                             f"{', '.join(served[:10])}")
        self.model = model or served[0]
        self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="cwm-openai")
        self._lock = threading.Lock()
        self.faults = 0  # requests that failed for good (infra)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False) if self.tokenizer is not None else _byte_ids(text)

    def set_weights(self, weights, version: int) -> None:
        self.version = version  # the server owns its weights

    def act(self, turns, *, greedy: bool | None = None, generator=None, **_ignored):
        """One completion per turn; identical prompts share a request (`n`), whose token budget is the
        smallest of their turns' (`Turn.max_new_tokens`, within `max_tokens`)."""
        import torch

        greedy = self.sampling.greedy if greedy is None else greedy
        groups: dict[Any, list[int]] = {}
        for i, t in enumerate(turns):
            key = tuple(t.context) if self.tokenizer is not None else (t.text or t.observation)
            groups.setdefault(key, []).append(i)
        jobs = []
        for key, rows in groups.items():  # one seed per request, drawn in order: a run repeats for a seed
            seed = int(torch.randint(2**31 - 1, (1,), generator=generator)) if generator is not None else None
            budget = min([self.sampling.max_tokens] + [turns[i].max_new_tokens for i in rows
                                                       if getattr(turns[i], "max_new_tokens", None)])
            jobs.append((list(key) if self.tokenizer is not None else key, len(rows), seed, budget))
        results = list(self._pool.map(lambda j: self._request(*j[:3], greedy=greedy, max_tokens=j[3]), jobs))
        out: list = [None] * len(turns)
        for rows, comps in zip(groups.values(), results):
            for i, c in zip(rows, comps):
                out[i] = c
        return out

    def _request(self, prompt, n: int, seed: int | None, *, greedy: bool, max_tokens: int | None = None):
        import openai

        from agents.policy import Completion

        s = self.sampling
        try:
            resp = self.client.completions.create(
                model=self.model, prompt=prompt, n=n, temperature=0.0 if greedy else s.temperature,
                top_p=1.0 if greedy else s.top_p, max_tokens=max_tokens or s.max_tokens, seed=seed, stop=self.stop, logprobs=1,
                extra_body={"return_token_ids": True, "include_stop_str_in_output": True,
                            "skip_special_tokens": False})
        except openai.NotFoundError as exc:
            raise UsageError(f"{self.base_url}: {_one_line(exc)} (is --model right?)") from None
        except Exception as exc:
            with self._lock:
                self.faults += 1
            kind = "infra" if _is_infra(exc) else "request rejected"
            return [Completion(ids=[], logprobs=[], text="", finish="error", error=f"{kind}: {_one_line(exc)}")
                    for _ in range(n)]
        choices = sorted(resp.choices, key=lambda c: c.index)
        return [self._completion(c) for c in choices[:n]] + [
            Completion(ids=[], logprobs=[], text="", finish="error", error="infra: the server sent fewer choices than n")
            for _ in range(n - len(choices))]

    def _completion(self, choice):
        from agents.policy import Completion

        raw = choice.text or ""
        extra = choice.model_extra or {}
        ids = extra.get("token_ids")
        lps = list(choice.logprobs.token_logprobs or []) if choice.logprobs is not None else []
        if ids is None:
            ids = self.encode(raw)
        if len(lps) != len(ids):  # no log-probs offered (or not one per token): unknown, not zero
            lps = [float("nan")] * len(ids)
        stop_reason = extra.get("stop_reason")
        if isinstance(stop_reason, str) and stop_reason in self.stop and not raw.endswith(stop_reason):
            raw += stop_reason  # a server that leaves matched stop strings out (OpenAI's rule)
        text = raw
        for end in (EOT, EOS):
            if text.endswith(end):
                text = text[: -len(end)]
        finish = "length" if choice.finish_reason == "length" else "stop"
        version = extra.get("cwm_version")  # `cwm serve`: the weights' version that sampled this choice
        return Completion(ids=list(ids), logprobs=[float(x) if x is not None else float("nan") for x in lps],
                          text=text, finish=finish, raw=raw, version=int(version) if version is not None else None)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
        self.client.close()
