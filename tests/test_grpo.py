"""GRPO and PPO learners (RLlib Learner API) on a real tiny CWM: the loss does what CWM's recipe says."""
import numpy as np
import pytest
import torch

from agents.grpo import GRPOArgs, GRPOLearner, group_advantages, grpo_token_loss, prepare_batch, select_informative
from agents.lm_module import MODULE_ID, build_learner_group, get_lm_weights, pack, set_lm_weights, update_learners
from agents.policy import LMPolicy
from agents.ppo import PPOArgs, PPOLearner, gae, prepare_batch as ppo_prepare, token_rewards
from agents.trajectory import Trajectory
from cwm_envs.chat import format_chat

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 3 + 4? The answer is 7. </think> \\boxed{7} user assistant"] * 4, vocab_size=300)
    torch.manual_seed(0)
    return build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1), tok


def traj(ids, mask, reward, group, logprobs=None, version=0):
    return Trajectory(ids=list(ids), policy_mask=list(mask), logprobs=logprobs or [0.0] * len(ids),
                      rewards=[reward], version=version, group=group, turn_ends=[len(ids) - 1])


def learners(model, args, num_learners=0, value_head=False, cls=GRPOLearner):
    lg = build_learner_group(cls, model.config, args, num_learners=num_learners, value_head=value_head, seed=0)
    weights = {f"lm.{k}": v for k, v in model.state_dict().items()}
    if value_head:
        weights.update({"value_head.weight": torch.zeros(1, model.config.hidden_size), "value_head.bias": torch.zeros(1)})
    set_lm_weights(lg, weights)
    lg.foreach_learner(lambda learner: learner.snapshot_reference())
    return lg


def update(lg, arrays, minibatches=1, epochs=1):
    return update_learners(lg, arrays, minibatches=minibatches, epochs=epochs)


def seq_logp(model_weights, model, ids, start):
    """Sum of log-probs of ids[start:] under the given weights."""
    m = type(model)(model.config)
    m.load_state_dict({k[3:]: torch.as_tensor(v) for k, v in model_weights.items() if k.startswith("lm.")})
    with torch.no_grad():
        logits = m(torch.tensor([ids])).logits[0, :-1]
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return float(lp[start - 1:].sum())


def test_advantage_is_reward_minus_group_mean_and_flat_groups_are_skipped():
    assert group_advantages([1, -1, -1, 1], [0, 0, 1, 1]).tolist() == [1.0, -1.0, -1.0, 1.0]
    adv = group_advantages([1, 0, 0, 0], [0, 0, 0, 0], std_normalise=True)
    assert adv[0] == pytest.approx(0.75 / (np.std([1, 0, 0, 0]) + 1e-4), rel=1e-5)
    trajs = [traj([1, 2], [0, 1], r, g) for r, g in [(1, 0), (-1, 0), (1, 1), (1, 1), (0, 2), (1, 2)]]
    trajs.append(Trajectory(ids=[], policy_mask=[], logprobs=[], rewards=[], version=0, group=2, error="EnvError: x"))
    kept, adv, skipped = select_informative(trajs)
    assert skipped == 1 and [t.group for t in kept] == [0, 0, 2, 2]  # group 1 has no signal; the failure is out
    assert adv.tolist() == [1.0, -1.0, -0.5, 0.5]


def test_clip_higher_is_asymmetric_and_stops_gradients_past_the_clip():
    logp = torch.log(torch.tensor([[1.3, 1.22, 0.7, 0.85]])).requires_grad_()
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0]])
    loss, clipped = grpo_token_loss(logp, torch.zeros(1, 4), adv, torch.ones(1, 4), eps_low=0.2, eps_high=0.25)
    assert loss.detach().tolist()[0] == pytest.approx([-1.25, -1.22, 0.8, 0.85])
    assert clipped.tolist()[0] == [True, False, True, False]
    loss.sum().backward()
    assert (logp.grad[0, [0, 2]] == 0).all() and (logp.grad[0, [1, 3]] != 0).all()


def test_update_raises_the_rewarded_completion_and_lowers_the_other(tiny):
    model, tok = tiny
    prompt = tok.encode(format_chat([{"role": "user", "content": "What is 3 + 4?"}]), add_special_tokens=False)
    good, bad = tok.encode("\\boxed{7}", add_special_tokens=False), tok.encode("\\boxed{5}", add_special_tokens=False)
    trajs = [traj(prompt + c, [0] * len(prompt) + [1] * len(c), r, 0) for c, r in [(good, 1.0), (bad, -1.0)]]
    for t in trajs:  # sampler log-probs = the current policy's, as LMPolicy records them
        t.logprobs = [0.0] * len(prompt) + _logprobs(model, t.ids, len(prompt))
    args = GRPOArgs(lr=1e-3, warmup_updates=0, minibatches=1, max_new_tokens=8)
    lg = learners(model, args)
    before = get_lm_weights(lg)
    arrays, info = prepare_batch(trajs, args, multiple=1)
    metrics = update(lg, arrays)
    after = get_lm_weights(lg)
    assert metrics["ratio_mean"] == pytest.approx(1.0, abs=1e-4)  # on-policy: sampler and learner agree
    assert metrics["kl_to_start"] == pytest.approx(0.0, abs=1e-6)
    for ids, sign in ((trajs[0].ids, 1), (trajs[1].ids, -1)):
        delta = seq_logp(after, model, ids, len(prompt)) - seq_logp(before, model, ids, len(prompt))
        assert sign * delta > 0
    assert update(lg, arrays)["kl_to_start"] > 0
    lg.shutdown()


def _logprobs(model, ids, start, temperature=1.0):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, :-1].float() / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(ids[1:])[:, None]).squeeze(-1)
    return lp[start - 1:].tolist()


def test_env_tokens_and_padding_rows_never_move_the_weights(tiny):
    model, tok = tiny
    args = GRPOArgs(lr=1e-2, warmup_updates=0, minibatches=1, max_new_tokens=8, loss_rows=4)
    ids = tok.encode("What is 3 + 4? \\boxed{7}", add_special_tokens=False)
    only_env = [traj(ids, [0] * len(ids), r, 0) for r in (1.0, -1.0)]  # the "policy" sampled nothing
    lg = learners(model, args)
    before = get_lm_weights(lg)
    update(lg, pack(only_env, [1.0, -1.0], multiple=1))
    assert all(np.array_equal(before[k], v) for k, v in get_lm_weights(lg).items())

    mixed = [traj(ids, [0] * 5 + [1] * (len(ids) - 5), r, 0) for r in (1.0, -1.0)]
    for t in mixed:
        t.logprobs = [0.0] * 5 + _logprobs(model, t.ids, 5)
    results = []
    for multiple in (1, 4):  # 2 real rows, or 2 real + 2 all-masked padding rows
        lg2 = learners(model, args)
        update(lg2, pack(mixed, [1.0, -1.0], multiple=multiple))
        results.append(get_lm_weights(lg2))
        lg2.shutdown()
    assert all(np.allclose(results[0][k], results[1][k], atol=1e-6) for k in results[0])
    lg.shutdown()


def test_sampler_logprobs_match_the_learner_at_a_temperature(tiny):
    model, tok = tiny
    policy = LMPolicy(model, tok, temperature=0.7, max_new_tokens=6)
    prompt = policy.encode(format_chat([{"role": "user", "content": "What is 3 + 4?"}]))
    comps = policy.generate([prompt] * 4, generator=torch.Generator().manual_seed(0))
    trajs = [traj(prompt + c.ids, [0] * len(prompt) + [1] * len(c.ids), float(i % 2), 0,
                  logprobs=[0.0] * len(prompt) + c.logprobs) for i, c in enumerate(comps)]
    args = GRPOArgs(warmup_updates=0, minibatches=1, temperature=0.7, max_new_tokens=6)
    lg = learners(model, args)
    arrays, _ = prepare_batch(trajs, args, multiple=1)
    assert update(lg, arrays)["ratio_mean"] == pytest.approx(1.0, abs=1e-4)
    lg.shutdown()


def test_warmup_runs_update_k_at_the_schedule_value_for_k(tiny):
    """lr_schedule(lr, 4): update k runs at lr * (1/4 + 3/4 * k/4) until k = 4, then at lr (RLlib would lag by
    one update if handed the count of updates before this one)."""
    model, tok = tiny
    ids = tok.encode("What is 3 + 4? \\boxed{7}", add_special_tokens=False)
    trajs = [traj(ids, [0] * 5 + [1] * (len(ids) - 5), r, 0) for r in (1.0, -1.0)]
    args = GRPOArgs(lr=1e-3, warmup_updates=4, minibatches=1, max_new_tokens=8)
    lg = build_learner_group(GRPOLearner, model.config, args)
    set_lm_weights(lg, {f"lm.{k}": v for k, v in model.state_dict().items()})
    arrays, _ = prepare_batch(trajs, args, multiple=1)
    used = []
    for k in range(6):
        res = lg.foreach_learner(lambda lr: lr.get_optimizers_for_module(MODULE_ID)[0][1].param_groups[0]["lr"])
        used += [float(r.get()) for r in res]
        metrics = update_learners(lg, arrays, minibatches=1, epochs=1, updates_done=k)
    assert used == pytest.approx([1e-3 * (0.25 + 0.75 * k / 4) for k in range(4)] + [1e-3, 1e-3])
    assert metrics["gradients_default_optimizer_global_norm"] > 0  # the pre-clip norm (train_rl logs it)
    lg.shutdown()


def test_gae_and_turn_rewards():
    adv, ret = gae([0.0, 0.0, 1.0], [0.5, 0.5, 0.5], gamma=1.0, lam=1.0)
    assert ret.tolist() == [1.0, 1.0, 1.0] and adv.tolist() == [0.5, 0.5, 0.5]
    adv, _ = gae([0.0, 1.0], [0.0, 0.0], gamma=1.0, lam=0.5)
    assert adv.tolist() == [0.5, 1.0]
    # two turns with an env reply between them: each turn's reward lands on its last sampled token
    t = Trajectory(ids=list(range(8)), policy_mask=[0, 1, 1, 0, 0, 1, 1, 0][:8], logprobs=[0.0] * 8,
                   rewards=[0.5, 1.0], version=0, turn_ends=[2, 6])
    idx, r = token_rewards(t)
    assert idx.tolist() == [1, 2, 5, 6] and r.tolist() == [0.0, 0.5, 0.0, 1.0]


def test_ppo_update_fits_the_value_head(tiny):
    model, tok = tiny
    args = PPOArgs(lr=3e-3, warmup_updates=0, minibatches=1, epochs=1, max_new_tokens=8)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    torch.nn.init.zeros_(head.weight), torch.nn.init.zeros_(head.bias)
    policy = LMPolicy(model, tok, value_head=head, max_new_tokens=8)
    prompt = policy.encode(format_chat([{"role": "user", "content": "What is 3 + 4?"}]))
    comps = policy.generate([prompt] * 8, generator=torch.Generator().manual_seed(1))
    trajs = [Trajectory(ids=prompt + c.ids, policy_mask=[0] * len(prompt) + [1] * len(c.ids),
                        logprobs=[0.0] * len(prompt) + c.logprobs, values=[0.0] * len(prompt) + c.values,
                        rewards=[1.0], version=0, turn_ends=[len(prompt) + len(c.ids) - 1]) for c in comps]
    lg = learners(model, args, value_head=True, cls=PPOLearner)
    arrays, _ = ppo_prepare(trajs, args, multiple=1)
    first = update(lg, arrays)
    for _ in range(5):
        last = update(lg, arrays)
    assert last["vf_loss"] < first["vf_loss"] and last["value_mean"] > first["value_mean"]
    lg.shutdown()


@pytest.mark.slow
def test_two_data_parallel_learners_match_one(tiny, ray_session):
    """num_learners=2 (two Ray actors, DDP over gloo) takes the same step as one learner on the whole batch."""
    model, tok = tiny
    texts = ["What is 3 + 4? \\boxed{7}", "What is 3 + 4? \\boxed{5}", "What is 3 + 4? 7", "What is 3 + 4? five"]
    trajs = []
    for text, r in zip(texts, (1.0, -1.0, 1.0, -1.0)):
        ids = tok.encode(text, add_special_tokens=False)
        trajs.append(traj(ids, [0] * 5 + [1] * (len(ids) - 5), r, 0, logprobs=[0.0] * 5 + _logprobs(model, ids, 5)))
    args = GRPOArgs(lr=1e-3, warmup_updates=0, minibatches=1, max_new_tokens=8, loss_rows=4)
    out, norms = [], []
    for n in (0, 2):
        lg = learners(model, args, num_learners=n)
        norms.append(update(lg, pack(trajs, [1.0, -1.0, 1.0, -1.0], multiple=max(1, n)))
                     ["gradients_default_optimizer_global_norm"])
        out.append(get_lm_weights(lg))
        lg.shutdown()
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)  # the averaged DDP gradient is the full-batch one
    assert all(np.allclose(out[0][k], out[1][k], atol=1e-5) for k in out[0])
