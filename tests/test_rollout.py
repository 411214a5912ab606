"""Ray rollouts: groups, token-in/token-out with env tokens masked, versions, failures, retries, staleness."""
import functools
import os
import re
import sys
import time

import gymnasium
import numpy as np
import pytest
import ray
import torch

from agents.policy import LMPolicy, OraclePolicy, RandomPolicy
from agents.rollout import EnvSpec, Request, RolloutPool, RolloutWorker, chunk_seed, draw_requests
from cwm_envs.chat import format_chat, tool_message
from cwm_envs.spaces import AnyText
from cwm_envs.tasks import Task

pytestmark = [pytest.mark.ray, pytest.mark.usefixtures("one_torch_thread")]
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers get the toy envs below by value


class TwoTurnAdd(gymnasium.Env):
    """a + b over two turns: the env replies with a tool message after the first turn, then pays the second.

    With `fail_every=k`, `step` raises on seeds divisible by k; with `crash_marker`, the first `step` to see
    that file missing creates it and kills its process (a worker dying mid-episode); with `hold_marker`, the
    first `step` to see that file missing creates it and waits until the file `release` exists (a straggler).
    """

    def __init__(self, fail_every: int = 0, crash_marker: str | None = None, hold_marker: str | None = None,
                 release: str | None = None):
        self.observation_space, self.action_space = AnyText(4096), AnyText(4096)
        self.fail_every, self.crash_marker = fail_every, crash_marker
        self.hold_marker, self.release = hold_marker, release
        self.task = None

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        a, b = (int(x) for x in self.np_random.integers(0, 10, 2))
        self.task, self.turn, self.seed = Task(id=f"{a}+{b}", prompt=f"{a}+{b}", answer=str(a + b)), 0, seed
        return format_chat([{"role": "user", "content": f"What is {a} + {b}?"}]), {"task_id": self.task.id}

    def reference_episode(self, task):
        """The oracle (what OraclePolicy plays): any first turn, then the boxed sum."""
        return ["Let me add.", f"The answer is {task.answer}.\n</think>\n\\boxed{{{task.answer}}}"]

    def step(self, action):
        if self.fail_every and self.seed % self.fail_every == 0:
            raise RuntimeError("the env broke")
        if self.crash_marker:
            try:  # O_EXCL: exactly one process, across workers, creates the marker and dies
                os.close(os.open(self.crash_marker, os.O_CREAT | os.O_EXCL))
                os._exit(1)
            except FileExistsError:
                pass
        if self.hold_marker:
            try:
                os.close(os.open(self.hold_marker, os.O_CREAT | os.O_EXCL))
                deadline = time.monotonic() + 120
                while not os.path.exists(self.release) and time.monotonic() < deadline:
                    time.sleep(0.02)
            except FileExistsError:
                pass
        self.turn += 1
        info = {"task_id": self.task.id}
        if self.turn == 1:
            return tool_message("python", "ok") + "<|start_header_id|>assistant<|end_header_id|>\n\n", 0.0, False, False, info
        ok = f"\\boxed{{{self.task.answer}}}" in action
        return "", 1.0 if ok else -1.0, True, False, info


ENV = EnvSpec("test/TwoTurnAdd-v0", entry_point=TwoTurnAdd)
CPU = 0.25  # Ray CPUs per worker: the test session's Ray has 2, and several pools are alive at once


@pytest.fixture(scope="module")
def tiny():
    from model.config import build_model
    from model.tokenizer import train_tokenizer

    tok = train_tokenizer(["What is 3 + 4? The answer is 7. </think> \\boxed{7} user assistant tool"] * 4,
                          vocab_size=300)
    torch.manual_seed(0)
    policy = LMPolicy(build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1), tok, max_new_tokens=6)
    return policy


@pytest.fixture(scope="module")
def pool(tiny, ray_session):
    p = RolloutPool([ENV], tiny.spec(), tiny.get_weights(), num_workers=2, seed=7, cpus_per_worker=CPU)
    yield p
    p.close()


def test_groups_share_a_task_and_env_tokens_are_masked(pool, tiny):
    trajs, stats = pool.sample(3, 4)
    assert len(trajs) == 12 and stats.episodes == 12 and stats.failed == 0 and stats.env_steps == 24
    by_group = {}
    for t in trajs:
        by_group.setdefault(t.group, []).append(t)
    assert len(by_group) == 3 and all(len(g) == 4 and len({t.task_id for t in g}) == 1 for g in by_group.values())
    reply = tiny.encode(tool_message("python", "ok") + "<|start_header_id|>assistant<|end_header_id|>\n\n")
    for t in trajs:
        assert t.version == 0 and t.ok and len(t.rewards) == 2 and len(t.turn_ends) == 2
        a, b = t.task_id.split("+")
        assert t.ids[: t.prompt_len] == tiny.encode(format_chat([{"role": "user", "content": f"What is {a} + {b}?"}]))
        # the first turn ends with the end-of-turn token (sampled, or closing a turn cut at its budget, masked
        # out), and the env's reply follows it, token for token, masked out
        first_end = t.turn_ends[0] + 1
        eot = tiny.encode("<|eot_id|>")
        assert eot == [tiny.tokenizer.convert_tokens_to_ids("<|eot_id|>")]
        start = first_end if t.ids[first_end - 1] == eot[0] else first_end + 1
        assert t.ids[start - 1] == eot[0] and t.ids[start: start + len(reply)] == reply
        assert t.policy_mask[first_end: start + len(reply)] == [0] * (start + len(reply) - first_end)
        assert all(m == 1 for m in t.policy_mask[t.prompt_len: first_end])
        assert all((lp < 0) == (m == 1) for lp, m in zip(t.logprobs, t.policy_mask))


def test_sampler_logprobs_are_the_models(pool, tiny):
    t = pool.sample(1, 1)[0][0]
    with torch.no_grad():
        logits = tiny.model(torch.tensor([t.ids])).logits[0, :-1]
    lp = torch.log_softmax(logits, -1).gather(-1, torch.tensor(t.ids[1:])[:, None]).squeeze(-1)
    mask = torch.tensor(t.policy_mask[1:], dtype=torch.bool)
    assert torch.allclose(lp[mask], torch.tensor(t.logprobs[1:])[mask], atol=1e-4)


def test_runs_repeat_for_a_seed_and_new_weights_carry_their_version(pool, tiny):
    a = pool.sample(2, 3, seeds=[11, 12])[0]  # two workers, one task each
    worker = RolloutWorker([ENV], tiny.spec(), tiny.get_weights())  # the same code, in this process
    b = []
    for seed, group in zip((11, 12), sorted({t.group for t in a})):
        b += worker.run([Request(env=0, seed=seed, group=group, n=3)], sample_seed=chunk_seed(7, group))[0]
    worker.close()
    assert [t.ids for t in a] == [t.ids for t in b] and [t.logprobs for t in a] == [t.logprobs for t in b]
    greedy0 = pool.sample(2, 1, seeds=[11, 12], greedy=True)[0]
    torch.manual_seed(1)
    other = {k: torch.randn_like(v) * 0.1 for k, v in tiny.get_weights().items()}
    pool.set_weights(other, 1)
    greedy1 = pool.sample(2, 1, seeds=[11, 12], greedy=True)[0]
    assert {t.version for t in greedy1} == {1} and [t.ids for t in greedy1] != [t.ids for t in greedy0]
    pool.set_weights(tiny.get_weights(), 2)


def test_an_env_failure_ends_only_its_episode(tiny, ray_session):
    flaky = EnvSpec("test/TwoTurnAdd-v0", kwargs={"fail_every": 2}, entry_point=TwoTurnAdd)
    with_mix = RolloutPool([flaky], tiny.spec(), tiny.get_weights(), num_workers=1, seed=0, cpus_per_worker=CPU)
    try:
        trajs, stats = with_mix.sample(4, 2, seeds=[2, 3, 4, 5])
        failed = [t for t in trajs if not t.ok]
        assert len(trajs) == 8 and stats.failed == len(failed) == 4
        assert {t.seed for t in failed} == {2, 4} and all("the env broke" in t.error for t in failed)
        assert all(t.ok and len(t.rewards) == 2 for t in trajs if t.seed in (3, 5))
    finally:
        with_mix.close()


def test_a_dead_worker_is_replaced_and_its_requests_retried(tiny, ray_session, tmp_path):
    import ray

    crashing = EnvSpec("test/TwoTurnAdd-v0", kwargs={"crash_marker": str(tmp_path / "crashed")}, entry_point=TwoTurnAdd)
    p = RolloutPool([crashing], tiny.spec(), tiny.get_weights(), num_workers=2, seed=0, cpus_per_worker=CPU)
    try:
        trajs, stats = p.sample(4, 2)  # one worker's process dies mid-episode; its share is rerun elsewhere
        assert len(trajs) == 8 and all(t.ok for t in trajs)
        assert stats.worker_restarts == 1 and stats.retried_requests == 2
        ray.kill(p.workers[1])  # killed between batches: found dead on the next call, replaced
        trajs, stats = p.sample(4, 2)
        assert len(trajs) == 8 and all(t.ok for t in trajs) and stats.worker_restarts == 1
    finally:
        p.close()


def test_async_a_dead_worker_is_replaced_and_its_groups_resubmitted(tiny, ray_session, tmp_path):
    crashing = EnvSpec("test/TwoTurnAdd-v0", kwargs={"crash_marker": str(tmp_path / "crashed")}, entry_point=TwoTurnAdd)
    p = RolloutPool([crashing], tiny.spec(), tiny.get_weights(), num_workers=1, seed=0, cpus_per_worker=CPU,
                    mode="async")  # one worker: no other stream can fill the batch before the death is seen
    try:
        trajs, stats = p.sample(4, 2)  # the stream's process dies mid-episode; its groups start again on a new worker
        assert len(trajs) == 8 and all(t.ok for t in trajs) and len({t.group for t in trajs}) == 4
        assert stats.worker_restarts == 1 and stats.retried_requests >= 1
    finally:
        p.close()


def test_async_admission_bounds_staleness_and_keeps_every_finished_group(tiny, ray_session):
    for bound in (0, 1):
        p = RolloutPool([ENV], tiny.spec(), tiny.get_weights(), num_workers=1, mode="async", max_staleness=bound,
                        cpus_per_worker=CPU)
        try:
            first, stats = p.sample(3, 2)  # sampled with version 0, used at version 0
            assert len(first) == 6 and {t.version for t in first} == {0} and stats.episodes == 6
            p.set_weights(tiny.get_weights(), 1)  # an update happened while the stream went on
            second, stats = p.sample(3, 2)
            assert len(second) == 6 and all(t.ok for t in second)  # nothing finished is thrown away
            assert all(t.staleness(1) <= bound for t in second)
            if bound == 1:  # the groups admitted while the "learner" updated were sampled (at first) by version 0
                assert any(t.staleness(1) == 1 for t in second)
            if bound == 0:  # nothing may start before the new weights are there: every token is version 1's
                assert {v for t in second for v, m in zip(t.versions, t.policy_mask) if m} == {1}
        finally:
            p.close()


def test_new_weights_land_mid_episode_and_each_token_keeps_its_version(tiny, tmp_path):
    """A partial rollout: an update arrives while an episode's env is busy; its next turn uses the new weights."""
    release = tmp_path / "release"
    held = EnvSpec("test/TwoTurnAdd-v0", kwargs={"hold_marker": str(tmp_path / "held"), "release": str(release)},
                   entry_point=TwoTurnAdd)
    worker = RolloutWorker([held], tiny.spec(), tiny.get_weights())  # in-process: the stream the actors run
    try:
        worker.submit([Request(env=0, seed=3, group=0, n=1)], sample_seed=0, min_version=0)
        deadline = time.monotonic() + 60
        while not (tmp_path / "held").exists():  # the first step is waiting in the env
            assert time.monotonic() < deadline
            time.sleep(0.05)
        torch.manual_seed(1)
        worker.set_weights({k: torch.randn_like(v) * 0.1 for k, v in tiny.get_weights().items()}, 1)
        release.touch()
        got = []
        while not got:
            assert time.monotonic() < deadline
            got, stats = worker.poll(1.0)
    finally:
        worker.close()
    t = got[0]
    first, second = [[v for v, m in zip(t.versions[a:b + 1], t.policy_mask[a:b + 1]) if m]
                     for a, b in ((t.prompt_len, t.turn_ends[0]), (t.turn_ends[0] + 1, t.turn_ends[1]))]
    assert set(first) == {0} and set(second) == {1} and t.version == 0 and t.staleness(1) == 1


def test_a_straggler_env_does_not_hold_up_the_batch(tiny, ray_session, tmp_path):
    """One episode's env hangs: the learner still gets its batches (the first groups to finish), and the
    straggler's group arrives in a later batch once its env answers (kept, not thrown away)."""
    release = tmp_path / "release"
    held = EnvSpec("test/TwoTurnAdd-v0", kwargs={"hold_marker": str(tmp_path / "held"), "release": str(release)},
                   entry_point=TwoTurnAdd)
    p = RolloutPool([held], tiny.spec(), tiny.get_weights(), num_workers=1, mode="async", max_staleness=1,
                    cpus_per_worker=CPU)
    try:
        batches = [p.sample(2, 2)[0]]
        p.set_weights(tiny.get_weights(), 1)
        batches.append(p.sample(2, 2)[0])
        assert all(len(b) == 4 and all(t.ok for t in b) for b in batches)
        straggler = [g for g, c in p._outstanding.items()]
        assert (tmp_path / "held").exists() and straggler  # its group is still out, the batches came anyway
        release.touch()
        later = []
        for version in (2, 3, 4):
            p.set_weights(tiny.get_weights(), version)
            later += p.sample(2, 2)[0]
            if set(straggler) <= {t.group for t in later}:
                break
        assert set(straggler) <= {t.group for t in later} and all(t.ok for t in later)
    finally:
        p.close()


def test_a_shared_server_samples_with_the_pushed_weights_and_names_their_version(tiny, ray_session):
    """`--policy serve`: one server per node; a worker's policy reaches its node's server with token ids, and
    after a push every choice says which version sampled it."""
    from agents.policy import Turn
    from agents.serve import ServerPool

    servers = ServerPool(tiny, 0, tiny.get_weights(), cpus=CPU)
    try:
        policy = servers.policy_factory()()  # what a rollout worker on this node builds
        prompt = tiny.encode(format_chat([{"role": "user", "content": "What is 3 + 4?"}]))
        before = policy.act([Turn(prompt, "")], greedy=True)[0]
        torch.manual_seed(3)
        servers.set_weights({k: torch.randn_like(v) * 0.2 for k, v in tiny.get_weights().items()}, 4)
        after = policy.act([Turn(prompt, "", max_new_tokens=3)], greedy=True)[0]
    finally:
        servers.close()
    assert before.version == 0 and after.version == 4 and after.ids != before.ids[:len(after.ids)]
    assert len(after.ids) <= 3 and before.ids == tiny.generate([prompt], greedy=True)[0].ids  # token-in, token-out


def test_oracle_and_random_policies_share_the_interface(tiny, ray_session):
    tok = tiny.tokenizer
    oracle = RolloutPool([ENV], functools.partial(OraclePolicy, tok.encode), num_workers=1, seed=0, cpus_per_worker=CPU)
    rand = RolloutPool([ENV], functools.partial(RandomPolicy, tok, max_new_tokens=8, seed=0), encode=tok.encode,
                       num_workers=1, seed=0, cpus_per_worker=CPU)
    try:
        good = oracle.sample(4, 1)[0]
        assert all(t.rewards == [0.0, 1.0] for t in good)
        bad = rand.sample(4, 1)[0]
        assert all(t.rewards == [0.0, -1.0] for t in bad)
        assert all(lp == pytest.approx(-np.log(len(tok))) for t in bad for lp, m in zip(t.logprobs, t.policy_mask) if m)
    finally:
        oracle.close(), rand.close()


def test_workers_go_only_where_their_resources_are(tiny, ray_session):
    from cwm_envs.errors import InfraError

    swe_like = EnvSpec("test/TwoTurnAdd-v0", entry_point=TwoTurnAdd, resources={"docker": 1})
    with pytest.raises(InfraError, match="docker"):  # no node of this Ray declares a "docker" resource
        RolloutPool([ENV, swe_like], tiny.spec(), tiny.get_weights(), num_workers=1, cpus_per_worker=CPU)


def test_env_mix_follows_the_weights(tiny):
    worker = RolloutWorker([ENV, ENV], tiny.spec(), tiny.get_weights())  # in-process: the same code as an actor
    reqs = [Request(env=i % 2, seed=i, group=i, n=1) for i in range(4)]
    trajs, stats = worker.run(reqs, sample_seed=0)
    assert [t.group for t in trajs] == [0, 1, 2, 3] and stats.episodes == 4
    worker.close()

    reqs = draw_requests(np.random.default_rng(0), [0.75, 0.25], 4000, 2, first_group=10)
    share = np.mean([r.env == 0 for r in reqs])
    assert 0.72 < share < 0.78 and all(r.n == 2 for r in reqs) and reqs[0].group == 10


class OpenEpisodes(TwoTurnAdd):
    """Counts its episodes open at once, across instances (each SWE episode holds a container)."""

    open = peak = 0

    def reset(self, *, seed=None, options=None):
        OpenEpisodes.open += 1
        OpenEpisodes.peak = max(OpenEpisodes.peak, OpenEpisodes.open)
        return super().reset(seed=seed, options=options)

    def step(self, action):
        out = super().step(action)
        OpenEpisodes.open -= out[2] or out[3]
        return out


def test_a_worker_never_holds_more_episodes_than_its_slots(tiny):
    spec = EnvSpec("test/OpenEpisodes-v0", entry_point=OpenEpisodes, max_episodes=2)
    worker = RolloutWorker([spec], tiny.spec(), tiny.get_weights(), max_episodes=spec.max_episodes)
    trajs, stats = worker.run([Request(env=0, seed=s, group=s, n=2) for s in range(3)], sample_seed=0)
    worker.close()
    assert OpenEpisodes.peak == 2 and OpenEpisodes.open == 0  # 6 episodes in waves of 2, none left open
    assert [t.group for t in trajs] == [0, 0, 1, 1, 2, 2] and stats.episodes == 6 and stats.failed == 0
    assert all(len(t.turn_ends) == 2 for t in trajs)


def test_an_episode_cut_by_the_workers_budget_is_paid_as_a_failure(tiny):
    """Stalling must not beat answering: an episode cut after its first turn (whose step reward is 0) gets the
    env's failure reward (-1), exactly what a wrong answer earns."""
    for budget in (dict(max_turns=1), dict(max_context=30)):
        worker = RolloutWorker([ENV], tiny.spec(), tiny.get_weights(), **budget)
        trajs, _ = worker.run([Request(env=0, seed=s, group=s, n=1) for s in range(2)], sample_seed=0)
        worker.close()
        assert all(t.info.get("cut") for t in trajs), budget
        assert [t.rewards for t in trajs] == [[-1.0], [-1.0]], budget


def test_generation_stops_at_the_end_of_a_tool_call(tiny):
    """A model taught one reply that goes on after `</tool>` stops right there, and says why."""
    import copy

    policy = LMPolicy(copy.deepcopy(tiny.model).train(), tiny.tokenizer, max_new_tokens=40)
    prompt = policy.encode(format_chat([{"role": "user", "content": "List the files."}]))
    reply = policy.encode("<tool: bash>\nls\n</tool>\nand more text after the call<|eot_id|>")
    ids = torch.tensor([prompt + reply])
    opt = torch.optim.Adam(policy.model.parameters(), lr=3e-3)
    for _ in range(150):  # memorise the reply
        logits = policy.model(ids).logits[0, len(prompt) - 1:-1]
        loss = torch.nn.functional.cross_entropy(logits, ids[0, len(prompt):])
        opt.zero_grad(), loss.backward(), opt.step()
    policy.model.eval()
    full = LMPolicy(policy.model, policy.tokenizer, max_new_tokens=len(reply) + 5, stop=("<|eot_id|>",))
    assert full.generate([prompt], greedy=True)[0].text.endswith("after the call")  # it did learn the rest
    c = policy.generate([prompt], greedy=True)[0]
    assert c.finish == "stop" and c.text == "<tool: bash>\nls\n</tool>"
    assert c.ids == reply[: len(c.ids)] and len(c.logprobs) == len(c.ids)


def _compute_with_the_tool_then_box(turn, hint) -> str:
    """A scripted two-turn solver: print the answer from the python tool, then box what the tool printed."""
    if "tool: python<|end_header_id|>" not in turn.observation:
        return f"Let me compute it.\n<tool: python>\nprint({hint.task.answer})\n</tool>"
    printed = re.search(r"\[stdout\]\s*(-?\d+)", turn.observation).group(1)   # CWM's tool output format
    return f"The tool printed {printed}.\n</think>\n\\boxed{{{printed}}}"


def test_a_tool_using_episode_in_math_tool_keeps_every_token_in_order(tiny):
    """cwm/MathTool-v0 (the local sandbox runs the call): the tool message comes back as env tokens, masked,
    between the two policy turns, and the final answer is paid."""
    env = EnvSpec("cwm/MathTool-v0", kwargs={"kinds": ["add_sub"], "difficulty": 0})
    policy = functools.partial(OraclePolicy, tiny.tokenizer.encode, _compute_with_the_tool_then_box)
    worker = RolloutWorker([env], policy, encode=tiny.tokenizer.encode)
    try:
        trajs, stats = worker.run([Request(env=0, seed=s, group=s, n=1) for s in range(3)], sample_seed=0)
    finally:
        worker.close()
    assert stats.episodes == 3 and not any(t.error for t in trajs)
    for t in trajs:
        assert t.rewards == [0.0, 1.0] and len(t.turn_ends) == 2, t.info
        decode = tiny.tokenizer.decode
        reply = [i for i, m in zip(t.ids[t.turn_ends[0] + 1:], t.policy_mask[t.turn_ends[0] + 1:]) if m == 0]
        env_text = decode(reply)
        assert "tool: python" in env_text and env_text.count("<|eot_id|>") == 1, env_text
        policy_text = decode([i for i, m in zip(t.ids, t.policy_mask) if m])
        answer = t.info["answer"]
        assert "<tool: python>" in policy_text and f"\\boxed{{{answer}}}" in policy_text
        assert f"[stdout]\n{answer}" in env_text or f"[stdout]{answer}" in env_text, env_text   # what the sandbox printed


class _Recorder:
    """A model-like policy (no `needs_task`) that records every Turn it is handed and answers wrongly."""

    def __init__(self, encode):
        self.encode, self.version, self.seen = encode, 0, []

    def act(self, turns, **kwargs):
        self.seen.append((list(turns), sorted(kwargs)))
        from agents.policy import Completion
        text = "<tool: python>\nprint(1)\n</tool>" if len(self.seen) == 1 else "</think>\n\\boxed{nope}"
        return [Completion(ids=self.encode(text), logprobs=[0.0] * len(self.encode(text)), text=text, finish="stop")
                for _ in turns]

    def set_weights(self, weights, version):
        self.version = version


def test_a_model_policy_never_sees_the_gold_answer(tiny):
    """Only budgets reach a policy's Turn; the task and the evidence stay on the trajectory (for logs)."""
    from agents.rollout import POLICY_INFO_KEYS

    env = EnvSpec("cwm/MathTool-v0", kwargs={"kinds": ["add_sub"], "difficulty": 0})
    recorder = _Recorder(tiny.tokenizer.encode)
    worker = RolloutWorker([env], lambda: recorder, encode=tiny.tokenizer.encode)
    try:
        trajs, _ = worker.run([Request(env=0, seed=s, group=s, n=1) for s in range(2)], sample_seed=0)
    finally:
        worker.close()
    assert len(recorder.seen) == 2 and all("oracle" not in kwargs for _, kwargs in recorder.seen)
    assert all(t.info.get("remaining_tool_calls") is not None for t in recorder.seen[1][0])  # budgets do pass
    for turns, _ in recorder.seen:
        for turn in turns:
            assert set(turn.info) <= POLICY_INFO_KEYS and not hasattr(turn, "task")
    # the env's own info does carry the gold and the evidence: it stays on the trajectory, for logs
    assert all(t.rewards[-1] == -1.0 and "answer" in t.info and "outcomes" in t.info for t in trajs)
