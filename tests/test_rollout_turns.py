"""Multi-turn episodes at their boundaries (in-process rollout workers, the same code the Ray actors run): the
end-of-turn token closes every policy turn, budgets cut episodes (paid the env's failure reward, their env
closed), the env's own turn limit is the default, and SFT and RL lay out an oracle episode with the same ids."""
import gymnasium
import pytest
import torch

from agents.policies import ScriptedPolicy
from agents.policy import Completion, LMPolicy
from agents.rollout import EnvSpec, Request, RolloutWorker, env_turn_limit
from cwm_envs.chat import EOT, format_chat
from cwm_envs.spaces import AnyText

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NEEDS_TOOL = {"kinds": ["needs_tool"], "think": False, "prompt_style": "direct"}
REPLY = "<|start_header_id|>tool: python<|end_header_id|>\n\nok<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"


class Endless(gymnasium.Env):
    """Replies to every turn and never ends the episode; counts its instances' resets and closes."""

    log: list = []

    def __init__(self, failure: float = -1.0):
        self.observation_space, self.action_space = AnyText(4096), AnyText(4096)
        self.failure = failure

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.log.append(("reset", id(self)))
        return format_chat([{"role": "user", "content": "Go on."}]), {"task_id": f"endless-{seed}"}

    def step(self, action):
        return REPLY, 0.0, False, False, {"task_id": "endless"}

    def failure_reward(self) -> float:
        return self.failure

    def close(self):
        self.log.append(("close", id(self)))


ENDLESS = EnvSpec("test/Endless-v0", entry_point=Endless)


@pytest.fixture(scope="module")
def tok():
    from model.tokenizer import train_tokenizer

    return train_tokenizer(["<tool: python>\nprint(1)\n</tool> Compute $12 \\times 34$. \\boxed{408} ok user tool"] * 4,
                           vocab_size=300)


class ToolCaller:
    """A model-like policy whose every turn is a tool call that stops at `</tool>` (as a server's stop string
    leaves it: no end-of-turn token); it records the Turns it is handed."""

    def __init__(self, tok):
        self.tok, self.version, self.seen = tok, 0, []

    def encode(self, text):
        return self.tok.encode(text, add_special_tokens=False)

    def act(self, turns, **_):
        self.seen.append(list(turns))
        text = "<tool: python>\nprint(1)\n</tool>"
        ids = self.encode(text)
        return [Completion(ids=ids, logprobs=[-0.5] * len(ids), text=text, finish="stop", raw=text) for _ in turns]

    def set_weights(self, weights, version):
        self.version = version


def run(worker, n=1, seed=0):
    try:
        return worker.run([Request(env=0, seed=seed + i, group=i, n=1) for i in range(n)], sample_seed=0)
    finally:
        worker.close()


def test_every_turn_ends_with_the_end_of_turn_token_and_the_reply_follows(tok):
    policy = ToolCaller(tok)
    eot = tok.encode(EOT, add_special_tokens=False)
    trajs, stats = run(RolloutWorker([ENDLESS], lambda: policy, max_turns=3))
    t = trajs[0]
    assert len(t.turn_ends) == 3 and stats.cut == 1
    reply = tok.encode(REPLY, add_special_tokens=False)
    for k, end in enumerate(t.turn_ends):  # the tool call, then <|eot_id|> (the format's, masked), then the reply
        assert t.ids[end + 1: end + 1 + len(eot)] == eot and t.policy_mask[end + 1] == 0 and t.versions[end + 1] == -1
        if k < 2:
            after = end + 1 + len(eot)
            assert t.ids[after: after + len(reply)] == reply
    # a policy that reads text sees the same boundary: the next turn's text has the call, <|eot_id|>, the reply
    assert "</tool><|eot_id|><|start_header_id|>tool: python" in policy.seen[1][0].text
    assert all(v == 0 for v, m in zip(t.versions, t.policy_mask) if m)


def test_a_cut_episode_is_paid_the_env_failure_reward_and_its_env_is_closed(tok):
    Endless.log.clear()
    trajs, stats = run(RolloutWorker([ENDLESS], lambda: ToolCaller(tok), max_turns=2), n=2)
    assert stats.cut == 2 and all(t.cut == "max_turns" and t.info["cut"] == "max_turns" for t in trajs)
    assert all(t.rewards == [0.0, -1.0] and t.reward == -1.0 for t in trajs)  # never 0 by accident
    resets = [i for what, i in Endless.log if what == "reset"]
    assert sorted(i for what, i in Endless.log if what == "close") == sorted(resets)  # closed, not pooled
    # the pay is the env's own: an env whose failure pays 0 (a binary scheme) is paid 0
    binary = EnvSpec("test/Endless-v0", kwargs={"failure": 0.0}, entry_point=Endless)
    trajs, _ = run(RolloutWorker([binary], lambda: ToolCaller(tok), max_turns=1))
    assert trajs[0].rewards == [0.0] and trajs[0].cut == "max_turns"


def test_context_and_token_budgets_shrink_the_last_turn_then_cut(tok):
    from model.config import build_model

    torch.manual_seed(0)
    policy = LMPolicy(build_model("cwm-micro", vocab_size=len(tok), num_hidden_layers=1), tok, max_new_tokens=8,
                      stop=())  # an untrained model that never stops by itself: every turn runs to its budget
    prompt = len(tok.encode(format_chat([{"role": "user", "content": "Go on."}]), add_special_tokens=False))
    reply = len(tok.encode(REPLY, add_special_tokens=False))
    context = prompt + 8 + 1 + reply + 4  # room for a full first turn, then 3 tokens + the end-of-turn token
    trajs, _ = run(RolloutWorker([ENDLESS], policy.spec(), policy.get_weights(), max_context=context))
    t = trajs[0]
    turns = [end + 1 - start for start, end in zip([prompt, prompt + 8 + 1 + reply], t.turn_ends)]
    assert turns == [8, 3] and len(t.ids) == context  # the second turn took only what the context left
    assert t.cut == "max_context" and t.reward == -1.0 and len(t.rewards) == len(t.turn_ends)
    trajs, _ = run(RolloutWorker([ENDLESS], policy.spec(), policy.get_weights(), max_episode_tokens=10))
    assert [sum(trajs[0].policy_mask)] == [10] and trajs[0].cut == "max_episode_tokens" and trajs[0].reward == -1.0


def test_the_env_turn_limit_is_the_default_and_a_shorter_run_limit_cuts(tok):
    always_tool = ToolCaller(tok)  # calls the tool every turn, never answers
    env = EnvSpec("cwm/MathTool-v0", kwargs={**NEEDS_TOOL, "max_turns": 3})
    trajs, stats = run(RolloutWorker([env], lambda: always_tool))
    t = trajs[0]  # the env's own limit (3, not a worker default) ends it: the env's truncation, not a cut
    assert len(t.turn_ends) == 3 and t.cut is None and stats.cut == 0 and t.rewards == [0.0, 0.0, -1.0]
    trajs, stats = run(RolloutWorker([env], lambda: always_tool, max_turns=2))
    assert trajs[0].cut == "max_turns" and trajs[0].rewards == [0.0, -1.0]  # before the fix: 0.0 in all
    assert env_turn_limit(gymnasium.make("cwm/MathTool-v0", max_turns=5)) == 5
    assert env_turn_limit(gymnasium.make("CartPole-v1")) == 500  # a registered TimeLimit


def test_sft_and_rl_lay_out_the_same_tool_using_oracle_episode(tok):
    from model.sft import collect_episodes, episode_document

    kept, counts = collect_episodes("cwm/MathTool-v0", 3, seed=5, env_kwargs=NEEDS_TOOL)
    assert counts["kept"] == 3 and all(len(turns) == 2 for turns in kept)  # a tool call, then the answer
    worker = RolloutWorker([EnvSpec("cwm/MathTool-v0", kwargs=NEEDS_TOOL)],
                           lambda: ScriptedPolicy("oracle", tokenizer=tok), encode=lambda s: tok.encode(s, add_special_tokens=False))
    trajs, _ = run(worker, n=3, seed=5)
    for turns, t in zip(kept, trajs):
        ids, mask = episode_document(tok, turns)
        assert t.reward == 1.0 and (t.ids, t.policy_mask) == (ids, mask)
        assert "<tool: python>" in tok.decode(ids) and "[stdout]" in tok.decode(ids)
    # `cwm train sft --policy` rows, gathered 2 episodes at a time (each live episode holds a sandbox; 4000 at
    # once exhausted the machine): the same rows, in seed order
    from agents.rollout import rollout_documents

    rows, counts = rollout_documents([EnvSpec("cwm/MathTool-v0", kwargs=NEEDS_TOOL)],
                                     lambda tk: ScriptedPolicy("oracle", tokenizer=tk), batch=2)(tok, 3, 5)
    assert counts["kept"] == 3 and rows == [episode_document(tok, turns) for turns in kept]


@pytest.mark.docker
@pytest.mark.slow
def test_sft_and_rl_lay_out_the_same_swe_episode(tok, docker_engine):
    """cwm/SWE-v0 (through gymnasium, a real container): the oracle agent's episode laid out for SFT equals the
    trajectory of the same actions played through a rollout worker; the env's 128-turn limit is the worker's."""
    from agents.policy import OraclePolicy
    from agents.swe_agents import OracleSWEAgent
    from model.sft import episode_document

    env = gymnasium.make("cwm/SWE-v0")
    try:
        assert env_turn_limit(env) == 128
        obs, info = env.reset(options={"task": 0})
        agent, turns, done = OracleSWEAgent(), [], False
        agent.reset(env.unwrapped.task)
        while not done:
            action = agent.act(obs, info)
            turns.append((obs, action))
            obs, reward, terminated, truncated, info = env.step(action)
            done = terminated or truncated
    finally:
        env.close()
    assert reward == 1.0 and len(turns) >= 3
    actions = iter([a for _, a in turns])
    encode = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731  (a one-line helper)
    worker = RolloutWorker([EnvSpec("cwm/SWE-v0")], lambda: OraclePolicy(encode, lambda turn, hint: next(actions)),
                           encode=encode)
    try:
        trajs, stats = worker.run([Request(env=0, seed=0, group=0, n=1, task=0)])
    finally:
        worker.close()
    t = trajs[0]
    assert t.ok and t.reward == 1.0 and t.cut is None and stats.cut == 0
    assert (t.ids, t.policy_mask) == episode_document(tok, turns)
