"""KV caches: the growing and the preallocated cache give the uncached model's logits at every step."""

import pytest
import torch

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.cache import KVCache, StaticKVCache
from doge_from_scratch.testing import failed_checks, float32_error_check, float64_copy, randomize_, tiny_config


def make_model(**overrides) -> DogeForCausalLM:
    torch.manual_seed(0)
    return randomize_(DogeForCausalLM(tiny_config(**overrides)).eval(), seed=1)


def test_static_cache_update_returns_filled_views():
    cache = StaticKVCache(num_layers=2, batch_size=2, num_kv_heads=3, head_dim=4, max_length=10)
    grown = KVCache()
    for t in (4, 1, 1, 3):
        k, v = torch.randn(2, 3, t, 4), torch.randn(2, 3, t, 4)
        for layer in range(2):
            ks, vs = cache.update(k, v, layer)
            kg, vg = grown.update(k, v, layer)
            assert torch.equal(ks, kg) and torch.equal(vs, vg)
    assert cache.get_seq_length() == grown.get_seq_length() == 9


def test_static_cache_errors_name_the_problem():
    cache = StaticKVCache(num_layers=1, batch_size=1, num_kv_heads=1, head_dim=4, max_length=3)
    with pytest.raises(ValueError, match="full"):
        cache.update(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 4, 4), 0)
    with pytest.raises(ValueError, match="shape"):
        cache.update(torch.zeros(2, 1, 1, 4), torch.zeros(2, 1, 1, 4), 0)
    with pytest.raises(IndexError, match="layer_idx"):
        cache.update(torch.zeros(1, 1, 1, 4), torch.zeros(1, 1, 1, 4), 5)


@pytest.mark.parametrize("overrides", [dict(), dict(keep_window_size=12),
                                       # the reference router split pairs logits of different tokens in a full
                                       # pass, so only the causal per-token split can equal its own cache
                                       dict(is_moe=True, num_experts=64, num_experts_per_tok=4,
                                            moe_router_split="per_token")],
                         ids=["dense", "past-keep-window", "moe-per-token"])
@pytest.mark.parametrize("kind", ["static", "dynamic"])
@torch.no_grad()
def test_cached_logits_equal_uncached_at_every_step(kind, overrides, record_check):
    """Each step's cached logits against the uncached pass; both are float32 products of other shapes, so
    both are judged by their distance to the uncached pass in float64."""
    model = make_model(**overrides)
    model64 = float64_copy(model)
    ids = torch.randint(3, model.config.vocab_size, (1, 20), generator=torch.Generator().manual_seed(2))
    cache = StaticKVCache.for_model(model.config, 1, 40) if kind == "static" else KVCache()
    logits = model(ids[:, :8], past_key_values=cache, use_cache=True).logits
    checks = [float32_error_check(f"{kind} cache {overrides} prefill", logits, model(ids[:, :8]).logits,
                                  model64(ids[:, :8]).logits)]
    for t in range(8, 20):
        step = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
        checks.append(float32_error_check(f"{kind} cache {overrides} step {t}", step,
                                          model(ids[:, :t + 1]).logits[:, -1],
                                          model64(ids[:, :t + 1]).logits[:, -1]))
    for c in checks:
        record_check(c)
    assert all(c["ok"] for c in checks), failed_checks(checks)
    assert cache.get_seq_length() == 20


@torch.no_grad()
def test_cache_recomputes_dynamic_bias_from_values():
    """The cache holds only keys and values; the bias follows from the cached values alone."""
    model = make_model()
    cache = StaticKVCache.for_model(model.config, 1, 16)
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(3))
    model(ids, past_key_values=cache, use_cache=True)
    attn = model.model.layers[0].self_attn
    values = cache.values[0][:, :, :6]
    # the reference formula, written out: exp(A * softplus(dt_proj(v of all KV heads per key)))
    dt = attn.dt_proj(values.transpose(1, 2).reshape(1, 6, -1))
    expected = torch.exp(attn.A * torch.nn.functional.softplus(dt)).transpose(-1, -2)
    from doge_from_scratch.attention import dynamic_bias

    torch.testing.assert_close(dynamic_bias(values, attn.dt_proj, attn.A), expected)
    assert vars(cache).keys() == {"keys", "values", "lengths", "max_length"}
