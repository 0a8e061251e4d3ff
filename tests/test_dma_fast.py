"""The ``chunked`` attention backend against the installed transformers.DogeForCausalLM.

Past the keep window, DMA keeps the ``keep_window_size`` largest-bias keys of every query row. The
reference builds that mask for all [B, heads, T, S] at once; ``chunked`` builds it a block of rows
at a time. The checks: same logits and gradients as the reference (eager and sdpa) with padding, a KV
cache, all-tied biases (A = 0, where torch.topk alone decides which keys survive), blocks of several
sizes, and that no tensor of T x S entries per head is ever created.
"""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from doge_from_scratch import DogeForCausalLM, attention
from doge_from_scratch.attention import DogeAttention
from doge_from_scratch.testing import (copy_into_reference, failed_checks, float32_error_check, float64_copy,
                                       randomize_, reference_model, tiny_config)

WINDOW = 8  # far below the sequence lengths used, so the top-k decides in almost every row


def build_pair(seed: int = 1, zero_a: bool = False, impl: str = "eager", **overrides):
    config = tiny_config(**{"keep_window_size": WINDOW, **overrides})
    ours = randomize_(DogeForCausalLM(config).eval(), seed)
    if zero_a:
        with torch.no_grad():
            for module in ours.modules():
                if isinstance(module, DogeAttention):
                    module.A.zero_()  # bias == 1 for every key: every top-k is a tie
    ref = reference_model(config, impl)
    copy_into_reference(ours, ref)
    ours.set_attention_backend("chunked")
    return ours, ref


def ids_for(vocab: int, batch: int, length: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of a few rows, so even short test sequences are cut into many blocks (and a ragged last one)."""
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", 4 * 2 * 37)


@pytest.mark.parametrize("impl", ["eager", "sdpa"])
@pytest.mark.parametrize("zero_a", [False, True], ids=["learned-bias", "all-ties"])
@torch.no_grad()
def test_chunked_logits_match_reference(impl, zero_a, small_blocks, record_check):
    ours, ref = build_pair(zero_a=zero_a, impl=impl)
    ids = ids_for(ours.config.vocab_size, 2, 45)
    mask = torch.ones_like(ids)
    mask[1, :7] = 0  # left padding in one row
    ref64 = float64_copy(ref)
    for name, kwargs in (("causal", {}), ("padded", {"attention_mask": mask})):
        label = f"chunked {impl} {'A=0' if zero_a else 'A'} {name}"
        c = record_check(float32_error_check(label, ours(ids, **kwargs).logits,
                                             ref(ids, **kwargs).logits, ref64(ids, **kwargs).logits))
        assert c["ok"], failed_checks([c])


@torch.no_grad()
def test_chunked_within_window_matches_reference(record_check):
    """Every key inside the window: the fused path with q, k, v padded to one width (flash-kernel friendly)."""
    ours, ref = build_pair(keep_window_size=64)
    ids = ids_for(ours.config.vocab_size, 2, 45)
    mask = torch.ones_like(ids)
    mask[0, :5] = 0
    ref64 = float64_copy(ref)
    for name, kwargs in (("causal", {}), ("padded", {"attention_mask": mask})):
        c = record_check(float32_error_check(f"chunked within window {name}", ours(ids, **kwargs).logits,
                                             ref(ids, **kwargs).logits, ref64(ids, **kwargs).logits))
        assert c["ok"], failed_checks([c])


def test_chunked_gradients_match_reference(small_blocks, record_check):
    """Backward through the checkpointed blocks: d loss / d parameter against the reference's float64 gradient,
    on several batches stacked (a gradient of ``A`` has one entry per KV head: one rounding is no statistic),
    the reference's own error taken over its eager and sdpa kernels."""
    ours, ref = build_pair(seed=2)
    ref64 = float64_copy(ref)
    batches = [ids_for(ours.config.vocab_size, 2, 30, seed=seed) for seed in range(1, 5)]

    def stacked(model) -> dict[str, torch.Tensor]:
        runs = []
        for ids in batches:
            model.zero_grad()
            model(ids, labels=ids).loss.backward()
            runs.append({n: p.grad.clone() for n, p in model.named_parameters()})
        return {n: torch.stack([run[n] for run in runs]) for n in runs[0]}

    ours_grads, ref_eager = stacked(ours), stacked(ref)
    ref.set_attn_implementation("sdpa")
    ref_sdpa, exact = stacked(ref), stacked(ref64)
    checks = [record_check(float32_error_check(f"chunked grad {name}", ours_grads[name],
                                               [ref_eager[name], ref_sdpa[name]], exact[name])) for name in exact]
    assert all(c["ok"] for c in checks), failed_checks(checks)


@torch.no_grad()
def test_chunked_kv_cache_decode_matches_reference(small_blocks, record_check):
    """Prompt past the window, then token by token through our cache == the reference's full forward."""
    ours, ref = build_pair(seed=3)
    ids = ids_for(ours.config.vocab_size, 2, 24, seed=2)
    expected, exact = ref(ids).logits, float64_copy(ref)(ids).logits
    out = ours(ids[:, :12], use_cache=True)
    steps = [out.logits]
    for t in range(12, 24):
        out = ours(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    c = record_check(float32_error_check("chunked kv-cache decode vs reference full forward", torch.cat(steps, dim=1),
                                         expected, exact))
    assert c["ok"], failed_checks([c])


class LargestTensor(TorchDispatchMode):
    """Remembers the largest number of elements of any tensor an operator produced."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for item in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(item, torch.Tensor):
                self.largest = max(self.largest, item.numel())
        return out


@pytest.mark.parametrize("window", [WINDOW, 256], ids=["top-k", "within-window"])
@pytest.mark.parametrize("grad", [False, True], ids=["forward", "forward+backward"])
def test_chunked_never_builds_a_full_mask(grad, window, monkeypatch):
    """No operator output reaches T x S per head (blocks of 16 rows past the window, a flash kernel
    within it); the materialised path does, which shows the probe would see one."""
    config = tiny_config(keep_window_size=window, num_hidden_layers=1)
    t = 128
    heads = config.num_attention_heads
    monkeypatch.setattr(attention, "CHUNK_ELEMENTS", heads * 16 * t)
    layer = randomize_(DogeForCausalLM(config), 0).model.layers[0].self_attn
    x = torch.randn(1, t, config.hidden_size, requires_grad=grad)
    pos = torch.arange(t)[None]
    rope = DogeForCausalLM(config).model.rotary_emb(x, pos)
    largest = {}
    for backend in ("chunked", "materialised"):
        layer.backend = backend
        with torch.set_grad_enabled(grad), LargestTensor() as probe:
            out = layer(x, rope, None, plain_causal=True)
            if grad:
                out.sum().backward()
        largest[backend] = probe.largest
    full = heads * t * t
    assert largest["materialised"] >= full  # the probe does see the reference's full mask
    assert largest["chunked"] <= full // 4, largest
