"""Every tile the Hopper autotuner may pick (triton_flash.HOPPER_TILES) computes the right
answer: each kernel is forced to one tile at a time and checked against the float64
reference the DESIGN.md way. Block sizes decide the masking (edge, diagonal and skipped
blocks), so a tile that only the autotuner ever picks must not be the first to run it.

Without a GPU the tiles run under the Triton interpreter (float16 for the tensor-core
tiles, float32 for the exact-product ones; bfloat16, which the interpreter computes
wrongly, on the GPU only). ci/gpu.sh runs this file on the GPU.
"""

import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
import triton

from attention_helpers import DEVICES, check_attention, rand
from kernelsuite.attention import triton_flash as tf

AUTOTUNERS = {"fwd": "_fwd", "dkdv": "_bwd_dkdv", "dq": "_bwd_dq"}


def _params():
    for kernel, table in tf.HOPPER_TILES.items():
        for (block_d, kind), tiles in table.items():
            dtypes = ([torch.float16, pytest.param(torch.bfloat16, marks=pytest.mark.gpu)]
                      if kind.startswith("tc") else [torch.float32])
            gqa, extras = kind.endswith("-gqa"), kind.endswith("-extras")
            for tile in tiles:
                for dtype in dtypes:
                    dt = dtype.values[0] if hasattr(dtype, "values") else dtype
                    name = (f"{kernel}-d{block_d}"
                            f"{'-gqa' if gqa else ''}{'-extras' if extras else ''}-"
                            f"{'x'.join(map(str, tile))}-{dt}").replace("torch.", "")
                    marks = dtype.marks if hasattr(dtype, "marks") else ()
                    yield pytest.param(kernel, block_d, gqa, extras, tile, dt, id=name,
                                       marks=marks)


@contextmanager
def only_tile(kernel, tile):
    """The kernel's autotuner offers this one tile (its pruning keeps a hand-set list)."""
    tuner = getattr(tf, AUTOTUNERS[kernel])
    saved = tuner.configs, tuner.cache
    m, n, warps, stages = tile
    tuner.configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=warps,
                                   num_stages=stages)]
    tuner.cache = {}
    try:
        yield
    finally:
        tuner.configs, tuner.cache = saved


@pytest.mark.slow
@pytest.mark.parametrize("kernel,block_d,gqa,extras,tile,dtype", list(_params()))
def test_every_hopper_tile_is_correct(kernel, block_d, gqa, extras, tile, dtype):
    device = DEVICES["triton"]
    # 150 rows: no multiple of any block, several blocks of every tile; 4 query heads on
    # 2 kv heads for the GQA tiles, on 4 otherwise; the extras lists' tiles with ALiBi and
    # dropout (the launches they serve)
    q = rand(1, 150, 4, block_d, dtype=dtype, device=device)
    k, v = (rand(1, 150, 2 if gqa else 4, block_d, dtype=dtype, device=device)
            for _ in range(2))
    kw = dict(dropout_p=0.2, alibi_slopes=torch.rand(4, device=device)) if extras else {}
    with only_tile(kernel, tile):
        check_attention(q, k, v, backend="triton", causal=True, softcap=20.0,
                        deterministic=kernel == "dq", **kw)


def check_pruning():
    """The pruning hands each kernel exactly its table's tiles for the head dim, precision
    and GQA, first tile first (run where the Hopper tables are live: no interpreter)."""
    assert not tf.INTERPRET
    for kernel, name in AUTOTUNERS.items():
        tuner = getattr(tf, name)
        for (block_d, kind), tiles in tf.HOPPER_TILES[kernel].items():
            prec = "ieee" if kind.startswith("ieee") else "tf32"
            group = 4 if kind.endswith("-gqa") else 1
            extras = kind.endswith("-extras")
            got = tuner.early_config_prune(tuner.configs, {"group": group}, BLOCK_D=block_d,
                                           DOT_PREC=prec, ALIBI=0, DROPOUT=extras)
            assert [tf.tile_of(c) for c in got] == tiles, (kernel, block_d, kind)
            if extras:  # ALiBi alone takes the same list
                got = tuner.early_config_prune(tuner.configs, {"group": 1}, BLOCK_D=block_d,
                                               DOT_PREC=prec, ALIBI=2, DROPOUT=False)
                assert [tf.tile_of(c) for c in got] == tiles, (kernel, block_d, kind)
        assert tf.tiles(kernel, 32, "tf32") == tf.HOPPER_TILES[kernel][64, "tc"]
    # only the dK/dV kernel has GQA lists; the others use theirs for GQA too
    assert tf.tiles("fwd", 128, "tf32", gqa=True) == tf.HOPPER_TILES["fwd"][128, "tc"]
    assert tf.tiles("dkdv", 128, "tf32", gqa=True) == tf.HOPPER_TILES["dkdv"][128, "tc-gqa"]
    # GQA with ALiBi or dropout: the tiles both lists hold, else the extras list
    assert tf.tiles("dkdv", 128, "tf32", gqa=True, extras=True) == [(16, 64, 8, 2)]
    assert tf.tiles("dkdv", 64, "ieee", gqa=True, extras=True) == \
        tf.HOPPER_TILES["dkdv"][64, "ieee-extras"]
    # without an extras list of its own a kernel keeps its list
    assert tf.tiles("dq", 128, "tf32", extras=True) == tf.HOPPER_TILES["dq"][128, "tc"]


def test_tiles_are_what_the_autotuner_offers():
    if not tf.INTERPRET:
        check_pruning()
        return
    for kernel in AUTOTUNERS:  # the interpreter's single tile, and the Hopper tables in a
        assert tf.tiles(kernel, 128, "tf32") == [tf.INTERPRET_TILES[kernel]]  # subprocess
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    here = Path(__file__).resolve().parent
    env["PYTHONPATH"] = os.pathsep.join([str(here), str(here.parent),
                                         env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, "-c", "import test_triton_configs as t; "
                           "t.check_pruning(); print('ok')"], env=env, cwd=here,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_autotune_off_keeps_the_first_tile(monkeypatch):
    tuner = tf._fwd
    monkeypatch.setenv("KERNELSUITE_TRITON_AUTOTUNE", "0")
    got = tuner.early_config_prune(tuner.configs, {}, BLOCK_D=128, DOT_PREC="tf32")
    assert [tf.tile_of(c) for c in got] == tf.tiles("fwd", 128, "tf32")[:1]
    monkeypatch.setenv("KERNELSUITE_TRITON_AUTOTUNE", "1")
    got = tuner.early_config_prune(tuner.configs, {}, BLOCK_D=128, DOT_PREC="tf32")
    assert [tf.tile_of(c) for c in got] == tf.tiles("fwd", 128, "tf32")
