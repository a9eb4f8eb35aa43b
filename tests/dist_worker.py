"""One rank of the torch.distributed test (test_data_distributed.py): joins a gloo group
from the env:// variables, iterates a TokenLoader that takes rank and world size from
torch.distributed, and writes the windows it saw (and what all ranks saw) as JSON."""

import json
import sys

import torch.distributed as dist

from kernelsuite.data import TokenLoader


def main(out, seq_len, batch_size, *paths):
    dist.init_process_group("gloo")
    try:
        loader = TokenLoader(list(paths), int(batch_size), int(seq_len), seed=5)
        firsts = [int(v) for x, _ in loader for v in x[:, 0]]
        everyone = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, firsts)  # the group really talks
        with open(out, "w") as f:
            json.dump(dict(rank=loader.rank, world_size=loader.world_size, batches=len(loader),
                           firsts=firsts, everyone=everyone), f)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
