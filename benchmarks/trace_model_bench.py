"""`cwm bench traces --model CKPT [--baseline CKPT] --traces traces.jsonl`: how well a model predicts
execution traces of functions it never saw.

Scored on the held-out split of the trace file (`model.midtrain.is_heldout`: a hash of each function's
source, the split mid-training leaves out), on every `<|line_sep|>` frame and every `<|return_sep|>` frame:

- next-locals: given the trace so far and the line event token, the locals JSON up to `<|action_sep|>`
  (the state after the previous line ran);
- next-line: given that, the source line up to `<|frame_sep|>` (which line runs next);
- return value: after `<|arg_sep|>`, the returned value up to `<|frame_sep|>`.

A span counts as correct (`*_acc`) when greedy decoding would produce it exactly, terminator included.
That is decided in one teacher-forced forward pass per trace: greedy decoding reproduces a span if and
only if the argmax at every position of the span is the true next token (one tokenisation of the text is
taken as the truth, so this is a strict lower bound of string-level exact match). The same pass gives
the share of the span's tokens predicted right (`*_token_acc`), which moves long before whole spans do,
and the loss on all trace tokens after the context (`trace_loss`, nats/token). All models are scored on
the same frames: those that end within the first `window` tokens, the smallest context of the compared
models.
"""
from __future__ import annotations

import json
import time


def frame_spans(ids: list[int], special: dict[str, int]) -> list[tuple[str, int, int]]:
    """(kind, first, last) token positions of each scored span in a tokenised trace (inclusive)."""
    fs, act, arg = special["<|frame_sep|>"], special["<|action_sep|>"], special["<|arg_sep|>"]
    line, ret = special["<|line_sep|>"], special["<|return_sep|>"]
    seps = [i for i, t in enumerate(ids) if t == fs]
    spans = []
    for start, end in zip(seps, seps[1:]):  # the first <|frame_sep|> closes the context
        head = start + 1
        if head >= end:
            continue
        if ids[head] == line and act in ids[head:end]:
            a = ids.index(act, head, end)
            spans.append(("next_locals", head + 1, a))
            spans.append(("next_line", a + 1, end))
        elif ids[head] == ret and arg in ids[head:end]:
            spans.append(("return_value", ids.index(arg, head, end) + 1, end))
    return spans


def score(model, tokenizer, traces: list[str], window: int) -> dict:
    """Exact-match rates per span kind, and the mean loss on trace tokens after the context."""
    import torch  # here, so that `cwm --help` does not pay for importing torch

    with torch.no_grad():
        return _score(torch, model, tokenizer, traces, window)


def _score(torch, model, tokenizer, traces: list[str], window: int) -> dict:
    from model.tokenizer import special_token_ids

    special = special_token_ids(tokenizer)
    model.eval()
    hits: dict[str, list[int]] = {"next_line": [], "next_locals": [], "return_value": []}
    tokens: dict[str, list[int]] = {k: [0, 0] for k in hits}  # right, total
    nll, count = 0.0, 0
    for text in traces:
        ids = [tokenizer.bos_token_id, *tokenizer(text, add_special_tokens=False)["input_ids"]][:window]
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0].float()
        pred = logits.argmax(-1).tolist()  # pred[p] is the guess for ids[p + 1]
        for kind, first, last in frame_spans(ids, special):
            if last < len(ids):
                right = [pred[p - 1] == ids[p] for p in range(first, last + 1)]
                hits[kind].append(all(right))
                tokens[kind][0] += sum(right)
                tokens[kind][1] += len(right)
        body = ids.index(special["<|frame_sep|>"]) if special["<|frame_sep|>"] in ids else len(ids) - 1
        if body + 1 < len(ids):
            logp = torch.log_softmax(logits[body:-1], -1)
            nll -= float(logp.gather(1, x[0, body + 1:, None]).sum())
            count += len(ids) - body - 1
    out = {f"{k}_acc": (sum(v) / len(v) if v else None) for k, v in hits.items()}
    out.update({f"{k}_token_acc": (r / n if n else None) for k, (r, n) in tokens.items()})
    out.update({f"{k}_n": len(v) for k, v in hits.items()})
    out["trace_loss"] = nll / count if count else None
    return out


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def run_bench(args) -> int:
    from benchmarks.report import write_report
    from model.config import load_model
    from model.midtrain import read_traces
    from model.tokenizer import load_tokenizer

    t0 = time.perf_counter()
    traces = read_traces(args.traces, "heldout")[: args.max_traces]
    if not traces:
        from cwm_envs.errors import UsageError

        raise UsageError(f"{args.traces}: no held-out traces to score")
    models = {"model": args.model, **({"baseline": args.baseline} if args.baseline else {})}
    loaded = {name: (load_model(path), load_tokenizer(path)) for name, path in models.items()}
    window = min([args.window] + [m.config.max_position_embeddings for m, _ in loaded.values()])
    rows = []
    for name, (model, tok) in loaded.items():
        res = score(model, tok, traces, window)
        rows.append({"role": name, "checkpoint": models[name], **res})
        print(f"{name:<9} exact: next-line {_f(res['next_line_acc'])} next-locals {_f(res['next_locals_acc'])} "
              f"return {_f(res['return_value_acc'])} | tokens: next-line {_f(res['next_line_token_acc'])} "
              f"next-locals {_f(res['next_locals_token_acc'])} | trace loss {_f(res['trace_loss'])} "
              f"({res['next_line_n']} line frames)")
    summary = {"held_out_traces": len(traces), "window_tokens": window}
    for r in rows:
        for key in ("next_line_acc", "next_locals_acc", "return_value_acc", "next_line_token_acc",
                    "next_locals_token_acc", "trace_loss"):
            summary[f"{r['role']}_{key}"] = r[key]
    summary["line_frames"] = rows[0]["next_line_n"]
    summary["wall_s"] = round(time.perf_counter() - t0, 1)
    write_report(args.out, "Trace prediction on held-out functions", summary,
                 details={"method": __doc__, "traces_file": str(args.traces)}, tables={"models": rows})
    print(json.dumps(summary, indent=2, default=str))
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("traces", help="next-line / next-locals accuracy on traces of unseen functions")
    p.add_argument("--model", required=True, help="model directory to score (e.g. the mid-trained one)")
    p.add_argument("--baseline", help="model directory to compare with, in the same run (e.g. its parent)")
    p.add_argument("--traces", required=True, help="traces JSONL; its held-out split is scored")
    p.add_argument("--max-traces", type=int, default=200, help="held-out traces to score (default 200)")
    p.add_argument("--window", type=int, default=1024, help="tokens of each trace scored at most (default 1024)")
    p.add_argument("--out", required=True, help="report directory")
    p.set_defaults(func=run_bench)
