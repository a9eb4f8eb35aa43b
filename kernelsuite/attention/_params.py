"""The attention settings (scale, window, softcap, determinism, dropout), checked and normalised once.

api.py turns the public arguments into an :class:`AttnParams` (``AttnParams.make``: the
checks, the default scale, causal as a window) and bounds its window by the sequence
lengths (``bounded``). The torch.library custom ops take plain scalars, so the object
crosses them as ``op_args()``; the backends' forward/backward keep those scalars in their
signatures and rebuild the object first thing (``AttnParams(scale, left, right, softcap,
deterministic, dropout_p)``). What the kernels derive from it (their window in positions, the scale
in log2 units, the softcap factor) is one property each, here.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace

import numpy as np
import torch

from .._checks import as_index

LOG2E = 1.4426950408889634
LN2 = 0.6931471805599453
INT64_MAX = 2**63 - 1
# An unbounded window side (-1) becomes this many positions in the kernels: larger than any
# sequence, small enough that index arithmetic on it stays inside int32.
UNBOUNDED = 1 << 30


def check_flag(name, value) -> bool:
    """A flag: a bool, or 0/1 as flash-attn's callers pass them (numpy bools, ints)."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    flag = as_index(value)
    if flag not in (0, 1):
        raise TypeError(f"{name} must be a bool (or 0/1), got {value!r}")
    return bool(flag)


def check_dropout(dropout_p) -> float:
    """flash-attn's dropout_p: a probability in [0, 1)."""
    if (not isinstance(dropout_p, numbers.Real) or isinstance(dropout_p, bool)
            or not 0 <= dropout_p < 1):
        raise ValueError(f"dropout_p must be a number in [0, 1), got {dropout_p!r}")
    return float(dropout_p)


def check_head_vector(name, x, batch, heads, device, batched=False):
    """A float32 tensor of one value per query head, (heads,) (or (batch, heads) when
    batched): flash-attn's alibi_slopes, or attention sinks."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be None or a tensor, got {type(x).__name__}")
    shapes = [(heads,)] + ([(batch, heads)] if batched else [])
    if tuple(x.shape) not in shapes:
        raise ValueError(f"{name} must have shape {' or '.join(map(str, shapes))}, got "
                         f"{tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} is on {x.device} but q is on {device}")


def bounded_window(window_size, seqlen_q: int, seqlen_k: int) -> tuple[int, int]:
    """(left, right) with -1 for a side that reaches every key anyway: a left window of at
    least seqlen_k, a right one of at least seqlen_q (so that huge windows, 2**63 - 1 say,
    never enter index arithmetic)."""
    left, right = window_size
    return (-1 if left >= seqlen_k else left), (-1 if right >= seqlen_q else right)


def alibi_causal(left: int, right: int) -> bool:
    """ALiBi's form for a bounded window: flash-attn's causal one (+ slope * col) exactly
    when the window is (-1, 0), i.e. causal with no left bound."""
    return left < 0 and right == 0


@dataclass(frozen=True)
class AttnParams:
    """One call's attention settings, valid and normalised: causal is already the window
    (left, 0), as in flash-attn; a window side of -1 is unbounded; softcap 0 is off."""

    softmax_scale: float
    window_left: int = -1
    window_right: int = -1
    softcap: float = 0.0
    deterministic: bool = False
    dropout_p: float = 0.0

    @classmethod
    def make(cls, softmax_scale, causal, window_size, softcap, deterministic,
             head_dim: int, dropout_p=0.0) -> AttnParams:
        """From the public arguments; ValueError or TypeError naming a bad one."""
        if softmax_scale is None:
            softmax_scale = 1.0 / math.sqrt(head_dim)
        elif (not isinstance(softmax_scale, numbers.Real) or isinstance(softmax_scale, bool)
              or not math.isfinite(softmax_scale) or softmax_scale <= 0):
            raise ValueError("softmax_scale must be a finite number > 0 or None, got "
                             f"{softmax_scale!r}")
        causal = check_flag("causal", causal)
        deterministic = check_flag("deterministic", deterministic)
        if (not isinstance(window_size, (tuple, list)) or len(window_size) != 2
                or not all(as_index(w) is not None and -1 <= as_index(w) <= INT64_MAX
                           for w in window_size)):
            raise ValueError("window_size must be a pair (left, right) of ints in "
                             f"[-1, 2**63 - 1] (-1 = unbounded), got {window_size!r}")
        if (not isinstance(softcap, numbers.Real) or isinstance(softcap, bool)
                or not math.isfinite(softcap) or softcap < 0):
            raise ValueError(f"softcap must be a finite number >= 0 (0 = off), got {softcap!r}")
        left, right = (as_index(w) for w in window_size)
        return cls(float(softmax_scale), left, 0 if causal else right, float(softcap),
                   deterministic, check_dropout(dropout_p))

    def bounded(self, seqlen_q: int, seqlen_k: int) -> AttnParams:
        """The same with -1 for a window side that reaches every key (see bounded_window)."""
        left, right = bounded_window(self.window, seqlen_q, seqlen_k)
        return replace(self, window_left=left, window_right=right)

    def op_args(self) -> tuple:
        """The custom ops' scalars, in their schema order: AttnParams(*op_args()) is self."""
        return (self.softmax_scale, self.window_left, self.window_right, self.softcap,
                self.deterministic, self.dropout_p)

    @property
    def alibi_causal(self) -> bool:
        """ALiBi's form (see reference.alibi_bias) on a bounded window: flash-attn adds
        slope * col when the window is (-1, 0), else subtracts slope * |distance|."""
        return alibi_causal(*self.window)

    @property
    def window(self) -> tuple[int, int]:
        """(left, right), -1 unbounded: the reference's and flash-attn's window_size."""
        return self.window_left, self.window_right

    @property
    def kernel_window(self) -> tuple[int, int]:
        """(left, right) in positions for the kernels: -1 (and anything longer) is
        UNBOUNDED."""
        return tuple(UNBOUNDED if w < 0 else min(w, UNBOUNDED) for w in self.window)

    @property
    def qk_scale(self) -> float:
        """What q.k is multiplied by in the kernels: the score in log2 units, or with a
        softcap the tanh argument (scores = softcap * tanh(q.k * scale / softcap))."""
        if self.softcap > 0:
            return self.softmax_scale / self.softcap
        return self.softmax_scale * LOG2E

    @property
    def cap_log2(self) -> float:
        """The softcap in log2 units (the factor on the tanh); 0.0 when off."""
        return self.softcap * LOG2E if self.softcap > 0 else 0.0
