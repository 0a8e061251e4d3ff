"""DogeConfig: the reference's fields and defaults, published sizes, validation, JSON round trips."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import transformers

from doge_from_scratch import DogeConfig, DogeForCausalLM
from doge_from_scratch.checkpoint import read_config
from doge_from_scratch.testing import reference_model


def field_default(field: dataclasses.Field):
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return dataclasses.MISSING


def test_every_reference_field_exists_with_the_same_default():
    ours = {f.name: f for f in dataclasses.fields(DogeConfig)}
    reference = dataclasses.fields(transformers.DogeConfig)
    assert len(reference) > 30  # the reference really is a dataclass with its fields listed
    missing = [f.name for f in reference if f.name not in ours]
    assert not missing, f"fields of transformers.DogeConfig absent from ours: {missing}"
    different = {f.name: (field_default(f), field_default(ours[f.name])) for f in reference
                 if field_default(f) != field_default(ours[f.name])}
    assert not different, f"defaults differ (reference, ours): {different}"


def test_default_instances_agree_with_the_reference():
    """Defaults after __post_init__ (e.g. num_key_value_heads, rope_parameters) agree too."""
    ours, reference = DogeConfig().to_dict(), transformers.DogeConfig().to_dict()
    different = {k: (v, ours.get(k)) for k, v in reference.items()
                 if k != "transformers_version" and ours.get(k, "<absent>") != v}
    assert not different, f"(reference, ours): {different}"


# Published parameter counts (model cards / doge-reference.md), tied embeddings counted once. The
# published figures are truncated, not rounded: Doge-60M has 54.57M parameters and is listed as 54M.
PUBLISHED_MILLIONS = {"Doge-20M": 13, "Doge-60M": 54, "Doge-160M": 152, "Doge-320M": 335}


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once


@pytest.mark.parametrize("name,millions", PUBLISHED_MILLIONS.items())
def test_presets_have_the_published_parameter_counts(name, millions):
    config = DogeConfig.from_preset(name)
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        ours = DogeForCausalLM(config)
        reference = reference_model(config)
    n_params = count_parameters(ours)
    assert n_params // 10**6 == millions, f"{name}: {n_params:,} parameters"
    assert n_params == count_parameters(reference), f"{name}: transformers counts {count_parameters(reference):,}"
    assert ours.lm_head.weight is ours.model.embed_tokens.weight


def test_preset_overrides_and_unknown_preset():
    assert DogeConfig.from_preset("Doge-20M", keep_window_size=64).keep_window_size == 64
    with pytest.raises(KeyError, match="Doge-7B"):
        DogeConfig.from_preset("Doge-7B")


@pytest.mark.parametrize("fields,named", [
    (dict(hidden_size=100, num_attention_heads=8), "hidden_size"),
    (dict(hidden_size=96, num_attention_heads=6, num_key_value_heads=4), "num_attention_heads"),
    (dict(is_moe=True, num_experts=0, num_experts_per_tok=2), "num_experts"),
    (dict(is_moe=True, num_experts=16, num_experts_per_tok=17), "num_experts_per_tok"),
    (dict(keep_window_size=0), "keep_window_size"),
    (dict(hidden_act="swishy"), "hidden_act"),
])
def test_validation_errors_name_the_field(fields, named):
    with pytest.raises(ValueError, match=rf"DogeConfig\.{named}\b"):
        DogeConfig(**fields)


def test_json_round_trip(tmp_path):
    config = DogeConfig.from_preset("Doge-20M-MoE", keep_window_size=512, moe_router_split="per_token")
    path = tmp_path / "config.json"
    config.to_json_file(path)
    again = DogeConfig.from_json_file(path)
    assert again.to_dict() == config.to_dict()
    assert DogeConfig(**json.loads(config.to_json_string())).to_dict() == config.to_dict()
    assert (again.moe_router_split, again.num_experts, again.keep_window_size) == ("per_token", 1024, 512)


def classic_config_json() -> dict:
    """A first-generation Hub config.json (remote-code era) as the Doge-20M repo spelled it."""
    return {
        "architectures": ["DogeForCausalLM"],
        "auto_map": {"AutoConfig": "configuration_doge.DogeConfig",
                     "AutoModelForCausalLM": "modeling_doge.DogeForCausalLM"},
        "model_type": "doge", "transformers_version": "4.48.1", "torch_dtype": "float32",
        "vocab_size": 32768, "hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 8,
        "num_attention_heads": 2, "num_key_value_heads": 1, "hidden_bias": False, "hidden_dropout": 0.0,
        "hidden_act": "silu", "initializer_range": 0.02, "rms_norm_eps": 1e-06, "use_cache": True,
        "max_position_embeddings": 2048, "rope_theta": 10000.0,
        "rope_scaling": {"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": 2048},
        "dynamic_mask_ratio": 0.0, "keep_window_size": 2048, "is_moe": False,
        "num_cdmoe_experts": 16348, "num_cdmoe_heads": 4, "num_cdmoe_experts_per_head": 8,
        "expert_retrieval_size": 64, "tie_word_embeddings": True,
        "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
    }


@pytest.mark.parametrize("reader", ["from_pretrained", "checkpoint.read_config"])
def test_classic_config_json_reads(tmp_path, reader):
    (tmp_path / "config.json").write_text(json.dumps(classic_config_json()))
    config = DogeConfig.from_pretrained(tmp_path) if reader == "from_pretrained" else read_config(tmp_path)
    assert (config.hidden_size, config.num_hidden_layers, config.num_key_value_heads) == (256, 8, 1)
    rope = config.rope_parameters
    assert rope["rope_type"] == "dynamic" and rope["factor"] == 4.0 and rope["rope_theta"] == 10000.0
    assert config.tie_word_embeddings and config.pad_token_id == 2
    assert not config.attention_bias and not config.mlp_bias
    # the same file is read the same way by transformers (minus remote code)
    reference = transformers.DogeConfig.from_pretrained(tmp_path)
    assert reference.rope_parameters["rope_type"] == rope["rope_type"]
    assert reference.rope_parameters["rope_theta"] == rope["rope_theta"]
