"""Hand-written backward passes for the training step's hot spots (the same numbers, fewer passes).

On a CPU a small model's training step is dominated not by its matrix products but by dozens of
element-wise passes over activations: every ``mul`` or ``add`` in the forward pass becomes one or two
more in autograd's backward, and each saves a tensor. Each ``torch.autograd.Function`` here computes
one block's gradient directly from the closed form, keeping fewer tensors and launching fewer passes:

- ``rms_norm``: dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight.
- ``rotary``: RoPE written half by half into one output (no rotated copy); its backward is the
  rotation by -angle.
- ``causal_attention``: softmax(q k^T * scale + bias_s + mask) v with the dynamic bias added by the
  score product itself, the grouped query heads stacked so no key/value is repeated, and the
  softmax backward from the saved probabilities.
- ``linear_cross_entropy``: LM head + next-token cross-entropy a block of rows at a time, with the
  gradient (softmax - onehot) formed while the block is still in cache.

None of them supports double backward (nothing in training needs it).
"""

from __future__ import annotations

import functools

import torch
from torch.autograd.function import once_differentiable

# linear_cross_entropy: rows per block are chosen so one [rows, V] block holds about this many numbers
# (measured on 2 cores: 256-row blocks of a 32k vocabulary beat both much smaller ones, where the
# [V, H] weight gradient is read and written once per block, and the whole batch at once)
CE_BLOCK_ELEMENTS = 1 << 23
CE_MIN_BLOCK_ROWS = 64


def usable(*tensors: torch.Tensor) -> bool:
    """True where the hand-written passes give the reference's numbers: float32 tensors, no autocast
    (which would run their products in bfloat16 where the reference keeps parts in float32)."""
    return (all(t.dtype == torch.float32 for t in tensors)
            and not torch.is_autocast_enabled(tensors[0].device.type))


def training(*tensors: torch.Tensor) -> bool:
    """``usable`` and some input needs a gradient: the only case the autograd Functions pay off."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors) and usable(*tensors)


# ---------------------------------------------------------------------------------------- RMSNorm
class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        rstd = torch.rsqrt(x.square().mean(-1, keepdim=True) + eps)
        xhat = x * rstd
        # xhat and rstd are all the backward needs; x itself is not kept
        ctx.save_for_backward(xhat, rstd, weight)
        return xhat * weight

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        xhat, rstd, weight = ctx.saved_tensors
        dy_xhat = dy * xhat
        dweight = dy_xhat.reshape(-1, xhat.shape[-1]).sum(0) if ctx.needs_input_grad[1] else None
        # dx = rstd * (g - xhat * mean(g * xhat)) with g = dy * weight; the mean is a matrix-vector
        # product of dy * xhat (needed for dweight anyway) with the weight
        coef = (dy_xhat @ weight).unsqueeze(-1).mul_(rstd).div_(-xhat.shape[-1])
        dx = torch.addcmul((dy * weight).mul_(rstd), xhat, coef)
        return dx, dweight, None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dim, float32 only. x: [..., H], weight: [H]."""
    return _RMSNorm.apply(x, weight, eps)


# -------------------------------------------------------------------------------------- rotary
def rotate_pairs(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """Each (x1_i, x2_i) pair of the two halves of the last dimension turned by its angle:
    (x1 c1 - x2 s1, x2 c2 + x1 s2), which is x * cos + rotate_half(x) * sin; with ``transpose`` the
    turn back, (x1 c1 + x2 s2, x2 c2 - x1 s1). [..., d] -> [..., d]

    Each half of a fresh output is written in place: no rotated copy of x, no concatenation.
    """
    (x1, x2), (c1, c2), (s1, s2) = x.chunk(2, dim=-1), cos.chunk(2, dim=-1), sin.chunk(2, dim=-1)
    out = torch.empty_like(x)
    out1, out2 = out.chunk(2, dim=-1)
    if transpose:
        torch.mul(x1, c1, out=out1).addcmul_(x2, s2)
        torch.mul(x2, c2, out=out2).addcmul_(x1, s1, value=-1)
    else:
        torch.mul(x1, c1, out=out1).addcmul_(x2, s1, value=-1)
        torch.mul(x2, c2, out=out2).addcmul_(x1, s2)
    return out


class _Rotary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(cos, sin)
        return rotate_pairs(x, cos, sin)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: torch.Tensor):
        cos, sin = ctx.saved_tensors
        # a rotation is linear: its gradient is the transposed rotation (by -angle) of dy
        return rotate_pairs(dy, cos, sin, transpose=True), None, None


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """RoPE (rotate-half convention), x * cos + rotate_half(x) * sin. x: [B, heads, T, d] with cos, sin:
    [B, 1, T, d], or x: [B, T, heads, d] with cos, sin: [B, T, 1, d]."""
    return _Rotary.apply(x, cos, sin)


# ------------------------------------------------------------------------------------ attention
# Query positions per block: keys after a block's last query are invisible to all of its rows, so blocks
# skip them; with T / 64 blocks about 3/8 of a causal T x T product is never computed (T = 256).
# Measured on 2 cores, T = 256, head_dim 64 and 128: 64 beats 32 (more, smaller products) and 128 / one block.
ATTENTION_BLOCK_ROWS = 64


def query_blocks(q_len: int, kv_len: int, rows: int) -> list[tuple[int, int, int]]:
    """(first row, end row, number of keys visible to the block) for queries at the last T of S positions."""
    return [(start, min(q_len, start + rows), kv_len - q_len + min(q_len, start + rows))
            for start in range(0, q_len, rows)]


def score_rows(x: torch.Tensor, n_kv: int) -> torch.Tensor:
    """[B, n_h, T, d] -> [B * n_kv, T * groups, d]: for each KV head, its query heads' rows ordered by
    (position, head), so that a block of positions is one band of consecutive rows.

    A free view when x is laid out [B, T, n_h, d] in memory (as the projections make it) and n_kv = 1;
    otherwise one copy.
    """
    b, n_h, t, d = x.shape
    return x.unflatten(1, (n_kv, n_h // n_kv)).transpose(2, 3).reshape(b * n_kv, -1, d)


def heads_from_rows(rows: torch.Tensor, b: int, n_kv: int, t: int) -> torch.Tensor:
    """The inverse of ``score_rows``: [B * n_kv, T * groups, d] -> [B, n_h, T, d] (a view where it can be)."""
    groups, d = rows.shape[1] // t, rows.shape[2]
    return rows.view(b, n_kv, t, groups, d).transpose(2, 3).reshape(b, n_kv * groups, t, d)


@functools.lru_cache(maxsize=4)
def causal_score_mask(q_len: int, kv_len: int, groups: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """0 where a score row's query may see the key, the dtype minimum where it may not, for rows ordered as
    by ``score_rows`` and queries at the last T of S positions. -> [T * groups, S]

    Cached: a training run asks for the same shape in every layer and every step.
    """
    query_pos = torch.arange(kv_len - q_len, kv_len, device=device).repeat_interleave(groups)
    hidden = torch.arange(kv_len, device=device)[None, :] > query_pos[:, None]
    return torch.zeros(hidden.shape, dtype=dtype, device=device).masked_fill_(hidden, torch.finfo(dtype).min)


class _CausalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                blocked: torch.Tensor | None, scale: float, rows: int) -> torch.Tensor:
        b, n_h, t, d = q.shape
        n_kv, s = k.shape[1], k.shape[2]
        groups = n_h // n_kv
        # one product per KV head with its query heads stacked as rows: no repeated k or v
        q_rows = score_rows(q, n_kv)
        k_rows, v_rows = k.reshape(b * n_kv, s, d), v.reshape(b * n_kv, s, d)
        bias_rows = bias.reshape(b * n_kv, 1, s)
        causal_mask = causal_score_mask(t, s, groups, q.dtype, q.device) if blocked is None else None
        outs, probs = [], []
        for start, stop, keys in query_blocks(t, s, rows):
            band = slice(start * groups, stop * groups)
            # every product writes a fresh tensor: the batched BLAS path wants a contiguous result
            # (into a slice of a larger one PyTorch loops over the batch, several times slower)
            if causal_mask is None:
                scores = torch.baddbmm(bias_rows[..., :keys], q_rows[:, band], k_rows[:, :keys].transpose(1, 2),
                                       alpha=scale)
                # the reference's value, not -inf: a row with no visible key then becomes uniform as there
                scores.view(b, n_kv, stop - start, groups, keys).masked_fill_(
                    blocked[:, :, start:stop, None, :keys], torch.finfo(scores.dtype).min)
            else:
                # bias and mask in one addend: min + bias rounds to min, so hidden scores are the
                # reference's dtype minimum exactly, with no masking pass over the scores
                scores = torch.add(bias_rows[..., :keys], causal_mask[band, :keys])
                scores.baddbmm_(q_rows[:, band], k_rows[:, :keys].transpose(1, 2), alpha=scale)
            probs.append(torch.softmax(scores, dim=-1))
            outs.append(torch.bmm(probs[-1], v_rows[:, :keys]))
        ctx.save_for_backward(q_rows, k_rows, v_rows, *probs)
        ctx.scale, ctx.rows, ctx.shapes = scale, rows, (q.shape, k.shape, bias.shape)
        return heads_from_rows(torch.cat(outs, dim=1), b, n_kv, t)

    @staticmethod
    @once_differentiable
    def backward(ctx, dout: torch.Tensor):
        q_rows, k_rows, v_rows, *probs = ctx.saved_tensors
        (b, n_h, t, d), k_shape, bias_shape = ctx.shapes
        n_kv, s = k_shape[1], k_shape[2]
        groups = n_h // n_kv
        dout_rows = score_rows(dout, n_kv)
        k_scaled = k_rows * ctx.scale  # d scores / d q = scale * k: scale the small side once
        dq_blocks = []
        dk, dv = torch.zeros_like(k_rows), torch.zeros_like(v_rows)
        dbias = k_rows.new_zeros(k_rows.shape[0], s)
        for (start, stop, keys), block_probs in zip(query_blocks(t, s, ctx.rows), probs):
            band = slice(start * groups, stop * groups)
            dout_band = dout_rows[:, band]
            dv[:, :keys] += torch.bmm(block_probs.transpose(1, 2), dout_band)
            dscores = torch._softmax_backward_data(torch.bmm(dout_band, v_rows[:, :keys].transpose(1, 2)),
                                                   block_probs, -1, block_probs.dtype)
            dbias[:, :keys] += dscores.sum(1)  # the bias of a key is added to every query row
            dq_blocks.append(torch.bmm(dscores, k_scaled[:, :keys]))
            dk[:, :keys] += torch.bmm(dscores.transpose(1, 2), q_rows[:, band])
        dq = heads_from_rows(torch.cat(dq_blocks, dim=1), b, n_kv, t)
        return dq, dk.mul_(ctx.scale).view(k_shape), dv.view(k_shape), dbias.view(bias_shape), None, None, None


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                     allowed: torch.Tensor | None, scale: float, rows: int | None = None) -> torch.Tensor:
    """softmax(q k^T * scale + bias_s, masked) v, float32, no top-k (S <= keep window).

    q: [B, n_h, T, d]; k, v: [B, n_kv, S, d]; bias: [B, n_kv, S];
    allowed: bool [B, 1, T, S] (also causal), or None for plain causal attention over the last T of S positions.
    -> [B, n_h, T, d]. Computed ``rows`` query rows at a time (default ``ATTENTION_BLOCK_ROWS``) against only the
    keys they can see.
    """
    rows = rows or ATTENTION_BLOCK_ROWS
    return _CausalAttention.apply(q, k, v, bias, None if allowed is None else ~allowed, scale, rows)


# ----------------------------------------------------------------------- LM head + cross-entropy
class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, divisor: torch.Tensor,
                ignore_index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n, v = hidden.shape[0], weight.shape[0]
        counted = targets != ignore_index
        safe_targets = targets.masked_fill(~counted, 0)
        logits = hidden.new_empty(n, v)
        nll = hidden.new_empty(n)
        dhidden, dweight = torch.empty_like(hidden), torch.zeros_like(weight)
        inv = 1.0 / divisor
        rows = max(CE_MIN_BLOCK_ROWS, CE_BLOCK_ELEMENTS // v)
        exps = hidden.new_empty(min(rows, n), v)  # one scratch block for all blocks: big allocations fault pages
        for start in range(0, n, rows):
            block = slice(start, min(n, start + rows))
            nll[block], dhidden[block] = block_loss_and_grads(
                hidden[block], weight, safe_targets[block], counted[block], inv, logits[block],
                exps[:block.stop - block.start], dweight)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(hidden, weight, dhidden.mul_(inv), dweight)
        return nll.sum() * inv, logits

    @staticmethod
    @once_differentiable
    def backward(ctx, dloss: torch.Tensor | None, dlogits: torch.Tensor | None):
        hidden, weight, grad_hidden, grad_weight = ctx.saved_tensors
        if dloss is None:
            grad_hidden = grad_weight = None
        elif bool(dloss != 1):  # (a plain loss.backward() passes 1: the gradients as they are)
            grad_hidden, grad_weight = grad_hidden * dloss, grad_weight * dloss
        if dlogits is not None:  # the caller also used the logits (an extra loss on them)
            extra_hidden, extra_weight = dlogits @ weight, dlogits.t() @ hidden
            grad_hidden = extra_hidden if grad_hidden is None else grad_hidden + extra_hidden
            grad_weight = extra_weight if grad_weight is None else grad_weight + extra_weight
        return grad_hidden, grad_weight, None, None, None


def block_loss_and_grads(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, counted: torch.Tensor,
                         inv: torch.Tensor, logits: torch.Tensor, exps: torch.Tensor,
                         dweight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One block of rows: logits written into ``logits``, d(sum of NLL * inv) / d weight added to ``dweight``.

    hidden: [N, H]; weight: [V, H]; targets, counted: [N]; logits, exps (scratch): [N, V]
    -> (NLL [N], 0 where not counted; d(sum of NLL) / d hidden [N, H]).

    d NLL / d logits = softmax - onehot. The softmax is never formed: with e = exp(logits - max) and
    its row sums z, (e / z) @ W = (e @ W) / z, so the 1/z (and 0 for rows not counted) is applied to
    the small [N, H] side of each product, and the onehot part is a gather / an index_add of rows.
    """
    torch.mm(hidden, weight.t(), out=logits)
    row_max = logits.amax(dim=-1, keepdim=True)
    torch.sub(logits, row_max, out=exps).exp_()
    sums = exps.sum(dim=-1, keepdim=True)
    nll = (sums.log() + row_max).squeeze(1) - logits.gather(1, targets[:, None]).squeeze(1)
    weight_of_row = counted.to(hidden.dtype)[:, None]  # [N, 1]
    dhidden = torch.mm(exps, weight).mul_(weight_of_row / sums).sub_(weight[targets] * weight_of_row)
    dweight.addmm_(exps.t(), hidden * (weight_of_row / sums), alpha=inv)
    dweight.index_add_(0, targets, hidden * weight_of_row, alpha=-inv)
    return nll * weight_of_row.squeeze(1), dhidden


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         divisor: torch.Tensor | float | None = None,
                         ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """(cross-entropy of hidden @ weight^T against targets, the logits), float32.

    hidden: [N, H]; weight: [V, H]; targets: [N] (``ignore_index`` = not counted) -> (loss [], logits [N, V]).
    loss = summed token NLL / divisor, the divisor defaulting to the number of counted targets (a mean).
    Gradients for hidden and weight are formed during the forward pass (under autograd only).
    """
    if divisor is None:
        divisor = (targets != ignore_index).sum()
    divisor = torch.as_tensor(divisor, dtype=hidden.dtype, device=hidden.device)
    return _LinearCrossEntropy.apply(hidden, weight, targets, divisor, ignore_index)
