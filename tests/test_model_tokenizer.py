"""The tokenizer: CWM's special tokens at their documented ids (exactly Llama 3's with a 128000 BPE),
CWM's chat format through the chat template, trace tokens as single tokens, and the CLI that trains one."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from cwm_envs.chat import format_chat
from cwm_envs.errors import UsageError
from model.corpus import sample_text
from model.pretrain import encode_documents
from model.tokenizer import (
    NAMED_OFFSETS,
    SPECIAL_BLOCK,
    TRACE_TOKENS,
    add_special_block,
    load_tokenizer,
    special_token_ids,
    train_tokenizer,
)

TRACE = ('<|trace_context_start|>def f(a, b):  # << START_OF_TRACE\n    return a + b\n<|frame_sep|>'
         '<|call_sep|>{"a": "1", "b": "2"}<|action_sep|>def f(a, b):\n<|frame_sep|>'
         '<|line_sep|>{"a": "..", "b": ".."}<|action_sep|>    return a + b\n<|frame_sep|>'
         '<|return_sep|><|action_sep|>    return a + b\n<|arg_sep|>"3"<|frame_sep|><|end_of_text|>')


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    """A small BPE (512 merges' worth) trained on a slice of the default corpus, saved and reloaded."""
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer(sample_text("default", 300_000), vocab_size=512).save_pretrained(out)
    return load_tokenizer(out)


def test_special_tokens_sit_in_a_block_after_the_bpe_vocabulary(tok):
    assert len(tok) == 512 + SPECIAL_BLOCK
    ids = special_token_ids(tok)
    assert ids["<|begin_of_text|>"] == 512 == tok.bos_token_id
    assert ids["<|end_of_text|>"] == 513 == tok.eos_token_id
    assert (ids["<|start_header_id|>"], ids["<|end_header_id|>"], ids["<|eot_id|>"]) == (518, 519, 521)
    assert [ids[t] for t in TRACE_TOKENS] == list(range(612, 620))
    assert tok.pad_token_id == 516


def test_a_llama3_sized_vocabulary_gets_cwms_exact_ids(tmp_path):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from model.tokenizer import _wrap

    vocab = {c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}
    vocab.update({f"w{i}": i for i in range(len(vocab), 128000)})  # a 128000-entry BPE vocabulary
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    bpe.pre_tokenizer, bpe.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    add_special_block(bpe)
    _wrap(bpe).save_pretrained(tmp_path)
    ids = special_token_ids(load_tokenizer(tmp_path))
    assert ids["<|begin_of_text|>"] == 128000 and ids["<|end_of_text|>"] == 128001
    assert ids["<|start_header_id|>"] == 128006 and ids["<|end_header_id|>"] == 128007
    assert ids["<|eot_id|>"] == 128009
    assert [ids[t] for t in TRACE_TOKENS] == list(range(128100, 128108))
    assert {name: ids[name] - 128000 for name in ids} == NAMED_OFFSETS


def test_chat_template_gives_cwms_chat_format_and_round_trips(tok):
    messages = [{"role": "system", "content": "Reason first."}, {"role": "user", "content": "What is 12+30?"},
                {"role": "assistant", "content": "<think>\nadd\n</think>\n\\boxed{42}"},
                {"role": "tool: bash", "content": "<output>\nok\n</output>"}]
    for prompt, think in ((True, True), (True, False), (False, True)):
        text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=prompt, think=think)
        assert text == format_chat(messages, add_generation_prompt=prompt, think=think)
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
    assert text.count("<|eot_id|>") == 4 and ids.count(tok.convert_tokens_to_ids("<|eot_id|>")) == 4


def test_trace_tokens_are_single_tokens_and_the_trace_round_trips(tok):
    ids = tok.encode(TRACE, add_special_tokens=False)
    for name in TRACE_TOKENS[:5] + ["<|arg_sep|>", "<|trace_context_start|>", "<|end_of_text|>"]:
        assert tok.encode(name, add_special_tokens=False) == [tok.convert_tokens_to_ids(name)]
    assert ids.count(tok.convert_tokens_to_ids("<|frame_sep|>")) == TRACE.count("<|frame_sep|>") == 4
    assert tok.decode(ids) == TRACE


def test_raw_corpus_text_never_yields_control_tokens(tok):
    (ids, mask), = encode_documents(tok, ["print('<|eot_id|>')"])
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert eot not in ids and ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[1:-1]) == "print('<|eot_id|>')" and all(mask)


def test_a_tokenizer_without_cwm_tokens_is_refused(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    plain = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(pre_tokenizers.ByteLevel.alphabet())}, merges=[]))
    PreTrainedTokenizerFast(tokenizer_object=plain).save_pretrained(tmp_path)
    with pytest.raises(UsageError, match="lacks CWM special tokens"):
        load_tokenizer(tmp_path)
    with pytest.raises(UsageError, match="no tokenizer directory"):
        load_tokenizer(tmp_path / "missing")


def test_cli_trains_a_tokenizer_on_a_directory_corpus(tmp_path):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.py").write_text("def add(a, b):\n    return a + b\n" * 50)
    (corpus / "notes.md").write_text("# Notes\nSome text about adding numbers.\n" * 50)
    out = tmp_path / "tok"
    proc = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "model", "tokenizer", "--out", str(out),
                           "--vocab-size", "300", "--corpus", str(corpus)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "<|eot_id|>" in proc.stdout
    tok = load_tokenizer(out)
    assert special_token_ids(tok)["<|eot_id|>"] == len(tok) - SPECIAL_BLOCK + 9
    assert json.loads((out / "tokenizer_config.json").read_text())  # a standard transformers directory
    bad = subprocess.run([sys.executable, "-m", "cwm_envs.cli", "model", "tokenizer", "--out", str(out),
                          "--corpus", str(tmp_path / "nope")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "corpus must be" in bad.stderr and "Traceback" not in bad.stderr
