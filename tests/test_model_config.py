"""CWM presets: the published 32B shape (counted on the meta device), the 3:1 local/global pattern, GQA,
a tiny forward pass, context extension, and checkpoints that load back the way published weights do."""
from __future__ import annotations

import pytest
import torch
from transformers import CwmConfig, CwmForCausalLM

from cwm_envs.errors import UsageError
from model.config import PRESETS, build_model, count_parameters, describe, extend_context, load_model, make_config


def test_32b_preset_is_the_published_model_without_allocating_it():
    config = make_config("cwm-32b")
    published = dict(num_hidden_layers=64, hidden_size=6144, num_attention_heads=48, head_dim=128,
                     num_key_value_heads=8, intermediate_size=21504, vocab_size=128256, rms_norm_eps=1e-5,
                     max_position_embeddings=131072, sliding_window=8192, bos_token_id=128000)
    assert {k: getattr(config, k) for k in published} == published
    assert config.eos_token_id == [128001, 128008, 128009]
    rope = config.rope_parameters
    assert (rope["rope_type"], rope["rope_theta"], rope["factor"], rope["original_max_position_embeddings"]) == \
        ("llama3", 1e6, 16.0, 8192)
    model = build_model("cwm-32b", device="meta")
    assert next(model.parameters()).device.type == "meta"
    assert 32.0e9 < count_parameters(model) < 33.0e9  # published: 32B (32.58B with untied embeddings)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_three_local_layers_for_each_global_one(preset):
    types = make_config(preset).layer_types
    assert len(types) % 4 == 0
    assert all((t == "full_attention") == (i % 4 == 0) for i, t in enumerate(types))
    assert types.count("sliding_attention") == 3 * types.count("full_attention")


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_grouped_query_attention(preset):
    c = make_config(preset)
    assert c.num_key_value_heads < c.num_attention_heads and c.num_attention_heads % c.num_key_value_heads == 0


def test_tiny_and_micro_sizes_and_forward_pass():
    tiny = build_model("cwm-tiny")
    assert 2e6 < count_parameters(tiny) < 10e6, "cwm-tiny should have a few million parameters"
    micro = build_model("cwm-micro")
    assert 0.5e6 < count_parameters(micro) < 2e6, "cwm-micro should have about 1M parameters"
    # the sliding window reaches the attention layers, GQA shrinks the KV projections
    attn = [layer.self_attn for layer in tiny.model.layers]
    assert [a.sliding_window for a in attn] == [None, 256, 256, 256]
    assert attn[0].k_proj.out_features == tiny.config.num_key_value_heads * tiny.config.head_dim
    ids = torch.randint(0, tiny.config.vocab_size - 256, (2, 300))  # longer than the window
    out = tiny(input_ids=ids, labels=ids)
    assert out.logits.shape == (2, 300, tiny.config.vocab_size)
    assert torch.isfinite(out.loss) and abs(float(out.loss.detach()) - torch.log(torch.tensor(4352.0))) < 1.0


def test_special_ids_follow_the_vocabulary():
    c = make_config("cwm-tiny")
    assert c.bos_token_id == 4096 and c.eos_token_id == [4097, 4104, 4105]


def test_unknown_preset_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown preset"):
        make_config("cwm-7b")


def test_context_extension_by_rope_scaling():
    base = make_config("cwm-tiny")
    ext = extend_context(base, 2048)
    assert ext.max_position_embeddings == 2048 and base.max_position_embeddings == 512
    assert ext.rope_parameters["rope_type"] == "llama3"
    assert ext.rope_parameters["factor"] == 4.0 and ext.rope_parameters["original_max_position_embeddings"] == 512
    again = extend_context(ext, 4096)  # a second extension scales from the same original length
    assert again.rope_parameters["factor"] == 8.0 and again.rope_parameters["original_max_position_embeddings"] == 512
    assert extend_context(base, 256).max_position_embeddings == 512


def test_a_checkpoint_saved_by_plain_transformers_loads_and_computes_the_same(tmp_path):
    torch.manual_seed(0)
    config = CwmConfig(**{**PRESETS["cwm-micro"], "bos_token_id": 1024, "eos_token_id": [1025]})
    model = CwmForCausalLM(config).eval()
    model.save_pretrained(tmp_path)  # as a published checkpoint directory is written
    loaded = load_model(tmp_path).eval()
    ids = torch.randint(0, 1000, (1, 40))
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, loaded(input_ids=ids).logits)
    assert loaded.config.layer_types == config.layer_types
    ext = load_model(tmp_path, config=extend_context(loaded.config, 1024))
    assert ext.config.rope_parameters["rope_type"] == "llama3"
    with torch.no_grad():
        assert torch.isfinite(ext(input_ids=torch.randint(0, 1000, (1, 1000))).logits).all()


def test_loading_a_directory_without_a_model_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="no config.json"):
        load_model(tmp_path)


def test_describe_counts_like_the_real_model():
    info = describe(make_config("cwm-micro"))
    assert info["parameters"] == count_parameters(build_model("cwm-micro"))
    assert info["local/global layers"] == "3/1"


def test_cwm_model_info_cli(tmp_path):
    import json
    import subprocess
    import sys

    run = [sys.executable, "-m", "cwm_envs.cli", "model", "info"]
    proc = subprocess.run([*run, "cwm-32b", "--json"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["parameters"] == count_parameters(build_model("cwm-32b", device="meta"))
    assert info["local/global layers"] == "48/16" and info["context"] == 131072
    build_model("cwm-micro").save_pretrained(tmp_path)
    proc = subprocess.run([*run, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "local/global layers  3/1" in proc.stdout
    bad = subprocess.run([*run, "cwm-70b"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "unknown preset" in bad.stderr
