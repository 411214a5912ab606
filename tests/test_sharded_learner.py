"""The GRPO learner sharded by FSDP2 inside RLlib's LearnerGroup (two learner actors, gloo) takes the same
updates as the unsharded learner on the whole batch, and its DCP checkpoint restores on one learner; an RL
run (`cwm train rl --shard fsdp --num-learners 2`) updates through them and pushes their gathered weights."""
import sys

import gymnasium
import numpy as np
import pytest
import ray
import torch

from agents import sharded
from agents.grpo import GRPOLearner
from agents.lm_module import (
    build_learner_group,
    get_lm_weights,
    pack,
    set_lm_weights,
    update_learners,
)
from agents.rl_args import GRPOArgs, RLArgs
from agents.trajectory import Trajectory
from cwm_envs.chat import format_chat
from cwm_envs.spaces import AnyText

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

UPDATES = 3


@pytest.fixture(scope="module")
def tiny():
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 3 + 4? The answer is 7. </think> \\boxed{7} user assistant"] * 4, vocab_size=300)
    torch.manual_seed(0)
    return build_model("cwm-tiny", vocab_size=len(tok)), tok


def batch(model, tok):
    """Four completions of one prompt with the sampler's log-probs (what a rollout would record)."""
    texts = ["What is 3 + 4? \\boxed{7}", "What is 3 + 4? \\boxed{5}", "What is 3 + 4? 7", "What is 3 + 4? five"]
    trajs = []
    for text, r in zip(texts, (1.0, -1.0, 1.0, -1.0)):
        ids = tok.encode(text, add_special_tokens=False)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1], -1)
        lp = logp.gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1).tolist()
        trajs.append(Trajectory(ids=ids, policy_mask=[0] * 5 + [1] * (len(ids) - 5), logprobs=[0.0] * 5 + lp[4:],
                                rewards=[r], version=0, group=0))
    return pack(trajs, [1.0, -1.0, 1.0, -1.0], multiple=2)


def run(lg, arrays, n=UPDATES):
    return [update_learners(lg, arrays, minibatches=1, epochs=1, updates_done=i) for i in range(n)]


def test_sharded_grpo_learners_match_the_unsharded_one(tiny, ray_session, tmp_path):
    model, tok = tiny
    arrays = batch(model, tok)
    args = GRPOArgs(lr=1e-3, warmup_updates=1, minibatches=1, max_new_tokens=8, loss_rows=4, kl_rows=4)
    start = {f"lm.{k}": v for k, v in model.state_dict().items()}

    plain = build_learner_group(GRPOLearner, model.config, args, seed=0)
    set_lm_weights(plain, start)
    plain.foreach_learner(lambda learner: learner.snapshot_reference())
    want = run(plain, arrays)
    want_weights = get_lm_weights(plain)
    plain.shutdown()

    settings = sharded.shard_update(args, "fsdp")
    lg = build_learner_group(sharded.ShardedGRPOLearner, model.config, settings, num_learners=2, seed=0)
    with pytest.raises(RuntimeError, match="spread over all learners"):
        get_lm_weights(lg)  # one learner alone cannot gather: a clear error instead of a hang
    sharded.set_lm_weights(lg, start)
    sharded.on_every_learner(lg, lambda learner: learner.snapshot_reference())
    got = run(lg, arrays)
    for w, g in zip(want, got):  # the same loss and gradient norm at every update
        for key in ("policy_loss", "gradients_default_optimizer_global_norm"):
            assert g[key] == pytest.approx(w[key], rel=1e-4), key
    # KL to the (sharded) reference copy: each learner averages over its own rows, so only the sign agrees
    assert want[-1]["kl_to_start"] > 0 and got[-1]["kl_to_start"] > 0 and got[0]["kl_to_start"] == pytest.approx(0, abs=1e-6)
    got_weights = sharded.gather_lm_weights(lg)
    assert got_weights.keys() == want_weights.keys()
    moved = max(np.abs(want_weights[k] - start[k].numpy()).max() for k in want_weights)
    worst = max(np.abs(got_weights[k] - want_weights[k]).max() for k in want_weights)
    assert moved > 2e-3 and worst < 1e-4  # float summation order (two ranks reduce), lifted by Adam: ~2e-5

    sharded.save_learners(lg, tmp_path / "learners")
    lg.shutdown()
    one = build_learner_group(sharded.ShardedGRPOLearner, model.config, settings, seed=0)
    with pytest.raises(RuntimeError, match="no weights yet"):  # its slices are uninitialised memory
        update_learners(one, arrays, minibatches=1, epochs=1)
    with pytest.raises(ValueError, match="whole LM"):
        sharded.set_lm_weights(one, {"lm.lm_head.weight": start["lm.lm_head.weight"]})
    sharded.load_learners(one, tmp_path / "learners")  # two learners' slices into one
    restored = sharded.gather_lm_weights(one)
    assert all(np.array_equal(restored[k], got_weights[k]) for k in got_weights)
    one.shutdown()
    assert not torch.distributed.is_initialized()  # the in-driver learner's one-rank group ended with it


def test_sharded_ppo_learner_in_the_driver_matches_the_unsharded_one(tiny):
    """num_learners=0: the learner shards over a one-rank group of its own; the value head is a unit too."""
    from agents.ppo import PPOLearner, prepare_batch as ppo_prepare
    from agents.rl_args import PPOArgs

    model, tok = tiny
    args = PPOArgs(lr=3e-3, warmup_updates=1, minibatches=1, epochs=1, max_new_tokens=8)
    trajs = []
    for i, text in enumerate(["What is 3 + 4? \\boxed{7}", "What is 3 + 4? 7", "What is 3 + 4? five"]):
        ids = tok.encode(text, add_special_tokens=False)
        n = len(ids)
        trajs.append(Trajectory(ids=ids, policy_mask=[0] * 5 + [1] * (n - 5), logprobs=[0.0] * 5 + [-1.0] * (n - 5),
                                values=[0.0] * n, rewards=[1.0 - i], version=0, turn_ends=[n - 1]))
    arrays, _ = ppo_prepare(trajs, args, multiple=1)
    start = {f"lm.{k}": v for k, v in model.state_dict().items()}
    start.update({"value_head.weight": torch.zeros(1, model.config.hidden_size), "value_head.bias": torch.zeros(1)})
    out = []
    for cls, settings in ((PPOLearner, args), (sharded.ShardedPPOLearner, sharded.shard_update(args))):
        lg = build_learner_group(cls, model.config, settings, value_head=True, seed=0)
        (set_lm_weights if cls is PPOLearner else sharded.set_lm_weights)(lg, start)
        metrics = run(lg, arrays, 2)
        out.append((metrics, get_lm_weights(lg) if cls is PPOLearner else sharded.gather_lm_weights(lg)))
        lg.shutdown()
    (want, w0), (got, w1) = out
    assert got[-1]["vf_loss"] == pytest.approx(want[-1]["vf_loss"], rel=1e-4) and want[-1]["vf_loss"] > 0
    assert w1.keys() == w0.keys() and "value_head.weight" in w1
    assert all(np.allclose(w1[k], w0[k], atol=1e-6) for k in w0)
    assert np.abs(w1["value_head.weight"]).max() > 0  # the head was trained, not just carried
    assert not torch.distributed.is_initialized()


class EvenLength(gymnasium.Env):
    """One turn; pays +1 when the action has an even number of characters, else -1: a random policy's groups
    get mixed rewards, so GRPO has advantages to update on."""

    def __init__(self):
        self.observation_space, self.action_space = AnyText(4096), AnyText(4096)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return format_chat([{"role": "user", "content": f"Say something ({seed})."}]), {"task_id": str(seed)}

    def step(self, action):
        return "", 1.0 if len(action) % 2 == 0 else -1.0, True, False, {}


gymnasium.register("test/EvenLength-v0", entry_point=EvenLength)  # the run's workers get the class from here
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # (by value: they cannot import this module)


def test_an_rl_run_updates_through_two_sharded_learners_and_pushes_their_weights(tiny, ray_session, tmp_path):
    """RLRun with --shard fsdp --num-learners 2 (gloo): one GRPO update; the rollout worker then holds exactly
    the weights gathered from the two learners' slices, tagged with the new version."""
    from agents.train_rl import RLRun

    model, tok = tiny
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    args = RLArgs(out=tmp_path / "run", env="test/EvenLength-v0", model=str(tmp_path / "model"),
                  tasks=2, group=4, steps=1, shard="fsdp", num_learners=2, torch_threads=1,
                  update=GRPOArgs(lr=1e-3, warmup_updates=1, max_new_tokens=8))
    rl = RLRun(args)
    try:
        start = rl.learner_weights()
        row = rl.update()
        assert row["version"] == 1 and row["failed"] == 0 and row["trained_rows"] > 0 and row["skipped_groups"] < 2
        gathered = rl.learner_weights()
        assert max(np.abs(gathered[k] - start[k]).max() for k in gathered) > 1e-4  # the update moved them
        worker = rl.pool.workers[0]  # its weights land at the next turn boundary: load them, then read them
        version, pushed = ray_session.get(worker.__ray_call__.remote(
            lambda w: (w._load_pending(), w.policy.version, w.policy.get_weights())[1:]))
        assert version == 1 and set(pushed) == set(gathered)
        assert all(np.array_equal(pushed[k].numpy(), gathered[k]) for k in gathered)
        rl.save_checkpoint()  # every learner writes its slices (DCP), not LearnerGroup.get_state()
        assert any((tmp_path / "run" / "checkpoints" / "step-000001" / "learners").iterdir())
    finally:
        rl.close()
