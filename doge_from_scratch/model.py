"""The full Doge model (lesson 04): decoder layers with learnable residual scales, the stack, the LM head.

The classes derive from ``transformers.PreTrainedModel`` only so that TRL's trainers and the Hugging
Face tooling accept them (they want a config class, ``base_model_prefix``, input/output embedding
getters and ``_init_weights``). All of the arithmetic is in this package; loading and saving go
through our own ``checkpoint`` module, not transformers' loader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.utils import ModelOutput

from . import handwritten_grad
from .attention import BACKENDS, DogeAttention, causal_padding_mask, packed_sequence_ids
from .cache import KVCache
from .checkpoint import load_pretrained, save_pretrained
from .config import DogeConfig
from .layers import RMSNorm, RotaryEmbedding
from .moe import DogeCDMoE, DogeMLP, load_balancing_loss


class DogeDecoderLayer(nn.Module):
    """x = r_in * x + attn(norm(x));  x = r_post * x + mlp(norm(x)), with r_* learnable [H] vectors.

    Scaling the skip path (instead of fixing it at 1) lets each layer decide how much of the stream
    to keep; both vectors start at ones, where the layer is an ordinary pre-norm block.
    """

    def __init__(self, config: DogeConfig, layer_idx: int) -> None:
        super().__init__()
        self.hidden_dropout = float(config.hidden_dropout)
        self.is_moe = config.is_moe
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.self_attn = DogeAttention(config, layer_idx)
        self.input_residual = nn.Parameter(torch.ones(config.hidden_size))
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mlp = DogeCDMoE(config) if config.is_moe else DogeMLP(config)
        self.post_attention_residual = nn.Parameter(torch.ones(config.hidden_size))

    def forward(self, x: torch.Tensor, position_embeddings, allowed=None, plain_causal: bool = False,
                past_key_values=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: [B, T, H] -> (x [B, T, H], router halves [2, B*T, K] or None); arguments as ``DogeAttention``'s."""
        h = self.self_attn(self.input_layernorm(x), position_embeddings, allowed, plain_causal, past_key_values)
        x = self.input_residual * x + F.dropout(h, self.hidden_dropout, self.training)
        h = self.mlp(self.post_attention_layernorm(x))
        router = None
        if self.is_moe:
            h, router = h
        x = self.post_attention_residual * x + F.dropout(h, self.hidden_dropout, self.training)
        return x, router


class DogePreTrainedModel(PreTrainedModel):
    config_class = DogeConfig
    base_model_prefix = "model"
    supports_gradient_checkpointing = False
    _no_split_modules = ["DogeDecoderLayer"]
    _supports_sdpa = True

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            module.weight.normal_(0.0, std)
            if module.bias is not None:
                module.bias.zero_()
        elif isinstance(module, nn.Embedding):
            module.weight.normal_(0.0, std)
            if module.padding_idx is not None:
                module.weight[module.padding_idx].zero_()
        elif isinstance(module, RMSNorm):
            module.weight.fill_(1.0)
        elif isinstance(module, DogeAttention):
            module.A.zero_()  # exp(0 * softplus(.)) = 1: no dynamic bias at initialisation
        elif isinstance(module, DogeDecoderLayer):
            module.input_residual.fill_(1.0)
            module.post_attention_residual.fill_(1.0)

    def set_attention_backend(self, backend: str) -> None:
        """How every attention layer computes its forward pass: one of ``attention.BACKENDS``.

        ``"auto"`` (the bias inside q.k and PyTorch's SDPA up to the keep window, the materialised mask
        past it), ``"materialised"`` (the [B, heads, T, S] mask, the reference's way) or ``"chunked"``
        (bias inside q.k up to the keep window, then the top-k mask a block of query rows at a time).
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; choose one of {BACKENDS}")
        for module in self.modules():
            if isinstance(module, DogeAttention):
                module.backend = backend

    def set_handwritten_grad(self, enabled: bool) -> None:
        """Use the hand-written backward passes of ``handwritten_grad`` (RMSNorm, RoPE, attention, LM head +
        loss) while training in float32, or not.

        Off, autograd differentiates every operation as the reference does, which gives its gradients to
        the last bit; on (the default), training is faster and the gradients agree to float32 round-off.
        Inference is the same either way.
        """
        for module in self.modules():
            if hasattr(module, "handwritten_grad"):
                module.handwritten_grad = bool(enabled)

    @classmethod
    def from_pretrained(cls, folder, *, dtype: torch.dtype | None = None, device: str | torch.device = "cpu",
                        **config_overrides):
        """Load a Hugging Face model folder (any Doge generation, safetensors only). See ``checkpoint``."""
        return load_pretrained(cls, folder, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, folder, state_dict: dict | None = None, max_shard_size: int | str | None = None,
                        **_ignored) -> None:
        """Write ``config.json`` and safetensors weights that transformers loads into the same model."""
        save_pretrained(self, folder, state_dict=state_dict, max_shard_size=max_shard_size)


@dataclass
class DogeOutput(ModelOutput):
    """What the models return. logits: [B, T, V]; hidden states: [B, T, H]."""

    loss: torch.Tensor | None = None
    aux_loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    past_key_values: Any = None
    router_logits: tuple[torch.Tensor, ...] | None = None


def check_token_ids(input_ids: torch.Tensor, vocab_size: int) -> None:
    """Raise ValueError naming the first id outside [0, vocab_size) in ``input_ids`` [B, T].

    The embedding lookup would fail with an unnamed index error on a CPU and a device-side assert on a GPU;
    min and max are two cheap reductions, and only a bad tensor pays for finding which id it was.
    """
    if input_ids.numel() == 0:
        return
    if int(input_ids.min()) >= 0 and int(input_ids.max()) < vocab_size:
        return
    bad = ((input_ids < 0) | (input_ids >= vocab_size)).nonzero()[0].tolist()
    raise ValueError(f"input_ids{bad} = {int(input_ids[tuple(bad)])} is outside the vocabulary: "
                     f"ids must be in [0, {vocab_size}) (config.vocab_size = {vocab_size})")


class DogeModel(DogePreTrainedModel):
    """Embedding -> decoder layers -> final RMSNorm. input_ids: [B, T] -> hidden states [B, T, H]."""

    def __init__(self, config: DogeConfig) -> None:
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, config.pad_token_id)
        self.layers = nn.ModuleList(DogeDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary_emb = RotaryEmbedding(config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.embed_tokens = value

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, past_key_values=None, inputs_embeds=None,
                use_cache: bool = False, **_unused) -> DogeOutput:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if input_ids is not None:
            check_token_ids(input_ids, self.config.vocab_size)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, t, _ = x.shape
        if use_cache and past_key_values is None:
            past_key_values = KVCache()
        past = past_key_values.get_seq_length() if past_key_values is not None else 0
        if position_ids is None:
            position_ids = torch.arange(past, past + t, device=x.device).unsqueeze(0).expand(b, t)
        plain_causal = attention_mask is None or bool(attention_mask.all())
        allowed = causal_padding_mask(None if plain_causal else attention_mask, b, t, past + t, x.device)
        if attention_mask is None and past == 0 and t > 1:
            # Packed rows (several sequences, positions restarting at each): no attention across them.
            seq_ids = packed_sequence_ids(position_ids.expand(b, t))
            if seq_ids is not None:
                allowed = allowed & (seq_ids[:, None, :, None] == seq_ids[:, None, None, :])
                plain_causal = False
        position_embeddings = self.rotary_emb(x, position_ids)
        routers = []
        for layer in self.layers:
            x, router = layer(x, position_embeddings, allowed, plain_causal, past_key_values)
            if router is not None:
                routers.append(router)
        return DogeOutput(last_hidden_state=self.norm(x), past_key_values=past_key_values,
                          router_logits=tuple(routers) if routers else None)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, num_items_in_batch=None,
                   ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy: position t predicts labels[t + 1]; -100 labels are ignored.

    logits: [B, T, V], labels: [B, T]. Mean over counted tokens, or sum / ``num_items_in_batch``
    when a trainer counts tokens over a whole optimizer step (gradient accumulation).
    """
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].to(logits.device)
    flat_logits, flat_targets = logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1)
    if num_items_in_batch is None:
        return F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index)
    total = F.cross_entropy(flat_logits, flat_targets, ignore_index=ignore_index, reduction="sum")
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(total.device)
    return total / num_items_in_batch


def handwritten_causal_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                               num_items_in_batch=None, ignore_index: int = -100) -> tuple[torch.Tensor, torch.Tensor]:
    """``causal_lm_loss(hidden @ weight^T, labels)`` and those logits, by ``handwritten_grad.linear_cross_entropy``.

    hidden: [B, T, H]; weight: [V, H]; labels: [B, T] -> (logits [B, T, V], loss []). The logits are
    still returned (and differentiable), but the loss never goes through them: its gradient is formed
    block by block in the forward pass instead of through a [B*T, V] log-softmax and its backward.
    """
    b, t, h = hidden.shape
    targets = F.pad(labels, (0, 1), value=ignore_index)[:, 1:].to(hidden.device).reshape(-1)
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(hidden.device)
    loss, logits = handwritten_grad.linear_cross_entropy(hidden.reshape(b * t, h), weight, targets, num_items_in_batch,
                                              ignore_index)
    return logits.view(b, t, -1), loss


class DogeForCausalLM(DogePreTrainedModel):
    """DogeModel + a linear head to vocabulary logits (tied to the embedding when the config says so)."""

    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: DogeConfig) -> None:
        super().__init__(config)
        self.model = DogeModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.handwritten_grad = True  # see set_handwritten_grad
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Linear:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Linear) -> None:
        self.lm_head = value

    def generate(self, input_ids, attention_mask: torch.Tensor | None = None,
                 generation_config=None, streamer=None, **settings) -> torch.Tensor:
        """Our own decode loop and KV cache (lesson 05); see ``generation.generate``."""
        from .generation import generate

        return generate(self, input_ids, attention_mask, generation_config, streamer, **settings)

    def forward(self, input_ids: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                past_key_values=None, inputs_embeds=None, use_cache: bool = False, logits_to_keep: int = 0,
                output_router_logits: bool | None = None, num_items_in_batch=None, **_unused) -> DogeOutput:
        """input_ids: [B, T] -> DogeOutput with logits [B, T', V] (T' = logits_to_keep or T)."""
        out = self.model(input_ids, attention_mask, position_ids, past_key_values, inputs_embeds, use_cache)
        hidden = out.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        if (labels is not None and self.handwritten_grad and self.lm_head.bias is None
                and handwritten_grad.training(hidden, self.lm_head.weight)):
            logits, loss = handwritten_causal_lm_loss(hidden, self.lm_head.weight, labels, num_items_in_batch)
        else:
            logits = self.lm_head(hidden)
            loss = None if labels is None else causal_lm_loss(logits, labels, num_items_in_batch)
        if output_router_logits is None:
            output_router_logits = self.config.output_router_logits
        aux_loss = None
        if output_router_logits and self.config.is_moe:
            aux_loss = load_balancing_loss(list(out.router_logits), self.config.num_experts,
                                           self.config.num_experts_per_tok, attention_mask)
            if loss is not None:
                loss = loss + self.config.router_aux_loss_coef * aux_loss
        return DogeOutput(loss=loss, aux_loss=aux_loss, logits=logits, last_hidden_state=out.last_hidden_state,
                          past_key_values=out.past_key_values,
                          router_logits=out.router_logits if output_router_logits else None)
