"""Weights streamed unit by unit into a server's model: versioned, complete, in order, and nothing else."""
import pytest
import torch

from model.config import build_model
from model.weight_stream import StaleWeights, WeightReceiver, WeightShard, publish_weights


@pytest.fixture(scope="module")
def models():
    torch.manual_seed(0)
    trained = build_model("cwm-micro", num_hidden_layers=2)
    torch.manual_seed(1)
    return trained, build_model("cwm-micro", num_hidden_layers=2)


def stream(model, version):
    shards = []
    publish_weights(model, version, shards.append)
    return shards


def test_a_whole_stream_makes_the_server_model_identical_one_unit_at_a_time(models):
    trained, fresh = models
    server = WeightReceiver(build_model("cwm-micro", num_hidden_layers=2))
    shards = stream(trained, 1)
    assert [s.index for s in shards] == list(range(5)) and {s.count for s in shards} == {5}
    total = sum(p.numel() * p.element_size() for p in trained.parameters())
    assert sum(s.nbytes for s in shards) == total and max(s.nbytes for s in shards) < total / 2
    assert [server.apply(s) for s in shards] == [False] * 4 + [True]
    assert server.version == 1
    assert all(torch.equal(a, b) for a, b in zip(server.model.parameters(), trained.parameters()))
    fp32 = stream(fresh, 2)
    bf16 = []
    publish_weights(fresh, 3, bf16.append, dtype=torch.bfloat16)
    assert sum(s.nbytes for s in bf16) * 2 == sum(s.nbytes for s in fp32)  # bf16 halves the transfer


def test_stale_out_of_order_foreign_and_incomplete_streams_are_refused(models):
    trained, _ = models
    server = WeightReceiver(build_model("cwm-micro", num_hidden_layers=2), version=4)
    with pytest.raises(StaleWeights):
        server.apply(stream(trained, 4)[0])  # what the server already has
    shards = stream(trained, 5)
    with pytest.raises(ValueError, match="out of order"):
        server.apply(shards[1])  # a stream starts at shard 0
    server.apply(shards[0])
    assert server.pending == 5 and server.version == 4  # half applied: the server must not generate
    with pytest.raises(ValueError, match="out of order"):
        server.apply(shards[2])  # shard 1 was skipped
    name, t = next(iter(shards[1].tensors.items()))
    with pytest.raises(ValueError, match="unknown parameter"):
        server.apply(WeightShard(5, 1, 5, {"model.layers.9.mlp.up_proj.weight": t}))
    before = server.model.state_dict()[name].clone()
    with pytest.raises(ValueError, match="shape"):  # a bad tensor after a good one: none of the shard is written
        server.apply(WeightShard(5, 1, 5, {name: t + 1, next(iter(shards[2].tensors)): t[:1]}))
    assert torch.equal(server.model.state_dict()[name], before)
    server.apply(shards[0])  # restart the version from its first shard
    with pytest.raises(ValueError, match="ended without"):
        server.apply(WeightShard(5, 1, 2, shards[1].tensors))  # claims to be the last: most weights never came
    assert server.version == 4 and server.pending == 5  # nothing was committed; the weights are mixed
    for shard in stream(trained, 5):
        server.apply(shard)
    assert server.version == 5 and server.pending is None
