"""Doge configuration: the same fields, names and defaults as transformers' ``DogeConfig``.

The class derives from ``transformers.PreTrainedConfig`` so that it reads and writes the Hugging Face
``config.json`` format and so that our model can live inside TRL's trainers. Everything the model
computes is decided by the fields below; ``validate`` turns impossible combinations into errors that
name the offending field instead of a shape error deep inside a forward pass.

Two fields are ours and not transformers': ``attention_variant`` (``"native"`` for checkpoints with
q/k norms, ``"classic"`` for the first-generation Hub checkpoints) and ``moe_router_split``
(``"reference"`` reproduces the published router, ``"per_token"`` is the causal one). transformers
ignores both when it reads a config we wrote.
"""

from __future__ import annotations

import math

from transformers import PreTrainedConfig

ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu", "tanh")
ATTENTION_VARIANTS = ("native", "classic")
ROUTER_SPLITS = ("reference", "per_token")

# Published sizes (dense ones are tied, vocab 32768, 2048 positions, head_dim 128).
PRESETS: dict[str, dict] = {
    "Doge-20M": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                     num_attention_heads=2, num_key_value_heads=1),
    "Doge-60M": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=16,
                     num_attention_heads=4, num_key_value_heads=2),
    "Doge-160M": dict(hidden_size=768, intermediate_size=1536, num_hidden_layers=24,
                      num_attention_heads=6, num_key_value_heads=3),
    "Doge-320M": dict(hidden_size=1024, intermediate_size=2048, num_hidden_layers=32,
                      num_attention_heads=8, num_key_value_heads=4),
    "Doge-20M-MoE": dict(hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                         num_attention_heads=2, num_key_value_heads=1,
                         is_moe=True, num_experts=1024, num_experts_per_tok=16),
}
_PRESET_COMMON = dict(
    vocab_size=32768, tie_word_embeddings=True, max_position_embeddings=2048, keep_window_size=2048,
    # The classic configs also say original_max_position_embeddings=2048; the dynamic rule reads the trained
    # length from max_position_embeddings (also 2048), and transformers warns about the extra key.
    rope_parameters={"rope_type": "dynamic", "rope_theta": 10000.0, "factor": 4.0},
    bos_token_id=0, eos_token_id=1, pad_token_id=2,
)


class DogeConfig(PreTrainedConfig):
    """Hyper-parameters of a Doge model (see the module docstring)."""

    model_type = "doge"
    keys_to_ignore_at_inference = ["past_key_values"]

    vocab_size: int = 32768
    hidden_size: int = 1024
    intermediate_size: int = 2048
    num_hidden_layers: int = 32
    hidden_dropout: float | int = 0.0
    hidden_act: str = "silu"
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-06
    use_cache: bool = True
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    rope_parameters: dict | None = None
    num_attention_heads: int = 8
    num_key_value_heads: int | None = None
    attention_bias: bool = False
    attention_dropout: float | None = 0.0
    mlp_bias: bool = False
    sliding_window: int | None = None
    keep_window_size: int = 2048
    is_moe: bool = False
    num_experts: int = 16384
    num_experts_per_tok: int = 64
    norm_topk_prob: bool = False
    output_router_logits: bool = False
    router_aux_loss_coef: float = 0.001
    pad_token_id: int | None = None
    bos_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    # an explicit head size (transformers' attention honours one found in a config.json); None = hidden / heads
    head_dim: int | None = None
    # ours (see module docstring)
    attention_variant: str = "native"
    moe_router_split: str = "reference"

    def __post_init__(self, **kwargs):
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        head_dim_given = self.head_dim is not None
        if not head_dim_given and isinstance(self.num_attention_heads, int) and self.num_attention_heads > 0:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(f"DogeConfig.hidden_size={self.hidden_size!r}: must be divisible by "
                                 f"num_attention_heads={self.num_attention_heads}")
            self.head_dim = self.hidden_size // self.num_attention_heads
        super().__post_init__(**kwargs)
        self.validate()

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> "DogeConfig":
        """A published size by name (``"Doge-20M"``, ..., ``"Doge-20M-MoE"``), with optional overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**_PRESET_COMMON, **PRESETS[name], **overrides})

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def num_keys(self) -> int:
        """Product-key routing: the experts form a K x K grid, K = floor(sqrt(num_experts))."""
        return math.floor(math.sqrt(self.num_experts))

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``ValueError`` naming the first field that makes the model impossible to build."""

        def fail(field: str, why: str) -> None:
            raise ValueError(f"DogeConfig.{field}={getattr(self, field)!r}: {why}")

        for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                      "num_attention_heads", "num_key_value_heads", "max_position_embeddings"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 1:
                fail(field, "must be a positive integer")
        if not isinstance(self.head_dim, int) or self.head_dim < 2 or self.head_dim % 2:
            fail("head_dim", "must be an even integer >= 2 (RoPE rotates pairs of dimensions)")
        if self.num_attention_heads % self.num_key_value_heads:
            fail("num_attention_heads", f"must be divisible by num_key_value_heads={self.num_key_value_heads}")
        if not isinstance(self.keep_window_size, int) or self.keep_window_size < 1:
            fail("keep_window_size", "must be an integer >= 1")
        if self.hidden_act not in ACTIVATIONS:
            fail("hidden_act", f"unknown activation; choose one of {ACTIVATIONS}")
        if self.attention_variant not in ATTENTION_VARIANTS:
            fail("attention_variant", f"choose one of {ATTENTION_VARIANTS}")
        if self.moe_router_split not in ROUTER_SPLITS:
            fail("moe_router_split", f"choose one of {ROUTER_SPLITS}")
        if not 0.0 <= float(self.hidden_dropout) < 1.0:
            fail("hidden_dropout", "must be in [0, 1)")
        if not 0.0 <= float(self.attention_dropout or 0.0) < 1.0:
            fail("attention_dropout", "must be in [0, 1)")
        if self.rms_norm_eps <= 0:
            fail("rms_norm_eps", "must be > 0")
        if self.is_moe:
            if self.num_keys ** 2 != self.num_experts:
                fail("num_experts", "must be a perfect square (product-key routing uses a sqrt x sqrt grid)")
            if not 1 <= self.num_experts_per_tok <= self.num_experts:
                fail("num_experts_per_tok", f"must be between 1 and num_experts={self.num_experts}")
            if self.num_experts_per_tok > self.num_keys ** 2:
                fail("num_experts_per_tok", "cannot exceed the number of candidate pairs")
        rope = self.rope_parameters or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ("default", "dynamic"):
            fail("rope_parameters", f"rope_type {rope_type!r} is not supported (default or dynamic)")
        if rope_type == "dynamic" and float(rope.get("factor", 0)) < 1.0:
            fail("rope_parameters", "dynamic rope needs factor >= 1")
