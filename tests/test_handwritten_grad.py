"""The hand-written backward passes of ``handwritten_grad``: each against torch.autograd.gradcheck in float64 (its
backward is the derivative of its forward) and against the plain formula differentiated by autograd in
float32 (its forward is the formula the rest of the package uses)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from doge_from_scratch import DogeForCausalLM, handwritten_grad
from doge_from_scratch.attention import causal_padding_mask
from doge_from_scratch.layers import rotate_half
from doge_from_scratch.testing import failed_checks, float32_error_check, float64_copy, randomize_, tiny_config

TOL = 1e-5


def draw(*shape, seed: int = 0, dtype=torch.float64, positive: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    return (x.abs() + 0.1 if positive else x).requires_grad_()


def grads_of(fn, inputs: tuple[torch.Tensor, ...], seed: int = 99) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """(output, d <output, random cotangent> / d input for every input)."""
    out = fn(*inputs)
    # drawn in float64 and rounded, so float32 and float64 runs get the same cotangent
    cotangent = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    cotangent = cotangent.to(out.dtype)
    return out, list(torch.autograd.grad(out, inputs, cotangent))


def assert_same_as_plain(handwritten_fn, plain_fn, inputs: tuple[torch.Tensor, ...]) -> None:
    """Same output and same input gradients in float32 as the plain formula, each judged by its distance to the
    plain formula in float64 (``testing.float32_error_check``: at most a few times autograd's own error)."""
    inputs32 = tuple(x.detach().float().requires_grad_() for x in inputs)
    inputs64 = tuple(x.detach().double().requires_grad_() for x in inputs)
    out_f, grads_f = grads_of(handwritten_fn, inputs32)
    out_p, grads_p = grads_of(plain_fn, inputs32)
    out_e, grads_e = grads_of(plain_fn, inputs64)
    names = ["output"] + [f"grad {i}" for i in range(len(grads_f))]
    checks = [float32_error_check(name, got, want, exact) for name, got, want, exact in
              zip(names, [out_f, *grads_f], [out_p, *grads_p], [out_e, *grads_e])]
    assert all(c["ok"] for c in checks), failed_checks(checks)


# --------------------------------------------------------------------------------------- RMSNorm
def plain_rms_norm(x, weight, eps=1e-6):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def test_rms_norm_gradcheck():
    x, w = draw(3, 5, 8), draw(8, seed=1)
    assert torch.autograd.gradcheck(lambda x, w: handwritten_grad.rms_norm(x, w, 1e-6), (x, w))


def test_rms_norm_equals_plain_formula():
    assert_same_as_plain(lambda x, w: handwritten_grad.rms_norm(x, w, 1e-6), plain_rms_norm,
                         (draw(4, 16, 32), draw(32, seed=1)))


# ---------------------------------------------------------------------------------------- rotary
def rotary_inputs(dtype=torch.float64, repeat_halves: bool = True):
    x = draw(2, 3, 5, 8, dtype=dtype)
    angles = draw(2, 1, 5, 4, seed=1, dtype=dtype).detach() * 3
    # RoPE's tables repeat their half; the passes must not rely on it (each half uses its own table)
    second = angles if repeat_halves else draw(2, 1, 5, 4, seed=2, dtype=dtype).detach() * 3
    angles = torch.cat((angles, second), dim=-1)
    return x, angles.cos(), angles.sin()


@pytest.mark.parametrize("repeat_halves", [True, False])
def test_rotary_gradcheck(repeat_halves):
    x, cos, sin = rotary_inputs(repeat_halves=repeat_halves)
    assert torch.autograd.gradcheck(lambda x: handwritten_grad.rotary(x, cos, sin), (x,))


def test_rotary_equals_rotate_half_formula():
    x, cos, sin = rotary_inputs()
    assert_same_as_plain(lambda x: handwritten_grad.rotary(x, cos.float(), sin.float()),
                         lambda x: x * cos.float() + rotate_half(x) * sin.float(), (x,))


def test_rotary_in_the_projections_layout():
    """A [B, T, heads, d] tensor seen as [B, heads, T, d] (as the projections make it): same numbers, same layout."""
    x, cos, sin = rotary_inputs(repeat_halves=False)
    x = x.detach().transpose(1, 2).contiguous().transpose(1, 2).requires_grad_()
    assert_same_as_plain(lambda x: handwritten_grad.rotary(x, cos.float(), sin.float()),
                         lambda x: x * cos.float() + rotate_half(x) * sin.float(), (x,))
    assert handwritten_grad.rotary(x, cos, sin).stride() == x.stride()


# ------------------------------------------------------------------------------------- attention
def plain_attention(q, k, v, bias, allowed, scale):
    """The definition: masked scores with the dtype minimum, softmax, values (k, v repeated per group)."""
    groups = q.shape[1] // k.shape[1]
    k, v, bias = (x.repeat_interleave(groups, dim=1) for x in (k, v, bias))
    scores = q @ k.transpose(-1, -2) * scale + bias[:, :, None, :]
    return torch.softmax(scores.masked_fill(~allowed, torch.finfo(q.dtype).min), dim=-1) @ v


ATTENTION_CASES = {
    # name: (batch, query heads, KV heads, T, S, rows per block, pad the end of row 0)
    "gqa-blocks": (2, 3, 1, 10, 10, 4, False),
    "gqa-cached-keys": (2, 4, 2, 7, 12, 3, False),  # queries are the last 7 of 12 positions
    "padded": (2, 4, 2, 9, 9, 4, True),
    "one-block": (1, 2, 2, 5, 5, 64, False),
}


def attention_inputs(case: str, dtype=torch.float64):
    b, n_h, n_kv, t, s, rows, pad = ATTENTION_CASES[case]
    q, k, v = draw(b, n_h, t, 8, dtype=dtype), draw(b, n_kv, s, 8, seed=1, dtype=dtype), draw(b, n_kv, s, 8, seed=2,
                                                                                             dtype=dtype)
    bias = draw(b, n_kv, s, seed=3, dtype=dtype, positive=True)
    attention_mask = torch.ones(b, s, dtype=torch.long)
    if pad:
        attention_mask[0, -2:] = 0
    allowed = causal_padding_mask(attention_mask if pad else None, b, t, s, q.device)
    return (q, k, v, bias), (None if not pad else allowed), allowed, rows


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_gradcheck(case):
    inputs, allowed, _, rows = attention_inputs(case)
    assert torch.autograd.gradcheck(lambda *x: handwritten_grad.causal_attention(*x, allowed, 0.3, rows), inputs)


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
def test_attention_equals_plain_formula(case):
    inputs, allowed, full_allowed, rows = attention_inputs(case)
    assert_same_as_plain(lambda *x: handwritten_grad.causal_attention(*x, allowed, 0.3, rows),
                         lambda *x: plain_attention(*x, full_allowed, 0.3), inputs)


# ----------------------------------------------------------------------- LM head + cross-entropy
def ce_inputs(dtype=torch.float64, n=12, h=6, v=11):
    hidden, weight = draw(n, h, dtype=dtype), draw(v, h, seed=1, dtype=dtype)
    targets = torch.randint(0, v, (n,), generator=torch.Generator().manual_seed(2))
    targets[[1, 7]] = -100
    return hidden, weight, targets


@pytest.mark.parametrize("block_rows", [5, 64])
def test_linear_cross_entropy_gradcheck(block_rows, monkeypatch):
    monkeypatch.setattr(handwritten_grad, "CE_MIN_BLOCK_ROWS", block_rows)
    monkeypatch.setattr(handwritten_grad, "CE_BLOCK_ELEMENTS", 0)
    hidden, weight, targets = ce_inputs()

    def loss_plus_logits(hidden, weight):
        loss, logits = handwritten_grad.linear_cross_entropy(hidden, weight, targets, divisor=7.0)
        return loss + (logits ** 2).sum() * 1e-2  # gradients reach the inputs through both outputs

    assert torch.autograd.gradcheck(loss_plus_logits, (hidden, weight))


@pytest.mark.parametrize("divisor", [None, 5.0])
def test_linear_cross_entropy_equals_cross_entropy(divisor, monkeypatch):
    monkeypatch.setattr(handwritten_grad, "CE_MIN_BLOCK_ROWS", 5)  # several blocks, the last one short
    monkeypatch.setattr(handwritten_grad, "CE_BLOCK_ELEMENTS", 0)
    hidden, weight, targets = (x.detach().float().requires_grad_() if x.is_floating_point() else x
                               for x in ce_inputs())
    loss, logits = handwritten_grad.linear_cross_entropy(hidden, weight, targets, divisor)
    expected_logits = hidden @ weight.t()
    reduction = "mean" if divisor is None else "sum"
    expected = F.cross_entropy(expected_logits, targets, reduction=reduction) / (divisor or 1.0)
    assert (logits - expected_logits).abs().max() <= 1e-6
    assert abs(loss.item() - expected.item()) <= TOL * abs(expected.item())
    got = torch.autograd.grad(loss, (hidden, weight))
    want = torch.autograd.grad(expected, (hidden, weight))
    for g, w in zip(got, want):
        assert (g - w).abs().max() <= TOL * w.abs().max()


# ---------------------------------------------------------------------------------- whole model
BATCHES = 8


def loss_logits_grads(model, ids, mask, labels) -> dict[str, torch.Tensor]:
    model.zero_grad()
    out = model(ids, attention_mask=mask, labels=labels)
    out.loss.backward()
    return {"loss": out.loss.detach().reshape(1), "logits": out.logits.detach(),
            **{n: p.grad.clone() for n, p in model.named_parameters()}}


@pytest.mark.parametrize("overrides", [dict(), dict(tie_word_embeddings=True, num_key_value_heads=4),
                                       dict(num_key_value_heads=1, attention_bias=True)])
def test_model_handwritten_grad_equals_autograd(overrides, record_check):
    """The same model and batch with the hand-written passes on (``set_handwritten_grad(True)``, "auto"
    attention) and off (autograd over the reference's operations, "materialised" attention): same loss, logits
    and gradient for every parameter; also with a padded row.

    Both are float32 results of different summation orders, so each is judged by its distance to the same model
    in float64 (``testing.float32_error_check``): the hand-written passes may not be further from it than a
    small multiple of autograd's own error. Every quantity is taken on several batches, stacked, so that a tensor
    of one or two entries (``A``, the ``dt_proj`` bias) is judged on BATCHES roundings, not one.
    """
    config = tiny_config(**overrides)
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(config).train(), 3)
    model64 = float64_copy(model)
    batches = []
    for seed in range(1, 1 + BATCHES):
        ids = torch.randint(1, config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(seed))
        mask = torch.ones_like(ids)
        mask[1, -5:] = 0
        batches.append((ids, mask, ids.masked_fill(mask == 0, -100)))

    def stacked(m, handwritten: bool) -> dict[str, torch.Tensor]:
        m.set_attention_backend("auto" if handwritten else "materialised")
        m.set_handwritten_grad(handwritten)
        runs = [loss_logits_grads(m, *batch) for batch in batches]
        return {k: torch.stack([run[k] for run in runs]) for k in runs[0]}

    hand, plain, exact = stacked(model, True), stacked(model, False), stacked(model64, False)
    checks = [record_check(float32_error_check(f"hand-written vs autograd {overrides} {name}", hand[name],
                                               plain[name], exact[name])) for name in exact]
    assert all(c["ok"] for c in checks), failed_checks(checks)


def test_model_num_items_in_batch_scales_the_handwritten_loss():
    config = tiny_config()
    model = randomize_(DogeForCausalLM(config).train(), 4)
    ids = torch.randint(1, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(1))
    mean_loss = model(ids, labels=ids).loss
    summed = model(ids, labels=ids, num_items_in_batch=torch.tensor(7)).loss
    counted = ids.shape[0] * (ids.shape[1] - 1)
    assert torch.allclose(summed, mean_loss * counted / 7, rtol=1e-6)


def test_handwritten_grad_switch_is_separate_from_the_attention_backend():
    """The attention backend says how the forward pass is computed; only ``set_handwritten_grad`` turns the
    hand-written backward passes off (every module that has one), and back on."""
    model = DogeForCausalLM(tiny_config())
    switched = [m for m in model.modules() if hasattr(m, "handwritten_grad")]
    assert {type(m).__name__ for m in switched} >= {"RMSNorm", "DogeAttention", "DogeForCausalLM"}
    model.set_attention_backend("materialised")
    assert all(m.handwritten_grad for m in switched)
    model.set_handwritten_grad(False)
    assert not any(m.handwritten_grad for m in switched)
    assert {m.backend for m in model.modules() if hasattr(m, "backend")} == {"materialised"}
    model.set_handwritten_grad(True)
    assert all(m.handwritten_grad for m in switched)
