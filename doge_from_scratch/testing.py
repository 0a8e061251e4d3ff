"""Helpers shared by the tests and the lessons' parity cells: tiny configs, weight randomisation and
the installed reference model built on the same weights."""

from __future__ import annotations

import torch

from .config import DogeConfig


def tiny_config(**overrides) -> DogeConfig:
    """A small grouped-query Doge that runs in milliseconds (override any field)."""
    fields = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  keep_window_size=256, tie_word_embeddings=False, pad_token_id=0)
    fields.update(overrides)
    return DogeConfig(**fields)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Move every parameter away from its initial value so that a wrong formula cannot hide.

    At initialisation A = 0 (no dynamic bias), the residual scales and norms are ones: bugs in
    any of them are invisible there. Multiplicative noise keeps magnitudes sensible.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        if name.endswith(".A"):
            p.copy_(noise * scale)
        elif p.dim() == 1:  # norms, residual scales, biases
            p.mul_(1 + scale * noise).add_(0.1 * noise)
        else:
            p.add_(0.02 * noise)
    return model


def reference_model(config: DogeConfig, attn_implementation: str = "eager"):
    """transformers' own DogeForCausalLM for the same (native) config, in float32, eval mode."""
    import transformers

    fields = {k: v for k, v in config.to_dict().items() if k not in ("attention_variant", "moe_router_split")}
    ref_config = transformers.DogeConfig(**fields)
    ref_config._attn_implementation = attn_implementation
    return transformers.DogeForCausalLM(ref_config).eval()


def copy_into_reference(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Load our weights into the reference by name (they share every parameter name)."""
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    real_missing = [k for k in missing if k != "lm_head.weight" or not ours.config.tie_word_embeddings]
    if real_missing or unexpected:
        raise KeyError(f"state dicts differ: missing {real_missing}, unexpected {list(unexpected)}")


def tiny_model_for(tokenizer, seed: int = 0, **overrides):
    """A randomised ``tiny_config`` model whose vocabulary and special ids are the tokenizer's."""
    from .model import DogeForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    return randomize_(DogeForCausalLM(config), seed)
