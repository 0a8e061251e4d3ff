"""Int8 weight-only decoding (lesson 05): a quarter of float32's bytes per weight, activations in float.

Batch-1 decoding is memory bound: each token reads every weight once, so the bytes per weight set the
floor. Storing each weight matrix as int8 with one float scale per output row (per output channel),

    W[n, k] ~= scale[n] * q[n, k],   q in [-127, 127],   scale[n] = max_k |W[n, k]| / 127,

reads 1 byte per weight instead of 4 (float32) or 2 (bfloat16). The activations stay floating point
(weight-only quantisation: nothing about the inputs is calibrated), so the only new error is each
weight's rounding, at most half a step ``scale[n] / 2``.

Which kernel, and why. ``torchao`` 0.18.0 (the newest on the local index) runs ``Int8WeightOnlyConfig``
on CPU with torch 2.13, but slowly: a [32768 x 256] LM-head product for one token measured 46 ms with
float32 activations and 6.1 ms with bfloat16 ones, against 7.4 / 3.5 ms for the plain float32 /
bfloat16 products (1 thread, this repository's 2-core machine). ATen's own CPU kernel
``torch._weight_int8pack_mm(x, q, scales)`` (present in 2.13) computes ``x @ (q * scales[:, None]).T``
without materialising the float weights and, with bfloat16 activations, took 1.0 ms for the same
product: 3.5x faster than bfloat16 and 7x faster than float32. With float32 activations it has no
fast path (16 ms). So this module calls that kernel with the matrix product's *input* rounded to
bfloat16 (its output comes back in bfloat16 and is widened to the caller's dtype); the residual
stream, the norms, the attention and the dynamic bias stay in the decoder's dtype. The rounding of
the products' inputs and outputs to bfloat16 is part of the measured quality cost (``int8_quality``).

Scales are bfloat16 numbers (the kernel takes them in the activation dtype), rounded up so that
``|W| / scale <= 127`` still holds after the rounding: the dequantised weight ``q * scale`` is then
exactly what the kernel multiplies by, in float32 and bfloat16 alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

QMAX = 127
# the kernel's fast path: bfloat16 activations (see the module docstring)
KERNEL_DTYPE = torch.bfloat16
# unit roundoff of bfloat16 (8 significant bits): a value rounds to within this relative distance
BF16_UNIT_ROUNDOFF = 2.0 ** -8


@dataclass
class Int8Weight:
    """One weight matrix W [N, K] as int8 ``q`` [N, K] and per-output-row ``scale`` [N] (W ~= scale[:, None] * q)."""

    q: torch.Tensor  # int8 [N, K]
    scale: torch.Tensor  # float32 [N], every entry a bfloat16 number
    scale_kernel: torch.Tensor  # the same scales in KERNEL_DTYPE [N]

    @property
    def shape(self) -> torch.Size:
        return self.q.shape

    def nbytes(self) -> int:
        return self.q.numel() + self.scale_kernel.numel() * self.scale_kernel.element_size()

    def dequantise(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """The float weights the kernel multiplies by. -> [N, K] in ``dtype``."""
        return (self.q.to(torch.float32) * self.scale[:, None]).to(dtype)

    def rows(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Dequantised rows ``W[ids]`` (an embedding lookup in a tied LM head). ids: [...] -> [..., K]."""
        return (F.embedding(ids, self.q).to(torch.float32) * self.scale[ids, None]).to(dtype)


def quantise(weight: torch.Tensor) -> Int8Weight:
    """Symmetric per-output-channel int8 quantisation of W [N, K] (float32 arithmetic whatever W's dtype)."""
    if weight.dim() != 2:
        raise ValueError(f"quantise expects a [out, in] weight matrix, got shape {tuple(weight.shape)}")
    w = weight.detach().to(torch.float32)
    if not bool(torch.isfinite(w).all()):
        raise ValueError(f"cannot quantise a weight [{w.shape[0]}, {w.shape[1]}] holding inf or NaN")
    step = w.abs().amax(dim=1) / QMAX
    # rounding to bfloat16 moves a number by at most BF16_UNIT_ROUNDOFF of itself: widening first keeps
    # every rounded scale >= the exact one, so no |q| exceeds QMAX; all-zero rows get any positive scale
    scale = (step * (1 + 2 * BF16_UNIT_ROUNDOFF)).clamp_min(torch.finfo(torch.bfloat16).tiny).to(KERNEL_DTYPE)
    q = torch.round(w / scale.float()[:, None]).clamp_(-QMAX, QMAX).to(torch.int8)
    return Int8Weight(q.contiguous(), scale.float(), scale.contiguous())


def int8_matmul(x: torch.Tensor, weight: Int8Weight) -> torch.Tensor:
    """x @ dequantise(weight).T computed in x's dtype by ATen's int8 kernel. x: [..., K] -> [..., N]."""
    scale = weight.scale_kernel if x.dtype == KERNEL_DTYPE else weight.scale.to(x.dtype)
    flat = x.reshape(-1, x.shape[-1])
    if not flat.is_contiguous():
        flat = flat.contiguous()
    return torch._weight_int8pack_mm(flat, weight.q, scale).view(*x.shape[:-1], weight.shape[0])


def linear(x: torch.Tensor, weight: torch.Tensor | Int8Weight, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear`` for float weights; for an ``Int8Weight`` the kernel's bfloat16 fast path, result in x's dtype."""
    if not isinstance(weight, Int8Weight):
        return F.linear(x, weight, bias)
    out = int8_matmul(x.to(KERNEL_DTYPE), weight).to(x.dtype)
    return out if bias is None else out + bias


# ------------------------------------------------------------------------------------------ quality
@torch.no_grad()
def int8_quality(model, validation_rows: torch.Tensor, prompt: torch.Tensor, new_tokens: int = 128,
                 batch_size: int = 8) -> dict:
    """The quality cost of int8 weights, measured against the float32 teaching model.

    model: a float32 ``DogeForCausalLM``; validation_rows: [N, T] packed token rows (lesson 06's validation set);
    prompt: [1, P] ids for the greedy comparison. Returns max |logits difference| over every position
    of the validation rows, both perplexities, the share of validation positions whose argmax agrees
    (teacher forced), and how many of ``new_tokens`` greedy tokens agree: ``greedy_agreement`` counts up to
    the first disagreement (after it the two continuations read different text), ``greedy_same_position``
    counts every position where the two continuations hold the same token.
    """
    # int8 is a layer below the decoder (fast_decode packs its weights with ``quantise``); measuring it needs
    # the whole decoder, so this one function imports upwards, when called
    from .fast_decode import FastDoge
    from .generation import generate

    if next(model.parameters()).dtype != torch.float32:
        raise ValueError("int8_quality compares against float32: pass the model in float32 (model.float())")
    reference = model.eval()
    fast = FastDoge(reference, dtype=torch.float32, weights="int8")
    nll_ref, nll_q, count, max_diff, same_argmax = 0.0, 0.0, 0, 0.0, 0
    for start in range(0, len(validation_rows), batch_size):
        rows = validation_rows[start:start + batch_size]
        ref_logits = reference(rows).logits.float()
        q_logits = fast.logits(rows)
        max_diff = max(max_diff, float((ref_logits - q_logits).abs().max()))
        same_argmax += int((ref_logits.argmax(-1) == q_logits.argmax(-1)).sum())
        targets = rows[:, 1:].reshape(-1)
        nll_ref += float(F.cross_entropy(ref_logits[:, :-1].reshape(-1, ref_logits.shape[-1]), targets,
                                         reduction="sum"))
        nll_q += float(F.cross_entropy(q_logits[:, :-1].reshape(-1, q_logits.shape[-1]), targets, reduction="sum"))
        count += targets.numel()
    settings = dict(max_new_tokens=new_tokens, eos_token_id=None, pad_token_id=0)
    ids_ref = generate(reference, prompt, decoder="teaching", **settings)[0, prompt.shape[1]:]
    ids_q = generate(fast, prompt, **settings)[0, prompt.shape[1]:]
    differs = (ids_ref != ids_q).nonzero()
    agree = int(differs[0, 0]) if len(differs) else new_tokens
    return {"max_logits_diff": max_diff, "perplexity_float32": math.exp(nll_ref / count),
            "perplexity_int8": math.exp(nll_q / count), "argmax_agreement": same_argmax / validation_rows.numel(),
            "greedy_agreement": agree, "greedy_same_position": int((ids_ref == ids_q).sum()),
            "greedy_tokens": new_tokens,
            "weights_mib_float32": sum(p.numel() * 4 for p in reference.parameters()) / 2 ** 20,
            "weights_mib_int8": fast.weight_bytes() / 2 ** 20}


def summarise(rows: Sequence[dict]) -> str:
    """One line per quality dict: max diff, perplexities, greedy agreement."""
    return "\n".join(f"max |dlogits| {r['max_logits_diff']:.3g}, perplexity {r['perplexity_float32']:.4f} -> "
                     f"{r['perplexity_int8']:.4f}, argmax agreement {r['argmax_agreement']:.4f}, greedy tokens equal "
                     f"{r['greedy_agreement']}/{r['greedy_tokens']} before the first difference "
                     f"({r['greedy_same_position']} at the same position)" for r in rows)
