"""`cwm bench serve`: what dynamic batching in `cwm serve` buys, and what `hf:` sampling costs.

1. The same 32 completion requests against one `cwm serve` (in this process, over loopback HTTP): sent one
   at a time, then from 8 concurrent clients; requests per second and generated tokens per second.
2. `hf:` sampling (`LMPolicy.generate`: batched, KV cache, finished rows leave the batch) against plain
   transformers `model.generate` on the same prompts, same model, same token budget, both greedy.

Without `--model`, a tiny CWM (cwm-micro, random weights, a tokenizer trained here) is built; random weights
never stop early, so every row runs its full budget in both arms.
"""
from __future__ import annotations

import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from benchmarks.report import write_report


def _tiny(out: Path) -> Path:
    import torch

    from model.config import build_model
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer(["def f(x):\n    return x + 1\nWhat is 3 + 4? The answer is 7."] * 8, vocab_size=300)
    torch.manual_seed(0)
    build_model("cwm-micro", vocab_size=len(tok)).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def run_bench(args) -> int:
    import openai
    import torch

    from agents.policy import LMPolicy
    from agents.serve import Engine, Server

    with tempfile.TemporaryDirectory(prefix="cwm-serve-bench-") as tmp:
        path = Path(args.model) if args.model else _tiny(Path(tmp))
        prompts = [f"Question {i}: what is {i} + {2 * i}? Answer:" for i in range(args.requests)]
        with Server(Engine.from_pretrained(str(path), name="bench", max_batch=64)) as srv:
            client = openai.OpenAI(base_url=srv.url, api_key="x", max_retries=0)

            def ask(p):
                r = client.completions.create(model="bench", prompt=p, max_tokens=args.max_tokens, temperature=0)
                return r.usage.completion_tokens

            ask(prompts[0])  # warm-up
            t = time.perf_counter()
            seq_tokens = sum(ask(p) for p in prompts)
            seq_s = time.perf_counter() - t
            b0, r0 = srv.engine.batches, srv.engine.rows
            t = time.perf_counter()
            with ThreadPoolExecutor(args.clients) as pool:
                conc_tokens = sum(pool.map(ask, prompts))
            conc_s = time.perf_counter() - t
            batches = srv.engine.batches - b0
            rows = srv.engine.rows - r0
        # hf: sampling against model.generate, same prompts and budget, greedy, the whole set as one batch
        policy = LMPolicy.from_pretrained(path, max_new_tokens=args.max_tokens, stop=())
        tok, model = policy.tokenizer, policy.model
        ids = [policy.encode(p) for p in prompts]
        policy.generate(ids[:2], greedy=True)
        t = time.perf_counter()
        ours = policy.generate(ids, greedy=True)
        ours_s = time.perf_counter() - t
        ours_tokens = sum(len(c.ids) for c in ours)
        tok.padding_side = "left"
        batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
        gen_kw = dict(max_new_tokens=args.max_tokens, do_sample=False, pad_token_id=policy.pad_id,
                      eos_token_id=sorted(policy.stop_ids) or None)
        with torch.no_grad():
            model.generate(**{k: v[:2] for k, v in batch.items()}, **gen_kw)
            t = time.perf_counter()
            out = model.generate(**batch, **gen_kw)
            plain_s = time.perf_counter() - t
        plain_tokens = int((out[:, batch["input_ids"].shape[1]:] != policy.pad_id).sum())
    summary = {"requests": args.requests, "clients": args.clients, "max_tokens": args.max_tokens,
               "concurrent_req_per_s": round(args.requests / conc_s, 2),
               "sequential_req_per_s": round(args.requests / seq_s, 2),
               "concurrent_speedup": round(seq_s / conc_s, 2), "target_speedup": 4.0,
               "concurrent_tokens_per_s": round(conc_tokens / conc_s, 1),
               "sequential_tokens_per_s": round(seq_tokens / seq_s, 1),
               "server_batches": batches, "server_rows": rows,
               "hf_tokens_per_s": round(ours_tokens / ours_s, 1),
               "model_generate_tokens_per_s": round(plain_tokens / plain_s, 1),
               "hf_vs_generate": round((ours_tokens / ours_s) / (plain_tokens / plain_s), 2),
               "model": str(args.model or "cwm-micro (random weights)")}
    path = write_report(args.out, "cwm serve: dynamic batching, and hf: sampling against model.generate", summary)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    print(f"report: {path}")
    return 0


def register(sub) -> None:
    from benchmarks.cli import bench_group

    p = bench_group(sub).add_parser("serve", help="cwm serve: 8 concurrent clients vs one at a time; hf: sampling "
                                                  "vs model.generate")
    p.add_argument("--out", required=True, help="report directory")
    p.add_argument("--model", help="checkpoint directory (default: a tiny random CWM built here)")
    p.add_argument("--requests", type=int, default=32, help="requests per arm (default 32)")
    p.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens per request (default 64)")
    p.set_defaults(func=run_bench)
