"""The numerical-sanity rule of DESIGN.md, shared by the tests and the benchmarks.

Ground truth is the reference run in float64 on upcast inputs. A kernel passes when its
error is at most ``factor`` x the error of the reference run in the kernel's own precision,
plus a small floor relative to the output's magnitude. NaN never passes; -inf (the LSE of a
row that sees no key) must sit exactly where the ground truth has it.
"""

from __future__ import annotations

import torch

# Relative floor per dtype: what rounding the output alone can cost, with a little room.
FLOOR = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def max_error(x: torch.Tensor, truth: torch.Tensor) -> float:
    """Largest absolute difference; inf where x is NaN or infinite where truth is not."""
    x, truth = x.detach().double().cpu(), truth.detach().double().cpu()
    if x.shape != truth.shape:
        raise ValueError(f"shape {tuple(x.shape)} does not match reference {tuple(truth.shape)}")
    if x.numel() == 0:
        return 0.0
    same_inf = torch.isinf(x) & torch.isinf(truth) & (torch.sign(x) == torch.sign(truth))
    diff = torch.where(same_inf, torch.zeros_like(x), (x - truth).abs())
    diff = torch.nan_to_num(diff, nan=float("inf"))
    return diff.max().item()


def max_error_of(x, truth) -> float:
    """max_error over a tensor or over matching tuples of tensors (e.g. gradients)."""
    if isinstance(truth, (tuple, list)):
        if not isinstance(x, (tuple, list)) or len(x) != len(truth):
            raise ValueError(f"expected {len(truth)} outputs to compare, got {type(x).__name__}")
        return max((max_error(a, b) for a, b in zip(x, truth)), default=0.0)
    return max_error(x, truth)


def check_close(name: str, x: torch.Tensor, x_lowp: torch.Tensor, truth: torch.Tensor,
                dtype: torch.dtype, factor: float = 2.0, floor: float | None = None
                ) -> tuple[float, float]:
    """Assert x (kernel) is within factor x the low-precision reference's error of truth.

    dtype is the precision the inputs were in (it picks the relative floor, unless an
    absolute ``floor`` is given). Returns (error, the reference's error) for reporting.
    """
    err, base = max_error(x, truth), max_error(x_lowp, truth)
    finite = truth[torch.isfinite(truth)]
    magnitude = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    bound = factor * base + (FLOOR[dtype] * magnitude if floor is None else floor)
    if not err <= bound:  # also catches NaN
        raise AssertionError(f"{name}: max error {err:.3e} exceeds {factor} x the {dtype} "
                             f"reference's {base:.3e} + floor = {bound:.3e}")
    return err, base
