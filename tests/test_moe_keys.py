"""Expert counts that are not perfect squares, as the classic code and transformers accept them.

Both compute K = int(sqrt(num_experts)) (transformers: ``math.floor``) router keys per half, so
``num_experts = 10`` gives K = 3: a router of 2K = 6 outputs, 3 x 3 = 9 candidate pairs naming experts
0..8, and an expert 9 whose embeddings exist but that no pair names. The auxiliary load-balancing
loss, where both references fail on the shapes (they index a K*K table by expert id), is compared
with the Switch formula over all E experts written out below in float64.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.testing import copy_into_reference, randomize_, reference_model, tiny_config

EXPERTS, KEYS, TOP_K = 10, 3, 4
F32_EPS = torch.finfo(torch.float32).eps


def non_square_config():
    return tiny_config(is_moe=True, num_experts=EXPERTS, num_experts_per_tok=TOP_K)


def router_logits_of(model, ids) -> list[torch.Tensor]:
    """Each layer's router_gate output [B, T, 2K], read with hooks (no aux-loss code involved)."""
    seen = []
    hooks = [layer.mlp.router_gate.register_forward_hook(lambda m, i, out: seen.append(out))
             for layer in model.model.layers]
    with torch.no_grad():
        model(ids)
    for hook in hooks:
        hook.remove()
    return seen


def switch_loss(router_outputs: list[torch.Tensor], num_experts: int, num_keys: int, top_k: int) -> torch.Tensor:
    """E * sum_e (share of picks of e) * (mean router probability of e), every expert id 0..E-1.

    Pairs are enumerated in id order (id = i * K + j, score x_i + y_j) rather than by ranking the keys
    first; the halves are split as the published code does (``view(2, B*T, K)``).
    """
    picks = torch.zeros(num_experts, dtype=torch.float64)
    probs = torch.zeros(num_experts, dtype=torch.float64)
    tokens = 0
    for out in router_outputs:
        x, y = out.double().reshape(2, -1, num_keys)
        scores = (x[:, :, None] + y[:, None, :]).reshape(x.shape[0], -1)  # [N, K*K], column = expert id
        ranked = scores.sort(dim=-1, descending=True).values
        assert float((ranked[:, top_k - 1] - ranked[:, top_k]).min()) > 1e-4, "a pick float32 could flip"
        chosen = scores.topk(top_k, dim=-1).indices
        picks += torch.bincount(chosen.reshape(-1), minlength=num_experts).double()
        probs[: num_keys ** 2] += F.softmax(scores, dim=-1).sum(0)
        tokens += x.shape[0]
    return num_experts * torch.sum(picks / (tokens * top_k) * probs / tokens)


def test_aux_loss_with_a_non_square_expert_count(record_diff):
    """(The forward pass with such a count equals transformers': tests/test_bad_input_config.py.)"""
    config = non_square_config()
    ours = randomize_(DogeForCausalLM(config).eval(), 3)
    mlp = ours.model.layers[0].mlp
    assert mlp.num_keys == KEYS and mlp.router_gate.out_features == 2 * KEYS
    assert mlp.down_embed.num_embeddings == EXPERTS
    # router inputs from transformers in float64 (sdpa: its eager softmax stays float32 for float64 inputs)
    exact_model = reference_model(config, attn_implementation="sdpa").double()
    copy_into_reference(ours, exact_model)
    ids = torch.randint(0, config.vocab_size, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        aux = float(ours(ids, output_router_logits=True).aux_loss)
    expected = float(switch_loss(router_logits_of(exact_model, ids), EXPERTS, KEYS, TOP_K))
    # f_e is a count over N*k picks (exact in float32 up to one division); P_e sums N*L softmax
    # outputs of K*K terms each: float32 takes at most ~(N*L + K*K) rounding steps of eps on the way,
    # and the router logits themselves are float32 results (a few eps relative, well inside that)
    n_terms = ids.numel() * config.num_hidden_layers + KEYS ** 2
    tolerance = n_terms * F32_EPS * expected
    record_diff(f"{EXPERTS} experts (K={KEYS}) aux loss vs float64 Switch formula", abs(aux - expected), tolerance)
    assert abs(aux - expected) <= tolerance
