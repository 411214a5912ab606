"""`cwm model plan`: the 32B counted on the meta device, and the memory formula against measured peaks."""
import json
import subprocess
import sys

import pytest

from model.config import describe, make_config
from model.plan import Shape, measure_step, plan


def cwm(capsys, *args) -> tuple[int, str, str]:
    """`cwm ARGS` in this process (the command's own code path, without paying torch's import again)."""
    from cwm_envs.cli import main

    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_32b_plan_counts_the_published_model_and_needs_sharding(capsys):
    code, text, _ = cwm(capsys, "model", "plan", "--preset", "cwm-32b", "--gpus", "8", "--gpu-mem", "80",
                        "--seq-len", "8192", "--activation-checkpointing", "--json")
    out = json.loads(text)
    assert code == 0
    assert out["shape"]["parameters"] == describe(make_config("cwm-32b"))["parameters"] == 32_581_097_472
    rows = {r["strategy"]: r for r in out["rows"]}
    assert rows["ddp"]["smallest_ranks"] is None  # 16 bytes per parameter: 0.5 TB on every rank
    assert rows["ddp"]["weights"] + rows["ddp"]["optimizer"] == pytest.approx((4 + 2 + 8) * 32_581_097_472)
    fsdp = rows["fsdp"]
    assert fsdp["optimizer"] == pytest.approx(8 * 32_581_097_472 / 8)  # Adam's moments split 8 ways
    n = fsdp["smallest_ranks"]
    budget = 80 * 2**30 * 0.9
    shape = Shape(**out["shape"])
    kw = dict(seq_len=8192, micro_batch=1, bf16=True, checkpointing=True)
    assert plan(shape, "fsdp", n, **kw).peak <= budget < plan(shape, "fsdp", n - 1, **kw).peak


def test_update_time_estimate_scales_with_gpus_and_tokens(capsys):
    times = {}
    for gpus, tokens in ((64, 2**24), (128, 2**24), (64, 2**25)):
        code, text, _ = cwm(capsys, "model", "plan", "--gpus", str(gpus), "--seq-len", "16384",
                            "--activation-checkpointing", "--tokens-per-update", str(tokens), "--json")
        times[gpus, tokens] = json.loads(text)["update_s"]
    assert times[64, 2**24] == pytest.approx(2 * times[128, 2**24]) == pytest.approx(times[64, 2**25] / 2)
    # 6 FLOPs per parameter per token is the floor; attention and the recompute add to it
    assert times[64, 2**24] > 6 * 32_581_097_472 * 2**24 / (64 * 989e12 * 0.4)


def test_plan_prints_a_table_and_refuses_to_build_the_32b(capsys):
    code, text, _ = cwm(capsys, "model", "plan")
    assert code == 0 and "32,581,097,472 parameters" in text
    assert all(s in text for s in ("ddp", "fsdp", "hsdp", "offload", "smallest N"))
    code, _, err = cwm(capsys, "model", "plan", "--preset", "cwm-32b", "--measure")
    assert code == 2 and "0.5 TB" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("batch,seq_len", [(2, 128), (4, 512)])
def test_formula_is_within_ten_percent_of_a_measured_cpu_step(batch, seq_len, one_torch_thread):
    result = measure_step(make_config("cwm-tiny"), seq_len, batch)
    assert 0.9 < result["ratio"] < 1.1, result
    assert result["measured"]["Optstate"] == pytest.approx(8 * result["parameters"], abs=1024)  # 8P (+ step counters)


def test_cwm_help_still_imports_no_torch():
    """Building every `cwm` parser (what `cwm --help` does) must not load torch for the new commands."""
    code = ("import sys; from cwm_envs.cli import build_parser; p = build_parser(); "
            "assert 'plan' in p._subparsers._group_actions[0].choices['model']._cwm_group.choices; "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
