"""generate and the fast decoder against transformers' generate on the same weights (float32)."""

import pytest
import torch
import transformers
from transformers.generation.logits_process import (RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                                                    TopKLogitsWarper, TopPLogitsWarper)

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.fast_decode import FastDoge
from doge_from_scratch.generation import (CallbackStreamer, GenerationConfig, ModelStepper, TextIteratorStreamer,
                                          TextStreamer, apply_repetition_penalty, generate, left_padding_positions,
                                          top_k_filter, top_p_filter)
from doge_from_scratch.testing import (failed_checks, float32_error_check, float64_copy,
                                       greedy_agreement, model_and_reference, randomize_, tiny_config)

DENSE = dict()
MOE = dict(is_moe=True, num_experts=64, num_experts_per_tok=4)
LONG = dict(keep_window_size=16)  # prompts below are 24 tokens: past the keep window from the start


def make_pair(**overrides):
    torch.manual_seed(0)
    return model_and_reference(tiny_config(**overrides))


def prompt(batch=1, length=24, seed=0, vocab=97):
    return torch.randint(3, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def reference_generate(reference, ids, **settings):
    settings.setdefault("eos_token_id", None)
    settings.setdefault("pad_token_id", 0)
    return reference.generate(ids, **settings)


# -- greedy parity ------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [DENSE, MOE, LONG, dict(attention_bias=True, mlp_bias=True)],
                         ids=["dense", "moe", "past-keep-window", "biases"])
def test_greedy_ids_equal_transformers(overrides):
    """Greedy ids of every decoder equal transformers', except that they may part at a near tie of the two best
    logits (``testing.greedy_agreement``: judged by the float64 reference, not by the last run)."""
    ours, reference = make_pair(**overrides)
    ids = prompt()
    expected = reference_generate(reference, ids, max_new_tokens=60, do_sample=False)
    exact = float64_copy(reference)
    for name, got in [("default", generate(ours, ids, max_new_tokens=60)),
                      ("teaching", generate(ours, ids, max_new_tokens=60, decoder="teaching")),
                      ("FastDoge", generate(FastDoge(ours), ids, max_new_tokens=60)),
                      ("model.generate dynamic cache", ours.generate(ids, max_new_tokens=60, cache="dynamic"))]:
        ok, why = greedy_agreement(got, expected, exact)
        assert ok, f"{name}: {why}"


def test_greedy_agreement_refuses_a_real_disagreement():
    """The near-tie allowance is not a blanket pass: a token swapped where the margin is clear is refused."""
    ours, reference = make_pair()
    ids = prompt()
    expected = reference_generate(reference, ids, max_new_tokens=20, do_sample=False)
    exact = float64_copy(reference)
    wrong = expected.clone()
    t = ids.shape[1] + 5
    wrong[0, t] = (expected[0, t] + 1) % reference.config.vocab_size
    ok, why = greedy_agreement(wrong, expected, exact)
    assert not ok and f"position {t}" in why
    assert greedy_agreement(expected, expected, exact)[0]


def test_greedy_without_cache_equals_with_cache():
    ours, _ = make_pair()
    ids = prompt(length=10)
    assert torch.equal(generate(ours, ids, max_new_tokens=20, cache="none"),
                       generate(ours, ids, max_new_tokens=20, cache="static"))


# -- sampling -----------------------------------------------------------------------------------------
CARD = dict(do_sample=True, temperature=0.8, top_p=0.9, repetition_penalty=1.0)


@pytest.mark.parametrize("settings", [CARD, dict(do_sample=True, temperature=1.3, top_k=7, repetition_penalty=1.4),
                                      dict(do_sample=False, repetition_penalty=1.5)],
                         ids=["card", "top-k-penalty", "greedy-penalty"])
def test_sampling_with_global_seed_equals_transformers(settings):
    ours, reference = make_pair()
    ids = prompt(batch=2, seed=4)
    torch.manual_seed(123)
    expected = reference_generate(reference, ids, max_new_tokens=50, **settings)
    torch.manual_seed(123)
    assert torch.equal(generate(ours, ids, max_new_tokens=50, **settings), expected)


def test_seeded_sampling_reproduces_and_leaves_global_rng_alone():
    ours, _ = make_pair()
    ids = prompt(seed=5)
    torch.manual_seed(0)
    before = torch.rand(1)
    torch.manual_seed(0)
    a = generate(ours, ids, max_new_tokens=30, seed=7, **CARD)
    after = torch.rand(1)
    assert torch.equal(before, after)
    assert torch.equal(a, generate(FastDoge(ours), ids, max_new_tokens=30, seed=7, **CARD))
    assert not torch.equal(a, generate(ours, ids, max_new_tokens=30, seed=8, **CARD))


def test_card_generation_config_works_as_given():
    ours, reference = make_pair()
    card = transformers.GenerationConfig(max_new_tokens=100, use_cache=True, do_sample=True, temperature=0.8,
                                         top_p=0.9, repetition_penalty=1.0)
    ids = prompt(seed=6)
    torch.manual_seed(11)
    expected = reference.generate(ids, generation_config=card, eos_token_id=None, pad_token_id=0)
    torch.manual_seed(11)
    assert torch.equal(ours.generate(ids, generation_config=card, tokenizer=None), expected)
    with pytest.raises(NotImplementedError, match="num_beams"):
        generate(ours, ids, generation_config=transformers.GenerationConfig(max_new_tokens=5, num_beams=2))
    with pytest.raises(TypeError, match="unknown generation settings"):
        generate(ours, ids, max_new_tokens=5, beams=3)
    with pytest.raises(ValueError, match="top_p"):
        generate(ours, ids, max_new_tokens=5, top_p=1.5)


@pytest.mark.parametrize("seed", range(3))
def test_logits_processors_equal_transformers(seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(3, 50, generator=g) * 3
    seq = torch.randint(0, 50, (3, 12), generator=g)
    seen = torch.zeros(3, 50, dtype=torch.bool).scatter(1, seq, True)
    torch.testing.assert_close(apply_repetition_penalty(scores, seen, 1.3),
                               RepetitionPenaltyLogitsProcessor(1.3)(seq, scores.clone()))
    torch.testing.assert_close(top_k_filter(scores, 5), TopKLogitsWarper(5)(seq, scores.clone()))
    for p in (0.3, 0.9, 0.999):
        torch.testing.assert_close(top_p_filter(scores, p), TopPLogitsWarper(p)(seq, scores.clone()))
    torch.testing.assert_close(scores / 0.7, TemperatureLogitsWarper(0.7)(seq, scores.clone()))


# -- eos, batching --------------------------------------------------------------------------------------
def test_stops_on_any_of_several_eos_ids_and_pads_finished_rows():
    ours, reference = make_pair()
    ids = prompt(batch=3, seed=8)
    free = generate(ours, ids, max_new_tokens=40)
    new = free[:, 24:]
    eos = [int(new[0, 5]), int(new[1, 9])]  # tokens each of two rows is known to produce
    out = generate(ours, ids, max_new_tokens=40, eos_token_id=eos, pad_token_id=0)
    expected = reference_generate(reference, ids, max_new_tokens=40, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(out, expected)
    for row in range(3):
        hits = [i for i, t in enumerate(out[row, 24:].tolist()) if t in eos]
        if hits:
            assert (out[row, 24 + hits[0] + 1:] == 0).all()
    single = generate(ours, ids[:1], max_new_tokens=40, eos_token_id=eos, pad_token_id=0)
    assert int(single[0, -1]) in eos and single.shape[1] < 24 + 40


@pytest.mark.parametrize("fast", [False, True], ids=["model", "fast"])
def test_left_padded_batch_equals_one_at_a_time(fast):
    ours, reference = make_pair()
    decoder = FastDoge(ours) if fast else ours
    lengths = [24, 17, 9]
    rows = [prompt(length=n, seed=10 + i) for i, n in enumerate(lengths)]
    ids = torch.zeros(3, 24, dtype=torch.long)
    mask = torch.zeros(3, 24, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, 24 - row.shape[1]:] = row
        mask[i, 24 - row.shape[1]:] = 1
    batched = generate(decoder, ids, mask, max_new_tokens=50)
    for i, row in enumerate(rows):
        alone = generate(decoder, row, max_new_tokens=50)
        assert torch.equal(batched[i, 24:], alone[0, row.shape[1]:]), f"row {i}"
    expected = reference_generate(reference, ids, attention_mask=mask, max_new_tokens=50, do_sample=False)
    assert torch.equal(batched, expected)


def test_right_padding_is_refused():
    ours, _ = make_pair()
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, -2:] = 0
    with pytest.raises(ValueError, match="LEFT padding"):
        generate(ours, prompt(batch=2, length=6), mask, max_new_tokens=3)


# -- fast decoder ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [DENSE, MOE, LONG, dict(attention_bias=True, mlp_bias=True)],
                         ids=["dense", "moe", "past-keep-window", "biases"])
@torch.no_grad()
def test_fast_decoder_logits_equal_model_at_every_step(overrides, record_check):
    """FastDoge's logits against the teaching model's at every step, both judged by their distance to the
    teaching model in float64 fed the same tokens (fused weights are products of other shapes)."""
    ours, _ = make_pair(**overrides)
    ids = prompt()
    plain, fast = ModelStepper(ours, 1, 64, "static"), FastDoge(ours).make_stepper(1, 64)
    exact_stepper = ModelStepper(float64_copy(ours), 1, 64, "static")
    positions = torch.arange(24)[None]
    a, b = plain.prefill(ids, None, positions), fast.prefill(ids, None, positions)
    checks = [float32_error_check(f"fast decoder {overrides} prefill", b, a,
                                  exact_stepper.prefill(ids, None, positions))]
    for step in range(30):
        token, position = a.argmax(-1), torch.tensor([24 + step])
        a, b = plain.step(token, None, position), fast.step(token, None, position)
        checks.append(float32_error_check(f"fast decoder {overrides} step {step}", b, a,
                                          exact_stepper.step(token, None, position)))
    for c in checks:
        record_check(c)
    assert all(c["ok"] for c in checks), failed_checks(checks)


def shared_prefix_batch(prefix_length=20, rests=(5, 1, 9), seed=3):
    """Three left-padded prompts that start with the same ``prefix_length`` tokens. -> ids, mask [3, T]"""
    g = torch.Generator().manual_seed(seed)
    prefix = torch.randint(3, 97, (prefix_length,), generator=g)
    rows = [torch.cat((prefix, torch.randint(3, 97, (n,), generator=g))) for n in rests]
    width = max(map(len, rows))
    ids, mask = torch.zeros(len(rows), width, dtype=torch.long), torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):], mask[i, width - len(row):] = row, 1
    return ids, mask


@pytest.mark.parametrize("overrides", [DENSE, dict(MOE, moe_router_split="per_token")], ids=["dense", "moe-per-token"])
@torch.no_grad()
def test_fast_decoder_shared_prefix_equals_whole_rows(overrides, record_check):
    """The fast prefill runs a prefix every row shares once; its logits at the prefill and at every later step
    against the teaching model on whole rows, both judged by their distance to the float64 model."""
    ours, _ = make_pair(**overrides)
    ids, mask = shared_prefix_batch()
    length = ids.shape[1] + 20
    fast = FastDoge(ours).make_stepper(3, length)
    assert fast.shared_prefix(ids, mask) == 20
    plain, exact = ModelStepper(ours, 3, length, "static"), ModelStepper(float64_copy(ours), 3, length, "static")
    positions = left_padding_positions(mask)
    a, b, e = (s.prefill(ids, mask, positions) for s in (plain, fast, exact))
    checks = [float32_error_check(f"shared prefix {overrides} prefill", b, a, e)]
    position = positions[:, -1]
    for step in range(20):
        token, mask, position = e.argmax(-1), torch.cat((mask, torch.ones(3, 1, dtype=torch.long)), 1), position + 1
        a, b, e = (s.step(token, mask, position) for s in (plain, fast, exact))
        checks.append(float32_error_check(f"shared prefix {overrides} step {step}", b, a, e))
    for c in checks:
        record_check(c)
    assert all(c["ok"] for c in checks), failed_checks(checks)


def test_shared_prefix_only_inside_the_keep_window_and_for_native_attention():
    ids, mask = shared_prefix_batch()
    ours, _ = make_pair()
    assert FastDoge(ours).make_stepper(3, ids.shape[1] + 4).shared_prefix(ids, mask) == 20
    assert FastDoge(ours).make_stepper(1, ids.shape[1] + 4).shared_prefix(ids[:1], mask[:1]) == 0
    assert FastDoge(ours).make_stepper(3, ids.shape[1] + 4).shared_prefix(*shared_prefix_batch(8)) == 0  # too short
    narrow, _ = make_pair(keep_window_size=ids.shape[1] + 3)  # the generation would outgrow the window
    assert FastDoge(narrow).make_stepper(3, ids.shape[1] + 4).shared_prefix(ids, mask) == 0
    classic = DogeForCausalLM(tiny_config(attention_variant="classic"))
    assert FastDoge(classic).make_stepper(3, ids.shape[1] + 4).shared_prefix(ids, mask) == 0
    mixing, _ = make_pair(**MOE)  # the reference's router split mixes the batch's tokens
    assert FastDoge(mixing).make_stepper(3, ids.shape[1] + 4).shared_prefix(ids, mask) == 0


def test_generate_with_a_shared_prefix_equals_transformers():
    ours, reference = make_pair()
    ids, mask = shared_prefix_batch()
    fast = FastDoge(ours)
    shared = generate(fast, ids, mask, max_new_tokens=30)
    expected = reference_generate(reference, ids, attention_mask=mask, max_new_tokens=30, do_sample=False)
    ok, why = greedy_agreement(shared, expected, float64_copy(ours))
    assert ok, why


@torch.no_grad()
def test_fast_decoder_bfloat16_is_the_same_model():
    ours, _ = make_pair()
    ids = prompt()
    reference_logits = ours(ids).logits[:, -1]
    fast = FastDoge(ours, dtype=torch.bfloat16)
    assert fast.weight_bytes() < sum(p.numel() * 4 for p in ours.parameters()) * 0.6
    logits = fast.make_stepper(1, 30).prefill(ids, None, torch.arange(24)[None])
    assert torch.corrcoef(torch.stack([logits[0], reference_logits[0]]))[0, 1] > 0.99
    out = generate(fast, ids, max_new_tokens=10)
    assert out.shape == (1, 34)


@torch.no_grad()
def test_compiled_fast_decoder_equals_eager():
    ours, _ = make_pair(num_hidden_layers=1)
    ids = prompt(length=8)
    eager, compiled = FastDoge(ours).make_stepper(1, 20), FastDoge(ours, compile=True).make_stepper(1, 20)
    positions = torch.arange(8)[None]
    a, b = eager.prefill(ids, None, positions), compiled.prefill(ids, None, positions)
    for step in range(6):
        token, position = a.argmax(-1), torch.tensor([8 + step])
        a, b = eager.step(token, None, position), compiled.step(token, None, position)
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)


# -- streamers ------------------------------------------------------------------------------------------
def test_text_streamer_prints_the_generated_text(tokenizer, capsys):
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval(), seed=1)
    ids = tokenizer("Once upon a time", return_tensors="pt").input_ids
    pieces = []
    out = generate(model, ids, max_new_tokens=30,
                   streamer=TextStreamer(tokenizer, skip_prompt=True, on_text=lambda t, final: pieces.append(t)))
    assert "".join(pieces) == tokenizer.decode(out[0, ids.shape[1]:])
    assert len(pieces) > 1  # it streamed, not one piece at the end
    # transformers' own TextStreamer works with our generate, and ours prints the same text
    generate(model, ids, max_new_tokens=30, streamer=transformers.TextStreamer(tokenizer, skip_prompt=True))
    theirs = capsys.readouterr().out
    generate(model, ids, max_new_tokens=30, streamer=TextStreamer(tokenizer, skip_prompt=True))
    assert capsys.readouterr().out == theirs


def test_chat_replies_in_batches_equal_one_at_a_time(tokenizer):
    from doge_from_scratch.generation import chat_replies, chat_reply

    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval(), seed=3)
    eos_bias = torch.zeros(len(tokenizer))
    eos_bias[tokenizer.eos_token_id] = 0.5  # some replies end early, so finished rows get padded (logits are ~0.2)
    model.lm_head.bias = torch.nn.Parameter(eos_bias)
    conversations = [[{"role": "user", "content": text}] for text in
                     ("Hi!", "What is 2 + 2?", "Reverse the list: 1 2 3 4 5 6", "Which number is bigger, 3.9 or 3.11?")]
    one_by_one = [chat_reply(model, tokenizer, c, max_new_tokens=12) for c in conversations]
    assert chat_replies(model, tokenizer, conversations, max_new_tokens=12, batch_size=3) == one_by_one
    assert any(r.endswith(tokenizer.eos_token) for r in one_by_one)
    assert not all(r.endswith(tokenizer.eos_token) for r in one_by_one)
    with pytest.raises(ValueError, match="batch_size"):
        chat_replies(model, tokenizer, conversations, batch_size=0)


def test_iterator_and_callback_streamers(tokenizer):
    import threading

    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(vocab_size=len(tokenizer))).eval(), seed=1)
    ids = tokenizer("The cat", return_tensors="pt").input_ids
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, timeout=60)
    result = {}
    thread = threading.Thread(target=lambda: result.update(out=generate(model, ids, max_new_tokens=20,
                                                                         streamer=streamer)))
    thread.start()
    text = "".join(streamer)
    thread.join()
    assert text == tokenizer.decode(result["out"][0, ids.shape[1]:])
    seen = []
    out = generate(model, ids, max_new_tokens=20, streamer=CallbackStreamer(lambda t: seen.append(int(t[0]))))
    assert seen == out[0, ids.shape[1]:].tolist()


def test_generation_config_defaults_follow_transformers():
    config = GenerationConfig()
    reference = transformers.GenerationConfig()._get_default_generation_params()
    assert (config.top_k, config.top_p, config.temperature, config.repetition_penalty) == (
        reference["top_k"], reference["top_p"], reference["temperature"], reference["repetition_penalty"])
