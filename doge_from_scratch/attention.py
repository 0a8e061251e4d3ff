"""Dynamic Mask Attention (lesson 02).

DMA is causal attention plus one learned, content-dependent bias per key:

    b_s = exp(A * softplus(dt_proj(v_s)))          one number per key s and per bias head
    scores[t, s] = q_t . k_s / sqrt(d) + b_s       for every key s that query t may see

Two attention variants exist, and they differ most once there are more keys S than ``keep_window_size``:

- ``native`` (transformers, generation C): q/k RMSNorm over head_dim, one bias per KV head, masked
  positions *replaced* by the dtype minimum, the mask repeated over the query heads of each group.
  Past the keep window each query row keeps only the ``keep_window_size`` keys with the largest
  masked bias (top-k over the row; the rest are masked out).
- ``classic`` (first Hub checkpoints, generations A/B): no q/k norm, one bias per *query* head
  (``dt_proj`` maps to n_heads), the bias *added* to the additive causal mask. There is no top-k.
  Past the keep window the checkpoint's own code computes k = int((S - keep_window_size) * ratio),
  ratio = ``dynamic_mask_ratio``, and per (batch row, head) drops every key whose bias is strictly
  below the k-th smallest of all S biases: the same keys for every query row. The published
  configs say ratio 0, which drops nothing: every key the causal mask allows is attended.

Three backends (``BACKENDS``, chosen by ``DogeForCausalLM.set_attention_backend``) give the same numbers:

- ``materialised``: build the [B, heads, T, S] mask exactly as the reference does (``attend_materialised``).
  Needed for the keep-window top-k, which selects keys per row, and the only backend of ``classic``.
- ``auto`` (the default): for native attention with S <= keep_window_size, no mask tensor at all
  (``attend_bias_in_qk``, the bias inside q.k, see below; while training in float32 the hand-written
  ``handwritten_grad.causal_attention`` instead); otherwise ``materialised``.
- ``chunked`` (native): up to the keep window the bias inside q.k with q, k and v padded to one width (so
  SDPA can pick a flash kernel); past it the materialised computation a block of query rows at a
  time, so memory grows with rows x S instead of T x S (see ``attend_topk_chunked``).

The bias inside q.k: because the bias depends only on the key, it can ride inside the dot product: append
a 1 to every query and ``b_s * sqrt(d)`` to every key, and ``q'.k' / sqrt(d) = q.k / sqrt(d) + b_s``.
PyTorch's SDPA kernels then do the rest, with ``is_causal`` or a boolean [B, 1, T, S] padding mask shared
by all heads and layers.
"""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from . import handwritten_grad
from .config import check_dynamic_mask_ratio
from .layers import RMSNorm, apply_rotary

BACKENDS = ("auto", "materialised", "chunked")
# chunked backend: rows per block are chosen so one [B, heads, rows, S] float tensor holds about this many numbers
CHUNK_ELEMENTS = 1 << 24


class KVCacheLike(Protocol):
    """What attention needs from a cache: append this step's keys/values, return all of them."""

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]: ...

    def get_seq_length(self, layer_idx: int = 0) -> int: ...


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, n_kv, ..., ] -> [B, n_kv * n_rep, ...]: each KV head serves n_rep consecutive query heads."""
    if n_rep == 1:
        return x
    b, h, *rest = x.shape
    return x[:, :, None].expand(b, h, n_rep, *rest).reshape(b, h * n_rep, *rest)


def causal_padding_mask(attention_mask: torch.Tensor | None, batch: int, q_len: int, kv_len: int,
                        device: torch.device) -> torch.Tensor:
    """Which keys each query may see. -> bool [B, 1, T, S] (True = allowed).

    attention_mask: [B, S] with 1 for real tokens and 0 for padding, covering cached keys too.
    Queries are the last T of the S positions, so query t sits at absolute position S - T + t.
    """
    q_pos = torch.arange(kv_len - q_len, kv_len, device=device)
    k_pos = torch.arange(kv_len, device=device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None].expand(batch, 1, q_len, kv_len)
    if attention_mask is not None:
        if attention_mask.shape != (batch, kv_len):
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected "
                             f"[batch, past + new tokens] = {(batch, kv_len)}")
        allowed = allowed & attention_mask[:, None, None, :].bool()
    return allowed


def packed_sequence_ids(position_ids: torch.Tensor) -> torch.Tensor | None:
    """Which packed sequence each token belongs to, read from restarting positions. -> [B, T] or None.

    position_ids: [B, T]. A new sequence starts wherever the position does not grow by exactly one
    (the rule transformers uses for packed, padding-free batches). None when no row restarts, so
    unpacked batches keep the cheaper plain causal path.
    """
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    ids = (step != 1).cumsum(-1)
    return ids if bool((ids[:, -1] > 0).any()) else None


def has_empty_rows(allowed: torch.Tensor | None) -> bool:
    """Whether some query may see no key at all (left padding). allowed: bool [B, 1, T, S] or None."""
    return allowed is not None and not bool(allowed.any(dim=-1).all())


def key_bias(values: torch.Tensor, dt_weight: torch.Tensor, dt_bias: torch.Tensor | None,
             A: torch.Tensor) -> torch.Tensor:
    """b = exp(A * softplus(dt_proj(v))) for keys laid out flat. values: [..., n_kv * d] -> [..., n_bias]"""
    return torch.exp(A * F.softplus(F.linear(values, dt_weight, dt_bias)))


def dynamic_bias(value_states: torch.Tensor, dt_proj: nn.Linear, A: torch.Tensor) -> torch.Tensor:
    """The per-key bias b = exp(A * softplus(dt_proj(v))) from all KV heads of each key.

    value_states: [B, n_kv, S, d] -> [B, n_bias, S]
    """
    b, _, s, _ = value_states.shape
    return key_bias(value_states.transpose(1, 2).reshape(b, s, -1), dt_proj.weight, dt_proj.bias, A).transpose(-1, -2)


def classic_key_bias(bias: torch.Tensor, keep_window_size: int, dynamic_mask_ratio: float,
                     dtype: torch.dtype) -> torch.Tensor:
    """The classic per-key bias after its keep-window rule. bias: [B, n_h, S] -> [B, n_h, S] in ``dtype``.

    Past the keep window, k = int((S - keep_window_size) * ratio) and every key whose bias is strictly
    below the k-th smallest of that (batch row, head) gets the dtype minimum instead. The threshold is
    taken over all S raw biases, padding and not-yet-visible keys included, before any causal mask:
    that is what the checkpoint's code does, so it is what its weights expect. Ties at the threshold
    are all kept, so at most k - 1 keys are dropped. Ratio 0 (the published configs) drops nothing.
    """
    bias = bias.to(dtype)
    s = bias.shape[-1]
    k = int((s - keep_window_size) * dynamic_mask_ratio) if s > keep_window_size else 0
    if k <= 0:
        return bias
    threshold = torch.kthvalue(bias, k, dim=-1, keepdim=True).values
    return bias.masked_fill(bias < threshold, torch.finfo(dtype).min)


def dynamic_mask(bias: torch.Tensor, allowed: torch.Tensor, keep_window_size: int, dtype: torch.dtype,
                 classic: bool = False, dynamic_mask_ratio: float = 0.0) -> torch.Tensor:
    """The additive DMA mask. bias: [B, n_bias, S], allowed: bool [B, 1, T, S] -> [B, n_bias, T, S].

    native: forbidden positions are replaced by the dtype minimum, then each row keeps its
    ``keep_window_size`` largest entries (top-k over keys) when there are more keys than that.
    classic: the bias after ``classic_key_bias`` (the ``dynamic_mask_ratio`` rule) is *added* to the
    0/min causal mask; there is no top-k. A key both dropped and forbidden sums to -inf, as in the
    checkpoint's code; a query whose visible keys were all dropped then attends uniformly to the
    keys that hold exactly the minimum, as the checkpoint's code does too.
    """
    neg = torch.finfo(dtype).min
    b, h, s = bias.shape
    t = allowed.shape[-2]
    if classic:
        additive = torch.zeros(allowed.shape, dtype=dtype, device=bias.device).masked_fill(~allowed, neg)
        return additive + classic_key_bias(bias, keep_window_size, dynamic_mask_ratio, dtype)[:, :, None, :]
    mask = bias[:, :, None, :].expand(b, h, t, s).masked_fill(~allowed, neg).to(dtype)
    if s > keep_window_size:
        top = torch.topk(mask, keep_window_size, dim=-1, largest=True, sorted=False).indices
        kept = torch.zeros_like(mask, dtype=torch.bool).scatter(-1, top, True)
        mask = mask.masked_fill(~kept, neg)
    return mask


def attend_materialised(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor,
                        scale: float, dropout: float = 0.0, training: bool = False) -> torch.Tensor:
    """softmax(q k^T * scale + mask) v, softmax in float32 (or in float64 for float64 inputs).

    q: [B, n_h, T, d]; k, v: [B, n_kv, S, d]; mask: [B, n_h, T, S] -> [B, n_h, T, d]
    """
    groups = q.shape[1] // k.shape[1]
    scores = torch.matmul(q, repeat_kv(k, groups).transpose(2, 3)) * scale + mask
    # Never below float32; never below the input either: float64's minimum cast to float32 is -inf, and a
    # query with no visible key (left padding) would become NaN and spread through 0 * NaN in later layers.
    probs = torch.softmax(scores, dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    probs = F.dropout(probs, p=dropout, training=training)
    return torch.matmul(probs, repeat_kv(v, groups))


def attend_bias_in_qk(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                      allowed: torch.Tensor | None, scale: float, dropout: float = 0.0,
                      equal_head_dims: bool = False) -> torch.Tensor:
    """The same numbers as ``attend_materialised`` for S <= keep window, without a [T, S] float mask.

    q: [B, n_h, T, d]; k, v: [B, n_kv, S, d]; bias: [B, n_kv, S];
    allowed: bool [B, 1, T, S], or None for plain causal attention over the last T of S positions.

    ``equal_head_dims``: pad q and k (d + 1 wide with the bias column) and v with zero columns to one
    width, a multiple of 8. SDPA's flash kernels need q, k and v equally wide; with v one column
    narrower PyTorch falls back to its math kernel, which holds the [B, n_h, T, S] scores after all.
    """
    ones = torch.ones(*q.shape[:-1], 1, dtype=q.dtype, device=q.device)
    q_ext = torch.cat((q, ones), dim=-1)
    k_ext = torch.cat((k, (bias / scale).unsqueeze(-1).to(k.dtype)), dim=-1)
    d = v.shape[-1]
    v_ext = v
    if equal_head_dims:
        width = -(-(d + 1) // 8) * 8
        q_ext, k_ext = F.pad(q_ext, (0, width - d - 1)), F.pad(k_ext, (0, width - d - 1))
        v_ext = F.pad(v, (0, width - d))
    t, s = q.shape[-2], k.shape[-2]
    groups = q.shape[1] // k.shape[1]
    if allowed is None:
        if t == s or t == 1:
            return F.scaled_dot_product_attention(q_ext, k_ext, v_ext, is_causal=t > 1, scale=scale,
                                                  dropout_p=dropout, enable_gqa=groups > 1)[..., :d]
        allowed = causal_padding_mask(None, q.shape[0], t, s, q.device)
    # A row with no visible key gets min everywhere in the reference, i.e. a uniform average of all values.
    empty_rows = ~allowed.any(dim=-1, keepdim=True)  # [B, 1, T, 1]
    has_empty = bool(empty_rows.any())
    safe_mask = allowed | empty_rows if has_empty else allowed
    out = F.scaled_dot_product_attention(q_ext, k_ext, v_ext, attn_mask=safe_mask, scale=scale,
                                         dropout_p=dropout, enable_gqa=groups > 1)[..., :d]
    if has_empty:
        uniform = repeat_kv(v.mean(dim=-2, keepdim=True), groups)
        out = torch.where(empty_rows, uniform, out)
    return out


def attend_topk_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
                        allowed: torch.Tensor | None, keep_window_size: int, scale: float, dropout: float = 0.0,
                        training: bool = False, rows: int | None = None) -> torch.Tensor:
    """``attend_materialised`` with the native top-k mask, one block of query rows at a time.

    q: [B, n_h, T, d]; k, v: [B, n_kv, S, d]; bias: [B, n_kv, S];
    allowed: bool [B, 1, T, S], or None for plain causal attention over the last T of S positions.
    -> [B, n_h, T, d]

    The top-k of a mask row depends on that row alone, so each block builds its rows with the same
    ``dynamic_mask`` call the full mask uses: the same kept keys, ties included, as long as
    ``torch.topk`` picks among equal values the same way for a row whatever the number of rows
    around it (true of the CPU kernel, which handles each row on its own; tested with A = 0, where
    every bias ties). Peak memory is O(B * n_h * rows * S); under autograd every block is
    checkpointed, so the backward pass rebuilds one block's mask at a time instead of keeping
    T x S probabilities for all of them.
    """
    b, n_h, t, _ = q.shape
    s = k.shape[-2]
    groups = n_h // k.shape[1]
    rows = rows or max(1, min(t, CHUNK_ELEMENTS // max(1, b * n_h * s)))
    key_pos = torch.arange(s, device=q.device)

    # repeated once for all blocks rather than inside each one (the same numbers, far fewer copies)
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)

    def block(q_rows: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor,
              rows_allowed: torch.Tensor) -> torch.Tensor:
        mask = repeat_kv(dynamic_mask(bias, rows_allowed, keep_window_size, q.dtype), groups)
        return attend_materialised(q_rows, k, v, mask, scale, dropout, training)

    grad = torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v, bias))
    outputs = []
    for start in range(0, t, rows):
        stop = min(t, start + rows)
        if allowed is None:
            query_pos = torch.arange(s - t + start, s - t + stop, device=q.device)
            rows_allowed = (key_pos[None, :] <= query_pos[:, None])[None, None].expand(b, 1, stop - start, s)
        else:
            rows_allowed = allowed[:, :, start:stop]
        args = (q[:, :, start:stop], k, v, bias, rows_allowed)
        outputs.append(checkpoint(block, *args, use_reentrant=False) if grad else block(*args))
    return torch.cat(outputs, dim=2)


class DogeAttention(nn.Module):
    """Dynamic Mask Attention with grouped-query heads and an optional KV cache."""

    def __init__(self, config, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.classic = config.attention_variant == "classic"
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = config.head_dim
        self.scaling = self.head_dim ** -0.5
        self.keep_window_size = config.keep_window_size
        # classic only; DogeConfig may not declare the field, and a config without it means 0
        self.dynamic_mask_ratio = check_dynamic_mask_ratio(getattr(config, "dynamic_mask_ratio", 0.0) or 0.0)
        self.attention_dropout = float(config.attention_dropout or 0.0)
        self.backend = "auto"
        self.handwritten_grad = True  # see DogePreTrainedModel.set_handwritten_grad
        bias = config.attention_bias
        n_bias = self.num_heads if self.classic else self.num_kv_heads

        self.q_proj = nn.Linear(config.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(config.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.A = nn.Parameter(torch.zeros(n_bias))
        self.dt_proj = nn.Linear(self.num_kv_heads * self.head_dim, n_bias, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, config.hidden_size, bias=bias)
        if not self.classic:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)

    def project(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """x: [B, T, H] -> q [B, n_h, T, d], k and v [B, n_kv, T, d] (q and k normed and rotated)."""
        b, t, _ = x.shape
        if self.handwritten_grad and handwritten_grad.training(x, self.q_proj.weight):
            q, k, v = self.project_together(x).view(b, t, -1, self.head_dim).split(
                (self.num_heads, self.num_kv_heads, self.num_kv_heads), dim=2)
            v = v.transpose(1, 2)
        else:
            q = self.q_proj(x).view(b, t, -1, self.head_dim)
            k = self.k_proj(x).view(b, t, -1, self.head_dim)
            v = self.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
        if not self.classic:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = q.transpose(1, 2), k.transpose(1, 2)
        if self.handwritten_grad and handwritten_grad.training(q, k, cos):
            cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
            return handwritten_grad.rotary(q, cos, sin), handwritten_grad.rotary(k, cos, sin), v
        return apply_rotary(q, cos, sin), apply_rotary(k, cos, sin), v

    def project_together(self, x: torch.Tensor) -> torch.Tensor:
        """q, k and v projections as one product on the stacked weights. x: [B, T, H] -> [B, T, (n_h + 2 n_kv) * d]

        Under autograd this is faster than three products: the narrow k and v weights alone use the
        CPU's matrix kernels poorly, and the backward pass makes one input gradient instead of adding three.
        """
        projections = (self.q_proj, self.k_proj, self.v_proj)
        weight = torch.cat([p.weight for p in projections])
        bias = None if self.q_proj.bias is None else torch.cat([p.bias for p in projections])
        return F.linear(x, weight, bias)

    def forward(self, x: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                allowed: torch.Tensor | None = None, plain_causal: bool = False,
                past_key_values: KVCacheLike | None = None) -> torch.Tensor:
        """x: [B, T, H] -> [B, T, H].

        allowed: bool [B, 1, T, S] from ``causal_padding_mask``; ``plain_causal=True`` promises it is
        plain causal (no padding, no packed sequences), which lets the bias-in-q.k path skip the mask.
        """
        b, t, _ = x.shape
        q, k, v = self.project(x, *position_embeddings)
        if past_key_values is not None:
            k, v = past_key_values.update(k, v, self.layer_idx)
        s = k.shape[-2]
        bias = dynamic_bias(v, self.dt_proj, self.A)
        dropout = self.attention_dropout if self.training else 0.0
        if self.backend == "chunked" and not self.classic:
            # no [T, S] tensor at all for plain causal input: every block makes its own rows
            rows_allowed = None if allowed is None or plain_causal else allowed
            if s <= self.keep_window_size:
                out = attend_bias_in_qk(q, k, v, bias, rows_allowed, self.scaling, dropout, equal_head_dims=True)
            else:
                out = attend_topk_chunked(q, k, v, bias, rows_allowed, self.keep_window_size, self.scaling,
                                          dropout, self.training)
            return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
        if allowed is None:
            allowed = causal_padding_mask(None, b, t, s, x.device)
        if self.backend == "auto" and not self.classic and s <= self.keep_window_size:
            rows_allowed = None if plain_causal else allowed
            fast_backward = self.handwritten_grad and dropout == 0.0 and handwritten_grad.training(q, k, v, bias)
            if fast_backward and not has_empty_rows(rows_allowed):
                # explicit products with a hand-written backward: under autograd this beats SDPA's math
                # kernel, which the extra bias column forces on a CPU anyway
                out = handwritten_grad.causal_attention(q, k, v, bias, rows_allowed, self.scaling)
            else:
                out = attend_bias_in_qk(q, k, v, bias, rows_allowed, self.scaling, dropout)
        else:
            mask = dynamic_mask(bias, allowed, self.keep_window_size, x.dtype, classic=self.classic,
                                dynamic_mask_ratio=self.dynamic_mask_ratio)
            if not self.classic:
                mask = repeat_kv(mask, self.num_heads // self.num_kv_heads)
            out = attend_materialised(q, k, v, mask, self.scaling, dropout, self.training)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
