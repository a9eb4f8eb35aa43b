"""kernelsuite attention inside Hugging Face transformers: tiny random models, registered
attention against transformers' own eager attention (the reference; Gemma2's softcap has
no sdpa), on plain, padded, packed and generate batches and in training."""

import copy
import subprocess
import sys

import pytest
import torch

transformers = pytest.importorskip("transformers")

from transformers import AttentionInterface, AutoModelForCausalLM  # noqa: E402

from kernelsuite.integrations import transformers as integration  # noqa: E402
from kernelsuite.integrations.transformers import register  # noqa: E402

NAME = register()
VOCAB = 128
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              initializer_range=0.2, attention_dropout=0.0)  # head_dim 16, GQA 4:2
WINDOW = 8  # sliding windows shorter than the sequences
CONFIGS = {
    "llama": lambda: transformers.LlamaConfig(**COMMON),
    "mistral": lambda: transformers.MistralConfig(**COMMON, sliding_window=WINDOW),
    # layer 0 full, layer 1 sliding
    "qwen2": lambda: transformers.Qwen2Config(**COMMON, use_sliding_window=True,
                                              sliding_window=WINDOW, max_window_layers=1),
    # sliding and full layers, attention softcap, scale from query_pre_attn_scalar (untied
    # embeddings: tied, the tiny model's greedy tokens only repeat the last one)
    "gemma2": lambda: transformers.Gemma2Config(**COMMON, head_dim=16, query_pre_attn_scalar=24,
                                                attn_logit_softcapping=2.0,
                                                sliding_window=WINDOW,
                                                tie_word_embeddings=False),
    "qwen3": lambda: transformers.Qwen3Config(**COMMON, head_dim=16),  # q/k norms
}
if hasattr(transformers, "GptOssConfig"):  # attention sinks (s_aux), sliding and full layers
    CONFIGS["gpt_oss"] = lambda: transformers.GptOssConfig(
        **dict(COMMON, intermediate_size=64), head_dim=16, num_local_experts=2,
        num_experts_per_tok=1, sliding_window=WINDOW)
ATOL = 5e-5  # float32: kernelsuite and eager differ by ~1e-5 at most


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny matrices: one thread is fastest, and the Numba kernels (which use torch's
    thread count) and torch's OpenMP pool do not wait on each other on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _model(config, implementation):
    torch.manual_seed(0)  # from_config sets the implementation on the config it is given
    return AutoModelForCausalLM.from_config(copy.deepcopy(config),
                                            attn_implementation=implementation).eval()


@pytest.fixture(scope="module", params=list(CONFIGS))
def models(request):
    """(eager, kernelsuite) models with the same weights."""
    config = CONFIGS[request.param]()
    ref, ours = _model(config, "eager"), _model(config, NAME)
    ours.load_state_dict(ref.state_dict())
    assert (ref.config._attn_implementation, ours.config._attn_implementation) == ("eager", NAME)
    return ref, ours


def _ids(batch, seqlen, seed=1):
    return torch.randint(0, VOCAB, (batch, seqlen), generator=torch.Generator().manual_seed(seed))


def _padded_mask(lengths, seqlen, left):
    """(batch, seqlen) 0/1 mask with lengths[b] tokens at the end (left) or start of row b."""
    positions = torch.arange(seqlen)
    lengths = torch.tensor(lengths)[:, None]
    return (positions >= seqlen - lengths if left else positions < lengths).long()


def _close(actual, expected, atol=ATOL, rtol=0.0):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


@torch.no_grad()
def test_plain_batch(models):
    ref, ours = models
    ids = _ids(2, 24)
    _close(ours(ids).logits, ref(ids).logits)


@pytest.mark.parametrize("left", [False, True], ids=["right", "left"])
@torch.no_grad()
def test_padded_batch(models, left):
    ref, ours = models
    ids, mask = _ids(3, 20), _padded_mask([20, 13, 6], 20, left)
    keep = mask.bool()
    _close(ours(ids, attention_mask=mask).logits[keep], ref(ids, attention_mask=mask).logits[keep])


PACKED = [7, 12, 5]  # one row of three sequences, positions restarting at 0


def _positions(lengths):
    return torch.cat([torch.arange(n) for n in lengths])[None]


@torch.no_grad()
def test_packed_position_ids(models):
    ref, ours = models
    ids = _ids(1, sum(PACKED))
    position_ids = _positions(PACKED)
    out = ours(ids, position_ids=position_ids).logits
    separate = torch.cat([ref(part).logits for part in ids.split(PACKED, dim=1)], dim=1)
    _close(out, separate)
    # two rows packed differently, without a cache (gpt-oss's eager mask ignores packing,
    # so the truth is each sequence run on its own)
    rows = torch.cat([ids, ids.flip(1)])
    position_ids = torch.cat([position_ids, _positions(PACKED[::-1])])
    out = ours(rows, position_ids=position_ids, use_cache=False).logits
    for row, lengths in zip(range(2), (PACKED, PACKED[::-1])):
        separate = [ref(part).logits for part in rows[row:row + 1].split(lengths, dim=1)]
        _close(out[row:row + 1], torch.cat(separate, dim=1))


@torch.no_grad()
def test_packed_flash_kwargs(models):
    """DataCollatorWithFlattening(return_flash_attn_kwargs=True) passes cu_seq_lens_q/k and
    max_length_q/k: they set the boundaries even without restarting position_ids (RoPE
    sees relative positions only, so each sequence still matches its own run)."""
    ref, ours = models
    ids = _ids(1, sum(PACKED))
    cu = torch.tensor([0, *torch.tensor(PACKED).cumsum(0).tolist()], dtype=torch.int32)
    out = ours(ids, cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=max(PACKED),
               max_length_k=max(PACKED), use_cache=False).logits
    _close(out, torch.cat([ref(part).logits for part in ids.split(PACKED, dim=1)], dim=1))


@pytest.mark.parametrize("cache", [None, "static"])
@torch.no_grad()
def test_generate_left_padded(models, cache):
    ref, ours = models
    ids, mask = _ids(3, 12, seed=2), _padded_mask([12, 9, 5], 12, left=True)
    settings = dict(attention_mask=mask, max_new_tokens=8, do_sample=False, use_cache=True,
                    cache_implementation=cache, pad_token_id=0)
    expected = ref.generate(ids, **settings)
    assert torch.equal(ours.generate(ids, **settings), expected)
    # no padding: generate drops the all-ones mask (a static cache still needs its length)
    settings["attention_mask"] = torch.ones_like(mask)
    assert torch.equal(ours.generate(ids, **settings), ref.generate(ids, **settings))


def test_training_gradients(models):
    ref, ours = models
    ids, mask = _ids(3, 20, seed=3), _padded_mask([20, 14, 9], 20, left=True)
    # no loss on a token predicted from padding (the logits there differ: kernelsuite
    # returns zeros at padded queries, eager an average over masked keys)
    labels = ids.masked_fill(~(mask.bool() & mask.roll(1, 1).bool()), -100)
    losses = []
    for model in (ref, ours):
        model.train()
        model.zero_grad()
        try:
            loss = model(ids, attention_mask=mask, labels=labels).loss
            loss.backward()
        finally:
            model.eval()
        losses.append(loss.detach())
    _close(losses[1], losses[0], atol=1e-5)
    for (name, p_ref), p_ours in zip(ref.named_parameters(), ours.parameters()):
        torch.testing.assert_close(p_ours.grad, p_ref.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_entry_points(tmp_path):
    """from_pretrained, set_attn_implementation and config._attn_implementation all reach
    kernelsuite; a second name with backend="torch" runs the PyTorch reference."""
    config = CONFIGS["llama"]()
    ref = _model(config, "eager")
    ids = _ids(2, 16)
    with torch.no_grad():
        expected = ref(ids).logits
    ref.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, attn_implementation=NAME).eval()
    switched = copy.deepcopy(ref)
    switched.set_attn_implementation(NAME)
    config._attn_implementation = register("kernelsuite_torch", backend="torch")
    reference_backend = AutoModelForCausalLM.from_config(config).eval()
    reference_backend.load_state_dict(ref.state_dict())
    for model, name in ((loaded, NAME), (switched, NAME), (reference_backend, "kernelsuite_torch")):
        assert model.model.layers[0].self_attn.config._attn_implementation == name
        with torch.no_grad():
            _close(model(ids).logits, expected)
    assert AttentionInterface._global_mapping["kernelsuite_torch"].keywords == {"backend": "torch"}


@torch.no_grad()
def test_layouts_reach_kernelsuite(models, monkeypatch):
    """The plain batch runs flash_attn_func, padding and packing flash_attn_varlen_func."""
    _, ours = models
    calls = []
    for name in ("flash_attn_func", "flash_attn_varlen_func"):
        def spy(*args, _fn=getattr(integration, name), _name=name, **kwargs):
            calls.append(_name)
            return _fn(*args, **kwargs)

        monkeypatch.setattr(integration, name, spy)
    layers = len(ours.model.layers)
    ids = _ids(2, 10)
    ours(ids)
    assert calls == ["flash_attn_func"] * layers
    ours(ids, attention_mask=_padded_mask([10, 4], 10, left=True))
    ours(ids[:1], position_ids=_positions([4, 6]))
    assert calls[layers:] == ["flash_attn_varlen_func"] * 2 * layers


def test_register_without_transformers(monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ImportError, match=r"pip install kernelsuite\[transformers\]"):
        register("kernelsuite_other")


def test_importing_kernelsuite_does_not_import_transformers():
    code = ("import sys, kernelsuite, kernelsuite.attention, kernelsuite.batching, "
            "kernelsuite.integrations.transformers; assert 'transformers' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("name", ["", "  ", 3, None, "eager", "sdpa", "flash_attention_2",
                                  "my_flash", "org/kernel"])
def test_register_bad_name(name):
    with pytest.raises(ValueError, match="name"):
        register(name)


@pytest.mark.parametrize("backend", ["cuda", "Numba", 3])
def test_register_bad_backend(backend):
    with pytest.raises(ValueError, match="backend must be None or one of"):
        register(backend=backend)


def test_register_again_replaces_backend():
    assert register("kernelsuite_again", backend="numba") == "kernelsuite_again"
    register("kernelsuite_again", backend="torch")
    assert AttentionInterface._global_mapping["kernelsuite_again"].keywords == {"backend": "torch"}


def test_dropout_in_training():
    """attention_dropout reaches the kernels in training: reproducible under a seed, a new
    mask per step, gradients for every parameter; eval (dropout=0.0) is untouched."""
    config = CONFIGS["llama"]()
    config.attention_dropout = 0.3
    model = _model(config, NAME).train()
    ids = _ids(2, 12)

    def step(seed):
        torch.manual_seed(seed)
        loss = model(ids, labels=ids).loss
        return loss, torch.autograd.grad(loss, list(model.parameters()))

    loss, grads = step(1)
    again, grads_again = step(1)
    assert torch.equal(loss, again) and all(map(torch.equal, grads, grads_again))
    assert not torch.equal(loss, step(2)[0])
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    with torch.no_grad():
        plain = _model(CONFIGS["llama"](), NAME)(ids).logits
        torch.testing.assert_close(model.eval()(ids).logits, plain, rtol=0, atol=0)


def test_masks_must_be_2d():
    module = torch.nn.Module()
    module.is_causal = True
    q = torch.randn(1, 4, 8, 16)
    with pytest.raises(ValueError, match="2-D padding mask"):
        integration.attention(module, q, q, q, torch.zeros(1, 1, 8, 8))


def test_training_benchmark_case():
    """The benchmark's training step (issue 19, point 8): the padded and the packed
    layouts predict the same tokens, and every implementation's loss is the float64 eager
    loss of the padded batch; the packed row computes no padding."""
    from kernelsuite.harness.cases import get_cases
    from kernelsuite.harness.measure import Call

    (case,) = get_cases(["training"], "cpu", "tiny")
    assert case.reference == "sdpa-padded" and case.role("kernelsuite-packed") == "ours"
    errors = {}
    for impl in case.impls:
        call = Call(case, impl, "cpu")
        errors[impl] = call.max_error
        padded, packed = call.inputs["padded"], call.inputs["packed"]
    assert max(errors.values()) < 1e-5, errors
    # the same number of predicted tokens in both layouts, and no padding in the packed row
    assert (padded["labels"][:, 1:] != -100).sum() == (packed["labels"][:, 1:] != -100).sum()
    assert packed["input_ids"].numel() == padded["attention_mask"].sum() == case.tokens
    details = case.details(call.inputs)
    assert details["padding_saved"] == padded["attention_mask"].numel() - case.tokens > 0


@torch.no_grad()
def test_greedy_generation_through_a_paged_cache():
    """Issue 20's example: a tiny Llama's layers driven by hand, attention through
    flash_attn_with_kvcache on a PagedKVCache (rotary applied by the call, in the halves
    layout Llama uses), prompt then token by token, gives transformers' greedy generate
    token for token."""
    from kernelsuite.attention import PagedKVCache, flash_attn_with_kvcache

    config = CONFIGS["llama"]()
    model = _model(config, "eager")
    inner, layers = model.model, model.model.layers
    heads, heads_kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = config.hidden_size // heads
    prompt, new_tokens = _ids(2, 9), 12
    want = model.generate(prompt, max_new_tokens=new_tokens, do_sample=False,
                          attention_mask=torch.ones_like(prompt))
    # Llama's cos/sin repeat their halves: flash-attn takes one half (seqlen, head_dim / 2)
    positions = torch.arange(config.max_position_embeddings)[None]
    cos, sin = (t[0, :, :head_dim // 2] for t in inner.rotary_emb(torch.zeros(1), positions))
    caches = [PagedKVCache(num_blocks=64, page_size=4, heads_kv=heads_kv, head_dim=head_dim)
              for _ in layers]
    seqs = [[cache.new_sequence() for _ in range(prompt.shape[0])] for cache in caches]
    tokens = prompt
    step_ids = prompt
    for _ in range(new_tokens):
        hidden = inner.embed_tokens(step_ids)
        batch, n = step_ids.shape
        for layer, cache, seq in zip(layers, caches, seqs):
            attn, x = layer.self_attn, layer.input_layernorm(hidden)
            q = attn.q_proj(x).view(batch, n, heads, head_dim)
            k = attn.k_proj(x).view(batch, n, heads_kv, head_dim)
            v = attn.v_proj(x).view(batch, n, heads_kv, head_dim)
            seqlens, table = cache.step(seq, n)
            out = flash_attn_with_kvcache(q, cache.k_cache, cache.v_cache, k, v, cos, sin,
                                          cache_seqlens=seqlens, block_table=table,
                                          causal=True, rotary_interleaved=False,
                                          softmax_scale=attn.scaling, backend="numba")
            hidden = hidden + attn.o_proj(out.reshape(batch, n, heads * head_dim))
            hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        logits = model.lm_head(inner.norm(hidden[:, -1:]))
        step_ids = logits.argmax(-1)
        tokens = torch.cat([tokens, step_ids], dim=1)
    assert torch.equal(tokens, want)
