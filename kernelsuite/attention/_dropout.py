"""Attention dropout's random numbers: one definition, shared by every backend.

Whether probability P[query row, key col] of head h is kept is a pure function of the call's
(seed, offset) and of (col, row, h), so the backward recomputes the forward's mask instead of
storing it, and every backend (Triton, Numba, the torch reference) drops the same entries:

    r = Philox4x32-10(key=(seed & 0xffffffff, seed >> 32),
                      counter=(col // 4, row, h, offset))[col % 4]
    kept  <=>  (r >> 1) >= threshold(dropout_p) = floor(dropout_p * 2**31)

(one Philox call gives the four words of four neighbouring keys: a quarter of the work and
of the registers a tile of counters would take).

col is the key's index in its sequence, row the query's token row (b * seqlen_q + i for
(batch, seqlen) inputs, its packed index for varlen ones), h the query head. Philox is
Triton's ``tl.philox`` (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3"); the
torch version here and the Numba one in numba_flash.py reproduce it bit for bit
(tests/test_attention_dropout.py checks both against Triton's).

(seed, offset) come from torch's generator and advance it per call, as flash-attn's do: on
CUDA the device's Philox generator (seed = its seed, offset = its offset / 4 in 31 bits, then
the offset advances by 4); on CPU the default generator draws a 63-bit seed. So torch.manual_seed makes
a run reproducible, and two calls get different masks.
"""

from __future__ import annotations

import torch

ROUND_A, ROUND_B = 0xD2511F53, 0xCD9E8D57
KEY_A, KEY_B = 0x9E3779B9, 0xBB67AE85
ROUNDS = 10
MASK32 = 0xFFFFFFFF


def threshold(dropout_p: float) -> int:
    """An entry is kept when its 31-bit random number is >= this."""
    return int(dropout_p * 2**31)


def philox_state(device: torch.device) -> tuple[int, int]:
    """(seed, offset) for one call with dropout, advancing torch's generator for `device`."""
    if device.type == "cuda":
        index = torch.cuda.current_device() if device.index is None else device.index
        gen = torch.cuda.default_generators[index]
        offset = gen.get_offset()
        gen.set_offset(offset + 4)
        return gen.initial_seed() & (2**63 - 1), (offset // 4) & 0x7FFFFFFF
    return int(torch.randint(0, 2**63 - 1, (), dtype=torch.int64)), 0


def _mul(a: int, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) 32-bit halves of a * b for a 32-bit constant a and int64 b in [0, 2**32),
    without int64 overflow (16-bit halves of a)."""
    a_hi, a_lo = a >> 16, a & 0xFFFF
    lo_part, hi_part = b * a_lo, b * a_hi  # each < 2**48
    high = (hi_part + (lo_part >> 16)) >> 16
    low = (((hi_part & 0xFFFF) << 16) + lo_part) & MASK32
    return high, low


def philox(seed: int, c0, c1, c2, c3) -> tuple[torch.Tensor, ...]:
    """The four 32-bit outputs of Philox4x32-10 (as int64 tensors in [0, 2**32)); the
    counters broadcast against each other."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*(torch.as_tensor(c).to(torch.int64) & MASK32
                                               for c in (c0, c1, c2, c3)))
    k0, k1 = seed & MASK32, (seed >> 32) & MASK32
    for _ in range(ROUNDS):
        hi_b, lo_b = _mul(ROUND_B, c2)
        hi_a, lo_a = _mul(ROUND_A, c0)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + KEY_A) & MASK32, (k1 + KEY_B) & MASK32
    return c0, c1, c2, c3


def keep_mask(seed: int, offset: int, dropout_p: float, heads, rows, cols) -> torch.Tensor:
    """Bool, True where an entry is kept; heads, rows and cols are int tensors that
    broadcast (e.g. (h, 1, 1), (1, m, 1), (1, 1, n))."""
    cols = torch.as_tensor(cols)
    words = philox(seed, cols // 4, rows, heads, offset)
    lane = cols % 4
    r = torch.where(lane == 0, words[0], torch.where(lane == 1, words[1], torch.where(
        lane == 2, words[2], words[3])))
    return (r >> 1) >= threshold(dropout_p)
