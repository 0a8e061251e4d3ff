"""Building blocks of lesson 01: RMSNorm and rotary position embeddings (default and dynamic NTK)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import handwritten_grad


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """``weight * x / sqrt(mean(x^2) + eps)``, the statistic in float32, cast back before the weight.

    x: [..., H], weight: [H] -> [..., H]. When autograd must differentiate it, the formula runs op by op (the
    graph the reference differentiates, so gradients match it bit for bit); otherwise ATen's ``F.rms_norm``
    evaluates the same float32 operations in one call (bit-equal on CPU, and it is what keeps the fast
    decoder's per-token overhead low: a decoded token runs 3 norms a layer).
    """
    wide = x.dtype == torch.float32  # then both casts are no-ops, but each would still cost a dispatch
    x32 = x if wide else x.to(torch.float32)
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    else:
        x32 = F.rms_norm(x32, x32.shape[-1:], eps=eps)
    return weight * (x32 if wide else x32.to(x.dtype))


class RMSNorm(nn.Module):
    """Root-mean-square norm: ``weight * x / sqrt(mean(x^2) + eps)``.

    The statistic is taken in float32 even for bfloat16 inputs, because the mean of squares of a few
    thousand bfloat16 numbers loses most of its digits; the result is cast back before the weight,
    which is where the reference casts too (the order matters for the last bit in bfloat16).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.variance_epsilon = eps
        # False: autograd differentiates the formula op by op, as the reference does (bit-equal gradients);
        # DogePreTrainedModel.set_handwritten_grad switches every module at once
        self.handwritten_grad = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [..., H] -> [..., H]"""
        if self.handwritten_grad and handwritten_grad.training(x, self.weight):
            return handwritten_grad.rms_norm(x, self.weight, self.variance_epsilon)  # same forward, shorter backward
        return rms_norm(x, self.weight, self.variance_epsilon)

    def extra_repr(self) -> str:
        return f"{tuple(self.weight.shape)}, eps={self.variance_epsilon}"


def rope_inverse_frequencies(head_dim: int, theta: float) -> torch.Tensor:
    """The RoPE frequencies theta^(-2i/d) for i < d/2, in float32. -> [d/2]"""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta ** exponents)


def dynamic_ntk_theta(theta: float, factor: float, seq_len: int, max_positions: int, head_dim: int) -> float:
    """Dynamic NTK scaling: past ``max_positions`` the base grows so the longest wavelength still fits.

    Below ``max_positions`` the base is unchanged, which is why the classic configs behave like plain
    RoPE on sequences of up to 2048 tokens.
    """
    seq_len = max(seq_len, max_positions)
    return theta * ((factor * seq_len / max_positions) - (factor - 1)) ** (head_dim / (head_dim - 2))


class RotaryEmbedding(nn.Module):
    """cos/sin tables for Llama-style RoPE (rotate-half convention)."""

    def __init__(self, config) -> None:
        super().__init__()
        rope = dict(config.rope_parameters or {"rope_type": "default", "rope_theta": 10000.0})
        self.rope_type = rope.get("rope_type", "default")
        self.theta = float(rope.get("rope_theta", 10000.0))
        self.factor = float(rope.get("factor", 1.0))
        self.max_positions = config.max_position_embeddings
        self.head_dim = config.head_dim
        self.inv_freq = nn.Buffer(rope_inverse_frequencies(self.head_dim, self.theta), persistent=False)

    def frequencies_for(self, seq_len: int, device: torch.device) -> torch.Tensor:
        """Inverse frequencies to use when the furthest position is ``seq_len - 1``. -> [d/2]"""
        if self.rope_type == "dynamic" and seq_len > self.max_positions:
            theta = dynamic_ntk_theta(self.theta, self.factor, seq_len, self.max_positions, self.head_dim)
            return rope_inverse_frequencies(self.head_dim, theta).to(device)
        if self.inv_freq.dtype != torch.float32:
            # model.to(bfloat16) casts buffers too, and bfloat16 frequencies put the angles of late
            # positions visibly off; the reference keeps them in float32 whatever the model dtype.
            return rope_inverse_frequencies(self.head_dim, self.theta).to(device)
        return self.inv_freq.to(device)

    @torch.no_grad()
    def forward(self, x: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """position_ids: [B, T] -> (cos, sin) each [B, T, d], in x's dtype (computed in float32)."""
        seq_len = int(position_ids.max()) + 1 if self.rope_type == "dynamic" else 0
        inv_freq = self.frequencies_for(seq_len, x.device)
        angles = position_ids[..., None].to(torch.float32) * inv_freq
        angles = torch.cat((angles, angles), dim=-1)
        return angles.cos().to(x.dtype), angles.sin().to(x.dtype)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """(x1, x2) -> (-x2, x1) over the last dimension: a 90-degree turn of each (x1_i, x2_i) pair."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE for any layout: x [..., d], cos/sin broadcastable to it -> x rotated by its position."""
    return x * cos + rotate_half(x) * sin


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x: [B, heads, T, d]; cos, sin: [B, T, d] -> x rotated by its position."""
    return rotate(x, cos.unsqueeze(1), sin.unsqueeze(1))
