"""CWM's tokenizer: a real CWM tokenizer directory when given, else a byte-level BPE trained here.

Special tokens live in one block of 256 ids after the BPE vocabulary, laid out as in Llama 3 / CWM, so
that the id of a token is always `base + offset`:

| offset | token                     | id in CWM (base 128000) |
|-------:|---------------------------|------------------------:|
| 0      | `<|begin_of_text|>`       | 128000 |
| 1      | `<|end_of_text|>`         | 128001 |
| 4      | `<|finetune_right_pad_id|>` (padding) | 128004 |
| 6      | `<|start_header_id|>`     | 128006 |
| 7      | `<|end_header_id|>`       | 128007 |
| 8      | `<|eom_id|>`              | 128008 |
| 9      | `<|eot_id|>`              | 128009 |
| 100-107| `<|frame_sep|>`, `<|action_sep|>`, `<|return_sep|>`, `<|call_sep|>`, `<|line_sep|>`, `<|exception_sep|>`, `<|arg_sep|>`, `<|trace_context_start|>` | 128100-128107 |
| others | `<|reserved_special_token_OFFSET|>` | |

With the published 128000-entry vocabulary the ids are exactly CWM's; a tokenizer trained here with a BPE
of N entries has base N (`cwm-tiny`: 4096, so `<|eot_id|>` = 4105). Names are identical either way, so every
text format (chat, traces) reads the same. `<think>` / `</think>` are plain text, as in CWM.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

from cwm_envs.chat import BOS, EOS, EOT, HEADER_END, HEADER_START
from cwm_envs.errors import UsageError

SPECIAL_BLOCK = 256
LLAMA3_BASE = 128000
PAD = "<|finetune_right_pad_id|>"
TRACE_TOKENS = [
    "<|frame_sep|>", "<|action_sep|>", "<|return_sep|>", "<|call_sep|>",
    "<|line_sep|>", "<|exception_sep|>", "<|arg_sep|>", "<|trace_context_start|>",
]
NAMED_OFFSETS = {
    BOS: 0, EOS: 1, PAD: 4, HEADER_START: 6, HEADER_END: 7, "<|eom_id|>": 8, EOT: 9,
    **{tok: 100 + i for i, tok in enumerate(TRACE_TOKENS)},
}
_BY_OFFSET = {off: name for name, off in NAMED_OFFSETS.items()}

# CWM's chat format as a Jinja template, so `apply_chat_template` gives the same text as
# cwm_envs.chat.format_chat (`think=False` leaves out the opening `<think>`).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n{{ message['content'] }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n"
    "{% if think is not defined or think %}<think>\n{% endif %}{% endif %}"
)


def special_tokens() -> list[str]:
    """The 256 names of the special block, in id order."""
    return [_BY_OFFSET.get(i, f"<|reserved_special_token_{i}|>") for i in range(SPECIAL_BLOCK)]


def token_ids_for(vocab_size: int) -> dict[str, int]:
    """The ids of the named special tokens in a vocabulary of `vocab_size` that ends with the special block."""
    base = vocab_size - SPECIAL_BLOCK
    return {name: base + off for name, off in NAMED_OFFSETS.items()}


def special_token_ids(tokenizer) -> dict[str, int]:
    """The ids of CWM's named special tokens in `tokenizer`; a missing one is a UsageError naming it."""
    vocab = tokenizer.get_vocab()
    missing = [name for name in NAMED_OFFSETS if name not in vocab and name != PAD]
    if missing:
        raise UsageError(f"tokenizer lacks CWM special tokens: {', '.join(missing)}")
    return {name: vocab[name] for name in NAMED_OFFSETS if name in vocab}


def _wrap(tok):
    """A transformers PreTrainedTokenizerFast around a `tokenizers.Tokenizer`, with CWM's roles set."""
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   clean_up_tokenization_spaces=False, model_max_length=131072)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def add_special_block(tok) -> None:
    """Append the 256-token special block to a `tokenizers.Tokenizer` (ids base .. base + 255)."""
    from tokenizers import AddedToken

    base = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in special_tokens()])
    got = tok.token_to_id(EOT)
    if got != base + NAMED_OFFSETS[EOT]:  # a name that was already in the vocabulary would break the layout
        raise ValueError(f"special block misplaced: {EOT} got id {got}, expected {base + NAMED_OFFSETS[EOT]}")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 4096):
    """A byte-level BPE of `vocab_size` entries learnt on `texts`, followed by the special block.

    Digits are split one by one before BPE (as Llama 3 splits numbers into short groups), which keeps
    arithmetic learnable for tiny models.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    if vocab_size < 300:
        raise UsageError(f"--vocab-size must be at least 300 (256 byte tokens + merges), got {vocab_size}")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Digits(individual_digits=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    add_special_block(tok)
    return _wrap(tok)


def load_tokenizer(path: str | Path):
    """A tokenizer directory (ours, or CWM's published one) as a PreTrainedTokenizerFast with CWM's chat
    template (kept when the directory brings its own)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    path = Path(path)
    if not path.is_dir():
        raise UsageError(f"no tokenizer directory at {path}")
    try:
        tok = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        raise UsageError(f"cannot load a tokenizer from {path}: {exc}") from None
    if not isinstance(tok, PreTrainedTokenizerFast):
        raise UsageError(f"{path} holds a slow tokenizer ({type(tok).__name__}); a tokenizer.json is needed")
    special_token_ids(tok)
    if not tok.chat_template:
        tok.chat_template = CHAT_TEMPLATE
    if tok.pad_token is None:
        tok.pad_token = PAD if PAD in tok.get_vocab() else EOS
    return tok


def build_tokenizer(out: str | Path, corpus: str = "default", vocab_size: int = 4096,
                    max_chars: int = 4_000_000):
    """Train on `corpus` and save to `out` (what `cwm model tokenizer` does)."""
    from model.corpus import sample_text

    tok = train_tokenizer(sample_text(corpus, max_chars), vocab_size)
    tok.save_pretrained(str(out))
    return tok
