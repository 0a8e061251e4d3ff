"""DogeConfig refuses what cannot be built, naming the field, and says when a field is not one (issue 12)."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

import doge_from_scratch.config as config_module
from doge_from_scratch import DogeConfig, DogeForCausalLM
from doge_from_scratch.checkpoint import CheckpointError
from doge_from_scratch.testing import randomize_, reference_model, tiny_config


@pytest.mark.parametrize("fields,named", [
    (dict(hidden_size="64"), "hidden_size"),            # today: "not all arguments converted" from a % b
    (dict(num_hidden_layers=2.0), "num_hidden_layers"),
    (dict(tie_word_embeddings="yes"), "tie_word_embeddings"),  # a non-empty string would read as True
    (dict(hidden_size=True), "hidden_size"),            # bool is an int to Python, never a size
    (dict(rms_norm_eps="1e-6"), "rms_norm_eps"),
    (dict(eos_token_id=[1, "2"]), "eos_token_id"),
])
def test_a_field_of_the_wrong_type_is_named(fields, named):
    with pytest.raises((TypeError, ValueError), match=rf"DogeConfig\.{named}=.*must be") as err:
        tiny_config(**fields)
    assert isinstance(err.value, TypeError) and isinstance(err.value, ValueError)  # either except catches it


def test_nan_or_non_positive_eps_and_rope_theta_are_refused():
    for fields, named in [(dict(rms_norm_eps=math.nan), "rms_norm_eps"), (dict(rms_norm_eps=math.inf), "rms_norm_eps"),
                          (dict(rms_norm_eps=0.0), "rms_norm_eps"), (dict(rope_theta=math.nan), "rope_theta"),
                          (dict(rope_theta=0.0), "rope_theta"), (dict(rope_theta=-1e4), "rope_theta"),
                          (dict(rope_parameters={"rope_type": "default", "rope_theta": math.inf}), "rope_theta")]:
        with pytest.raises(ValueError, match=named):
            tiny_config(**fields)


def test_an_unknown_field_is_kept_and_warned_about_once(monkeypatch):
    monkeypatch.setattr(config_module, "_WARNED_UNKNOWN", set(), raising=False)
    with pytest.warns(UserWarning, match=r"'num_hidden_layer'.*did you mean 'num_hidden_layers'"):
        config = tiny_config(num_hidden_layer=3)
    assert config.num_hidden_layer == 3 and config.num_hidden_layers == 2  # kept, as transformers keeps it
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_config(num_hidden_layer=3)  # the second time: silent
        DogeConfig(**config.to_dict())


def test_classic_and_base_class_fields_are_not_unknown(monkeypatch):
    """What real config.json files carry (classic remote-code fields, generation settings) is no typo."""
    monkeypatch.setattr(config_module, "_WARNED_UNKNOWN", set(), raising=False)
    classic = dict(hidden_bias=False, num_cdmoe_experts=16348, num_cdmoe_heads=4, num_cdmoe_experts_per_head=8,
                   expert_retrieval_size=64, rope_theta=10000.0, torch_dtype="float32", max_length=2048)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny_config(**classic)
    with pytest.warns(UserWarning, match="expert_retrieval_sizes"):
        tiny_config(expert_retrieval_sizes=64)


@pytest.mark.parametrize("fields,named", [
    (dict(pad_token_id=-1), "pad_token_id"),     # nn.Embedding reads -1 as the last row and zeroes it
    (dict(pad_token_id=97), "pad_token_id"),     # tiny_config's vocab is 97
    (dict(bos_token_id=10**6), "bos_token_id"),
    (dict(eos_token_id=[1, 97]), "eos_token_id"),
])
def test_special_token_ids_outside_the_vocabulary_are_config_errors(fields, named):
    with pytest.raises(ValueError, match=rf"DogeConfig\.{named}=.*vocab_size=97"):
        tiny_config(**fields)


def test_an_out_of_vocabulary_pad_id_in_config_json_names_the_file(tmp_path):
    DogeForCausalLM(tiny_config()).save_pretrained(tmp_path)
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "pad_token_id": -1}))
    with pytest.raises(CheckpointError, match=r"config\.json.*pad_token_id=-1"):
        DogeForCausalLM.from_pretrained(tmp_path)


def test_dynamic_mask_ratio_is_a_checked_field():
    assert "dynamic_mask_ratio" in DogeConfig.__dataclass_fields__
    assert DogeConfig().dynamic_mask_ratio == 0.0 and DogeConfig().to_dict()["dynamic_mask_ratio"] == 0.0
    assert tiny_config(dynamic_mask_ratio=0.5).dynamic_mask_ratio == 0.5
    for bad in (1.5, -0.1, math.nan, "0.5"):
        with pytest.raises(ValueError, match=r"DogeConfig\.dynamic_mask_ratio"):
            tiny_config(dynamic_mask_ratio=bad)


@torch.no_grad()
def test_non_square_expert_counts_run_as_transformers_runs_them():
    """The classic code and transformers use K = int(sqrt(E)) keys, so E = 15 routes among 3 x 3 experts.

    Both models run in float64 (transformers with sdpa attention: its eager softmax is float32 even for
    float64 inputs), where the same formula rounds to ~1e-16 relative; a different key count or expert id
    changes the logits by O(1), so a 1e-9 relative bound separates the two cleanly.
    """
    config = tiny_config(is_moe=True, num_experts=15, num_experts_per_tok=4)
    assert config.num_keys == 3
    ours = randomize_(DogeForCausalLM(config), 3).double().eval()
    theirs = reference_model(config, attn_implementation="sdpa").double()
    theirs.load_state_dict(ours.state_dict())
    ids = torch.randint(0, config.vocab_size, (2, 11), generator=torch.Generator().manual_seed(0))
    expected = theirs(ids).logits
    assert (ours(ids).logits - expected).abs().max() <= 1e-9 * expected.abs().max()
