"""pad/unpad: the Triton kernel (interpreter on CPU) against the PyTorch reference, round
trips, gradients both ways, edge masks, and bad input."""

import pytest
import torch

from kernelsuite.batching import pad_input, unpad_input
from kernelsuite.batching import reference

B, S = 3, 11


def masks():
    """Random, with an empty row and a full row; all empty; all full; left-padded."""
    m = torch.rand(B, S) > 0.4
    m[1], m[2] = False, True
    left = torch.arange(S)[None, :] >= torch.tensor([[0], [4], [10]])
    return {"mixed": m, "empty": torch.zeros(B, S, dtype=torch.bool),
            "full": torch.ones(B, S, dtype=torch.bool), "left": left,
            "int": m.to(torch.int32)}


@pytest.mark.parametrize("mask_name", list(masks()))
@pytest.mark.parametrize("shape,dtype", [((B, S, 24), torch.float32),
                                         ((B, S, 3, 8), torch.float16),
                                         ((B, S, 5), torch.bfloat16),
                                         ((B, S), torch.float64),
                                         ((B, S, 6), torch.int64)])
def test_unpad_pad_match_the_reference(mask_name, shape, dtype, device):
    mask = masks()[mask_name].to(device)
    x = (torch.randn(shape) * 100).to(dtype).to(device)
    got = unpad_input(x, mask, backend="triton")
    want = reference.unpad_input(x, mask)
    for g, w in zip(got, want):
        if isinstance(w, torch.Tensor):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert torch.equal(g, w)
        else:
            assert g == w
    unpadded, indices, cu_seqlens, max_seqlen, seqused = got
    assert cu_seqlens.dtype == torch.int32 and indices.dtype == torch.int64
    assert max_seqlen == int(mask.sum(1).max())
    assert seqused.dtype == torch.int32 and torch.equal(seqused, cu_seqlens.diff())
    back = pad_input(unpadded, indices, B, S, backend="triton")
    assert torch.equal(back, reference.pad_input(unpadded, indices, B, S))
    keep = mask.bool().reshape(B, S, *[1] * (x.ndim - 2))
    assert torch.equal(back, torch.where(keep, x, torch.zeros((), dtype=dtype)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gradients_each_is_the_others_backward(dtype, device):
    mask = masks()["mixed"].to(device)
    x = torch.randn(B, S, 4, 8, dtype=dtype, device=device, requires_grad=True)
    out, indices, _, _, _ = unpad_input(x, mask, backend="triton")
    grad = torch.randn_like(out)
    (dx,) = torch.autograd.grad(out, x, grad)
    assert torch.equal(dx, pad_input(grad, indices, B, S, backend="torch"))
    ref_out = reference.unpad_input(x, mask)[0]
    assert torch.equal(dx, torch.autograd.grad(ref_out, x, grad)[0])
    h = torch.randn(out.shape, dtype=dtype, device=device, requires_grad=True)
    padded = pad_input(h, indices, B, S, backend="triton")
    gp = torch.randn_like(padded)
    (dh,) = torch.autograd.grad(padded, h, gp)
    assert torch.equal(dh, unpad_input(gp, mask, backend="torch")[0])
    if dtype == torch.float64:  # the backward is the adjoint (small: the interpreter is slow)
        m = torch.tensor([[1, 0, 1], [0, 0, 0]], dtype=torch.bool, device=device)
        xs = torch.randn(2, 3, 2, dtype=dtype, device=device, requires_grad=True)
        torch.autograd.gradcheck(lambda t: unpad_input(t, m, backend="triton")[0], (xs,))
        hs = torch.randn(2, 2, dtype=dtype, device=device, requires_grad=True)
        idx = unpad_input(xs, m)[1]
        torch.autograd.gradcheck(lambda t: pad_input(t, idx, 2, 3, backend="triton"), (hs,))


def test_non_contiguous_hidden_states(device):
    mask = masks()["mixed"].to(device)
    base = torch.randn(S, B, 16, device=device)
    x = base.transpose(0, 1)[..., ::2]  # (B, S, 8), strided in every dim
    got, indices, _, _, _ = unpad_input(x, mask, backend="triton")
    assert torch.equal(got, reference.unpad_input(x, mask)[0])
    h = got.t().contiguous().t()  # column-major rows
    back = pad_input(h, indices, B, S, backend="triton")
    assert torch.equal(back, reference.pad_input(got, indices, B, S))


def test_strided_indices(device):
    """indices as a strided view: the Triton backward read them as raw storage and
    gathered the wrong rows into the gradient."""
    mask = masks()["mixed"].to(device)
    x = torch.randn(B, S, 4, device=device)
    h, indices, _, _, _ = unpad_input(x, mask)
    spaced = torch.zeros(2 * indices.numel(), dtype=indices.dtype, device=device)
    spaced[::2] = indices
    strided = spaced[::2]
    for backend in ("triton", "torch"):
        hg = h.clone().requires_grad_()
        out = pad_input(hg, strided, B, S, backend=backend)
        assert torch.equal(out, reference.pad_input(h, indices, B, S))
        grad = torch.randn_like(out)
        out.backward(grad)
        assert torch.equal(hg.grad, grad.reshape(B * S, 4)[indices]), backend


@pytest.mark.parametrize("backend", ["triton", "torch", "auto"])
def test_bad_tensors_name_the_argument(backend, device):
    mask = masks()["mixed"]
    x = torch.randn(B, S, 4)
    _, indices, _, _, _ = unpad_input(x, mask)
    with pytest.raises(TypeError, match="hidden_states must be a tensor"):  # AttributeError
        unpad_input(x.tolist(), mask, backend=backend)
    with pytest.raises(TypeError, match="hidden_states must be a tensor"):
        pad_input([[0.0]] * indices.numel(), indices, B, S, backend=backend)
    with pytest.raises(ValueError, match=r"batch \* seqlen = \d+ rows do not fit int64"):
        pad_input(torch.randn(indices.numel(), 4), indices, 2**40, 2**30, backend=backend)
    fp8 = x.to(torch.float8_e4m3fn)
    if backend == "triton":  # the interpreter crashed on float8
        with pytest.raises(TypeError, match="backend='triton' does not take"):
            unpad_input(fp8, mask, backend=backend)
    else:  # auto picks torch for what Triton does not take, on CUDA too
        got = unpad_input(fp8.to(device), mask.to(device), backend=backend)[0]
        assert torch.equal(got.view(torch.uint8).cpu(),
                           reference.unpad_input(fp8, mask)[0].view(torch.uint8))
        flags = unpad_input(x.bool().to(device), mask.to(device), backend=backend)[0]
        assert torch.equal(flags.cpu(), reference.unpad_input(x.bool(), mask)[0])


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_bad_masks_and_indices(backend):
    x = torch.randn(B, S, 4)
    mask = masks()["mixed"]
    with pytest.raises(ValueError, match="attention_mask must be 2-D"):
        unpad_input(x, mask[None], backend=backend)
    with pytest.raises(ValueError, match="hidden_states must be"):
        unpad_input(x[:, :5], mask, backend=backend)
    with pytest.raises(TypeError, match="attention_mask must be bool or integer"):
        unpad_input(x, mask.float(), backend=backend)
    with pytest.raises(ValueError, match="attention_mask must hold only 0 and 1"):
        unpad_input(x, mask.long() * 2, backend=backend)
    with pytest.raises(TypeError, match="attention_mask must be a tensor"):
        unpad_input(x, mask.tolist(), backend=backend)
    _, indices, _, _, _ = unpad_input(x, mask, backend=backend)
    h = torch.randn(indices.numel(), 4)
    with pytest.raises(ValueError, match=r"indices must lie in \[0, batch \* seqlen"):
        pad_input(h, indices + 1000, B, S, backend=backend)
    dup = indices.clone()
    dup[1] = dup[0]
    with pytest.raises(ValueError, match="indices must be distinct"):
        pad_input(h, dup, B, S, backend=backend)
    with pytest.raises(ValueError, match="indices has"):
        pad_input(h[1:], indices, B, S, backend=backend)
    with pytest.raises(TypeError, match="indices must be a 1-D int64 or int32"):
        pad_input(h, indices.float(), B, S, backend=backend)
    with pytest.raises(ValueError, match="batch must be a non-negative int"):
        pad_input(h, indices, -1, S, backend=backend)


def test_backend_choice():
    x, mask = torch.randn(B, S, 4), masks()["mixed"]
    with pytest.raises(ValueError, match="backend must be one of"):
        unpad_input(x, mask, backend="cuda")
    with pytest.raises(TypeError, match="backend='triton' does not take"):
        unpad_input(x.bool(), mask, backend="triton")
    assert torch.equal(unpad_input(x, mask)[0], reference.unpad_input(x, mask)[0])  # auto


@pytest.mark.parametrize("backend", ["triton", "torch"])
def test_unused_mask_keeps_allocated_rows_as_flash_attn_does(backend, device):
    """flash-attn >= 2.6: rows in unused_mask are kept and counted in cu_seqlens and
    max_seqlen; seqused counts attention_mask's tokens only."""
    used = torch.tensor([[1, 1, 0, 0, 0], [1, 0, 0, 0, 0], [0, 0, 0, 0, 0]], dtype=torch.bool)
    unused = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    x = torch.randn(3, 5, 4)
    h, indices, cu, max_seqlen, seqused = unpad_input(x.to(device), used.to(device),
                                                      unused.to(device), backend=backend)
    assert indices.tolist() == [0, 1, 2, 3, 5, 6, 7, 8, 9]
    assert cu.tolist() == [0, 4, 9, 9] and max_seqlen == 5 and seqused.tolist() == [2, 1, 0]
    assert torch.equal(h.cpu(), x.reshape(15, 4)[indices.cpu()])
    assert all(torch.equal(a.cpu(), b) if isinstance(b, torch.Tensor) else a == b for a, b in
               zip((h, indices, cu, max_seqlen, seqused),
                   reference.unpad_input(x, used, unused)))
    with pytest.raises(ValueError, match="unused_mask overlaps attention_mask"):
        unpad_input(x, used, used, backend=backend)
    with pytest.raises(ValueError, match="unused_mask must be 2-D"):
        unpad_input(x, used, unused[0], backend=backend)
    with pytest.raises(TypeError, match="unused_mask must be bool or integer"):
        unpad_input(x, used, unused.float(), backend=backend)
    with pytest.raises(TypeError, match="positional"):  # flash-attn's third is unused_mask
        unpad_input(x, used, None, backend)


@pytest.mark.gpu
def test_bf16_real_size_on_gpu():
    mask = torch.rand(8, 2048, device="cuda") > 0.5
    x = torch.randn(8, 2048, 4096, device="cuda", dtype=torch.bfloat16)
    got = unpad_input(x, mask, backend="triton")
    assert torch.equal(got[0], reference.unpad_input(x, mask)[0])
    back = pad_input(got[0], got[1], 8, 2048, backend="triton")
    assert torch.equal(back, torch.where(mask[..., None], x, 0))
