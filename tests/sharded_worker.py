"""One rank of a sharded test run, launched by tests/test_sharding.py with torchrun's environment variables
(RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Argument: a JSON spec.

  init     model + tokenizer directory to start from (each rank reads only its slices of it)
  rows     JSON file of packed rows [[ids, labels], ...], the same stream on every rank
  out      the run's --out (a rerun resumes from its newest checkpoint)
  args     TrainArgs fields (max_steps, batch_size, shard, ...)
  probe    optional: token ids whose logits rank 0 saves to out/probe_logits.pt after training
  stream   optional: stream the trained weights into a fresh model on rank 0 (model/weight_stream.py) and
           save what it received to out/received.pt, the shard sizes to out/stream.json
  measure  optional [seq_len, micro_batch]: one FSDP step of a fresh model under torch's MemTracker; rank 0
           writes its peak and the plan's formula to out/measure.json (model/plan.py)
"""
import json
import sys
from pathlib import Path

import torch

from model.config import load_config
from model.tokenizer import load_tokenizer
from model.train_args import TrainArgs
from model.train_loop import open_model, resume_point, train
from model.weight_stream import WeightReceiver, publish_weights


def main(spec: dict) -> None:
    torch.set_num_threads(1)
    args = TrainArgs(out=Path(spec["out"]), **spec["args"])
    ckpt = resume_point(args.out)
    model = open_model(ckpt or spec["init"], args)
    rows = [tuple(r) for r in json.loads(Path(spec["rows"]).read_text())]
    train(model, load_tokenizer(spec["init"]), iter(rows), [], args, resume_from=ckpt, title="sharded")
    rank = torch.distributed.get_rank()
    if "probe" in spec:
        with torch.no_grad():  # a forward of the sharded model: every rank takes part
            logits = model(input_ids=torch.tensor([spec["probe"]])).logits
        if rank == 0:
            torch.save(logits, args.out / "probe_logits.pt")
    if spec.get("stream"):
        from transformers import CwmForCausalLM

        receiver = WeightReceiver(CwmForCausalLM(load_config(spec["init"]))) if rank == 0 else None
        sizes = []

        def send(shard):
            sizes.append(shard.nbytes)
            receiver.apply(shard)

        publish_weights(model, version=1, send=send)
        if rank == 0:
            torch.save(receiver.model.state_dict(), args.out / "received.pt")
            total = sum(p.numel() * p.element_size() for p in receiver.model.parameters())
            (args.out / "stream.json").write_text(json.dumps({"shards": sizes, "total": total,
                                                              "version": receiver.version}))
    if "measure" in spec:
        from model.plan import measure_step

        result = measure_step(load_config(spec["init"]), *spec["measure"], strategy="fsdp")
        if rank == 0:
            (args.out / "measure.json").write_text(json.dumps(result, default=float))
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
