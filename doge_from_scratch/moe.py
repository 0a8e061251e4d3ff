"""The dense MLP and the Cross Domain Mixture of Experts (lesson 03).

CDMoE = the dense SiLU-gated MLP (the "shared expert", same parameter names, so a dense checkpoint
loads into it) + many tiny experts that are rank-one maps stored as two embedding tables:

    expert e(x) = silu(down_embed[e] . x) * up_embed[e]

Choosing k of E experts per token uses product keys: the router emits 2K scores (K = floor(sqrt(E)),
as the classic code's ``int(math.sqrt(num_experts))`` and transformers' ``math.floor`` both compute), the
best K of each half form K*K candidate pairs (i, j) -> expert i*K + j with score s_i + s_j, and the
top k of those win. This costs O(K) instead of O(E) router outputs. When E is not a perfect square,
the experts K*K .. E-1 exist (their embeddings load and save) but no pair ever names them.

``split`` decides how the 2K router logits of a token are cut into halves:
- ``"reference"``: ``logits.view(2, B*T, K)`` as the published code does. That reshape takes the first
  half of the *flattened batch* as "x" scores and the second half as "y" scores, so a token's routing
  depends on other tokens (even later ones). It is kept because the checkpoints were trained with it.
- ``"per_token"``: each token's own first K and last K logits. Causal and batch-independent.
Single-token decoding (B*T = 1) is the same under both.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

ACT_FNS = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "tanh": torch.tanh,
}


class DogeMLP(nn.Module):
    """down(act(gate(x)) * up(x)). x: [..., H] -> [..., H]"""

    def __init__(self, config) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        self.act_fn = ACT_FNS[config.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


def split_router_logits(logits: torch.Tensor, split: str) -> torch.Tensor:
    """[B, T, 2K] -> [2, B*T, K]: the "x" and "y" halves of product-key scores."""
    b, t, two_k = logits.shape
    if split == "reference":
        return logits.reshape(2, b * t, two_k // 2)
    if split == "per_token":
        return logits.reshape(b * t, 2, two_k // 2).transpose(0, 1)
    raise ValueError(f"unknown router split {split!r}; use 'reference' or 'per_token'")


def product_key_pairs(halves: torch.Tensor, num_keys: int) -> tuple[torch.Tensor, torch.Tensor]:
    """All K*K candidate pairs from two sets of K scores.

    halves: [2, N, K] -> (pair scores [N, K*K], expert ids [N, K*K]) with id = i_x * K + i_y.
    (Taking the top K of K keys only sorts them; it is how the reference orders the candidates.)
    """
    (sx, sy), (ix, iy) = halves.topk(num_keys, dim=-1)
    pair_scores = (sx.unsqueeze(-1) + sy.unsqueeze(-2)).flatten(-2)
    pair_ids = (ix.unsqueeze(-1) * num_keys + iy.unsqueeze(-2)).flatten(-2)
    return pair_scores, pair_ids


def product_key_topk(halves: torch.Tensor, num_keys: int, top_k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Best k experts out of K*K. halves: [2, N, K] -> (scores [N, k], expert ids [N, k])."""
    pair_scores, pair_ids = product_key_pairs(halves, num_keys)
    scores, best = pair_scores.topk(top_k, dim=-1)
    return scores, pair_ids.gather(-1, best)


def route_tokens(router_logits: torch.Tensor, num_keys: int, top_k: int, norm_topk_prob: bool,
                 split: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Product-key routing. router_logits: [B, T, 2K] -> (weights [B*T, k], expert ids [B*T, k], halves [2, B*T, K])."""
    halves = split_router_logits(router_logits, split)
    scores, experts = product_key_topk(halves, num_keys, top_k)
    weights = F.softmax(scores, dim=-1)
    if norm_topk_prob:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights, experts, halves


def routed_experts(tokens: torch.Tensor, weights: torch.Tensor, experts: torch.Tensor, down_embed: torch.Tensor,
                   up_embed: torch.Tensor, act_fn) -> torch.Tensor:
    """sum_e act(down_embed[e] . x) * w_e * up_embed[e] for each token's chosen experts.

    tokens: [N, H]; weights, experts: [N, k]; down_embed, up_embed: [E, H] -> [N, H]
    """
    gates = torch.matmul(F.embedding(experts, down_embed), tokens[:, :, None]).squeeze(-1)  # [N, k]
    gates = act_fn(gates) * weights
    return torch.matmul(gates[:, None], F.embedding(experts, up_embed))[:, 0]


class DogeCDMoE(nn.Module):
    """Shared dense expert + product-key routed rank-one experts. x: [B, T, H] -> ([B, T, H], [2, B*T, K])."""

    def __init__(self, config) -> None:
        super().__init__()
        h, i, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.num_experts = config.num_experts
        self.num_keys = config.num_keys
        self.top_k = config.num_experts_per_tok
        self.norm_topk_prob = config.norm_topk_prob
        self.split = config.moe_router_split
        self.act_fn = ACT_FNS[config.hidden_act]
        # shared expert: exactly the dense MLP's parameters
        self.gate_proj = nn.Linear(h, i, bias=bias)
        self.up_proj = nn.Linear(h, i, bias=bias)
        self.down_proj = nn.Linear(i, h, bias=bias)
        # router and routed experts: the only new parameters
        self.router_gate = nn.Linear(h, 2 * self.num_keys, bias=False)
        self.down_embed = nn.Embedding(self.num_experts, h)
        self.up_embed = nn.Embedding(self.num_experts, h)

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x: [B, T, H] -> (weights [B*T, k], expert ids [B*T, k], router halves [2, B*T, K])."""
        return route_tokens(self.router_gate(x), self.num_keys, self.top_k, self.norm_topk_prob, self.split)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, t, h = x.shape
        weights, experts, halves = self.route(x)
        routed = routed_experts(x.reshape(b * t, h), weights, experts, self.down_embed.weight, self.up_embed.weight,
                                self.act_fn).view(b, t, h)
        shared = self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))
        return shared + routed, halves


def load_balancing_loss(router_halves: list[torch.Tensor], num_experts: int, top_k: int,
                        attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Switch-Transformer balance loss: E * sum_e (fraction of picks of e) * (mean router prob of e).

    router_halves: one [2, B*T, K] per layer; attention_mask: [B, T] (1 = real token) or None.
    The router probability of expert e is the softmax over all K*K pair scores, as in the reference.
    With a non-square E the experts no pair names (ids K*K .. E-1) count with zero picks and zero
    probability (the references index a K*K table by expert id there and fail on the shapes).
    """
    num_keys = router_halves[0].shape[-1]  # the router's K (DogeConfig.num_keys)
    picks, probs = [], []
    for halves in router_halves:
        pair_scores, pair_ids = product_key_pairs(halves, num_keys)
        picks.append(pair_ids.gather(-1, pair_scores.topk(top_k, dim=-1).indices))
        table = pair_scores.new_zeros(pair_scores.shape[0], num_experts)
        probs.append(table.scatter(-1, pair_ids, F.softmax(pair_scores, dim=-1)))
    picks, probs = torch.cat(picks), torch.cat(probs)  # [L*N, k], [L*N, E]
    dtype = probs.dtype
    if attention_mask is None:
        token_weight = torch.ones(picks.shape[0], dtype=dtype, device=picks.device)
    else:
        token_weight = attention_mask.reshape(-1).to(dtype).repeat(len(router_halves))
    pick_counts = torch.zeros(num_experts, dtype=dtype, device=picks.device).scatter_add_(
        0, picks.reshape(-1), token_weight.repeat_interleave(picks.shape[1]))
    fraction_picked = pick_counts / (token_weight.sum() * picks.shape[1])
    mean_prob = (probs * token_weight[:, None]).sum(0) / token_weight.sum()
    return num_experts * torch.sum(fraction_picked * mean_prob)
