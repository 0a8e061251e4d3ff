"""Lesson 04 checks: the decoder layer, parameter counts, classic key names."""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch

from .. import checkpoint, layers
from ..config import DogeConfig
from ..model import DogeDecoderLayer, DogeForCausalLM
from ..testing import randomize_, tiny_config
from ._core import Case, CheckResult, close, exact, run_cases


@torch.no_grad()
def _layer_case(config: DogeConfig, seed: int) -> Case:
    torch.manual_seed(seed)
    layer = randomize_(DogeDecoderLayer(config, 0), seed).eval()
    x = torch.randn(2, 7, config.hidden_size)
    rotary = layers.RotaryEmbedding(config)
    pe = rotary(x, torch.arange(7)[None].expand(2, 7))
    pe64 = rotary(x.double(), torch.arange(7)[None].expand(2, 7))
    want, want64 = layer(x, pe)[0], copy.deepcopy(layer).double()(x.double(), pe64)[0]
    moe = " with a CDMoE" if config.is_moe else ""
    return Case(f"a randomised layer{moe} (hidden {config.hidden_size}), x [2, 7, {config.hidden_size}]",
                (layer, x, pe), close(want, want64))


def check_decoder_layer(decoder_layer: Callable) -> CheckResult:
    """``decoder_layer(layer, x, position_embeddings) -> [B, T, H]`` from the layer's parts: input_layernorm,
    self_attn, input_residual, post_attention_layernorm, mlp, post_attention_residual (``DogeDecoderLayer``)."""
    cases = [_layer_case(tiny_config(), 0), _layer_case(tiny_config(is_moe=True, num_experts=16,
                                                                      num_experts_per_tok=4), 1)]
    def without_grad(layer, x, pe):
        with torch.no_grad():
            return decoder_layer(layer, x, pe)
    return run_cases("check_decoder_layer", without_grad, cases,
                     hint="the residual vectors scale the skip path (residual * x), not the sub-layer's output; a "
                          "CDMoE mlp returns (output, router halves)")


def _meta_count(config: DogeConfig) -> int:
    with torch.device("meta"):
        model = DogeForCausalLM(config)
    return sum(p.numel() for p in model.parameters())  # tied weights are one parameter, counted once


def check_parameter_count(count: Callable[[DogeConfig], int]) -> CheckResult:
    """``count(config) -> int``: the number of parameters of ``DogeForCausalLM(config)`` without building it
    (a tied lm_head is the embedding, not a second matrix)."""
    configs = {"Doge-20M": DogeConfig.from_preset("Doge-20M"), "Doge-160M": DogeConfig.from_preset("Doge-160M"),
               "tiny_config() (untied head)": tiny_config(),
               "a tiny CDMoE with 64 experts": tiny_config(is_moe=True, num_experts=64, num_experts_per_tok=4)}
    cases = [Case(name, (c,), exact(_meta_count(c))) for name, c in configs.items()]
    return run_cases("check_parameter_count", lambda c: int(count(c)), cases,
                     hint="per layer: 2 norms, 2 residual vectors, q/k/v/o, q_norm and k_norm, dt_proj and A; the "
                          "final norm; lm_head only when tie_word_embeddings is False")


CLASSIC_KEYS = ["model.word_embed.weight", "model.final_layernorm.weight", "model.layers.0.pre_layernorm.weight",
                "model.layers.3.pre_residual.weight", "model.layers.3.post_layernorm.weight",
                "model.layers.11.post_residual.weight", "model.layers.2.feed_forward.gate_proj.weight",
                "model.layers.2.feed_forward.down_embed.weight", "model.layers.5.self_attn.dt_proj.weight",
                "lm_head.weight"]


def check_classic_name(classic_name: Callable[[str], str]) -> CheckResult:
    """``classic_name(key) -> key``: a generation A tensor name in transformers' naming
    (``checkpoint.classic_name``)."""
    cases = [Case(repr(k), (k,), exact(checkpoint.classic_name(k))) for k in CLASSIC_KEYS]
    return run_cases("check_classic_name", classic_name, cases,
                     hint="pre_residual.weight becomes input_residual (no .weight: it is a bare parameter)")
