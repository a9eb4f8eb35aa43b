"""A real torch.distributed run: two processes in a gloo group on this machine, each with a
TokenLoader that learns its rank from torch.distributed, get disjoint data covering the
corpus."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

from data_helpers import indexed_corpus
from kernelsuite.data import TokenLoader

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_gloo_ranks_get_disjoint_data(tmp_path):
    sizes, seq_len, batch = [8 * 20 + 1, 8 * 12 + 1], 8, 4  # 32 windows: 4 batches a rank
    paths = [str(p) for p in indexed_corpus(tmp_path, sizes)]
    env = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               WORLD_SIZE="2")
    worker = Path(__file__).with_name("dist_worker.py")
    procs = [subprocess.Popen([sys.executable, str(worker), str(tmp_path / f"rank{r}.json"),
                               str(seq_len), str(batch), *paths],
                              env=dict(env, RANK=str(r)), stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    for p in procs:
        try:
            _, err = p.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        assert p.returncode == 0, err
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [(r["rank"], r["world_size"], r["batches"]) for r in results] == [(0, 2, 4),
                                                                              (1, 2, 4)]
    a, b = (set(r["firsts"]) for r in results)
    assert len(a) == len(b) == 16 and not a & b
    # every window once: first tokens 0, 8, ... in shard 0, 161, 169, ... in shard 1
    assert sorted(a | b) == [8 * w for w in range(20)] + [161 + 8 * w for w in range(12)]
    assert results[0]["everyone"] == results[1]["everyone"] == [r["firsts"] for r in results]
    # the same split as explicit rank/world_size arguments
    for r in results:
        local = TokenLoader(paths, batch, seq_len, seed=5, rank=r["rank"], world_size=2)
        assert [int(v) for x, _ in local for v in x[:, 0]] == r["firsts"]
