"""generate's default decoder: the fast copy for inference, the teaching model by name, the same numbers."""

import pytest
import torch

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.fast_decode import FastDoge, fast_decoder_for, why_not_fast
from doge_from_scratch.generation import ModelStepper, generate
from doge_from_scratch.testing import failed_checks, float32_error_check, float64_copy, randomize_, tiny_config

MOE = dict(is_moe=True, num_experts=64, num_experts_per_tok=4)


def make_model(**overrides):
    torch.manual_seed(0)
    return randomize_(DogeForCausalLM(tiny_config(**overrides)).eval(), seed=1)


def prompt(batch=1, length=24, seed=0):
    return torch.randint(3, 97, (batch, length), generator=torch.Generator().manual_seed(seed))


def left_padded(lengths, width, seed=10):
    ids = torch.zeros(len(lengths), width, dtype=torch.long)
    mask = torch.zeros(len(lengths), width, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, width - n:] = prompt(length=n, seed=seed + i)
        mask[i, width - n:] = 1
    return ids, mask


def uses_fast_copy(model, run) -> bool:
    """Whether ``run()`` decoded through the model's cached FastDoge (its copy is made on first use)."""
    from doge_from_scratch import fast_decode

    fast_decode._FAST_COPIES.pop(model, None)
    run()
    return model in fast_decode._FAST_COPIES


@pytest.mark.parametrize("overrides", [{}, MOE, dict(keep_window_size=16)], ids=["dense", "moe", "past-keep-window"])
def test_default_generate_is_fast_and_equals_teaching(overrides):
    model = make_model(**overrides)
    ids = prompt()
    assert uses_fast_copy(model, lambda: model.generate(ids, max_new_tokens=40))
    fast_ids = model.generate(ids, max_new_tokens=40)
    assert not uses_fast_copy(model, lambda: model.generate(ids, max_new_tokens=40, decoder="teaching"))
    assert torch.equal(fast_ids, model.generate(ids, max_new_tokens=40, decoder="teaching"))
    sampled = dict(max_new_tokens=30, do_sample=True, temperature=0.8, top_p=0.9, seed=5)
    assert torch.equal(model.generate(ids, **sampled), model.generate(ids, decoder="teaching", **sampled))


@torch.no_grad()
def test_padded_batch_fast_steps_equal_teaching_model():
    """Left-padded rows now take the per-token fast step (native attention): logits at every step judged
    against the teaching model in float64 fed the same tokens."""
    model = make_model()
    ids, mask = left_padded([24, 17, 9], 24)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    plain, fast = ModelStepper(model, 3, 64, "static"), fast_decoder_for(model).make_stepper(3, 64)
    exact = ModelStepper(float64_copy(model), 3, 64, "static")
    a, b, c = (s.prefill(ids, mask, positions) for s in (plain, fast, exact))
    checks = [float32_error_check("padded prefill", b, a, c)]
    next_position = positions[:, -1] + 1
    for step in range(20):
        token = a.argmax(-1)
        mask = torch.cat((mask, mask.new_ones(3, 1)), dim=1)
        a, b, c = (s.step(token, mask, next_position) for s in (plain, fast, exact))
        checks.append(float32_error_check(f"padded step {step}", b, a, c))
        next_position = next_position + 1
    assert all(check["ok"] for check in checks), failed_checks(checks)


def test_padded_batch_generate_equals_teaching():
    model = make_model()
    ids, mask = left_padded([24, 17, 9], 24)
    expected = generate(model, ids, mask, max_new_tokens=30, decoder="teaching")
    assert torch.equal(generate(model, ids, mask, max_new_tokens=30), expected)


def test_training_mode_and_named_caches_keep_the_teaching_path():
    model = make_model()
    ids = prompt(length=8)
    model.train()
    assert "training mode" in why_not_fast(model)
    assert not uses_fast_copy(model, lambda: model.generate(ids, max_new_tokens=4))
    with pytest.raises(ValueError, match="decoder='fast' is not available: the model is in training mode"):
        model.generate(ids, max_new_tokens=4, decoder="fast")
    model.eval()
    for cache in ("static", "dynamic", "none"):
        assert not uses_fast_copy(model, lambda: model.generate(ids, max_new_tokens=4, cache=cache))
    with pytest.raises(ValueError, match="decoder='bogus': choose one of"):
        model.generate(ids, max_new_tokens=4, decoder="bogus")


@torch.no_grad()
def test_fast_copy_follows_weight_updates():
    """An in-place weight update (what an optimizer step does) rebuilds the copy; an unchanged model reuses it."""
    model = make_model()
    ids = prompt(length=8)
    first = fast_decoder_for(model)
    assert fast_decoder_for(model) is first
    model.lm_head.weight.mul_(-1.0)
    second = fast_decoder_for(model)
    assert second is not first
    teaching = model.generate(ids, max_new_tokens=12, decoder="teaching")
    assert torch.equal(model.generate(ids, max_new_tokens=12), teaching)


@pytest.mark.parametrize("optimizer", ["for-loop", "fused"])
def test_fast_copy_follows_optimizer_steps(optimizer):
    """A fused AdamW writes the weights without bumping their version counters; the step hook still drops the copy."""
    model = make_model()
    ids = prompt(length=8)
    stale = model.generate(ids, max_new_tokens=12)
    opt = torch.optim.AdamW(model.parameters(), lr=0.05, foreach=False, fused=optimizer == "fused")
    model(ids, labels=ids).loss.backward()
    opt.step()
    model.eval()
    fresh = model.generate(ids, max_new_tokens=12)
    assert torch.equal(fresh, model.generate(ids, max_new_tokens=12, decoder="teaching"))
    assert not torch.equal(fresh, stale)  # the step changed the greedy continuation, so a stale copy would show


def test_chat_replies_and_grpo_sampler_decode_fast(tokenizer):
    from doge_from_scratch.generation import chat_replies
    from doge_from_scratch.grpo import sample_groups
    from doge_from_scratch.testing import tiny_model_for

    model = tiny_model_for(tokenizer, seed=2)
    conversations = [[{"role": "user", "content": "Hi!"}], [{"role": "user", "content": "What is 2 + 2?"}]]
    assert uses_fast_copy(model, lambda: chat_replies(model, tokenizer, conversations, max_new_tokens=6))
    model.train()  # the GRPO trainer's state: the sampler switches to eval for the rollout and back
    assert uses_fast_copy(model, lambda: sample_groups(model, tokenizer, conversations, num_generations=2,
                                                      max_new_tokens=6, seed=1))
    assert model.training


def test_fast_doge_keeps_an_lm_head_bias():
    model = make_model()
    model.lm_head.bias = torch.nn.Parameter(torch.randn(97) * 0.5)
    ids = prompt(length=8)
    with torch.no_grad():
        expected, exact = model(ids).logits[:, -1], float64_copy(model)(ids).logits[:, -1]
        got = FastDoge(model).make_stepper(1, 8).prefill(ids, None, torch.arange(8)[None])
    check = float32_error_check("lm_head bias", got, expected, exact)
    assert check["ok"], failed_checks([check])
