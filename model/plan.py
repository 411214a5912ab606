"""How much memory one training rank needs, under DDP, FSDP (full and hybrid shard) and FSDP with CPU offload,
for a CWM preset at a sequence length and micro-batch; the smallest number of GPUs that fits; and one
measured training step on the CPU to check the formula against (`cwm model plan`).

The model is counted on the meta device (nothing allocated). Per rank, in bytes (P parameters, N ranks in a
shard group, the largest decoder layer U parameters, the LM head H):

  weights      DDP 4P fp32 master weights, + 2P in bf16: autocast keeps a bf16 copy of every weight it cast
               until the forward pass ends
               FSDP 4P/N sharded + what is gathered, in compute precision, when activations peak (the start
               of the backward pass): the LM head (a root unit: gathered from its forward to its backward)
               and the last layer, prefetched for its backward
  gradients    DDP 4P, plus 4P of DDP's reduction buckets when N > 1; FSDP 4P/N + one unit's unsharded
               gradient (compute precision, then fp32 for the reduce-scatter)
  optimizer    AdamW's two moments: 8P, or 8P/N sharded
  activations  per token, what autograd keeps: per layer two RMSNorms (input in fp32, 1/rms, normalised and
               scaled outputs), rotated q and k, v, the attention output and its log-sum-exp (memory-efficient
               SDPA: no seq x seq matrix), SwiGLU's gate, silu(gate), up and their product; the embedding's ids;
               the logits and log-softmax. With activation checkpointing: each layer's input, plus one
               layer's activations while it is recomputed.
  transient    at the start of the backward pass the loss adds two vocabulary-wide fp32 gradients per token

  peak = weights + optimizer + max(activations + transient, gradients) (gradients replace activations as the
  backward pass runs; the optimizer's moments exist from the second step on).
With CPU offload the sharded weights, gradients and moments live in host memory; the GPU holds the gathered
units, one unit's gradient and the activations.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

GiB = 2**30
STRATEGIES = ("ddp", "fsdp", "hsdp", "fsdp+offload")


@dataclass(frozen=True)
class Shape:
    """The sizes the formula needs, read off a CwmConfig and its meta-device model."""

    parameters: int
    layer_parameters: int  # the largest decoder layer
    embedding: int
    head: int
    layers: int
    hidden: int
    q_width: int  # heads x head_dim
    kv_width: int  # kv heads x head_dim
    heads: int
    ffn: int
    vocab: int

    @classmethod
    def of(cls, config) -> Shape:
        import torch
        from transformers import CwmForCausalLM

        with torch.device("meta"):
            model = CwmForCausalLM(config)
        count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731  (a one-line local helper)
        decoder = model.get_decoder()
        return cls(parameters=count(model), layer_parameters=max(count(layer) for layer in decoder.layers),
                   embedding=count(decoder.embed_tokens), head=count(model.get_output_embeddings()),
                   layers=config.num_hidden_layers, hidden=config.hidden_size,
                   q_width=config.num_attention_heads * config.head_dim,
                   kv_width=config.num_key_value_heads * config.head_dim, heads=config.num_attention_heads,
                   ffn=config.intermediate_size, vocab=config.vocab_size)


@dataclass(frozen=True)
class Memory:
    """Per-rank bytes on the accelerator (and in host memory, with offload)."""

    strategy: str
    ranks: int
    weights: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    host: float = 0.0

    @property
    def peak(self) -> float:
        return self.weights + self.optimizer + max(self.activations + self.transient, self.gradients)


def activation_bytes(s: Shape, tokens: int, bf16: bool, checkpointing: bool) -> tuple[float, float]:
    """(activations kept for the backward pass, the loss's transient) for `tokens` tokens of one micro-batch."""
    c = 2 if bf16 else 4  # bytes of a tensor in compute precision
    h, q, kv, f, a, V = s.hidden, s.q_width, s.kv_width, s.ffn, s.heads, s.vocab
    # an RMSNorm keeps its input in fp32 (a bf16 input is upcast: a new tensor), 1/rms, and two outputs
    norm = (4 * h + 4 + 2 * c * h) if bf16 else (12 * h + 4)
    layer = 2 * norm + c * (2 * q + 2 * kv) + 4 * a + 4 * c * f
    head = c * V + 4 * V  # the logits (the model's output keeps them) and the fp32 log-softmax
    per_token = (s.layers * c * h + layer) if checkpointing else s.layers * layer
    per_token += norm + 8 + head
    transient = 2 * 4 * V
    return per_token * tokens, transient * tokens


def plan(s: Shape, strategy: str, ranks: int, *, seq_len: int, micro_batch: int, bf16: bool = True,
         checkpointing: bool = False, shard_group: int = 8) -> Memory:
    """Per-rank memory of one training step of `micro_batch` rows of `seq_len` tokens under `strategy`."""
    if strategy not in STRATEGIES:
        raise ValueError(f"strategy must be one of {STRATEGIES}")
    P, c = s.parameters, 2 if bf16 else 4
    acts, transient = activation_bytes(s, seq_len * micro_batch, bf16, checkpointing)
    if strategy == "ddp":
        buckets = 4 * P if ranks > 1 else 0
        return Memory(strategy, ranks, 4 * P + (2 * P if bf16 else 0), 4 * P + buckets, 8 * P, acts, transient)
    n = min(ranks, shard_group) if strategy == "hsdp" else ranks
    gathered = c * (s.head + s.layer_parameters)
    unit_grad = (c + 4) * max(s.layer_parameters, s.embedding, s.head)
    if strategy == "fsdp+offload":
        return Memory(strategy, ranks, gathered, unit_grad, 0.0, acts, transient, host=16 * P / n)
    return Memory(strategy, ranks, 4 * P / n + gathered, 4 * P / n + unit_grad, 8 * P / n, acts, transient)


def fits(m: Memory, budget: float, host_budget: float = float("inf")) -> bool:
    """Whether a per-rank memory estimate fits the device (and host) budget."""
    return m.peak <= budget and m.host <= host_budget


def smallest_fit(s: Shape, strategy: str, budget: float, max_ranks: int = 4096, host_budget: float = float("inf"),
                 **kw) -> int | None:
    """The fewest ranks whose per-rank peak fits in `budget` bytes and, with offload, whose host memory fits
    `host_budget` (None: none up to max_ranks)."""
    group = kw.get("shard_group", 8)
    candidates = range(group, max_ranks + 1, group) if strategy == "hsdp" else range(1, max_ranks + 1)
    for n in candidates:
        if fits(plan(s, strategy, n, **kw), budget, host_budget):
            return n
        if strategy in ("ddp", "hsdp"):  # more replicas do not shrink a rank
            return None
    return None


def step_flops(s: Shape, tokens: int, seq_len: int, window: int | None, global_every: int = 4,
               checkpointing: bool = False) -> float:
    """Training FLOPs of `tokens` tokens in rows of `seq_len`: 6 per parameter per token, plus causal
    attention (QK^T and AV, forward and backward: 12 x q_width FLOPs per key a query sees; a global layer's
    query sees seq_len/2 keys on average, a sliding-window layer's at most `window`); activation
    checkpointing adds one more forward pass."""
    keys_global = seq_len / 2
    w = window or seq_len
    keys_local = seq_len / 2 if seq_len <= w else w - w * w / (2 * seq_len)
    keys = (keys_global + (global_every - 1) * keys_local) / global_every
    per_token = 6 * s.parameters + 12 * s.layers * s.q_width * keys
    return per_token * tokens * (4 / 3 if checkpointing else 1)


# --- measuring the formula ---------------------------------------------------------------------------------

def measure_step(config, seq_len: int, micro_batch: int, strategy: str = "ddp", seed: int = 0) -> dict:
    """Run two fp32 AdamW training steps of a real model on the CPU under torch's MemTracker (every tensor
    allocation counted) and return this rank's peak bytes in the second, by category, with the formula's.

    strategy "fsdp" shards the model over the process group this process is in (every rank must call)."""
    import warnings

    import torch
    from torch.distributed._tools.mem_tracker import MemTracker
    from transformers import CwmForCausalLM

    from model.train_args import TrainArgs
    from model.train_loop import make_optimizer

    torch.manual_seed(seed)
    model = CwmForCausalLM(config)
    model.config.use_cache = False
    ranks = 1
    if strategy == "fsdp":
        from model.sharding import device_mesh, shard_model

        ranks = torch.distributed.get_world_size()
        shard_model(model, device_mesh("fsdp", ranks, "cpu"))
    elif strategy != "ddp":
        raise ValueError(f"measure_step runs ddp (one process) or fsdp, not {strategy!r}")
    optimizer = make_optimizer(model, TrainArgs(out="."), torch.device("cpu"))
    ids = torch.randint(0, config.vocab_size, (micro_batch, seq_len))

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # the first step creates Adam's moments
    tracker = MemTracker()
    tracker.track_external(model, optimizer, ids)
    with warnings.catch_warnings():  # "module hierarchy tracking maybe be messed up": FSDP's hooks; peaks are exact
        warnings.simplefilter("ignore", UserWarning)
        with tracker:
            step()
    peak = tracker.get_tracker_snapshot("peak")[torch.device("cpu")]
    measured = {str(getattr(k, "value", k)): int(v) for k, v in peak.items()}
    predicted = plan(Shape.of(config), strategy, ranks, seq_len=seq_len, micro_batch=micro_batch, bf16=False)
    return {"strategy": strategy, "ranks": ranks, "seq_len": seq_len, "micro_batch": micro_batch,
            "parameters": sum(p.numel() for p in model.parameters()),
            "measured_peak": measured["Total"], "measured": measured, "predicted_peak": predicted.peak,
            "predicted": asdict(predicted), "ratio": predicted.peak / measured["Total"]}


def fmt_gib(x: float) -> str:
    """GiB with one decimal, or MiB below 1 GiB (the CPU-sized presets)."""
    return f"{x / GiB:.1f}" if x >= GiB or x == 0 else f"{x / 2**20:.0f} MiB"


def table(s: Shape, ranks: int, gpu_mem_gib: float, headroom: float, host_mem_gib: float = float("inf"),
          **kw) -> list[dict]:
    """One row per strategy: per-rank figures at `ranks`, whether they fit, and the smallest rank count."""
    budget, host = gpu_mem_gib * GiB * (1 - headroom), host_mem_gib * GiB
    rows = []
    for strategy in STRATEGIES:
        m = plan(s, strategy, ranks, **kw)
        n = smallest_fit(s, strategy, budget, host_budget=host, **kw)
        rows.append({**asdict(m), "peak": m.peak, "fits": fits(m, budget, host), "smallest_ranks": n})
    return rows


def tokens_time(s: Shape, tokens: int, ranks: int, seq_len: int, window: int | None, peak_tflops: float,
                mfu: float, checkpointing: bool) -> float:
    """Seconds for the learner to train on `tokens` tokens on `ranks` GPUs at `mfu` of `peak_tflops`."""
    return step_flops(s, tokens, seq_len, window, checkpointing=checkpointing) / (ranks * peak_tflops * 1e12 * mfu)

