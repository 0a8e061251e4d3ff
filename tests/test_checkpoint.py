"""Checkpoint folders: round trips with transformers, shards, the classic generations, and refusals."""

from __future__ import annotations

import json
import math

import huggingface_hub.constants
import pytest
import torch
import torch.nn.functional as F
import transformers
from safetensors.torch import load_file, save_file

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.checkpoint import CheckpointError
from doge_from_scratch.testing import (failed_checks, float32_error_check, float64_copy, randomize_,
                                       reference_model, tiny_config)

TOL = 1e-5


def random_ids(vocab: int, batch: int = 2, length: int = 13, seed: int = 0) -> torch.Tensor:
    return torch.randint(1, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def max_logits_diff(a, b, ids) -> float:
    return (a(ids).logits - b(ids).logits).abs().max().item()


@torch.no_grad()
def logits_check(name: str, ours, reference, ids) -> dict:
    """Our logits against the reference's, both judged by their distance to the reference in float64."""
    return float32_error_check(name, ours(ids).logits, reference(ids).logits, float64_copy(reference)(ids).logits)


def same_logits(a, b, ids) -> bool:
    """Bit equality: only for two models running the same code on the same weights (same operations)."""
    with torch.no_grad():
        return torch.equal(a(ids).logits, b(ids).logits)


def transformers_load(folder, **kwargs):
    return transformers.AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager", **kwargs).eval()


# ------------------------------------------------------------------------ round trips (gen C)
ROUND_TRIP_CONFIGS = {
    "gqa-untied": dict(),
    "gqa-tied": dict(tie_word_embeddings=True),
    "moe": dict(is_moe=True, num_experts=16, num_experts_per_tok=4),
}


@pytest.mark.parametrize("name", list(ROUND_TRIP_CONFIGS))
def test_ours_saved_loads_in_transformers(tmp_path, name, record_check):
    config = tiny_config(**ROUND_TRIP_CONFIGS[name])
    ours = randomize_(DogeForCausalLM(config).eval(), 4)
    ours.save_pretrained(tmp_path)
    assert not list(tmp_path.glob("*.tmp")), "a temporary file was left behind"
    theirs = transformers_load(tmp_path)
    c = record_check(logits_check(f"ours -> save -> transformers {name}", ours, theirs, random_ids(config.vocab_size)))
    assert c["ok"], failed_checks([c])


@pytest.mark.parametrize("name", list(ROUND_TRIP_CONFIGS))
def test_transformers_saved_loads_in_ours(tmp_path, name, record_check):
    config = tiny_config(**ROUND_TRIP_CONFIGS[name])
    theirs = randomize_(reference_model(config), 5)
    theirs.save_pretrained(tmp_path)
    ours = DogeForCausalLM.from_pretrained(tmp_path)
    assert ours.checkpoint_generation == "C"
    c = record_check(logits_check(f"transformers -> save -> ours {name}", ours, theirs, random_ids(config.vocab_size)))
    assert c["ok"], failed_checks([c])


def test_sharded_save_loads_in_both(tmp_path, record_check):
    config = tiny_config()
    ours = randomize_(DogeForCausalLM(config).eval(), 6)
    ours.save_pretrained(tmp_path, max_shard_size=40_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and (tmp_path / "model.safetensors.index.json").exists()
    assert not (tmp_path / "model.safetensors").exists()
    ids = random_ids(config.vocab_size)
    ours_again = DogeForCausalLM.from_pretrained(tmp_path)
    theirs = transformers_load(tmp_path)
    assert same_logits(ours, ours_again, ids)  # the same code on the same weights: bit for bit
    c = record_check(logits_check("sharded ours -> transformers", ours, theirs, ids))
    assert c["ok"], failed_checks([c])


def test_transformers_sharded_save_loads_in_ours(tmp_path, record_check):
    config = tiny_config(tie_word_embeddings=True)
    theirs = randomize_(reference_model(config), 7)
    theirs.save_pretrained(tmp_path, max_shard_size="50KB")
    assert (tmp_path / "model.safetensors.index.json").exists()
    c = record_check(logits_check("sharded transformers -> ours", DogeForCausalLM.from_pretrained(tmp_path), theirs,
                                  random_ids(config.vocab_size)))
    assert c["ok"], failed_checks([c])


@torch.no_grad()
def test_bfloat16_load_keeps_rope_in_float32(tmp_path):
    """Loading in bfloat16 must not round the RoPE frequencies: transformers keeps them in float32.

    With bfloat16 frequencies the angle at position 3000 is off by whole radians (cos off by ~0.3).
    """
    config = tiny_config(max_position_embeddings=4096, keep_window_size=4096)
    randomize_(DogeForCausalLM(config), 8).save_pretrained(tmp_path)
    ours = DogeForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16).eval()
    positions = torch.arange(3000)[None]
    probe = torch.zeros(1, dtype=torch.bfloat16)
    for ours_table, their_table in zip(ours.model.rotary_emb(probe, positions),
                                       theirs.model.rotary_emb(probe, positions)):
        assert torch.equal(ours_table, their_table)


# ------------------------------------------------------------------- classic generations A / B
CLASSIC = dict(vocab=101, hidden=32, inter=48, layers=2, heads=4, kv=2, window=64)


def classic_config_json(tie: bool = True) -> dict:
    c = CLASSIC
    return {
        "architectures": ["DogeForCausalLM"], "model_type": "doge", "auto_map": {},
        "vocab_size": c["vocab"], "hidden_size": c["hidden"], "intermediate_size": c["inter"],
        "num_hidden_layers": c["layers"], "num_attention_heads": c["heads"], "num_key_value_heads": c["kv"],
        "hidden_bias": False, "hidden_dropout": 0.0, "hidden_act": "silu", "rms_norm_eps": 1e-06,
        "max_position_embeddings": c["window"], "rope_theta": 10000.0,
        "rope_scaling": {"type": "dynamic", "factor": 4.0, "original_max_position_embeddings": c["window"]},
        "dynamic_mask_ratio": 0.0, "keep_window_size": c["window"], "is_moe": False,
        "tie_word_embeddings": tie, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2,
    }


def classic_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random generation A tensors, keys and shapes written out by hand (A and dt_proj per query head)."""
    c = CLASSIC
    g = torch.Generator().manual_seed(seed)
    d = c["hidden"] // c["heads"]

    def w(*shape, scale=0.15):
        return scale * torch.randn(*shape, generator=g)

    def around_one(n):
        return 1 + 0.3 * torch.randn(n, generator=g)

    sd = {"model.word_embed.weight": w(c["vocab"], c["hidden"], scale=1.0),
          "model.final_layernorm.weight": around_one(c["hidden"])}
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        sd |= {
            p + "pre_layernorm.weight": around_one(c["hidden"]),
            p + "self_attn.q_proj.weight": w(c["heads"] * d, c["hidden"]),
            p + "self_attn.k_proj.weight": w(c["kv"] * d, c["hidden"]),
            p + "self_attn.v_proj.weight": w(c["kv"] * d, c["hidden"]),
            p + "self_attn.A": 0.8 * torch.randn(c["heads"], generator=g),
            p + "self_attn.dt_proj.weight": w(c["heads"], c["kv"] * d, scale=0.5),
            p + "self_attn.o_proj.weight": w(c["hidden"], c["heads"] * d),
            p + "pre_residual.weight": around_one(c["hidden"]),
            p + "post_layernorm.weight": around_one(c["hidden"]),
            p + "feed_forward.gate_proj.weight": w(c["inter"], c["hidden"]),
            p + "feed_forward.up_proj.weight": w(c["inter"], c["hidden"]),
            p + "feed_forward.down_proj.weight": w(c["hidden"], c["inter"]),
            p + "post_residual.weight": around_one(c["hidden"]),
        }
    return sd


def classic_logits(sd: dict[str, torch.Tensor], ids: torch.Tensor, dtype=torch.float64) -> torch.Tensor:
    """The classic Doge written out independently, in float64 (or ``dtype``), for S <= keep window.

    No q/k norm; bias b = exp(A * softplus(dt_proj(v))) per QUERY head, ADDED to the 0/-inf causal
    mask; RoPE with theta 1e4 (the dynamic scaling only acts past max_position_embeddings).
    """
    c = CLASSIC
    sd = {k: v.to(dtype) for k, v in sd.items()}
    heads, kv, d = c["heads"], c["kv"], c["hidden"] // c["heads"]
    b, t = ids.shape

    def rms(x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)

    def rotate(x):  # x: [B, n, T, d]; pairs (i, i + d/2) turned by position * theta^(-2i/d)
        freq = 10000.0 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = (torch.arange(t, dtype=torch.float64)[:, None] * freq).to(dtype)  # [T, d/2]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), -1)

    future = torch.triu(torch.ones(t, t, dtype=torch.bool), diagonal=1)
    causal = torch.zeros(t, t, dtype=dtype).masked_fill(future, torch.finfo(dtype).min)
    x = sd["model.word_embed.weight"][ids]
    for i in range(c["layers"]):
        p = f"model.layers.{i}."
        h = rms(x, sd[p + "pre_layernorm.weight"])
        q = (h @ sd[p + "self_attn.q_proj.weight"].T).view(b, t, heads, d).transpose(1, 2)
        k = (h @ sd[p + "self_attn.k_proj.weight"].T).view(b, t, kv, d).transpose(1, 2)
        v = (h @ sd[p + "self_attn.v_proj.weight"].T).view(b, t, kv, d).transpose(1, 2)
        q, k = rotate(q), rotate(k)
        dt = v.transpose(1, 2).reshape(b, t, kv * d) @ sd[p + "self_attn.dt_proj.weight"].T  # [B, T, heads]
        bias = torch.exp(sd[p + "self_attn.A"] * F.softplus(dt)).transpose(1, 2)  # [B, heads, S]
        k = k.repeat_interleave(heads // kv, dim=1)
        v = v.repeat_interleave(heads // kv, dim=1)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d) + (causal + bias[:, :, None, :])
        attn = torch.softmax(scores, dim=-1) @ v  # [B, heads, T, d]
        attn = attn.transpose(1, 2).reshape(b, t, heads * d) @ sd[p + "self_attn.o_proj.weight"].T
        x = sd[p + "pre_residual.weight"] * x + attn
        h = rms(x, sd[p + "post_layernorm.weight"])
        mlp = (F.silu(h @ sd[p + "feed_forward.gate_proj.weight"].T) * (h @ sd[p + "feed_forward.up_proj.weight"].T)
               ) @ sd[p + "feed_forward.down_proj.weight"].T
        x = sd[p + "post_residual.weight"] * x + mlp
    return rms(x, sd["model.final_layernorm.weight"]) @ sd["model.word_embed.weight"].T


def write_folder(folder, config: dict, tensors: dict[str, torch.Tensor]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})


# generation A -> B key renames, spelled out here rather than imported from the loader under test
A_TO_B = [("model.word_embed.", "model.embed_tokens."), ("model.final_layernorm.", "model.norm."),
          (".pre_layernorm.", ".input_layernorm."), (".pre_residual.weight", ".input_residual"),
          (".post_layernorm.", ".post_attention_layernorm."),
          (".post_residual.weight", ".post_attention_residual"), (".feed_forward.", ".mlp.")]


def to_generation_b(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in sd.items():
        for old, new in A_TO_B:
            key = key.replace(old, new)
        out[key] = value
    return out


@pytest.mark.parametrize("generation", ["A", "B"])
def test_classic_generations_load_and_match_the_classic_formula(tmp_path, generation, record_check):
    sd = classic_state_dict()
    tensors = sd if generation == "A" else to_generation_b(sd)
    write_folder(tmp_path, classic_config_json(), tensors)
    model = DogeForCausalLM.from_pretrained(tmp_path)
    assert model.checkpoint_generation == generation
    assert model.config.attention_variant == "classic"
    assert model.model.layers[0].self_attn.A.shape == (CLASSIC["heads"],)
    ids = random_ids(CLASSIC["vocab"], 2, 40)  # 40 <= keep window 64
    # the formula written out in float64 is the exact value; the same formula in float32 is the reference
    # whose rounding ours may not exceed by more than a small multiple
    exact, reference = classic_logits(sd, ids), classic_logits(sd, ids, torch.float32)
    for backend in ("auto", "materialised"):
        model.set_attention_backend(backend)
        with torch.no_grad():
            got = model(ids).logits
        c = record_check(float32_error_check(f"generation {generation} vs the classic formula [{backend}]", got,
                                             reference, exact))
        assert c["ok"], failed_checks([c])


# ------------------------------------------------------------------------------------ refusals
def test_bad_tensors_are_all_named(tmp_path):
    config = tiny_config()
    DogeForCausalLM(config).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.self_attn.k_norm.weight"]
    del tensors["lm_head.weight"]
    tensors["model.layers.0.self_attn.surprise.weight"] = torch.zeros(3, 3)
    tensors["model.layers.0.self_attn.dt_proj.weight"] = torch.zeros(4, 32)  # n_heads rows: a classic shape
    tensors["model.norm.weight"] = torch.zeros(63)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError) as err:
        DogeForCausalLM.from_pretrained(tmp_path)
    message = str(err.value)
    for expected in ["missing model.layers.1.self_attn.k_norm.weight", "missing lm_head.weight",
                     "unexpected model.layers.0.self_attn.surprise.weight",
                     "mis-shaped model.layers.0.self_attn.dt_proj.weight", "mis-shaped model.norm.weight",
                     "5 tensor problem(s)"]:
        assert expected in message, f"{expected!r} not in:\n{message}"


def test_pickle_only_folder_is_refused_with_conversion_advice(tmp_path):
    config = tiny_config()
    config.save_pretrained(tmp_path)
    torch.save(DogeForCausalLM(config).state_dict(), tmp_path / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        DogeForCausalLM.from_pretrained(tmp_path)
    message = str(err.value)
    assert "pytorch_model.bin" in message
    assert "weights_only=True" in message and "save_file" in message and "model.safetensors" in message


def test_hub_id_offline_fails_clearly(tmp_path, monkeypatch):
    """A Hub id with HF_HUB_OFFLINE=1 and an empty cache: a CheckpointError, not a network attempt."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads these at import time; point the live values at the empty folder too
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CheckpointError, match=r"SmallDoge/Doge-20M.*HF_HUB_OFFLINE"):
        DogeForCausalLM.from_pretrained("SmallDoge/Doge-20M")


def test_missing_folder_is_named(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        DogeForCausalLM.from_pretrained(str(tmp_path / "not here"))


# ------------------------------------------------------------------------ dense -> MoE
def test_dense_checkpoint_inherited_by_moe(tmp_path):
    """The MLP becomes the shared expert; only router and expert embeddings are new. With the routed
    experts silenced (up_embed = 0) the MoE model computes exactly what transformers' dense model does."""
    dense_config = tiny_config()
    dense = randomize_(reference_model(dense_config), 8)
    dense.save_pretrained(tmp_path)
    moe_fields = dict(is_moe=True, num_experts=16, num_experts_per_tok=4)
    with pytest.raises(CheckpointError, match="missing model.layers.0.mlp.router_gate.weight"):
        DogeForCausalLM.from_pretrained(tmp_path, **moe_fields)
    moe = DogeForCausalLM.from_pretrained(tmp_path, inherit_mlp=True, **moe_fields)
    assert sorted(moe.new_tensors) == sorted(
        f"model.layers.{i}.mlp.{name}.weight" for i in range(dense_config.num_hidden_layers)
        for name in ("router_gate", "down_embed", "up_embed"))
    with torch.no_grad():
        for layer in moe.model.layers:
            layer.mlp.up_embed.weight.zero_()
    c = logits_check("dense inherited by MoE, experts silenced", moe, dense, random_ids(dense_config.vocab_size))
    assert c["ok"], failed_checks([c])
    with pytest.raises(CheckpointError, match="is_moe=True"):
        DogeForCausalLM.from_pretrained(tmp_path, inherit_mlp=True)
