"""Stage 1, pretraining: causal language modelling on code and text.

`cwm train pretrain --preset cwm-tiny --corpus default --out runs/pre` trains a tokenizer on the corpus
(unless `--tokenizer DIR` gives one), builds the preset at that vocabulary size and trains it on packed
documents (`<|begin_of_text|>` text `<|end_of_text|>`). The default corpus is the Python standard library
and its docs (model/corpus.py), so nothing is downloaded.
"""
from __future__ import annotations

import random
from pathlib import Path
from typing import Iterator

import torch
from transformers import CwmForCausalLM

from model.config import TOKENIZER_VOCAB, make_config
from model.corpus import iter_documents
from model.tokenizer import build_tokenizer, load_tokenizer
from model.train_args import TrainArgs
from model.train_loop import Row, endless, open_model, pack, resume_point, setup_distributed, train


def encode_documents(tokenizer, texts: list[str]) -> list[tuple[list[int], list[int]]]:
    """BOS + text + EOS per document, loss on every token. Raw text never yields control tokens:
    a literal `<|eot_id|>` in a source file is spelt out, not read as the special token."""
    # verbose=False: a document longer than the model's context is fine here (rows are packed afterwards)
    enc = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [([bos, *ids, eos], [1] * (len(ids) + 2)) for ids in enc]


def corpus_rows(tokenizer, corpus: str, split: str, seq_len: int, seed: int) -> Iterator[Row]:
    """Endless packed rows of `corpus`, the documents reshuffled each epoch (deterministic given seed)."""
    texts = [d.text for d in iter_documents(corpus, split)]

    def docs(epoch: int):
        order = list(range(len(texts)))
        random.Random(seed * 1000 + epoch).shuffle(order)
        for i in range(0, len(order), 64):  # tokenise in small batches: fast, and lazily
            yield from encode_documents(tokenizer, [texts[j] for j in order[i:i + 64]])

    return pack(endless(docs), seq_len)


def eval_rows_of(rows: Iterator[Row], n: int) -> list[Row]:
    """The first `n` rows of the eval stream, held fixed for every evaluation."""
    return [next(rows) for _ in range(n)]


def run(args: TrainArgs, preset: str, corpus: str = "default", tokenizer_dir: str | None = None,
        vocab_size: int | None = None) -> dict:
    """`cwm train pretrain`: tokenizer and model from the preset (or resume), trained on the corpus; the summary."""
    out = Path(args.out)
    ckpt = resume_point(out) if args.resume else None
    if ckpt:
        tokenizer, model = load_tokenizer(ckpt), open_model(ckpt, args)
        print(f"resuming from {ckpt}")
    else:
        if not tokenizer_dir:
            tokenizer_dir = out / "tokenizer"
            dist = setup_distributed()
            if dist.main:  # one rank trains it, the others read it
                tok = build_tokenizer(tokenizer_dir, corpus, vocab_size or TOKENIZER_VOCAB.get(preset, 4096))
                print(f"trained a {len(tok)}-token BPE tokenizer on the corpus -> {tokenizer_dir}")
            if dist.world > 1:
                torch.distributed.barrier()
        tokenizer = load_tokenizer(tokenizer_dir)
        config = make_config(preset, vocab_size=len(tokenizer))
        config.max_position_embeddings = max(config.max_position_embeddings, args.seq_len)
        model = CwmForCausalLM(config)
    args.extra.update({"preset": preset, "corpus": corpus})
    rows = corpus_rows(tokenizer, corpus, "train", args.seq_len, args.seed)
    evals = eval_rows_of(corpus_rows(tokenizer, corpus, "eval", args.seq_len, args.seed), args.eval_rows)
    return train(model, tokenizer, rows, evals, args, resume_from=ckpt, title="pretrain")
