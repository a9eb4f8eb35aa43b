"""Training-step benchmark cases: a tiny Llama (Hugging Face transformers) taking one
forward + backward on the same sequences two ways (issue 19, point 8):

- ``sdpa-padded`` (the reference): the usual batch, every sequence right-padded to the
  longest, through transformers' SDPA attention and an attention mask;
- ``kernelsuite-packed`` (ours): the sequences packed into one row with restarting
  position_ids (as DataCollatorWithFlattening makes them) through
  ``attn_implementation="kernelsuite"``: no padding token is computed;
- ``kernelsuite-padded`` and ``sdpa-packed`` (alternatives) separate the two effects: the
  kernels on the padded batch, and SDPA on the packed row (transformers then builds a
  block-diagonal mask over the whole row).

The sequence lengths are uniform in [seqlen / 8, seqlen] (seeded), so about 40% of the
padded batch is padding: ``padding`` in the parameters, and ``details`` records the tokens
each layout computes. Rates: tokens is the real tokens per step (Mtok/s); flops is the usual
6 * parameters * tokens estimate of the useful work (padding not counted). Check: each
step's loss (mean over the same predicted tokens in both layouts) against the padded
batch's loss through eager attention in float64 (float32 on a GPU). CPU: float32; CUDA: bfloat16. Needs transformers (the
``transformers`` extra); without it the area has no cases.
"""

from __future__ import annotations

import copy
from functools import lru_cache

import torch

from ..registry import ALTERNATIVE, OURS, REFERENCE, Area, Case

IMPLS = ["kernelsuite-packed", "kernelsuite-padded", "sdpa-packed", "sdpa-padded"]
ROLES = {"kernelsuite-packed": OURS, "kernelsuite-padded": ALTERNATIVE,
         "sdpa-packed": ALTERNATIVE, "sdpa-padded": REFERENCE}
VOCAB = 1024
# (hidden, layers, heads, kv heads, sequences, longest sequence) per size and device type
SHAPES = {
    "tiny": [(64, 2, 4, 2, 4, 32)],
    "quick": {"cpu": [(256, 2, 4, 2, 8, 512)], "cuda": [(1024, 4, 16, 4, 16, 2048)]},
    "all": {"cpu": [(256, 2, 4, 2, 8, 512), (256, 2, 4, 2, 16, 1024)],
            "cuda": [(1024, 4, 16, 4, 16, 2048), (2048, 4, 16, 4, 8, 4096)]},
}


@lru_cache(maxsize=1)
def _transformers():
    """transformers and kernelsuite's registered attention name, or None without it."""
    try:
        import transformers
    except ImportError:
        return None
    from ...integrations.transformers import register

    return transformers, register()


def lengths_for(count: int, longest: int, seed: int = 0) -> list[int]:
    """count sequence lengths uniform in [longest / 8, longest], the longest among them."""
    gen = torch.Generator().manual_seed(seed)
    lengths = torch.randint(longest // 8, longest + 1, (count,), generator=gen)
    lengths[0] = longest
    return lengths.tolist()


def batches(lengths, device, seed=0):
    """The same token sequences as a padded batch (input_ids, attention_mask, labels: -100
    at padding) and as one packed row (input_ids, position_ids, labels: -100 at each
    sequence's first token, which the previous sequence's last token would otherwise be
    asked to predict). Both layouts predict the same tokens."""
    gen = torch.Generator().manual_seed(seed)
    seqs = [torch.randint(0, VOCAB, (n,), generator=gen) for n in lengths]
    longest = max(lengths)
    ids = torch.zeros(len(seqs), longest, dtype=torch.long)
    mask = torch.zeros(len(seqs), longest, dtype=torch.long)
    for row, seq in enumerate(seqs):
        ids[row, :len(seq)] = seq
        mask[row, :len(seq)] = 1
    padded = dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(mask == 0, -100))
    packed_ids = torch.cat(seqs)[None]
    labels = packed_ids.clone()
    labels[0, torch.tensor([0] + lengths[:-1]).cumsum(0)] = -100
    packed = dict(input_ids=packed_ids, labels=labels,
                  position_ids=torch.cat([torch.arange(n) for n in lengths])[None])
    return ({k: v.to(device) for k, v in padded.items()},
            {k: v.to(device) for k, v in packed.items()})


def _model(config, implementation, dtype, device):
    transformers, _ = _transformers()
    torch.manual_seed(0)  # the same weights for every implementation
    model = transformers.AutoModelForCausalLM.from_config(
        copy.deepcopy(config), attn_implementation=implementation)
    return model.to(device=device, dtype=dtype).train()


def _loss(model, batch):
    """The next-token cross-entropy over the labelled tokens, in the logits' dtype
    (transformers' own loss upcasts to float32, which would round a float64 truth)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False).logits
    labels = batch["labels"]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1),
                                             labels[:, 1:].flatten(), ignore_index=-100)


def _step(model, batch):
    """One training step's work: forward, loss, backward (gradients set to None first, so
    each call does the same work). Returns the loss. No KV cache: training needs none,
    and with one transformers' SDPA and eager masks ignore the packing in position_ids
    (the packed row would attend across its sequences)."""
    model.zero_grad(set_to_none=True)
    loss = _loss(model, batch)
    loss.backward()
    return loss.detach()


def training_case(hidden, layers, heads, kv_heads, count, longest, device) -> Case:
    transformers, name = _transformers()
    cuda = torch.device(device).type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    config = transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=hidden, intermediate_size=4 * hidden,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
        max_position_embeddings=longest, attention_dropout=0.0)
    lengths = lengths_for(count, longest)
    tokens = sum(lengths)
    padded_tokens = count * longest
    params = dict(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads,
                  head_dim=hidden // heads, sequences=count, longest=longest,
                  dtype=str(dtype).removeprefix("torch."),
                  padding=round(1 - tokens / padded_tokens, 3))
    # non-embedding parameters: attention (q, o full; k, v grouped) and the gated MLP
    per_layer = 2 * hidden * hidden + 2 * hidden * (hidden // heads) * kv_heads \
        + 3 * hidden * 4 * hidden

    def make_inputs(dev):
        padded, packed = batches(lengths, dev)
        models = {impl: _model(config, name if impl.startswith("kernelsuite") else "sdpa",
                               dtype, dev) for impl in IMPLS}
        return dict(models=models, padded=padded, packed=packed)

    def impl(which):
        layout = which.rsplit("-", 1)[1]
        return lambda x: _step(x["models"][which], x[layout])

    def truth(x):
        """The padded batch through eager attention: float64 on a CPU, float32 on a GPU
        (a float64 copy of the larger GPU models would not fit a CPU's time budget)."""
        dev = x["padded"]["input_ids"].device
        model = _model(config, "eager", torch.float32 if dev.type == "cuda" else torch.float64,
                       dev)
        with torch.no_grad():
            return _loss(model, x["padded"])

    return Case(kernel="training", name=f"llama-h{hidden}-l{layers}-s{count}x{longest}",
                params=params, flops=6.0 * layers * per_layer * tokens, bytes=0.0,
                make_inputs=make_inputs, impls={i: impl(i) for i in IMPLS}, tokens=tokens,
                truth=truth, error=lambda out, want: abs(float(out) - float(want)),
                details=lambda x: dict(tokens=tokens, padded_tokens=padded_tokens,
                                       padding_saved=padded_tokens - tokens),
                devices=("cuda",) if cuda else ("cpu",))


def cases(device: str, size: str) -> list[Case]:
    if _transformers() is None:
        return []
    kind = torch.device(device).type
    shapes = SHAPES[size] if size == "tiny" else SHAPES[size].get(kind, [])
    return [training_case(*shape, device) for shape in shapes]


def notes(device: str) -> list[str]:
    if _transformers() is None:
        return ["training: no cases (needs transformers: pip install kernelsuite[transformers])"]
    return []


AREA = Area("training", "a tiny Llama's training step (transformers): padded SDPA against "
            "packed kernelsuite, in tokens/s and padding saved", cases,
            {"cpu": IMPLS, "cuda": IMPLS}, ROLES, notes=notes)
