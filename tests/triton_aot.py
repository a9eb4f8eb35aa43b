"""Compile the attention and pad/unpad kernels for an H100 (sm_90) without a GPU.

The interpreter runs kernels as Python, so it misses what only the compiler checks (types
that differ between branches, non-constexpr globals, shared memory over the limit). This
script compiles each kernel the way a GPU would and prints one JSON line per compile:
kernel, options, shared memory bytes, and whether wgmma (Hopper tensor cores) was used.
Run without TRITON_INTERPRET (tests/test_triton_compile.py runs it in a subprocess).
"""

from __future__ import annotations

import json
import os
import sys

assert os.environ.get("TRITON_INTERPRET", "0") != "1", "compile check needs the compiler"

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from kernelsuite.attention import triton_flash as tf  # noqa: E402
from kernelsuite.batching import triton_padding as tp  # noqa: E402

H100 = GPUTarget("cuda", 90, 32)
SMEM_LIMIT = 232448  # bytes of shared memory one block may use on sm_90
FLOATS = {"qk_scale", "cap_log2", "sm_scale"}
FLOAT32_PTRS = {"LSE", "DELTA", "DLSE"}


def signature(fn, dtype, constexprs, dq_dtype):
    sig = {}
    for name in fn.arg_names:
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in FLOATS:
            sig[name] = "fp32"
        elif name in FLOAT32_PTRS:
            sig[name] = "*fp32"
        elif name in ("CU_Q", "CU_K"):
            sig[name] = "*i32"
        elif name == "DQ":
            sig[name] = f"*{dq_dtype}"
        elif name.isupper():
            sig[name] = f"*{dtype}"
        else:
            sig[name] = "i32"
    return sig


def compile_one(kernel, config, dtype, head_dim, **flags):
    fn = kernel.fn  # the jit function under the autotuner
    constexprs = dict(HEAD_DIM=head_dim, BLOCK_D=max(16, triton.next_power_of_2(head_dim)),
                      DOT_PREC="ieee" if dtype == "fp32" else "tf32", **flags, **config.kwargs)
    constexprs = {k: v for k, v in constexprs.items() if k in fn.arg_names}
    dq_dtype = "fp32" if flags.get("ATOMIC_DQ") else dtype
    src = ASTSource(fn=fn, signature=signature(fn, dtype, constexprs, dq_dtype),
                    constexprs=constexprs)
    compiled = triton.compile(src, target=H100, options=dict(num_warps=config.num_warps,
                                                              num_stages=config.num_stages))
    return dict(kernel=fn.__name__, dtype=dtype, head_dim=head_dim, **flags, **config.kwargs,
                num_warps=config.num_warps, num_stages=config.num_stages,
                shared=compiled.metadata.shared, wgmma="wgmma" in compiled.asm["ptx"],
                fits=compiled.metadata.shared <= SMEM_LIMIT)


def plan(full):
    """(kernel, config, dtype, head_dim, flags) to compile. Quick: the first config that the
    autotuner keeps for each kernel, across dtypes and features; full: every config."""
    kernels = [(tf._fwd, {}), (tf._bwd_dkdv, dict(ATOMIC_DQ=True)),
               (tf._bwd_dkdv, dict(ATOMIC_DQ=False)), (tf._bwd_dq, {})]
    for kernel, extra in kernels:
        for dtype, head_dim, varlen, softcap in [("bf16", 128, False, False),
                                                 ("fp16", 64, True, True),
                                                 ("fp32", 32, False, False),
                                                 ("bf16", 256, True, False)]:
            block_d = max(16, triton.next_power_of_2(head_dim))
            configs = tf._fits_head_dim(kernel.configs, {}, BLOCK_D=block_d)
            for config in configs if full else configs[:1]:
                yield kernel, config, dtype, head_dim, dict(IS_VARLEN=varlen, SOFTCAP=softcap,
                                                            **extra)


def compile_gather_rows(dtype, n_cols):
    """The pad/unpad row gather with the block sizes _gather_rows picks for n_cols."""
    block_c = min(triton.next_power_of_2(n_cols), 1024)
    sig = dict(src=f"*{dtype}", out=f"*{dtype}", rows="*i64", n_rows="i32", n_cols="i32",
               src_stride="i32", out_stride="i32", BLOCK_R="constexpr", BLOCK_C="constexpr")
    # what the JIT infers for torch tensors (16-byte aligned) with n_cols % 16 == 0
    divisible = (0, 1, 2) + ((4, 5, 6) if n_cols % 16 == 0 else ())
    src = ASTSource(fn=tp._gather_rows_kernel, signature=sig,
                    constexprs=dict(BLOCK_R=max(1, 4096 // block_c), BLOCK_C=block_c),
                    attrs={(i,): [["tt.divisibility", 16]] for i in divisible})
    compiled = triton.compile(src, target=H100, options=dict(num_warps=4))
    ptx = compiled.asm["ptx"]
    return dict(kernel="_gather_rows_kernel", dtype=dtype, n_cols=n_cols,
                shared=compiled.metadata.shared, fits=compiled.metadata.shared <= SMEM_LIMIT,
                vector_loads="ld.global.v4" in ptx, vector_stores="st.global.v4" in ptx)


if __name__ == "__main__":
    for kernel, config, dtype, head_dim, flags in plan(full="--all" in sys.argv):
        print(json.dumps(compile_one(kernel, config, dtype, head_dim, **flags)), flush=True)
    for dtype, n_cols in [("bf16", 4096), ("fp16", 96), ("fp32", 1000)]:
        print(json.dumps(compile_gather_rows(dtype, n_cols)), flush=True)
