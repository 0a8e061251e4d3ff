"""The exercise checks both ways: every solution notebook's solution passes its check, and a plausible wrong
solution of each exercise fails it (with a message naming the input), a stub gets "not yet"."""

from __future__ import annotations

import importlib
import importlib.util
import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from doge_from_scratch import exercises
from doge_from_scratch.testing import tiny_config

SOLUTIONS = Path(__file__).resolve().parent.parent / "notebooks" / "_src" / "solutions"


sys.path.insert(0, str(SOLUTIONS))  # the generators import solbuild (and it nbbuild) as top-level modules
SOLBUILD = importlib.import_module("solbuild")


def _solution_modules():
    for path in sorted(SOLUTIONS.glob("sn*.py")):
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield path.stem, module


SOLVED = [(f"{stem}:{e.check}", e, module) for stem, module in _solution_modules() for e in module.EXERCISES]


@pytest.mark.parametrize("exercise,module", [(e, m) for _, e, m in SOLVED], ids=[i for i, _, _ in SOLVED])
def test_solution_passes(exercise, module):
    namespace: dict = {}
    exec(SOLBUILD.setup(module.EXERCISES), namespace)
    for earlier in module.EXERCISES:  # later solutions may use earlier ones (jsd uses kl), as in the notebook
        exec(earlier.source, namespace)
        if earlier is exercise:
            break
    getattr(exercises, exercise.check)(namespace[exercise.function]).require()


def test_every_check_has_a_solution_and_a_wrong_solution():
    solved = {e.check for _, e, _ in SOLVED}
    wrong = {name for name, _ in WRONG}
    assert solved == wrong == set(exercises.__all__) - {"CheckResult"}


# ------------------------------------------------------------------------------------- wrong solutions


def merge_overlapping(symbols, pair):  # joins a symbol into two merges ("a a a" -> "aa aa")
    out = [a + b if (a, b) == pair else a for a, b in zip(symbols, symbols[1:] + [""])]
    return [s for s in out if s]


def render_one_newline(messages, add_generation_prompt=False):
    text = "<|begin_of_text|>" + "".join(
        f"<|start_header_id|>{m['role']}<|end_header_id|>\n{m['content']}<|end_of_text|>\n" for m in messages)
    return text + ("<|start_header_id|>assistant<|end_header_id|>\n" if add_generation_prompt else "")


def mask_with_headers(tokenizer, messages):
    from doge_from_scratch.sft import render_chat

    ids, mask = render_chat(tokenizer, messages)
    trained_turn = list(mask)  # also train the 3 tokens before each trained run (the assistant header)
    for i in range(len(mask) - 3):
        if mask[i + 3] and not mask[i]:
            trained_turn[i] = 1
    return ids, trained_turn


def rms_norm_no_eps(x, weight, eps=1e-6):
    return weight * x / x.pow(2).mean(-1, keepdim=True).sqrt()


def rms_norm_first_axis(x, weight, eps=1e-6):
    return weight * x * torch.rsqrt(x.pow(2).mean(0, keepdim=True) + eps)


def rotate_wrong_halves(x):
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x2, -x1), dim=-1)


def rotate_interleaved(x):
    return torch.stack((-x[..., 1::2], x[..., ::2]), dim=-1).flatten(-2)


def ntk_always(theta, factor, seq_len, max_positions, head_dim):
    return theta * (factor * seq_len / max_positions - (factor - 1)) ** (head_dim / (head_dim - 2))


def attention_softmax_over_queries(q, k, v):
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])).masked_fill(
        torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-2).nan_to_num() @ v


def attention_unscaled(q, k, v):
    t = q.shape[-2]
    scores = (q @ k.transpose(-1, -2)).masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
    return scores.softmax(dim=-1) @ v


def bias_heads_mixed(v, dt_weight, A):  # reshape without moving the head axis: mixes keys of different heads
    b, n_kv, s, d = v.shape
    return torch.exp(A * F.softplus(v.reshape(b, s, n_kv * d) @ dt_weight.T)).transpose(1, 2)


def mask_topk_before_masking(bias, allowed, keep_window_size):
    b, h, s = bias.shape
    neg = torch.finfo(torch.float32).min
    mask = bias[:, :, None, :].expand(b, h, allowed.shape[-2], s)
    if s > keep_window_size:
        top = mask.topk(keep_window_size, dim=-1).indices
        mask = mask.masked_fill(~torch.zeros_like(mask, dtype=torch.bool).scatter(-1, top, True), neg)
    return mask.masked_fill(~allowed, neg)


def mask_added(bias, allowed, keep_window_size):  # the classic rule: bias ADDED to the 0/min causal mask
    neg = torch.finfo(torch.float32).min
    return torch.zeros(allowed.shape).masked_fill(~allowed, neg) + bias[:, :, None, :]


def pkm_transposed_ids(sx, sy, k):
    scores = (sy[:, :, None] + sx[:, None, :]).flatten(1)  # (j, i) order: id j * K + i
    return scores.topk(k, dim=-1)


def split_like_reference(logits):
    b, t, two_k = logits.shape
    return logits.reshape(2, b * t, two_k // 2)


def balance_without_e(router_halves, num_experts, top_k):
    scores = torch.cat([(sx[:, :, None] + sy[:, None, :]).flatten(1) for sx, sy in router_halves])
    share = torch.bincount(scores.topk(top_k, -1).indices.flatten(), minlength=num_experts) / (scores.shape[0] * top_k)
    return (share * scores.softmax(-1).mean(0)).sum()


def layer_scaled_sublayer(layer, x, position_embeddings):
    x = x + layer.input_residual * layer.self_attn(layer.input_layernorm(x), position_embeddings)
    h = layer.mlp(layer.post_attention_layernorm(x))
    return x + layer.post_attention_residual * (h[0] if isinstance(h, tuple) else h)


def count_with_tied_head(c):
    with torch.device("meta"):
        from doge_from_scratch import DogeForCausalLM

        model = DogeForCausalLM(c)
    return sum(p.numel() for p in model.parameters()) + (c.vocab_size * c.hidden_size if c.tie_word_embeddings else 0)


def classic_name_keeps_weight(key):
    return key.replace("model.word_embed.", "model.embed_tokens.").replace(".pre_residual", ".input_residual") \
        .replace(".pre_layernorm.", ".input_layernorm.").replace(".post_layernorm.", ".post_attention_layernorm.") \
        .replace(".post_residual", ".post_attention_residual").replace(".feed_forward.", ".mlp.") \
        .replace("model.final_layernorm.", "model.norm.")


def penalty_always_divides(scores, seen, penalty):
    return torch.where(seen, scores / penalty, scores)


def top_k_strict(scores, k):
    kth = scores.topk(k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores <= kth, float("-inf"))


def top_p_drops_crossing_token(scores, p):
    probs, order = scores.softmax(-1).sort(dim=-1, descending=True)
    drop = probs.cumsum(-1) > p
    return scores.masked_fill(drop.scatter(-1, order, drop), float("-inf"))


def wsd_from_zero(step, warmup, stable, decay, min_ratio=0.0):
    if step < warmup:
        return step / warmup
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * (step - warmup - stable) / decay))
    return min_ratio


def adam_l2(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):  # Adam + L2, not AdamW
    grad = grad + weight_decay * param
    exp_avg = betas[0] * exp_avg + (1 - betas[0]) * grad
    exp_avg_sq = betas[1] * exp_avg_sq + (1 - betas[1]) * grad * grad
    update = (exp_avg / (1 - betas[0] ** step)) / ((exp_avg_sq / (1 - betas[1] ** step)).sqrt() + eps)
    return param - lr * update, exp_avg, exp_avg_sq


def adamw_no_bias_correction(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    param = param * (1 - lr * weight_decay)
    exp_avg = betas[0] * exp_avg + (1 - betas[0]) * grad
    exp_avg_sq = betas[1] * exp_avg_sq + (1 - betas[1]) * grad * grad
    return param - lr * exp_avg / (exp_avg_sq.sqrt() + eps), exp_avg, exp_avg_sq


def sft_per_sequence(logits, labels):
    return torch.stack([F.cross_entropy(logits[i, :-1], labels[i, 1:]) for i in range(len(logits))]).mean()


def sft_unshifted(logits, labels):
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))


def step_mean_of_means(micro_batches):
    return sum(F.cross_entropy(lg[:, :-1].reshape(-1, lg.shape[-1]), lab[:, 1:].reshape(-1))
               for lg, lab in micro_batches) / len(micro_batches)


def positions_not_restarting(lengths, length):
    return torch.arange(length)


def logps_averaged(logits, input_ids, completion_mask):
    logp = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logp * completion_mask[:, 1:]).sum(1) / completion_mask[:, 1:].sum(1)


def dpo_sign_flipped(chosen, rejected, ref_chosen, ref_rejected, beta):
    return -F.logsigmoid(-beta * ((chosen - ref_chosen) - (rejected - ref_rejected)))


def ipo_unnormalised(chosen, rejected, ref_chosen, ref_rejected, beta, chosen_lengths, rejected_lengths):
    return ((chosen - ref_chosen) - (rejected - ref_rejected) - 1 / (2 * beta)) ** 2


def kl_reversed(log_p, log_q):
    return (log_q.exp() * (log_q - log_p)).sum(-1)


def jsd_betas_swapped(student_logits, teacher_logits, beta):
    log_s, log_t = student_logits.log_softmax(-1), teacher_logits.log_softmax(-1)
    m = ((1 - beta) * log_t.exp() + beta * log_s.exp()).log()
    return beta * (log_t.exp() * (log_t - m)).sum(-1) + (1 - beta) * (log_s.exp() * (log_s - m)).sum(-1)


def advantages_population_std(rewards, num_generations):
    groups = rewards.view(-1, num_generations)
    return ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, unbiased=False, keepdim=True) + 1e-4)).flatten()


def clipped_max(logps, old_logps, advantages, eps_low, eps_high):
    ratio, adv = torch.exp(logps - old_logps), advantages[:, None]
    return -torch.max(ratio * adv, ratio.clamp(1 - eps_low, 1 + eps_high) * adv)


def expand_kv_tiled(k_weight, n_heads, n_kv, head_dim):
    return k_weight.reshape(n_kv, head_dim, -1).repeat(n_heads // n_kv, 1, 1).reshape(n_heads * head_dim, -1)


def divergence_by_equality(ours, reference, rtol, atol):
    return next((name for name, out in ours.items() if not torch.equal(out, reference[name])), None)


def divergence_last(ours, reference, rtol, atol):
    bad = [n for n, out in ours.items() if not torch.allclose(out, reference[n], rtol=rtol, atol=atol)]
    return bad[-1] if bad else None


def metrics_per_word(lls, choices, gold):
    per_word = [ll / len(c.split()) for ll, c in zip(lls, choices)]
    best = max(range(len(lls)), key=lambda i: (lls[i], -i))
    best_norm = max(range(len(lls)), key=lambda i: (per_word[i], -i))
    return {"acc": float(best == gold), "acc_norm": float(best_norm == gold)}


def metrics_last_on_ties(lls, choices, gold):
    def last_best(values):
        return max(range(len(values)), key=lambda i: (values[i], i))
    return {"acc": float(last_best(lls) == gold),
            "acc_norm": float(last_best([ll / len(c) for ll, c in zip(lls, choices)]) == gold)}


def stderr_population(values):
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / len(values) / len(values))


WRONG = [
    ("check_merge", merge_overlapping), ("check_chat_template", render_one_newline),
    ("check_assistant_mask", mask_with_headers),
    ("check_rms_norm", rms_norm_no_eps), ("check_rms_norm", rms_norm_first_axis),
    ("check_rotate_half", rotate_wrong_halves), ("check_rotate_half", rotate_interleaved),
    ("check_ntk_theta", ntk_always),
    ("check_causal_attention", attention_softmax_over_queries), ("check_causal_attention", attention_unscaled),
    ("check_dynamic_bias", bias_heads_mixed),
    ("check_dynamic_mask", mask_topk_before_masking), ("check_dynamic_mask", mask_added),
    ("check_product_key_topk", pkm_transposed_ids), ("check_per_token_split", split_like_reference),
    ("check_load_balancing_loss", balance_without_e),
    ("check_decoder_layer", layer_scaled_sublayer), ("check_parameter_count", count_with_tied_head),
    ("check_classic_name", classic_name_keeps_weight),
    ("check_repetition_penalty", penalty_always_divides), ("check_top_k", top_k_strict),
    ("check_top_p", top_p_drops_crossing_token),
    ("check_wsd", wsd_from_zero), ("check_adamw_step", adam_l2), ("check_adamw_step", adamw_no_bias_correction),
    ("check_sft_loss", sft_per_sequence), ("check_sft_loss", sft_unshifted), ("check_step_loss", step_mean_of_means),
    ("check_packed_positions", positions_not_restarting),
    ("check_sequence_logps", logps_averaged), ("check_dpo_loss", dpo_sign_flipped),
    ("check_ipo_loss", ipo_unnormalised),
    ("check_kl", kl_reversed), ("check_generalized_jsd", jsd_betas_swapped),
    ("check_group_advantages", advantages_population_std), ("check_clipped_loss", clipped_max),
    ("check_expand_kv", expand_kv_tiled),
    ("check_first_divergence", divergence_by_equality), ("check_first_divergence", divergence_last),
    ("check_choice_metrics", metrics_per_word), ("check_choice_metrics", metrics_last_on_ties),
    ("check_mean_stderr", stderr_population),
]


@pytest.mark.parametrize("check,wrong", WRONG, ids=[f"{c}:{w.__name__}" for c, w in WRONG])
def test_wrong_solution_fails(check, wrong):
    result = getattr(exercises, check)(wrong)
    assert not result
    assert "wrong on" in result.message and "not yet" not in result.message, result.message


def test_stub_gets_not_yet_and_errors_are_reported():
    def stub(*args):
        raise NotImplementedError

    def broken(*args):
        return undefined_name  # noqa: F821

    not_yet = exercises.check_rms_norm(stub)
    assert not not_yet and "not yet" in not_yet.message and repr(not_yet) == not_yet.message
    error = exercises.check_rms_norm(broken)
    assert not error and "raised NameError" in error.message and "x = " in error.message
    with pytest.raises(AssertionError, match="not yet"):
        not_yet.require()


def test_check_does_not_see_inputs_edited_in_place():
    def edits_then_right(x, weight, eps=1e-6):
        out = weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
        x.zero_()  # a later case must not be judged against answers computed from a zeroed input
        return out

    assert exercises.check_rms_norm(edits_then_right)
    assert tiny_config().hidden_size == 64  # the decoder-layer cases' size, named in their messages
