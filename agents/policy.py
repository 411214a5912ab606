"""Policies that act in our envs through one interface: `act(turns) -> completions`.

- `LMPolicy` samples from a local transformers causal LM (a `CwmForCausalLM` or any other), batched, with
  temperature and top-p, records the sampler's per-token log-probs (and a value head's estimates for PPO),
  and stops at the end of a turn (`<|eot_id|>`), the end of a tool call (`</tool>`) or a token budget.
- `OraclePolicy` answers from the task itself (a ceiling, and a check that the reward path pays out).
- `RandomPolicy` emits uniformly random tokens (a floor).

Token-in/token-out: a `Turn` carries the token ids the episode has so far; the policy appends only the ids
it sampled, and the rollout loop appends the env's reply tokens. The conversation is never re-tokenised.

Log-probs are those of the tempered distribution `softmax(logits / T)` before top-p truncation, so a learner
that recomputes `log_softmax(logits / T)` with the same weights gets a ratio of exactly 1.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from cwm_envs.chat import EOS, EOT

TOOL_END = "</tool>"
DEFAULT_STOP = (EOT, TOOL_END)


@dataclass
class Turn:
    """What a policy sees at one step of one episode: never the gold answer or the tests (the rollout worker
    passes only the budget part of the env's info, `agents.rollout.POLICY_INFO_KEYS`)."""

    context: list[int]  # every token id of the episode so far (prompt, earlier turns, env replies)
    observation: str  # the env's latest observation text
    info: dict[str, Any] = field(default_factory=dict)
    text: str = ""  # the episode's text so far (what `context` encodes), for a policy that sends text
    max_new_tokens: int | None = None  # this turn's token budget (the episode's context and token budgets), if less


@dataclass
class Completion:
    """One sampled turn: the new token ids, their sampler log-probs, and the text the env receives."""

    ids: list[int]
    logprobs: list[float]
    text: str
    finish: str  # "stop" (a stop token or string), "length" (token budget) or "error" (infrastructure)
    values: list[float] | None = None
    raw: str | None = None  # the sampled text as it continues the episode (end-of-turn included); None: `text`
    error: str | None = None  # finish == "error": what failed (a server, a timeout); the turn was not produced
    version: int | None = None  # the weights' version that sampled it, when not the policy's own (a shared server)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log softmax(logits / T) gathered at `targets`: (..., V), (...) -> (...).

    >>> logits = torch.tensor([[0.0, 0.0]])
    >>> round(float(token_logprobs(logits, torch.tensor([1]))[0]), 4)
    -0.6931
    """
    logits = logits.float()
    if temperature != 1.0:
        logits = logits / temperature
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _top_p_filter(probs: torch.Tensor, top_p: float) -> torch.Tensor:
    """Zero the tail of each row outside the smallest set whose mass reaches `top_p` (nucleus sampling)."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    outside = sorted_p.cumsum(-1) - sorted_p > top_p  # the first token is always kept
    sorted_p = sorted_p.masked_fill(outside, 0.0)
    return torch.zeros_like(probs).scatter(-1, order, sorted_p)


class LMPolicy:
    """Batched sampling from a local causal LM, with sampler log-probs and stop tokens/strings.

    Args:
        model: a transformers causal LM (`CwmForCausalLM`, `LlamaForCausalLM`, ...), kept in eval mode.
        tokenizer: its tokenizer; CWM's special tokens (`<|eot_id|>`, ...) must be single tokens.
        temperature, top_p: sampling; `act(..., greedy=True)` overrides both.
        max_new_tokens: the per-turn token budget.
        stop: stop markers. One that is a single token (`<|eot_id|>`) stops on that id; others (`</tool>`)
            stop when the decoded tail ends with them. `<|end_of_text|>` always stops.
        value_head: optional `nn.Linear(hidden, 1)` on the last hidden state (PPO); its estimate of the
            state before each sampled token is returned in `Completion.values`.
        max_batch: rows generated together; larger batches are split (bounds memory).
    """

    def __init__(self, model, tokenizer, *, temperature: float = 1.0, top_p: float = 1.0,
                 max_new_tokens: int = 256, stop: Sequence[str] = DEFAULT_STOP,
                 value_head: torch.nn.Module | None = None, max_batch: int = 256, version: int = 0):
        if temperature <= 0:
            raise ValueError("temperature must be > 0 (use greedy=True for argmax decoding)")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.max_new_tokens, self.max_batch = int(max_new_tokens), int(max_batch)
        self.value_head = value_head.eval() if value_head is not None else None
        self.version = version
        self.stop = tuple(stop)
        self.stop_ids: set[int] = set()
        self.stop_strings: list[str] = []
        for s in (*self.stop, EOS):
            ids = tokenizer.encode(s, add_special_tokens=False)
            if len(ids) == 1:
                self.stop_ids.add(ids[0])
            else:
                self.stop_strings.append(s)
        # A text stop can only complete on a token ending in its last character; a tail of this many tokens
        # always covers it (every token decodes to at least one byte).
        self._tail = max((len(s.encode()) for s in self.stop_strings), default=0)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self._decoder, self._head = model.get_decoder(), model.get_output_embeddings()
        # transformers 5 renamed `past_key_values` to `cache` (the old name warns until 5.40).
        self._cache_kw = "cache" if "cache" in inspect.signature(self._decoder.forward).parameters else "past_key_values"

    # -- construction and weights ------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs) -> "LMPolicy":
        """Load a `save_pretrained` checkpoint directory (model and tokenizer side by side)."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
        return cls(model, AutoTokenizer.from_pretrained(str(path)), **kwargs)

    def spec(self) -> dict[str, Any]:
        """A picklable recipe for a replica elsewhere (a Ray worker): config, tokenizer, sampling settings."""
        return {
            "config": self.model.config,
            "tokenizer": self.tokenizer,
            "value_head": self.value_head is not None,
            "kwargs": dict(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens,
                           stop=self.stop, max_batch=self.max_batch),
        }

    @classmethod
    def from_spec(cls, spec: dict[str, Any], weights: dict | None = None, version: int = 0) -> "LMPolicy":
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_config(spec["config"])
        head = None
        if spec.get("value_head"):
            head = torch.nn.Linear(spec["config"].hidden_size, 1)
        policy = cls(model, spec["tokenizer"], value_head=head, version=version, **spec["kwargs"])
        if weights is not None:
            policy.set_weights(weights, version)
        return policy

    def get_weights(self) -> dict[str, torch.Tensor]:
        """Weights in the learner's layout: `lm.` + the model's keys, `value_head.` + the head's."""
        state = {f"lm.{k}": v.detach().clone() for k, v in self.model.state_dict().items()}
        if self.value_head is not None:
            state.update({f"value_head.{k}": v.detach().clone() for k, v in self.value_head.state_dict().items()})
        return state

    def set_weights(self, weights: dict, version: int) -> None:
        """Load weights in the learner's layout (see `get_weights`); numpy arrays or tensors."""
        lm = {k[3:]: torch.as_tensor(v) for k, v in weights.items() if k.startswith("lm.")}
        self.model.load_state_dict(lm, strict=True)
        if self.value_head is not None:
            head = {k[11:]: torch.as_tensor(v) for k, v in weights.items() if k.startswith("value_head.")}
            if head:
                self.value_head.load_state_dict(head)
        self.version = version

    # -- text <-> ids ----------------------------------------------------------------------------------

    def encode(self, text: str) -> list[int]:
        """Token ids of env text (special tokens such as `<|eot_id|>` written in it become single ids)."""
        return self.tokenizer.encode(text, add_special_tokens=False)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def action_text(self, ids: Sequence[int]) -> str:
        """What the env receives: the decoded turn without a trailing end-of-turn marker."""
        text = self.decode(ids)
        for end in (EOT, EOS):
            if text.endswith(end):
                return text[: -len(end)]
        return text

    # -- sampling --------------------------------------------------------------------------------------

    def act(self, turns: Sequence[Turn], *, greedy: bool = False,
            generator: torch.Generator | Sequence | None = None) -> list[Completion]:
        budgets = [min(self.max_new_tokens, t.max_new_tokens or self.max_new_tokens) for t in turns]
        return self.generate([t.context for t in turns], greedy=greedy, generator=generator, max_new_tokens=budgets)

    @torch.no_grad()
    def generate(self, contexts: Sequence[Sequence[int]], *, greedy: bool = False,
                 generator: torch.Generator | Sequence | None = None,
                 max_new_tokens: int | Sequence[int] | None = None) -> list[Completion]:
        """Sample one turn for each context (lists of token ids); rows are batched `max_batch` at a time.
        `generator`: one for all rows, or a list with one per context (None entries: torch's default).
        `max_new_tokens`: one budget for all rows, or one per row (a row ends with finish "length" at its own)."""
        budgets = max_new_tokens if isinstance(max_new_tokens, (list, tuple)) else \
            [max_new_tokens or self.max_new_tokens] * len(contexts)
        out: list[Completion] = []
        for start in range(0, len(contexts), self.max_batch):
            gen = generator[start:start + self.max_batch] if isinstance(generator, (list, tuple)) else generator
            out += self._generate(contexts[start:start + self.max_batch], greedy, gen,
                                  budgets[start:start + self.max_batch])
        return out

    def _forward(self, input_ids, attention_mask, position_ids, cache):
        """Logits (and value) at each row's last position. Runs the decoder, then the LM head on that position
        only, as the learner does (logits = lm_head(last hidden state))."""
        out = self._decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                            use_cache=True, **{self._cache_kw: cache})
        h = out.last_hidden_state[:, -1]
        value = self.value_head(h).squeeze(-1) if self.value_head is not None else None
        return self._head(h), value, getattr(out, self._cache_kw)

    def _generate(self, contexts, greedy, generator, budgets) -> list[Completion]:
        """Left-padded batch decoding with a KV cache.

        Identical contexts (a GRPO group) are prefilled once and their cache rows copied; rows that stopped
        leave the batch (their cache rows are dropped), so late steps cost only what is still running.
        """
        B = len(contexts)
        if B == 0:
            return []
        if any(len(c) == 0 for c in contexts):
            raise ValueError("every context needs at least one token")
        if min(budgets) < 1:
            raise ValueError("every row needs a token budget of at least 1")
        max_new, limit = max(budgets), torch.tensor(budgets)
        unique: dict[tuple, int] = {}
        of_row = torch.tensor([unique.setdefault(tuple(c), len(unique)) for c in contexts])
        prompts = list(unique)
        L = max(len(c) for c in prompts)
        ids = torch.full((len(prompts), L), self.pad_id, dtype=torch.long)
        attn = torch.zeros((len(prompts), L), dtype=torch.long)
        for i, c in enumerate(prompts):  # left padding: every row's next token lands in the last column
            ids[i, L - len(c):] = torch.tensor(c, dtype=torch.long)
            attn[i, L - len(c):] = 1
        pos = (attn.cumsum(-1) - 1).clamp(min=0)
        logits, value, cache = self._forward(ids, attn, pos, None)
        if len(prompts) < B:  # copy each prompt's cache rows to its samples
            cache.batch_select_indices(of_row)
        logits, attn, next_pos = logits[of_row], attn[of_row], pos[of_row, -1:] + 1
        value = value[of_row] if value is not None else None

        new_ids = torch.zeros((B, max_new), dtype=torch.long)
        new_lp = torch.zeros((B, max_new))
        new_v = torch.zeros((B, max_new)) if value is not None else None
        lengths = torch.zeros(B, dtype=torch.long)
        finish = ["length"] * B
        stop_ids = torch.tensor(sorted(self.stop_ids), dtype=torch.long)
        rows = torch.arange(B)  # the original row of each row still in the batch
        for step in range(max_new):
            logp = torch.log_softmax(logits.float() / self.temperature, dim=-1)
            if greedy:
                tok = logp.argmax(-1)
            else:
                probs = logp.exp()
                if self.top_p < 1.0:
                    probs = _top_p_filter(probs, self.top_p)
                tok = self._sample(probs, rows, generator)
            new_ids[rows, step] = tok
            new_lp[rows, step] = logp.gather(-1, tok[:, None]).squeeze(-1)
            if new_v is not None:
                new_v[rows, step] = value
            lengths[rows] += 1
            stopped = torch.isin(tok, stop_ids)
            if self.stop_strings:
                stopped |= self._ends_with_stop_string(new_ids[rows, : step + 1])
            for i in rows[stopped].tolist():
                finish[i] = "stop"
            stopped |= lengths[rows] >= limit[rows]  # a row at its own budget ends ("length")
            if bool(stopped.all()) or step == max_new - 1:
                break
            if bool(stopped.any()):  # drop finished rows from the batch and the cache
                keep = (~stopped).nonzero().flatten()
                cache.batch_select_indices(keep)
                rows, tok, attn, next_pos = rows[keep], tok[keep], attn[keep], next_pos[keep]
            attn = torch.cat([attn, torch.ones((len(rows), 1), dtype=torch.long)], dim=1)
            logits, value, cache = self._forward(tok[:, None], attn, next_pos, cache)
            next_pos = next_pos + 1

        out = []
        for i in range(B):
            n = int(lengths[i])
            row = new_ids[i, :n].tolist()
            out.append(Completion(ids=row, logprobs=new_lp[i, :n].tolist(), text=self.action_text(row),
                                  finish=finish[i], values=new_v[i, :n].tolist() if new_v is not None else None,
                                  raw=self.decode(row)))
        return out

    @staticmethod
    def _sample(probs: torch.Tensor, rows: torch.Tensor, generator) -> torch.Tensor:
        """One token per row: from one generator, or from each original row's own (a list, e.g. one per request
        in a server's batch, so that a seeded request draws the same whatever else shares the batch)."""
        if not isinstance(generator, (list, tuple)):
            return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        return torch.cat([torch.multinomial(probs[k], 1, generator=generator[int(r)]) for k, r in enumerate(rows)])

    def _ends_with_stop_string(self, ids: torch.Tensor) -> torch.Tensor:
        tails = self.tokenizer.batch_decode(ids[:, -self._tail:].tolist(), skip_special_tokens=False)
        return torch.tensor([any(t.endswith(s) for s in self.stop_strings) for t in tails], dtype=torch.bool)


@dataclass(frozen=True)
class OracleHint:
    """What only an oracle policy is handed, on its own channel (never inside a `Turn`): the episode's task
    and the env's reference action for this turn (`env.unwrapped.reference_episode(task)`, None past its end
    or when the env has no oracle). `wrong`, asked for by a policy that sets `needs_wrong`: the reference
    action of another task of the env that this task's judge does not pay (a generic wrong answer)."""

    task: Any
    action: str | None
    wrong: str | None = None


class OraclePolicy:
    """Answers as the env's own oracle does: `respond(turn, hint) -> text`, tokenised by `encode` (log-probs 0).

    The rollout worker passes `oracle=[OracleHint, ...]` only to a policy that sets `needs_oracle`. The default
    `respond` plays the env's reference action; a custom one may use the task (e.g. to script tool use).
    """

    needs_oracle = True

    def __init__(self, encode: Callable[[str], list[int]], respond: Callable[[Turn, OracleHint], str] | None = None):
        self.encode, self.respond, self.version = encode, respond or self.reference_action, 0

    @staticmethod
    def reference_action(turn: Turn, hint: OracleHint) -> str:
        if hint.action is None:
            raise ValueError("the env offers no reference action for this turn (reference_episode(task))")
        return hint.action

    def act(self, turns: Sequence[Turn], *, oracle: Sequence[OracleHint] | None = None, **_ignored) -> list[Completion]:
        if oracle is None or len(oracle) != len(turns):
            raise ValueError("the oracle policy needs each episode's hint (oracle=...)")
        out = []
        for turn, hint in zip(turns, oracle):
            text = self.respond(turn, hint)
            ids = self.encode(text + EOT)
            out.append(Completion(ids=ids, logprobs=[0.0] * len(ids), text=text, finish="stop", raw=text + EOT))
        return out

    def set_weights(self, weights, version: int) -> None:
        self.version = version


class RandomPolicy:
    """Uniformly random token ids (any of `vocab_size`) for up to `max_new_tokens`: the floor of any env.

    Log-probs are exact: -log(vocab_size) per token.
    """

    def __init__(self, tokenizer, *, max_new_tokens: int = 32, seed: int | None = None):
        self.tokenizer, self.max_new_tokens, self.version = tokenizer, max_new_tokens, 0
        self.vocab_size = len(tokenizer)
        self.generator = torch.Generator().manual_seed(seed if seed is not None else 0)

    def act(self, turns: Sequence[Turn], *, generator: torch.Generator | None = None, **_ignored) -> list[Completion]:
        gen = generator or self.generator
        out = []
        for _ in turns:
            n = int(torch.randint(1, self.max_new_tokens + 1, (1,), generator=gen))
            ids = torch.randint(0, self.vocab_size, (n,), generator=gen).tolist()
            text = self.tokenizer.decode(ids, skip_special_tokens=False)
            out.append(Completion(ids=ids, logprobs=[-math.log(self.vocab_size)] * n, text=text, finish="length"))
        return out

    def set_weights(self, weights, version: int) -> None:
        self.version = version
