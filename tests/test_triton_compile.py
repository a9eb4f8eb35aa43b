"""The attention and pad/unpad kernels compile for an H100 (sm_90) on a machine without a GPU.

Catches what the interpreter cannot (compiler-only type and global rules, shared memory
over the limit) and shows the Hopper tensor-core path (wgmma) is taken for 16-bit inputs.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")


@pytest.mark.slow
def test_kernels_compile_for_sm90():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    root = Path(__file__).resolve().parents[1]
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(root / "tests" / "triton_aot.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    kernels = {r["kernel"] for r in rows}
    assert kernels == {"_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel",
                       "_gather_rows_kernel"}, kernels
    assert all(r["fits"] for r in rows), [r for r in rows if not r["fits"]]
    for r in rows:  # 16-bit inputs at the usual head dims must reach Hopper's tensor cores
        if "head_dim" in r and r["dtype"] in ("fp16", "bf16") and r["head_dim"] <= 128:
            assert r["wgmma"], r
    # pad/unpad moves rows of 4096 bf16 in 16-byte loads (a copy kernel's width)
    gather = {(r["dtype"], r["n_cols"]): r for r in rows if "n_cols" in r}
    assert gather["bf16", 4096]["vector_loads"] and gather["bf16", 4096]["vector_stores"], gather
