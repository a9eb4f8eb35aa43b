"""Run an attention implementation forward and backward, and check it the DESIGN.md way."""

from __future__ import annotations

import math

import torch

from kernelsuite.attention import flash_attn_func, flash_attn_varlen_func
from kernelsuite.attention.reference import lse_dtype, visible_mask
from kernelsuite.harness.numerics import check_close

# the device each kernel backend's tests run on (Triton: interpreted on CPU without a GPU)
DEVICES = {"triton": "cuda" if torch.cuda.is_available() else "cpu", "numba": "cpu"}


def rand(*shape, dtype, device, scale=1.0):
    """Fresh N(0, scale^2) values in dtype (never zeros)."""
    return (torch.randn(*shape, device=device) * scale).to(dtype)


def cu_seqlens(lengths, device):
    cu = torch.zeros(len(lengths) + 1, dtype=torch.int32)
    cu[1:] = torch.tensor(lengths).cumsum(0)
    return cu.to(device)


def run(q, k, v, dout, dlse, backend, varlen=None, make_input=None, seed=0, **kw):
    """Forward + backward of one implementation. Returns {name: tensor}.

    varlen: (cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k) or None.
    make_input: applied to each leaf before the call (to test non-contiguous layouts).
    dlse: gradient of the LSE as well (None: the loss uses the output only).
    seed: the torch seed the call runs under (the global generator is restored after), so
    that every implementation run with dropout draws the same (seed, offset) and so drops
    the same entries.
    """
    leaves = [x.detach().clone().requires_grad_() for x in (q, k, v)]
    ins = [make_input(x) for x in leaves] if make_input else leaves
    with torch.random.fork_rng(devices=[q.device] if q.is_cuda else []):
        torch.manual_seed(seed)
        if varlen is None:
            out, lse = flash_attn_func(*ins, return_lse=True, backend=backend, **kw)
        else:
            out, lse = flash_attn_varlen_func(*ins, *varlen, return_lse=True, backend=backend,
                                              **kw)
    loss = (out.double() * dout.double()).sum()
    if dlse is not None:
        # rows that see no key have lse = -inf: keep them out of the loss
        loss = loss + (torch.where(torch.isfinite(lse), lse, 0).double() * dlse.double()).sum()
    loss.backward()
    return dict(out=out, lse=lse, dq=leaves[0].grad, dk=leaves[1].grad, dv=leaves[2].grad)


def check_attention(q, k, v, *, backend="triton", varlen=None, lse_grad=False,
                    make_input=None, floor=None, **kw):
    """Kernel vs float64 truth, within 2x the error of the reference in q's dtype.

    Checks out, lse, dq, dk, dv. Returns the kernel's results.
    """
    dtype = q.dtype
    dout = torch.randn(q.shape, device=q.device).to(dtype)
    lse_rows = (q.shape[1], q.shape[0]) if varlen else (q.shape[0], q.shape[2], q.shape[1])
    dlse = torch.randn(lse_rows, device=q.device) if lse_grad else None
    got = run(q, k, v, dout, dlse, backend, varlen, make_input, **kw)
    lowp = run(q, k, v, dout, dlse, "torch", varlen, **kw)
    truth = run(q.double(), k.double(), v.double(), dout, dlse, "torch", varlen, **kw)
    for name in ("out", "lse", "dq", "dk", "dv"):
        assert got[name].dtype == (lse_dtype(dtype) if name == "lse" else dtype), name
        check_close(name, got[name], lowp[name], truth[name], dtype,
                    floor=None if floor is None else floor(name, truth[name]))
    return got


def row_oracle(q, k, v, dout, causal, window, softcap=0.0):
    """Attention the slowest, most independent way: per (batch, head, query row), float64,
    over the keys that row can see and no others; dq, dk, dv by autograd of
    sum(out * dout). Any NaN or Inf reaches exactly what IEEE arithmetic says."""
    q, k, v = (x.detach().double().requires_grad_() for x in (q, k, v))
    batch, sq, hq, d = q.shape
    sk = k.shape[1]
    mask = visible_mask(sq, sk, causal, window)
    out = torch.zeros(q.shape, dtype=torch.float64)
    lse = torch.full((batch, hq, sq), -math.inf, dtype=torch.float64)
    loss = 0
    for b in range(batch):
        for h in range(hq):
            hk = h // (hq // k.shape[2])
            for i in range(sq):
                keys = mask[i].nonzero()[:, 0]
                if keys.numel() == 0:
                    continue
                s = (k[b, keys, hk] @ q[b, i, h]) / math.sqrt(d)
                if softcap > 0:
                    s = softcap * torch.tanh(s / softcap)
                lse_i = torch.logsumexp(s, 0)
                o = torch.softmax(s, 0) @ v[b, keys, hk]
                out[b, i, h], lse[b, h, i] = o.detach(), lse_i.detach()
                loss = loss + (o * dout[b, i, h].double()).sum()
    if torch.is_tensor(loss):
        loss.backward()
    grads = [x.grad if x.grad is not None else torch.zeros_like(x) for x in (q, k, v)]
    return dict(out=out, lse=lse, dq=grads[0], dk=grads[1], dv=grads[2])
