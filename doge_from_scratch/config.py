"""Doge configuration: the same fields, names and defaults as transformers' ``DogeConfig``.

The class derives from ``transformers.PreTrainedConfig`` so that it reads and writes the Hugging Face
``config.json`` format and so that our model can live inside TRL's trainers. Everything the model
computes is decided by the fields below; ``validate`` turns impossible combinations into errors that
name the offending field instead of a shape error deep inside a forward pass.

Three fields are not transformers': ``attention_variant`` (``"native"`` for checkpoints with q/k
norms, ``"classic"`` for the first-generation Hub checkpoints), ``moe_router_split`` (``"reference"``
reproduces the published router, ``"per_token"`` is the causal one), both ours, and the classic configs'
``dynamic_mask_ratio`` (how classic attention treats keys past ``keep_window_size``). transformers keeps
them as plain attributes when it reads a config we wrote.

Bad values fail at construction with a ``DogeConfigError`` naming the field: a wrong type (``hidden_size="64"``),
a NaN or non-positive ``rms_norm_eps`` / ``rope_theta``, a special token id outside the vocabulary (an
``nn.Embedding`` would read ``pad_token_id=-1`` as "the last row" and zero it). A field nobody reads (a typo
such as ``num_hidden_layer``) is kept, as transformers keeps it, but warned about once per name.
"""

from __future__ import annotations

import difflib
import functools
import math
import numbers
import types
import typing
import warnings

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


def check_dynamic_mask_ratio(ratio) -> float:
    """The classic ``dynamic_mask_ratio`` as a float in [0, 1], or a ValueError naming the field."""
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
        raise ValueError(f"DogeConfig.dynamic_mask_ratio={ratio!r}: must be a number in [0, 1] "
                         "(the share of the keys past keep_window_size that classic attention drops)")
    return float(ratio)


class DogeConfigError(ValueError, TypeError):
    """A config field with an impossible value or type; the message names the field.

    Both a ValueError (what validation has always raised) and a TypeError (what a wrong type is).
    """


class UnknownConfigFieldWarning(UserWarning):
    """A config field that no part of the model reads (kept, as transformers keeps it)."""


# Extra keyword arguments that are not our fields but are expected: PreTrainedConfig consumes them, or
# classic (generation A) config.json files carry them for remote code that has no counterpart here.
_BASE_KWARGS = {"name_or_path", "model_type", "output_attentions", "torch_dtype", "num_labels",
                "attn_implementation", "experts_implementation", "per_layer_config", "rope_scaling",
                "rope_theta", "partial_rotary_factor", "auto_map"}
_CLASSIC_KWARGS = {"hidden_bias", "num_cdmoe_experts", "num_cdmoe_heads", "num_cdmoe_experts_per_head",
                   "expert_retrieval_size"}
_WARNED_UNKNOWN: set[str] = set()


@functools.cache
def _generation_kwargs() -> frozenset[str]:
    """Generation settings old config.json files carry; PreTrainedConfig drops them on purpose."""
    from transformers import GenerationConfig

    return frozenset(GenerationConfig._get_default_generation_params())


def _matches(value, hint) -> bool:
    """Whether ``value`` fits a field annotation (int excludes bool; float accepts int)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if typing.get_origin(hint) is list:
        return isinstance(value, (list, tuple)) and all(_matches(v, typing.get_args(hint)[0]) for v in value)
    if hint is type(None):
        return value is None
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, typing.get_origin(hint) or hint)


def _describe(hint) -> str:
    return hint.__name__ if isinstance(hint, type) else str(hint)


def _positive_finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


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
    # classic configs: share of the keys past keep_window_size that classic attention masks (0: none)
    dynamic_mask_ratio: float = 0.0
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
        self._check_types()
        self._warn_unknown(kwargs)
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

    # -- construction checks -----------------------------------------------------------------
    @staticmethod
    @functools.cache
    def _field_types() -> dict[str, object]:
        """Our own annotated fields (the base class's are transformers' business), annotations evaluated.

        ``typing.get_type_hints`` would also evaluate the base class's annotations, which name types
        its module never imports at run time; ours are written in this module with its names.
        """
        return {name: eval(hint, globals()) if isinstance(hint, str) else hint  # noqa: S307 (our own source)
                for name, hint in DogeConfig.__annotations__.items()}

    def _check_types(self) -> None:
        """Refuse a value of the wrong type before any arithmetic trips over it; integers are made ``int``."""
        for name, hint in self._field_types().items():
            value = getattr(self, name)
            if not _matches(value, hint):
                raise DogeConfigError(f"DogeConfig.{name}={value!r}: must be {_describe(hint)}, "
                                      f"not {type(value).__name__}")
            if isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
                setattr(self, name, int(value))  # numpy integers would not survive JSON

    def _warn_unknown(self, extra: dict) -> None:
        expected = _BASE_KWARGS | _CLASSIC_KWARGS | _generation_kwargs()
        fields = list(self._field_types())
        for name in extra:
            if name in expected or name.startswith("_") or name in _WARNED_UNKNOWN:
                continue
            _WARNED_UNKNOWN.add(name)
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.8)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            warnings.warn(f"DogeConfig: unknown field {name!r} is kept but nothing reads it{hint}",
                          UnknownConfigFieldWarning, stacklevel=4)

    # -- presets -----------------------------------------------------------------------------
    @classmethod
    def from_preset(cls, name: str, **overrides) -> DogeConfig:
        """A published size by name (``"Doge-20M"``, ..., ``"Doge-20M-MoE"``), with optional overrides."""
        if name not in PRESETS:
            raise KeyError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**{**_PRESET_COMMON, **PRESETS[name], **overrides})

    # -- derived sizes -----------------------------------------------------------------------
    @property
    def num_keys(self) -> int:
        """Product-key routing: K = floor(sqrt(num_experts)) keys per half, so K*K experts are reachable.

        As in the classic code and transformers, num_experts need not be a square: the embedding tables
        have num_experts rows and the rows past K*K are never routed to.
        """
        return math.isqrt(self.num_experts)

    # -- validation --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise ``DogeConfigError`` (a ValueError) naming the first field that makes the model impossible."""

        def fail(field: str, why: str) -> None:
            raise DogeConfigError(f"DogeConfig.{field}={getattr(self, field)!r}: {why}")

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
        if not _positive_finite(self.rms_norm_eps):
            fail("rms_norm_eps", "must be a finite number > 0")
        try:
            check_dynamic_mask_ratio(self.dynamic_mask_ratio)
        except ValueError as err:
            raise DogeConfigError(str(err)) from None
        self._validate_token_ids(fail)
        if self.is_moe:
            self._validate_experts(fail)
        self._validate_rope(fail)

    def _validate_token_ids(self, fail) -> None:
        for field in ("pad_token_id", "bos_token_id", "eos_token_id"):
            value = getattr(self, field)
            ids = value if isinstance(value, (list, tuple)) else [value]
            if any(i is not None and not 0 <= i < self.vocab_size for i in ids):
                fail(field, f"must be a token id in [0, vocab_size={self.vocab_size}) or None")

    def _validate_experts(self, fail) -> None:
        if self.num_experts < 1:
            fail("num_experts", "must be a positive integer")
        if not 1 <= self.num_experts_per_tok <= self.num_experts:
            fail("num_experts_per_tok", f"must be between 1 and num_experts={self.num_experts}")
        if self.num_experts_per_tok > self.num_keys ** 2:
            fail("num_experts_per_tok", f"cannot exceed the {self.num_keys ** 2} candidate pairs "
                                        f"(num_keys={self.num_keys} squared)")

    def _validate_rope(self, fail) -> None:
        rope = self.rope_parameters or {}
        rope_type = rope.get("rope_type", "default")
        if rope_type not in ("default", "dynamic"):
            fail("rope_parameters", f"rope_type {rope_type!r} is not supported (default or dynamic)")
        if not _positive_finite(rope.get("rope_theta", 10000.0)):
            fail("rope_parameters", f"rope_theta must be a finite number > 0, not {rope.get('rope_theta')!r}")
        factor = rope.get("factor")
        if rope_type == "dynamic" and not (_positive_finite(factor) and factor >= 1.0):
            fail("rope_parameters", f"dynamic rope needs a finite factor >= 1, not {factor!r}")
