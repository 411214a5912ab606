"""CWM architecture presets on transformers' own `CwmConfig` / `CwmForCausalLM`.

Every preset keeps what makes the model a CWM: pre-norm decoder with RMSNorm and SwiGLU, grouped-query
attention, and three sliding-window layers for each global one (`layer_types`: layer i is global when
i % 4 == 0, as in the published config). Only sizes change. A preset's `vocab_size` is the published one;
`build_model(preset, vocab_size=len(tokenizer))` fits it to whatever tokenizer a run uses.

| preset      | params      | for                                           |
|-------------|-------------|-----------------------------------------------|
| cwm-32b     | ~32.6 B     | the published model (load its weights with from_pretrained) |
| cwm-1b      | ~1.2 B      | one GPU                                       |
| cwm-tiny    | ~5.6 M      | CPU demos, tests, trace mid-training here     |
| cwm-micro   | ~1.1 M      | the RL stage's policy on a CPU                |
(counts with each preset's default tokenizer; see `cwm model info`.)
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from transformers import CwmConfig, CwmForCausalLM

from cwm_envs.errors import UsageError
from model.tokenizer import token_ids_for

# Llama-3 style RoPE scaling as published: theta 1e6, factor 16 over an 8192-token original context.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 1_000_000.0,
    "factor": 16.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}

PRESETS: dict[str, dict[str, Any]] = {
    # Exactly the published CWM (facebook/cwm config.json).
    "cwm-32b": dict(
        vocab_size=128256,
        hidden_size=6144,
        intermediate_size=21504,       # SwiGLU width, 3.5 x hidden
        num_hidden_layers=64,
        num_attention_heads=48,
        num_key_value_heads=8,         # GQA: 6 query heads share each KV head
        head_dim=128,
        rms_norm_eps=1e-5,
        max_position_embeddings=131072,
        sliding_window=8192,           # local layers see 8k tokens; every 4th layer sees everything
        rope_parameters=LLAMA3_ROPE,
        tie_word_embeddings=False,
    ),
    # One GPU: the same shape family at ~1.2B (fits bf16 AdamW training on an 80 GB card).
    "cwm-1b": dict(
        vocab_size=128256,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=16,
        num_attention_heads=16,
        num_key_value_heads=4,
        head_dim=128,
        rms_norm_eps=1e-5,
        max_position_embeddings=32768,
        sliding_window=4096,
        rope_parameters={**LLAMA3_ROPE, "factor": 4.0},
        tie_word_embeddings=False,
    ),
    # CPU tests and demos: a few million parameters. Pretrains at 512 tokens (the window is half of that,
    # so the 3:1 local/global split is visible); mid-training extends to 1024 with llama3 RoPE scaling.
    "cwm-tiny": dict(
        vocab_size=4096 + 256,         # default BPE merges + the 256-id special block (model/tokenizer.py)
        hidden_size=256,
        intermediate_size=768,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=64,
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        sliding_window=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},  # short context: no scaling yet
        tie_word_embeddings=False,
    ),
    # The RL helper's policy: about 1M parameters with its own small tokenizer.
    "cwm-micro": dict(
        vocab_size=1024 + 256,
        hidden_size=128,
        intermediate_size=384,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        rms_norm_eps=1e-5,
        max_position_embeddings=512,
        sliding_window=256,
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0},
        tie_word_embeddings=False,
    ),
}

# Default BPE size (before the special block) of the tokenizer a stage trains for a preset.
TOKENIZER_VOCAB = {"cwm-tiny": 4096, "cwm-micro": 1024}


def make_config(preset: str, **overrides) -> CwmConfig:
    """The CwmConfig of `preset`, with `overrides` (e.g. vocab_size, token ids) applied."""
    if preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; choose from {', '.join(PRESETS)}")
    kwargs = copy.deepcopy(PRESETS[preset])
    kwargs.update(overrides)
    # bos/eos follow the vocabulary: the special block sits at its end (see model/tokenizer.py).
    ids = token_ids_for(kwargs["vocab_size"])
    kwargs.setdefault("bos_token_id", ids["<|begin_of_text|>"])
    kwargs.setdefault("eos_token_id", [ids["<|end_of_text|>"], ids["<|eom_id|>"], ids["<|eot_id|>"]])
    kwargs.setdefault("pad_token_id", None)
    return CwmConfig(**kwargs)


def build_model(preset: str, device: str | torch.device = "cpu", **overrides) -> CwmForCausalLM:
    """A freshly initialised model of `preset` (device="meta" allocates nothing)."""
    config = make_config(preset, **overrides)
    with torch.device(device):
        return CwmForCausalLM(config)


def load_config(path: str | Path) -> CwmConfig:
    """The CwmConfig saved in a local model directory."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise UsageError(f"{path} is not a model directory (no config.json)")
    return CwmConfig.from_pretrained(path)


def load_model(path: str | Path, config: CwmConfig | None = None, **kwargs) -> CwmForCausalLM:
    """A CWM checkpoint from a local directory: ours (save_pretrained) or the published weights alike.

    `config` replaces the saved one (e.g. `extend_context(load_config(path), 32768)`); `kwargs` go to
    `from_pretrained` (`dtype=torch.bfloat16`, `device_map="auto"` for the 32B weights on GPUs).
    """
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    config = config or load_config(path)
    return CwmForCausalLM.from_pretrained(Path(path), config=config, **kwargs)


def count_parameters(model: torch.nn.Module) -> int:
    """Distinct parameters (tied weights counted once); works on meta tensors."""
    return sum(p.numel() for p in model.parameters())


def extend_context(config: CwmConfig, seq_len: int) -> CwmConfig:
    """A copy of `config` whose context reaches `seq_len`, by llama3 RoPE scaling of the current one.

    This is how CWM went from its 8k pretraining context to 131k: positions past the original length are
    reached by stretching the low RoPE frequencies by `factor` while keeping the high ones.
    """
    config = copy.deepcopy(config)
    old = config.max_position_embeddings
    if seq_len <= old:
        return config
    rope = dict(config.rope_parameters or {})
    original = rope.get("original_max_position_embeddings", old) if rope.get("rope_type") == "llama3" else old
    config.rope_parameters = {
        "rope_type": "llama3",
        "rope_theta": rope.get("rope_theta", 10_000.0),
        "factor": float(seq_len) / original,
        "low_freq_factor": rope.get("low_freq_factor", 1.0),
        "high_freq_factor": rope.get("high_freq_factor", 4.0),
        "original_max_position_embeddings": original,
    }
    config.max_position_embeddings = seq_len
    return config


def describe(config: CwmConfig) -> dict[str, Any]:
    """The figures `cwm model info` prints, counted on the meta device (nothing is allocated)."""
    with torch.device("meta"):
        model = CwmForCausalLM(config)
    types = list(config.layer_types)
    return {
        "parameters": count_parameters(model),
        "layers": config.num_hidden_layers,
        "hidden": config.hidden_size,
        "heads": f"{config.num_attention_heads} x {config.head_dim} (KV heads {config.num_key_value_heads})",
        "ffn": config.intermediate_size,
        "vocab": config.vocab_size,
        "context": config.max_position_embeddings,
        "sliding_window": config.sliding_window,
        "local/global layers": f"{types.count('sliding_attention')}/{types.count('full_attention')}",
        "rope": config.rope_parameters,
    }
