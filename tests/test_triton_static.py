"""The Triton kernels compile for Hopper (sm_90) on a machine without a GPU, and every tile
the autotuner may pick at head_dim 64 and 128 fits: no register spills (with the pinned
triton; a few bytes with another release, see _spill_budget), within the per-block shared
memory, on Hopper's tensor cores (wgmma) for 16-bit inputs.

Each check compiles, through kernelsuite.harness.hopper, exactly what the JIT would compile
on an H100/H200 for a real launch (plain, varlen, softcap, GQA, ALiBi with dropout; causal
and not; forward, backward with atomic dQ, deterministic backward), with triton's own
ptxas and cuobjdump.
This catches what the interpreter cannot (compiler-only rules, shared memory over the
limit) and what only costs time on a GPU (spills). It runs in a subprocess: the compiler
does not run under TRITON_INTERPRET.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[1]


def _spill_budget() -> int:
    """Spill bytes a choosable tile may have: none with the triton the tables were chosen
    with (ci/constraints.txt's, the GPU image's 3.6). Another release's ptxas allocates
    registers a little differently (triton 3.8: 4 to 28 bytes on a few borderline tiles),
    so there a few registers' worth is allowed, and a real spill (the old fp32 tiles'
    40-190 KB) still fails."""
    import triton

    pins = (ROOT / "ci" / "constraints.txt").read_text().splitlines()
    return 0 if f"triton=={triton.__version__}" in pins else 64


def _compiler_rows(*args) -> list[dict]:
    """The JSON lines printed by `python ARGS`, run in a subprocess without the interpreter
    (the compiler does not run under TRITON_INTERPRET)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=1500, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines()]


def static_rows(*args) -> list[dict]:
    return _compiler_rows("-m", "kernelsuite.harness.hopper", "--json", "--jobs", "1", *args)


def _tables():
    """HOPPER_TILES as the compiler sees them (imported without the interpreter)."""
    code = ("import json; from kernelsuite.attention import triton_flash as tf; "
            "print(json.dumps({k: {f'{d}-{p}': v for (d, p), v in t.items()} "
            "for k, t in tf.HOPPER_TILES.items()}))")
    return _compiler_rows("-c", code)[0]


KERNEL = {"fwd": "fwd", "bwd-dkdv": "dkdv", "bwd-dq": "dq"}


@pytest.mark.static
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("dtype", ["fp16", "bf16", "fp32"])
def test_every_tile_the_autotuner_may_pick_has_no_spills(dtype, head_dim):
    from kernelsuite.harness import hopper

    rows = static_rows("--dtype", dtype, "--head-dim", str(head_dim), "--no-padding")
    kind = "ieee" if dtype == "fp32" else "tc"
    tables = _tables()
    budget = _spill_budget()

    def table(kernel, features):  # GQA and ALiBi/dropout launches have lists of their own
        lists = tables[KERNEL[kernel]]
        own = f"{head_dim}-{kind}-" + ("extras" if features == "alibi+dropout" else features)
        return lists[own] if own in lists else lists[f"{head_dim}-{kind}"]

    assert {r["kernel"] for r in rows} == {"fwd", "bwd-preprocess", "bwd-dkdv", "bwd-dq"}
    for r in rows:
        where = f"{r['kernel']} {r['pass_']} {r['features']} tile {r['block_m']}x" \
                f"{r['block_n']} w{r['num_warps']} s{r['num_stages']}"
        assert max(r["spill_stores"], r["spill_loads"]) <= budget, (where, r)
        assert r["fits"] and r["blocks_per_sm"] >= 1, (where, r)
        if r["kernel"] in KERNEL:  # what was compiled is the table, nothing else
            tile = [r["block_m"], r["block_n"], r["num_warps"], r["num_stages"]]
            assert tile in table(r["kernel"], r["features"]), where
        if kind == "tc" and r["kernel"] in KERNEL:  # 16-bit products on tensor cores:
            assert r["hgmma"] + r["hmma"] > 0, where
            if r["kernel"] != "bwd-dkdv" and r["block_m"] >= 64:  # wgmma takes M >= 64
                assert r["hgmma"] > 0, where  # Hopper's warpgroup MMA, not mma.sync
    for name in KERNEL:  # every tile of the table was compiled, for every feature
        for features in hopper.FEATURES:
            got = {(r["block_m"], r["block_n"], r["num_warps"], r["num_stages"])
                   for r in rows if r["kernel"] == name and r["features"] == features}
            assert got == {tuple(t) for t in table(name, features)}, (name, features)
    # causal and non-causal are one binary (window bounds are run-time arguments)
    plain = [r for r in rows if r["features"] == "-"]
    for r in plain:
        twin = [o for o in plain if o["causal"] != r["causal"] and all(
            o[k] == r[k] for k in ("kernel", "pass_", "block_m", "block_n", "num_warps",
                                   "num_stages"))]
        assert twin and twin[0]["hash"] == r["hash"], r


@pytest.mark.static
def test_pad_unpad_moves_16_byte_vectors_without_spills(tmp_path):
    rows = static_rows("--dtype", "bf16", "fp32", "--no-attention")
    gather = {(r["dtype"], r["n_cols"]): r for r in rows if r["kernel"] == "pad-unpad"}
    assert set(gather) == {("bf16", 4096), ("bf16", 1000), ("fp32", 4096), ("fp32", 1000)}
    for r in gather.values():
        assert r["spill_stores"] == 0 and r["fits"], r
    # rows of 4096 bf16 in 16-byte loads and stores (a copy kernel's width)
    assert gather["bf16", 4096]["ldg128"] > 0 and gather["bf16", 4096]["stg128"] > 0
    # the report renders these rows (the command writes it from the same rows)
    from kernelsuite.harness.hopper import write_report

    text = write_report(rows, tmp_path / "r.md").read_text()
    assert "## pad / unpad (row gather)" in text and "| bf16 | 4096 |" in text
    assert "0 with register spills" in text


# the PAGED forward (flash_attn_varlen_func's block_table read in place), compiled as a
# real launch: bf16, head_dim 128, GQA 16/4, pages of 16; one JSON row per binary
_PAGED = """
import json, torch
from kernelsuite.attention import triton_flash as tf
from kernelsuite.harness import hopper
q = torch.empty(1024, 16, 128, dtype=torch.bfloat16)
pages = torch.empty(96, 16, 4, 128, dtype=torch.bfloat16)
table = torch.arange(64, dtype=torch.int32).view(2, 32)
cu = torch.tensor([0, 512, 1024], dtype=torch.int32)
sink = []
with hopper.compile_only(sink):
    tf.forward(q, pages, pages, cu, cu, 512, 512, 128 ** -0.5, -1, 0, 0.0, block_table=table)
for label, config, compiled, seconds, log in sink:
    print(json.dumps(dict(kernel=label, tile=[config.get("BLOCK_M"), config.get("BLOCK_N"),
                                              compiled.metadata.num_warps,
                                              compiled.metadata.num_stages],
                          **hopper.resources(compiled, log))))
"""


@pytest.mark.static
def test_the_paged_forward_compiles_without_spills():
    """Every tile the autotuner may pick for the paged forward compiles for sm_90 without
    spills, its products on wgmma, the row lookups through the block table included."""
    rows = _compiler_rows("-c", _PAGED)
    tables = _tables()["fwd"]
    tiles = tables.get("128-tc-gqa", tables["128-tc"])  # GQA's own list where it has one
    assert rows and {tuple(r["tile"]) for r in rows} == {tuple(t) for t in tiles}
    for r in rows:
        assert r["kernel"] == "fwd" and r["hgmma"] > 0, r
        assert max(r["spill_stores"], r["spill_loads"]) <= _spill_budget(), r


# the split-KV decode kernel through flash_attn_with_kvcache's launcher: GQA 32/8, a
# paged cache of pages of 16; each dtype at head_dim 128 with one and four query rows, and
# head_dim 256 with one
_DECODE = """
import json, torch
from kernelsuite.attention import triton_decode as td
from kernelsuite.attention._params import AttnParams
from kernelsuite.harness import hopper
sink, shapes = [], []
with hopper.compile_only(sink):
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for sq, d in ((1, 128), (4, 128), (1, 256)):
            params = AttnParams.make(None, True, (-1, -1), 0.0, False, d).bounded(sq, 1024)
            q = torch.empty(2, sq, 32, d, dtype=dtype)
            cache = torch.empty(128, 16, 8, d, dtype=dtype)
            pages = torch.arange(128).view(2, 64)
            ends = torch.full((2,), 1000)
            td.decode(q, cache, cache, pages, 16, ends, torch.zeros(2, dtype=torch.long),
                      params, None, 0)
            shapes.append((str(dtype), sq, d))
for (label, config, compiled, seconds, log), (dtype, sq, d) in zip(sink, shapes):
    print(json.dumps(dict(kernel=label, dtype=dtype, sq=sq, head_dim=d,
                          warps=compiled.metadata.num_warps,
                          **hopper.resources(compiled, log))))
"""


@pytest.mark.static
def test_the_decode_kernel_compiles_without_spills():
    """The split-KV decode kernel compiles for sm_90 without spills for every cache dtype,
    one query row and four (speculative decoding), head_dim 128 and 256, its 16-bit
    products on tensor cores (mma.sync: wgmma needs 64 query rows, a decode has a few)."""
    rows = _compiler_rows("-c", _DECODE)
    assert len(rows) == 9 and {r["kernel"] for r in rows} == {"decode"}
    for r in rows:
        assert max(r["spill_stores"], r["spill_loads"]) <= _spill_budget(), r
        if r["dtype"] != "torch.float32":
            assert r["hgmma"] + r["hmma"] > 0, r


def test_occupancy_follows_the_sm90_limits():
    from kernelsuite.harness.hopper import occupancy

    # 128 registers x 256 threads = 32K: two blocks of 8 warps by registers
    assert occupancy(128, 2048, 8) == dict(blocks_per_sm=2, warps_per_sm=16, occupancy=0.25,
                                           limited_by="registers")
    # 100 KB of shared memory (+1 KB reserved): two blocks
    assert occupancy(32, 101 * 1024, 4)["blocks_per_sm"] == 2
    assert occupancy(32, 101 * 1024, 4)["limited_by"] == "smem"
    # small kernels are bounded by the 64 warps an SM holds
    assert occupancy(32, 1024, 4) == dict(blocks_per_sm=16, warps_per_sm=64, occupancy=1.0,
                                          limited_by="warps")
    # 255 registers round up to 256 per thread: one 8-warp block
    assert occupancy(255, 1024, 8)["warps_per_sm"] == 8
