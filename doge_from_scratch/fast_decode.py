"""A fast CPU decoder for the same model (lesson 05): the numbers of ``DogeForCausalLM``, less of the overhead.

Decoding one token at batch 1 is memory bound: every weight is read once to multiply one vector, so
the time of those matrix-vector products is the floor. Everything else is overhead to remove:

- fused weights: q/k/v are one [(n_h + 2 n_kv) d, H] matrix and gate/up one [2 I, H] matrix, so a
  layer runs 4 products instead of 7 (fewer calls, and each reads its input once);
- a preallocated cache for keys, values *and the dynamic bias*. The bias b_s = exp(A softplus(dt_proj
  v_s)) depends on key s alone, so it is computed once when the key arrives instead of for every cached
  key at every step (the teaching model recomputes it, as the reference does: same numbers);
- no mask: while the cache fits in ``keep_window_size`` a decoding query sees every cached key, so the
  bias row itself is the additive mask (unfilled or padded slots hold the dtype minimum, exactly what
  the reference writes there). Classic attention (generations A/B) with ``dynamic_mask_ratio`` 0, as
  the published configs have it, never masks a visible key, so there the same holds at any length;
- the per-token path is a flat loop over tuples of tensors (no module calls, no ``causal_padding_mask``),
  with q and k normed (native) and rotated together, and grouped-query attention done by folding the
  g query heads of a group into SDPA's query-length axis (no ``repeat_kv`` copy; a classic bias, one
  per query head, folds the same way);
- optional bfloat16 weights (half the bytes to read; the cache stays float32, which holds bfloat16
  values exactly, and decode attention runs in float32 as fused attention kernels accumulate);
- optional ``torch.compile``: ``compile=True`` compiles the whole per-token step (fastest per token, but
  compile time grows with the layer count), ``compile="layer"`` one layer function reused by all layers;
- optional int8 weights (``weights="int8"``, see ``int8.py``): a quarter of float32's bytes per token. The
  per-token step of Doge-20M then measured 435-496 tok/s eager and 573 compiled (1 thread): with the weights
  4x cheaper, the ~150 small operations of a token are most of its time.

Prefill (the prompt), keep-window overflow (more keys than ``keep_window_size``: the native top-k, or
the classic ratio rule when the ratio is not 0) and padded rows go through the core attention
functions, so they inherit the teaching model's numbers.
``FastDoge`` is tested equal to ``DogeForCausalLM`` (1e-5 in float32) in ``tests/test_generation.py``.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.optim.optimizer import register_optimizer_step_post_hook

from .attention import (attend_bias_in_qk, attend_materialised, causal_padding_mask, dynamic_mask, key_bias,
                        repeat_kv)
from .cache import StaticKVCache, shared_prefix_length, split_shared_prefix
from .int8 import Int8Weight, linear, quantise
from .layers import rms_norm, rotate
from .model import DogeForCausalLM
from .moe import ACT_FNS, route_tokens, routed_experts

WEIGHTS = ("float", "int8")
# the matrices int8 decoding stores as int8: every weight read per token but the tiny dt_proj and the MoE tables
INT8_MATRICES = ("qkv", "o", "gate_up", "down")
# a batched prefill computes a prompt prefix every row shares once, from this many tokens on (FastStepper.prefill)
MIN_SHARED_PREFIX = 16


@dataclass
class PackedWeights:
    """One decoder layer's tensors, fused and cast for decoding."""

    input_norm: torch.Tensor  # [H]
    qkv: torch.Tensor  # [(n_h + 2 n_kv) d, H]
    qkv_bias: torch.Tensor | None
    # [n_h + n_kv, d]: q_norm.weight for each query head, then k_norm.weight per KV head; None for classic
    qk_norm: torch.Tensor | None
    dt_weight: torch.Tensor  # [n_bias, n_kv d]; n_bias = n_kv (native) or n_h (classic)
    dt_bias: torch.Tensor | None
    A: torch.Tensor  # [n_bias]
    o: torch.Tensor  # [H, n_h d]
    o_bias: torch.Tensor | None
    input_residual: torch.Tensor  # [H]
    post_norm: torch.Tensor  # [H]
    gate_up: torch.Tensor  # [2 I, H]
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor  # [H, I]
    down_bias: torch.Tensor | None
    post_residual: torch.Tensor  # [H]
    router: torch.Tensor | None = None  # MoE: [2K, H]
    down_embed: torch.Tensor | None = None  # MoE: [E, H]
    up_embed: torch.Tensor | None = None  # MoE: [E, H]


def _cast(t: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor | None:
    return None if t is None else t.detach().to(dtype).contiguous()


def _cat_bias(*linears, dtype) -> torch.Tensor | None:
    if linears[0].bias is None:
        return None
    return torch.cat([lin.bias.detach() for lin in linears]).to(dtype)


def fuse_layer(layer, dtype: torch.dtype) -> PackedWeights:
    """Fused tensors of one ``DogeDecoderLayer`` (native or classic attention)."""
    attn, mlp = layer.self_attn, layer.mlp
    qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]).detach()
    qk_norm = None if attn.classic else torch.cat([attn.q_norm.weight.detach().expand(attn.num_heads, -1),
                                                   attn.k_norm.weight.detach().expand(attn.num_kv_heads, -1)])
    fused = PackedWeights(
        input_norm=_cast(layer.input_layernorm.weight, dtype),
        qkv=_cast(qkv, dtype), qkv_bias=_cat_bias(attn.q_proj, attn.k_proj, attn.v_proj, dtype=dtype),
        qk_norm=_cast(qk_norm, dtype),
        dt_weight=_cast(attn.dt_proj.weight, dtype), dt_bias=_cast(attn.dt_proj.bias, dtype),
        A=_cast(attn.A, dtype),
        o=_cast(attn.o_proj.weight, dtype), o_bias=_cast(attn.o_proj.bias, dtype),
        input_residual=_cast(layer.input_residual, dtype),
        post_norm=_cast(layer.post_attention_layernorm.weight, dtype),
        gate_up=_cast(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]), dtype),
        gate_up_bias=_cat_bias(mlp.gate_proj, mlp.up_proj, dtype=dtype),
        down=_cast(mlp.down_proj.weight, dtype), down_bias=_cast(mlp.down_proj.bias, dtype),
        post_residual=_cast(layer.post_attention_residual, dtype),
    )
    if layer.is_moe:
        fused.router = _cast(mlp.router_gate.weight, dtype)
        fused.down_embed = _cast(mlp.down_embed.weight, dtype)
        fused.up_embed = _cast(mlp.up_embed.weight, dtype)
    return fused


def layer_arguments(layer: PackedWeights) -> tuple:
    """A fused layer's tensors in ``FastDoge._decode_layer``'s argument order."""
    args = (layer.input_norm, layer.qkv, layer.qkv_bias, layer.qk_norm, layer.dt_weight, layer.dt_bias, layer.A,
            layer.o, layer.o_bias, layer.input_residual, layer.post_norm, layer.gate_up, layer.gate_up_bias,
            layer.down, layer.down_bias, layer.post_residual)
    if layer.router is not None:
        args += (layer.router, layer.down_embed, layer.up_embed)
    return args


class FastDoge:
    """Inference-only copy of a ``DogeForCausalLM`` (native or classic attention) with fused weights.

    ``FastDoge(model, dtype=torch.bfloat16)`` then ``generation.generate(fast, ids, max_new_tokens=...)``
    (``model.generate`` builds and keeps one itself, see ``fast_decoder_for``). The source model is not
    modified and may be dropped.
    """

    def __init__(self, model, dtype: torch.dtype | None = None, compile: bool | str = False,
                 weights: str = "float") -> None:
        if weights not in WEIGHTS:
            raise ValueError(f"FastDoge weights={weights!r}: choose one of {WEIGHTS}")
        config = model.config
        self.weights = weights
        self.config = config
        attention = model.model.layers[0].self_attn
        self.classic = attention.classic
        self.dynamic_mask_ratio = attention.dynamic_mask_ratio
        # past the keep window the mask must select keys: the native top-k, or a classic ratio above 0
        self.window_needs_mask = not self.classic or self.dynamic_mask_ratio > 0
        self.dtype = dtype or next(model.parameters()).dtype
        self.device = next(model.parameters()).device
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.groups = self.num_heads // self.num_kv_heads
        self.num_bias = self.num_heads if self.classic else self.num_kv_heads
        self.scaling = self.head_dim ** -0.5
        self.keep_window_size = config.keep_window_size
        self.eps = config.rms_norm_eps
        self.act_fn = ACT_FNS[config.hidden_act]
        self.is_moe = config.is_moe
        if self.is_moe:
            self.num_keys = config.num_keys
            self.top_k = config.num_experts_per_tok
            self.norm_topk_prob = config.norm_topk_prob
            self.router_split = config.moe_router_split
        self.intermediate = config.intermediate_size
        self.rotary = model.model.rotary_emb
        with torch.no_grad():
            self.embed = _cast(model.model.embed_tokens.weight, self.dtype)
            lm_head = model.lm_head.weight
            tied = lm_head.data_ptr() == model.model.embed_tokens.weight.data_ptr()
            self.lm_head = self.embed if tied else _cast(lm_head, self.dtype)
            self.lm_head_bias = _cast(model.lm_head.bias, self.dtype)  # None in every published config
            self.final_norm = _cast(model.model.norm.weight, self.dtype)
            self.layers = [fuse_layer(layer, self.dtype) for layer in model.model.layers]
            if weights == "int8":
                self._quantise_int8(model, tied)
        self.neg = torch.finfo(self.dtype).min
        self.layer_args = [layer_arguments(layer) for layer in self.layers]
        self.compiled = compile
        self.share_prefix = True  # see FastStepper.shared_prefix
        self._layer_impl = self._decode_layer
        self._step_impl = self._decode_step
        if compile == "layer":
            self._layer_impl = torch.compile(self._decode_layer, dynamic=False)
        elif compile:
            self._step_impl = torch.compile(self._decode_step, dynamic=False)
        self._rope_table: tuple[torch.Tensor, torch.Tensor] | None = None

    def rope_for(self, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos/sin [B, 1, d] for one new position per row.

        Below ``max_position_embeddings`` the RoPE frequencies are fixed, so the rows come from a table
        built once by the model's own rotary module; past it (dynamic NTK) they are recomputed each step.
        """
        limit = self.rotary.max_positions
        like = torch.empty(0, dtype=self.dtype, device=self.device)  # the rotary module reads dtype and device
        if self._rope_table is None:
            cos, sin = self.rotary(like, torch.arange(limit, device=self.device)[None])
            self._rope_table = (cos[0], sin[0])
        if int(position_ids.max()) < limit:
            cos, sin = self._rope_table
            return cos.index_select(0, position_ids)[:, None], sin.index_select(0, position_ids)[:, None]
        cos, sin = self.rotary(like, position_ids[:, None])
        return cos, sin

    def _quantise_int8(self, model, tied: bool) -> None:
        """Replace the per-token weight matrices by ``Int8Weight`` (quantised from the source's own weights)."""
        for fused, layer in zip(self.layers, model.model.layers):
            attn, mlp = layer.self_attn, layer.mlp
            sources = {"qkv": torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                       "o": attn.o_proj.weight, "gate_up": torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                       "down": mlp.down_proj.weight}
            for name in INT8_MATRICES:
                setattr(fused, name, quantise(sources[name]))
        self.lm_head = quantise(model.lm_head.weight)
        if tied:  # the embedding is the LM head's rows: look them up dequantised
            self.embed = self.lm_head
        self.layer_args = [layer_arguments(layer) for layer in self.layers]

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        """ids: [...] -> [..., H] in the decoder's dtype."""
        if isinstance(self.embed, Int8Weight):
            return self.embed.rows(ids, self.dtype)
        return F.embedding(ids, self.embed)

    @torch.no_grad()
    def logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Logits of every position of unpadded rows (one prefill pass). input_ids: [B, T] -> [B, T, V] float32."""
        b, t = input_ids.shape
        positions = torch.arange(t, device=input_ids.device).expand(b, t)
        return self.forward_tokens(self.make_stepper(b, t), input_ids, positions, None, last_only=False)

    # -- public ----------------------------------------------------------------------------------
    def make_stepper(self, batch_size: int, max_length: int) -> FastStepper:
        return FastStepper(self, batch_size, max_length)

    def weight_bytes(self) -> int:
        tensors = [self.embed, self.final_norm] + ([] if self.lm_head is self.embed else [self.lm_head])
        for layer in self.layers:
            tensors += [t for t in vars(layer).values() if isinstance(t, (torch.Tensor, Int8Weight))]
        return sum(t.nbytes() if isinstance(t, Int8Weight) else t.numel() * t.element_size() for t in tensors)

    # -- building blocks -------------------------------------------------------------------------
    def rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The teaching RMSNorm (``layers.rms_norm``). x: [..., H] -> [..., H]"""
        return rms_norm(x, weight, self.eps)

    def mlp(self, layer: PackedWeights, h: torch.Tensor) -> torch.Tensor:
        """h: [B, T, H] (normed) -> [B, T, H]: shared SiLU-gated MLP (+ routed experts for MoE)."""
        gate, up = linear(h, layer.gate_up, layer.gate_up_bias).split(self.intermediate, dim=-1)
        out = linear(self.act_fn(gate) * up, layer.down, layer.down_bias)
        if layer.router is not None:
            routed = self._routed_experts(h.reshape(-1, h.shape[-1]), layer.router, layer.down_embed, layer.up_embed)
            out = out + routed.view(h.shape)
        return out

    # -- one pass over T tokens (prefill, or decode when padded / past the keep window) ----------
    def forward_tokens(self, state: FastStepper, input_ids: torch.Tensor, position_ids: torch.Tensor,
                       attention_mask: torch.Tensor | None, last_only: bool = True) -> torch.Tensor:
        """input_ids: [B, T] written at cache slots [start, start + T) -> last-position logits [B, V] float32
        (every position's, [B, T, V], when ``last_only`` is False).

        attention_mask: [B, start + T] (1 = real) or None for an unpadded batch.
        """
        b, t = input_ids.shape
        start, end = state.length, state.length + t
        if end > state.max_length:
            raise ValueError(f"the cache holds {state.max_length} positions; cannot reach {end}")
        x = self.embed_tokens(input_ids)
        cos, sin = self.rotary(x, position_ids)
        cos, sin = cos.unsqueeze(2), sin.unsqueeze(2)
        allowed = causal_padding_mask(attention_mask, b, t, end, x.device)
        padded = attention_mask is not None
        real_new = None if attention_mask is None else attention_mask[:, None, start:end].bool()  # [B, 1, T]
        nh, nkv, d = self.num_heads, self.num_kv_heads, self.head_dim
        for i, layer in enumerate(self.layers):
            h = self.rms(x, layer.input_norm)
            qkv = linear(h, layer.qkv, layer.qkv_bias)
            qk = qkv[..., :(nh + nkv) * d].view(b, t, nh + nkv, d)
            qk = rotate(qk if layer.qk_norm is None else self.rms(qk, layer.qk_norm), cos, sin)
            v = qkv[..., (nh + nkv) * d:].view(b, t, nkv, d)
            q = qk[:, :, :nh].transpose(1, 2)
            keys, values = state.cache.update(qk[:, :, nh:].transpose(1, 2), v.transpose(1, 2), i)
            bias = key_bias(v.reshape(b, t, nkv * d), layer.dt_weight, layer.dt_bias, layer.A).transpose(1, 2)
            if real_new is not None and not self.classic:
                # native: a padding key's bias is the masked value itself. Classic keeps the raw bias,
                # because its ratio rule ranks every key, padding included, before the padding mask.
                bias = bias.masked_fill(~real_new, self.neg)
            state.bias[i][:, :, start:end] = bias
            dt = x.dtype
            keys, values = keys.to(dt), values.to(dt)
            if self.classic:
                mask = dynamic_mask(state.bias[i][:, :, :end].to(dt), allowed, self.keep_window_size, x.dtype,
                                    classic=True, dynamic_mask_ratio=self.dynamic_mask_ratio)
                out = attend_materialised(q, keys, values, mask, self.scaling)
            elif end <= self.keep_window_size:
                out = attend_bias_in_qk(q, keys, values, state.bias[i][:, :, :end].to(dt), allowed if padded else None,
                                   self.scaling)
            else:
                mask = dynamic_mask(state.bias[i][:, :, :end].to(dt), allowed, self.keep_window_size, x.dtype)
                out = attend_materialised(q, keys, values, repeat_kv(mask, self.groups), self.scaling)
            x = layer.input_residual * x + linear(out.transpose(1, 2).reshape(b, t, nh * d), layer.o, layer.o_bias)
            x = layer.post_residual * x + self.mlp(layer, self.rms(x, layer.post_norm))
        return linear(self.rms(x[:, -1] if last_only else x, self.final_norm), self.lm_head, self.lm_head_bias).float()

    # -- the hot path: one new token per row, no padding, cache within the keep window ----------
    def _decode_step(self, tokens: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor,
                     keys: list[torch.Tensor], values: list[torch.Tensor], bias: list[torch.Tensor]) -> torch.Tensor:
        """tokens: [B]; cos/sin: [B, 1, d]; slot: [1] -> logits [B, V] float32, caches written at ``slot``."""
        x = self.embed_tokens(tokens)  # [B, H]
        for i, args in enumerate(self.layer_args):
            x = self._layer_impl(x, cos, sin, slot, keys[i], values[i], bias[i], *args)
        return linear(self.rms(x, self.final_norm), self.lm_head, self.lm_head_bias).float()

    def _decode_layer(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, slot: torch.Tensor,
                      keys: torch.Tensor, values: torch.Tensor, bias: torch.Tensor,
                      input_norm, qkv_w, qkv_b, qk_norm, dt_w, dt_b, A, o_w, o_b, input_residual,
                      post_norm, gate_up_w, gate_up_b, down_w, down_b, post_residual,
                      router=None, down_embed=None, up_embed=None) -> torch.Tensor:
        """One decoder layer for one new token per row. x: [B, H] -> [B, H].

        keys/values: [B, n_kv, S_max, d], bias: [B, n_bias, S_max], written at ``slot`` in place.
        Attention reads the whole preallocated buffers: unfilled slots carry the dtype minimum as bias
        (the reference's masked value), so they get exactly zero weight and shapes never change, which
        lets ``torch.compile`` build this function once and reuse it for every layer and step.
        Tensors come as arguments (not attributes) for the same reason.
        """
        b = x.shape[0]
        nh, nkv, d, g = self.num_heads, self.num_kv_heads, self.head_dim, self.groups
        nqk = (nh + nkv) * d
        qkv = linear(self.rms(x, input_norm), qkv_w, qkv_b)
        qk = qkv[:, :nqk].view(b, nh + nkv, d)
        qk = rotate(qk if qk_norm is None else self.rms(qk, qk_norm), cos, sin)
        v = qkv[:, nqk:]
        keys.index_copy_(2, slot, qk[:, nh:, None].float())
        values.index_copy_(2, slot, v.view(b, nkv, 1, d).float())
        bias.index_copy_(2, slot, key_bias(v, dt_w, dt_b, A)[:, :, None].float())
        # the g query heads of a KV group ride in SDPA's query-length axis: [B, n_kv, g, d] (no repeat_kv),
        # the bias row is the additive mask: [B, n_kv, 1, S] shared by the group (native) or one row per
        # query head, [B, n_kv, g, S] (classic); float32 throughout (small bfloat16 products are slow on CPUs)
        out = F.scaled_dot_product_attention(qk[:, :nh].view(b, nkv, g, d).float(), keys, values,
                                             attn_mask=bias.view(b, nkv, -1, bias.shape[-1]),
                                             scale=self.scaling).to(x.dtype)
        x = input_residual * x + linear(out.reshape(b, nh * d), o_w, o_b)
        h = self.rms(x, post_norm)
        gate, up = linear(h, gate_up_w, gate_up_b).split(self.intermediate, dim=-1)
        m = linear(self.act_fn(gate) * up, down_w, down_b)
        if router is not None:
            m = m + self._routed_experts(h, router, down_embed, up_embed)
        return post_residual * x + m

    def _routed_experts(self, h: torch.Tensor, router, down_embed, up_embed) -> torch.Tensor:
        """h: [N, H] normed tokens -> [N, H] weighted sum of their top-k rank-one experts."""
        weights, experts, _ = route_tokens(F.linear(h, router)[:, None], self.num_keys, self.top_k,
                                           self.norm_topk_prob, self.router_split)
        return routed_experts(h, weights, experts, down_embed, up_embed, self.act_fn)


def _mask_or_ones(input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    return attention_mask if attention_mask is not None else torch.ones_like(input_ids)


class FastStepper:
    """Per-call state of a ``FastDoge`` decode: the teaching model's ``StaticKVCache`` for keys and values,
    and a preallocated bias row per layer."""

    def __init__(self, fast: FastDoge, batch_size: int, max_length: int) -> None:
        # float32 storage whatever the weights: bfloat16 keys/values/bias are exact in it, and the
        # decode attention then runs in float32 (see FastDoge._decode_layer)
        dtype, device = torch.float32, fast.device
        self.fast = fast
        self.cache = StaticKVCache.for_model(fast.config, batch_size, max_length, dtype, device)
        # the per-token step reads and writes the whole buffers (fixed shapes, see FastDoge._decode_layer)
        self.keys, self.values = self.cache.keys, self.cache.values
        # unfilled slots hold the dtype minimum: exactly the reference's masked value
        bias_shape = (batch_size, fast.num_bias, max_length)
        self.bias = [torch.full(bias_shape, fast.neg, dtype=dtype, device=device) for _ in fast.layers]
        self.max_length = max_length
        self.padded = False

    @property
    def length(self) -> int:
        """Positions filled so far (the same in every layer)."""
        return self.cache.get_seq_length()

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.keys + self.values + self.bias)

    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor) -> torch.Tensor:
        """input_ids, attention_mask (None: unpadded), position_ids: [B, T], left padded -> last logits [B, V]."""
        self.padded = attention_mask is not None
        shared = self.shared_prefix(input_ids, attention_mask)
        if shared:
            return self._prefill_shared(input_ids, attention_mask, position_ids, shared)
        return self.fast.forward_tokens(self, input_ids, position_ids, attention_mask)

    def shared_prefix(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> int:
        """How many leading prompt tokens the prefill computes once for all rows (0: none).

        Only for native attention while the whole generation fits in the keep window: there every query sees every
        real key, so moving the padding from before the prefix to after it changes nothing but round-off. Past the
        window a query keeps its top-k keys by bias, and equal biases (a repeated token) make that choice depend on
        the columns' order. Nor for a MoE routed the reference's way: its router scores mix the halves of different
        tokens of the batch (``moe.split_router_logits``), so a token's experts depend on the whole prefill's layout.
        Short prefixes are not worth the extra pass.
        """
        fast = self.fast
        mixes_tokens = fast.is_moe and fast.router_split == "reference"
        if (not fast.share_prefix or fast.classic or mixes_tokens or input_ids.shape[0] < 2
                or self.max_length > fast.keep_window_size):
            return 0
        shared = shared_prefix_length(input_ids, _mask_or_ones(input_ids, attention_mask))
        return shared if shared >= MIN_SHARED_PREFIX else 0

    def _prefill_shared(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                        position_ids: torch.Tensor, shared: int) -> torch.Tensor:
        """Prefill whose first ``shared`` real tokens (the same in every row) run once, as one row.

        The cache then holds [prefix | padding | each row's rest]: the prefix's keys, values and biases are copied
        into every row, and the rest of each prompt (left padded after the prefix) is prefilled on top of them.
        Positions are the real tokens' own, so every later step sees the keys it would have seen.
        """
        prefix, rest, rest_mask = split_shared_prefix(input_ids, _mask_or_ones(input_ids, attention_mask), shared)
        one = FastStepper(self.fast, 1, shared)
        # a prefix's positions are 0 .. shared - 1 in every row: positions count real tokens only
        self.fast.forward_tokens(one, prefix, torch.arange(shared, device=prefix.device)[None], None)
        for layer in range(len(self.keys)):
            self.keys[layer][:, :, :shared] = one.keys[layer]
            self.values[layer][:, :, :shared] = one.values[layer]
            self.bias[layer][:, :, :shared] = one.bias[layer]
        self.cache.mark_filled(shared)
        mask = torch.cat((rest_mask.new_ones(rest.shape[0], shared), rest_mask), dim=1)
        self.padded = True
        return self.fast.forward_tokens(self, rest, position_ids[:, -rest.shape[1]:], mask)

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
             position_ids: torch.Tensor) -> torch.Tensor:
        """tokens: [B]; position_ids: [B] -> logits [B, V]."""
        fast = self.fast
        # native attention stored a padding key's bias as the masked value itself (``forward_tokens``), so the
        # bias row still is the whole mask; classic attention adds its bias to a padding mask it must build
        if self.padded and fast.classic or fast.window_needs_mask and self.length + 1 > fast.keep_window_size:
            return fast.forward_tokens(self, tokens[:, None], position_ids[:, None], attention_mask)
        if self.length + 1 > self.max_length:
            raise ValueError(f"the cache holds {self.max_length} positions; cannot add another")
        cos, sin = fast.rope_for(position_ids)
        slot = torch.tensor([self.length], device=tokens.device)
        logits = fast._step_impl(tokens, cos, sin, slot, self.keys, self.values, self.bias)
        self.cache.mark_filled(self.length + 1)
        return logits


# -- the default decoder of ``generation.generate`` ------------------------------------------------------------
_FAST_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _forget_fast_copies(optimizer, args, kwargs) -> None:
    # the fused optimizers write parameters without bumping their version counters, so after any optimizer
    # step no copy is trusted (each is rebuilt on its model's next generate: one pass over the weights)
    _FAST_COPIES.clear()


register_optimizer_step_post_hook(_forget_fast_copies)


def why_not_fast(model) -> str | None:
    """Why ``generate`` must run the teaching model itself, or None when the fast decoder gives its numbers.

    The fast copy is built from the model's parameters as they are now, so it serves inference only: a
    model in training mode (dropout on, weights about to move) or a subclass that may change the
    forward pass keeps the teaching path.
    """
    if type(model) is not DogeForCausalLM:
        return f"{type(model).__name__} is not a plain DogeForCausalLM"
    if model.training:
        return "the model is in training mode (call model.eval() for the fast decoder)"
    if model._forward_hooks or model._forward_pre_hooks:
        return "the model has forward hooks, which the fast decoder would skip"
    return None


def _weights_signature(model) -> tuple:
    # in-place writes through the parameter (load_state_dict, randomize_, the for-loop/foreach optimizers) bump
    # its version counter, .to() and ``p.data = ...`` change the storage; optimizer steps also clear the copies.
    # Writes through ``p.data`` in place are invisible to both: after those, pass decoder="teaching" or call
    # ``forget_fast_copy(model)``.
    return tuple((p.data_ptr(), p._version, p.dtype, p.device) for p in model.parameters())


def fast_decoder_for(model) -> FastDoge:
    """The model's ``FastDoge`` (float weights, the model's dtype), rebuilt only when its weights changed.

    Kept in a weak dictionary, so it lives as long as the model and costs one fused copy of the weights.
    """
    signature = _weights_signature(model)
    cached = _FAST_COPIES.get(model)
    if cached is not None and cached[0] == signature:
        return cached[1]
    _FAST_COPIES.pop(model, None)  # free the stale copy before building the new one
    fast = FastDoge(model)
    _FAST_COPIES[model] = (signature, fast)
    return fast


def forget_fast_copy(model) -> None:
    """Drop the model's cached fast copy (after writing its weights in a way the version counters miss)."""
    _FAST_COPIES.pop(model, None)
