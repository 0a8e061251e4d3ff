"""``parity --trust-remote-code`` on a folder that ships its own modelling code, offline.

The classic Hub repos ship ``configuration_doge.py``/``modeling_doge.py`` (``auto_map``), whose rotary
module keeps ``inv_freq`` as a non-persistent buffer: it is not in the weights, only computed in
``__init__``. transformers 5 builds a model for ``from_pretrained`` without running that computation
and leaves such buffers uninitialised, so the reference ran with garbage RoPE frequencies and the tool
reported a false MISMATCH ("first divergence: model.rotary_emb").

The remote code here is the test's own few lines of the classic formula (generation A names, per
query-head bias added to the causal mask, a non-persistent ``inv_freq``), written next to a classic
stand-in checkpoint. With the buffers rebuilt the two implementations agree to float32 rounding.
"""

from __future__ import annotations

import pytest
import torch

from doge_from_scratch import parity, references
from doge_from_scratch.testing import tiny_config

CONFIGURATION = '''
from transformers import PretrainedConfig


class DogeConfig(PretrainedConfig):
    model_type = "doge"
'''

MODELING = '''
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_doge import DogeConfig


class Scale(nn.Module):  # holds one [H] vector called "weight", as the classic names need
    def __init__(self, size):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))


def rms(x, scale, eps):
    return scale.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


class Rotary(nn.Module):
    def __init__(self, config):
        super().__init__()
        d = config.hidden_size // config.num_attention_heads
        # below max_position_embeddings the classic dynamic scaling changes nothing; the test stays below
        inv_freq = 1.0 / config.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float32) / d)
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, length):
        angle = torch.arange(length, dtype=torch.float32)[:, None] * self.inv_freq
        angle = torch.cat((angle, angle), dim=-1)
        return angle.cos(), angle.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.h, self.kv = c.num_attention_heads, c.num_key_value_heads
        self.d = c.hidden_size // self.h
        self.q_proj = nn.Linear(c.hidden_size, self.h * self.d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, self.kv * self.d, bias=False)
        self.A = nn.Parameter(torch.zeros(self.h))
        self.dt_proj = nn.Linear(self.kv * self.d, self.h, bias=False)
        self.o_proj = nn.Linear(self.h * self.d, c.hidden_size, bias=False)

    def forward(self, x, cos, sin):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.h, self.d).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv, self.d).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        bias = torch.exp(self.A * F.softplus(self.dt_proj(v.transpose(1, 2).reshape(b, t, -1)))).transpose(1, 2)
        future = torch.ones(t, t, dtype=torch.bool).triu(1)
        mask = torch.zeros(t, t).masked_fill(future, torch.finfo(x.dtype).min) + bias[:, :, None, :]
        k = k.repeat_interleave(self.h // self.kv, dim=1)
        v = v.repeat_interleave(self.h // self.kv, dim=1)
        probs = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(self.d) + mask, dim=-1, dtype=torch.float32)
        return self.o_proj((probs.to(x.dtype) @ v).transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.gate_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.up_proj = nn.Linear(c.hidden_size, c.intermediate_size, bias=False)
        self.down_proj = nn.Linear(c.intermediate_size, c.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Layer(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.eps = c.rms_norm_eps
        self.pre_layernorm, self.pre_residual = Scale(c.hidden_size), Scale(c.hidden_size)
        self.post_layernorm, self.post_residual = Scale(c.hidden_size), Scale(c.hidden_size)
        self.self_attn, self.feed_forward = Attention(c), MLP(c)

    def forward(self, x, cos, sin):
        x = self.pre_residual.weight * x + self.self_attn(rms(x, self.pre_layernorm, self.eps), cos, sin)
        return self.post_residual.weight * x + self.feed_forward(rms(x, self.post_layernorm, self.eps))


class Body(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.eps = c.rms_norm_eps
        self.word_embed = nn.Embedding(c.vocab_size, c.hidden_size)
        self.rotary_emb = Rotary(c)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))
        self.final_layernorm = Scale(c.hidden_size)

    def forward(self, ids):
        x = self.word_embed(ids)
        cos, sin = self.rotary_emb(ids.shape[1])
        for layer in self.layers:
            x = layer(x, cos, sin)
        return rms(x, self.final_layernorm, self.eps)


class DogeForCausalLM(PreTrainedModel):
    config_class = DogeConfig
    base_model_prefix = "model"

    def __init__(self, config):
        super().__init__(config)
        self.model = Body(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(self, input_ids, past_key_values=None, use_cache=False, **kwargs):
        # the "cache" is the ids seen so far: every call recomputes the whole sequence
        ids = input_ids if past_key_values is None else torch.cat((past_key_values, input_ids), dim=1)
        logits = self.lm_head(self.model(ids))[:, -input_ids.shape[1]:]
        return CausalLMOutputWithPast(logits=logits, past_key_values=ids if use_cache else None)
'''


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("remote_code")
    references.write_stand_in(path, tiny_config(num_hidden_layers=2), generation="A", seed=2)
    (path / "configuration_doge.py").write_text(CONFIGURATION)
    (path / "modeling_doge.py").write_text(MODELING)
    return path


def test_remote_code_reference_has_its_non_persistent_buffers(folder):
    reference = references.remote_code(str(folder), folder, torch.float32, torch.device("cpu"))
    d = 64 // 4
    expected = 1.0 / 10000.0 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    got = reference.model.model.rotary_emb.inv_freq
    assert got.dtype == torch.float32
    assert (got.double() - expected).abs().max() <= 2 * torch.finfo(torch.float32).eps * expected.max()


def test_parity_with_remote_code_agrees(folder, record_diff):
    report = parity.run_parity(str(folder), dtypes=("float32",), seq_len=24, new_tokens=8, trust_remote_code=True)
    assert report.reference.startswith("the checkpoint's own remote code"), report.notes
    f32 = report.results[0]
    record_diff("parity --trust-remote-code (test-written classic remote code) float32 logits",
                f32.max_abs_diff, parity.FLOAT32_RTOL * f32.max_abs_logit)
    assert report.ok, f"{f32} {report.divergence}"
    assert f32.greedy_agree == 8 and f32.argmax_agree == f32.positions
