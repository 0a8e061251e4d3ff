"""GRPO (lesson 10): rewards (with reward-hacking attempts), advantages, and parity with TRL 1.16's GRPOTrainer."""

from __future__ import annotations

import copy

import pytest
import torch

from doge_from_scratch import grpo, rewards
from doge_from_scratch.cache import KVCache
from doge_from_scratch.data import REASONING_SYSTEM_PROMPT
from doge_from_scratch.tasks import split_of
from doge_from_scratch.testing import (copy_into_reference, failed_checks, float32_error_check, float64_copy,
                                       reference_model, tiny_model_for)
from doge_from_scratch.train_utils import trl_ready

BT, ET, BS, ES = rewards.TAGS


def reply(thought: str = "We compare 3.9 and 3.11.", solution: str = "The bigger number is 3.9.") -> str:
    return f"{BT}\n\n{thought}\n\n{ET}\n\n{BS}\n\n{solution}\n\n{ES}"


PROMPT = [{"role": "system", "content": REASONING_SYSTEM_PROMPT},
          {"role": "user", "content": "Which number is bigger, 3.9 or 3.11?"}]

# (reply, well formed, right answer to "3.9 or 3.11?")
CASES = {
    "right": (reply(), True, True),
    "right, then end of turn": (reply() + "<|end_of_text|>", True, True),
    "wrong": (reply(solution="The bigger number is 3.11."), True, False),
    "no sections": ("The bigger number is 3.9.", False, False),
    "empty thought": (reply(thought=""), False, False),
    "empty solution": (reply(solution=" "), False, False),
    "solution before thought": (f"{BS} The bigger number is 3.9. {ES} {BT} We compare. {ET}", False, False),
    "repeated thought": (f"{BT} a {ET} {BT} b {ET} {BS} The bigger number is 3.9. {ES}", False, False),
    "repeated solution": (reply() + f"\n\n{BS} The bigger number is 3.9. {ES}", False, False),
    "second whole answer": (reply() + reply(), False, False),
    "text after the end": (reply() + " Actually, 3.11.", False, False),
    "unclosed thought": (f"{BT} We compare. {BS} The bigger number is 3.9. {ES}", False, False),
    "answer stuffing": (reply(solution="3.11 3.9"), True, False),
    "answer stuffing, other order": (reply(solution="3.9 or 3.11, the bigger number is 3.9"), True, False),
}


@pytest.mark.parametrize("name", CASES)
def test_rewards_resist_hacking(name):
    text, formatted, right = CASES[name]
    assert rewards.format_reward(completions=[text]) == [float(formatted)], name
    got = rewards.accuracy_reward(prompts=[PROMPT], completions=[[{"role": "assistant", "content": text}]],
                                  task=["compare_decimals"], answer=["3.9"])
    assert got == [float(right)], name


def test_accuracy_reward_uses_each_tasks_checker():
    prompts = [[{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": q}]
               for q in ("What is 17 + 25?", "Reverse the list: 1 2 3", "What is the capital of Peru?")]
    good = [reply("Add.", "17 + 25 = 42"), reply("Reverse.", "The reversed list is 3 2 1."),
            reply("Peru.", "The capital of Peru is Lima.")]
    bad = [reply("Add.", "17 + 25 = 41"), reply("Reverse.", "The reversed list is 1 2 3."),
           reply("Peru.", "The capital of Peru is Lima or Quito or Paris.")]
    tasks, answers = ["addition", "reverse_digits", "capital"], ["42", "3 2 1", "Lima"]
    assert rewards.accuracy_reward(prompts=prompts, completions=good, task=tasks, answer=answers) == [1.0] * 3
    assert rewards.accuracy_reward(prompts=prompts, completions=bad, task=tasks, answer=answers) == [0.0] * 3
    with pytest.raises(ValueError, match="same length"):
        rewards.accuracy_reward(prompts=prompts, completions=good[:2], task=tasks, answer=answers)


def test_group_advantages_by_formula():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 1.0, 3.0], dtype=torch.float64)
    groups = r.view(2, 4)
    centred = (groups - groups.mean(1, keepdim=True)).flatten()
    # unbiased std of each group, written out
    group_std = ((groups - groups.mean(1, keepdim=True)) ** 2).sum(1).div(3).sqrt().repeat_interleave(4)
    batch_std = ((r - r.mean()) ** 2).sum().div(7).sqrt()
    a, _ = grpo.group_advantages(r, 4, "group")
    torch.testing.assert_close(a, centred / (group_std + 1e-4))
    a, _ = grpo.group_advantages(r, 4, "batch")
    torch.testing.assert_close(a, centred / (batch_std + 1e-4))
    a, std = grpo.group_advantages(r, 4, "none")
    torch.testing.assert_close(a, centred)
    torch.testing.assert_close(std, group_std)
    constant, _ = grpo.group_advantages(torch.ones(4), 4)
    assert constant.abs().max() == 0  # a group where every completion scores alike teaches nothing
    with pytest.raises(ValueError, match="scale_rewards"):
        grpo.group_advantages(r, 4, "global")


def test_clipped_loss_by_formula():
    logps = torch.tensor([[-1.0, -2.0, -0.5]], dtype=torch.float64)
    old = torch.tensor([[-1.5, -1.9, -0.5]], dtype=torch.float64)
    ref = torch.tensor([[-1.2, -2.2, -0.4]], dtype=torch.float64)
    for adv in (1.5, -0.5):
        loss, diag = grpo.clipped_token_loss(logps, old, torch.tensor([adv], dtype=torch.float64), 0.2, 0.28,
                                             beta=0.1, ref_logps=ref)
        ratio = (logps - old).exp()
        surrogate = torch.minimum(ratio * adv, ratio.clamp(0.8, 1.28) * adv)
        kl = ((ref - logps).exp() - (ref - logps) - 1) * ratio
        torch.testing.assert_close(loss, -surrogate + 0.1 * kl)
        torch.testing.assert_close(diag["high"], ((ratio > 1.28) & (adv > 0)).double())
        torch.testing.assert_close(diag["low"], ((ratio < 0.8) & (adv < 0)).double())


def test_comparison_records_are_disjoint_across_splits():
    train, test = grpo.comparison_records(300, "train", 0), grpo.comparison_records(200, "test", 1)
    questions = lambda rows: {r["prompt"][-1]["content"] for r in rows}  # noqa: E731
    assert len(questions(test)) == 200 and not questions(train) & questions(test)
    assert all(r["prompt"][0]["content"] == REASONING_SYSTEM_PROMPT for r in test)


def test_cold_start_traces_are_right_well_formed_training_comparisons():
    problems = grpo.comparison_problems(grpo.COLD_START_TRACES, "train", grpo.COLD_START_SEED)
    assert len({p.key for p in problems}) == grpo.COLD_START_TRACES
    assert all(split_of(p.key) == "train" for p in problems)
    records = grpo.cold_start_records()
    held_out = {r["prompt"][-1]["content"] for r in grpo.comparison_records(240, "test", 1)}
    assert not {r["messages"][1]["content"] for r in records} & held_out
    for record in records:
        prompt, reply = record["messages"][:2], record["messages"][2]["content"]
        assert [m["role"] for m in record["messages"]] == ["system", "user", "assistant"]
        assert rewards.is_strictly_formatted(reply), reply
        assert rewards.is_correct(prompt, reply, record["task"], record["answer"]), reply
    # the prompts GRPO trains on are the same questions comparison_problems draws
    assert [r["prompt"][-1]["content"] for r in grpo.comparison_records(5, "train", 3)] == [
        p.question for p in grpo.comparison_problems(5, "train", 3)]


def test_settings_refuse_unknown_choices():
    with pytest.raises(ValueError, match="loss_type='ppo'"):
        grpo.GRPOSettings(loss_type="ppo")
    with pytest.raises(ValueError, match="num_generations=1"):
        grpo.GRPOSettings(num_generations=1)


# ----------------------------------------------------------------------------------------------------------
# The shared prompt prefix computed once (completion_logps' default) against every row computed whole
# ----------------------------------------------------------------------------------------------------------


def test_shared_prefix_length():
    ids = torch.tensor([[0, 0, 5, 6, 7, 8], [5, 6, 7, 9, 9, 9], [0, 5, 6, 7, 8, 1]])
    mask = (ids != 0).long()
    assert grpo.shared_prefix_length(ids, mask) == 3  # 5 6 7, then 8 / 9 / 8 differ
    assert grpo.shared_prefix_length(ids[:1], mask[:1]) == 0  # one row shares nothing with others
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert grpo.shared_prefix_length(same, torch.ones_like(same)) == 2  # the last prompt token stays per row
    right_padded = torch.tensor([[1, 1, 0], [1, 1, 1]])
    assert grpo.shared_prefix_length(same, right_padded) == 0  # not left padding: no sharing


def rollout_batch(tokenizer, n_rows: int = 6):
    """A micro-batch with lesson 10's long system prompt, prompts of different lengths, completions of different
    lengths (one cut off without an eos)."""
    questions = ["Which number is bigger, 3.9 or 3.11?", "Is 12.4 or 5.67 the bigger number?",
                 "Which is larger: 0.5 or 0.45?"]
    conversations = [[{"role": "system", "content": REASONING_SYSTEM_PROMPT}, {"role": "user", "content": q}]
                     for q in questions for _ in range(n_rows // len(questions))]
    texts = [reply(), reply(solution="The bigger number is 3.11."), "The bigger", reply(thought="Tenths first."),
             reply() + reply(), "Hm"][:n_rows]
    completions = [tokenizer.encode(t, add_special_tokens=False) + [tokenizer.eos_token_id] for t in texts]
    completions[2] = completions[2][:-1]
    rollout = grpo.make_rollout(tokenizer, conversations, completions)
    return {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
            "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask}


def test_shared_prefix_gives_the_whole_rows_numbers(tokenizer):
    """Log-probs, entropies and the gradient of a loss on them, shared prefix vs whole rows, in float32 against
    float64 (the whole-row path, which the TRL parity tests check, is the reference's error)."""
    batch = rollout_batch(tokenizer)
    shared = grpo.shared_prefix_length(batch["prompt_ids"], batch["prompt_mask"])
    lengths = batch["prompt_mask"].sum(-1)
    assert shared > 0.8 * int(lengths.min()) and len(set(lengths.tolist())) > 1  # the case the shortcut is for
    model = tiny_model_for(tokenizer, keep_window_size=2048).train()  # the lesson models' window
    exact_model = float64_copy(model).train()
    weights = torch.linspace(-1.0, 1.0, batch["completion_ids"].numel()).view_as(batch["completion_ids"])

    def run(m, share):
        m.zero_grad()
        logps, entropy = grpo.completion_logps(m, batch, TEMPERATURE, with_entropy=True, share_prefix=share)
        (logps * weights.to(logps.dtype)).sum().backward()
        return logps.detach(), entropy, {k: p.grad.detach().clone() for k, p in m.named_parameters()}

    ours, whole, exact = run(model, True), run(model, False), run(exact_model, False)
    checks = [float32_error_check("log-probs", ours[0], whole[0], exact[0]),
              float32_error_check("entropy", ours[1], whole[1], exact[1])]
    checks += [float32_error_check(f"grad {k}", ours[2][k], whole[2][k], exact[2][k]) for k in exact[2]]
    assert all(c["ok"] for c in checks), failed_checks([c for c in checks if not c["ok"]])
    assert bool((ours[0] != 0).any()) and exact[2]["model.embed_tokens.weight"].abs().max() > 0


def test_rows_past_the_keep_window_are_computed_whole(tokenizer, monkeypatch):
    """Past the window a query keeps its top-k keys by bias, and a repeated token's keys tie: which of them it
    keeps depends on the column layout, so there completion_logps must not share the prefix."""
    batch = rollout_batch(tokenizer)
    width = batch["prompt_ids"].shape[1] + batch["completion_ids"].shape[1]
    model = tiny_model_for(tokenizer, keep_window_size=width - 1).eval()
    monkeypatch.setattr(KVCache, "expand_batch", lambda *a: pytest.fail("shared the prefix past the window"))
    with torch.no_grad():
        shared, _ = grpo.completion_logps(model, batch, TEMPERATURE)
        whole, _ = grpo.completion_logps(model, batch, TEMPERATURE, share_prefix=False)
    assert torch.equal(shared, whole)


def test_transformers_models_get_whole_rows(tokenizer):
    """A transformers Doge (its own cache type) takes the whole-row path, and ours (shared prefix) is no further
    from the float64 log-probs than it is."""
    batch = rollout_batch(tokenizer)
    ours = tiny_model_for(tokenizer, keep_window_size=2048).eval()
    theirs = reference_model(ours.config, "eager").eval()
    copy_into_reference(ours, theirs)
    with torch.no_grad():
        mine, _ = grpo.completion_logps(ours, batch, TEMPERATURE)
        reference, _ = grpo.completion_logps(theirs, batch, TEMPERATURE)
        exact, _ = grpo.completion_logps(float64_copy(ours), batch, TEMPERATURE, share_prefix=False)
    check = float32_error_check("log-probs", mine, reference, exact)
    assert check["ok"], check


# ----------------------------------------------------------------------------------------------------------
# Parity with TRL 1.16: the same model, prompts, completions and rewards
# ----------------------------------------------------------------------------------------------------------

G, PER_DEVICE, ACCUM, MAX_LEN, TEMPERATURE, LR = 4, 4, 2, 40, 0.9, 0.5
QUESTIONS = [("Which number is bigger, 3.9 or 3.11?", "3.9"), ("Is 12.4 or 5.67 the bigger number?", "12.4")]


def fixed_completions(tokenizer, round_: int) -> list[list[int]]:
    """G completions per question: right, wrong, unformatted, and one cut off without an eos (lengths differ)."""
    out = []
    for q, (question, answer) in enumerate(QUESTIONS):
        other = question.split()[-3] if q == 0 else "5.67"
        texts = [reply(f"We compare {question[-12:]}" + " again" * round_, f"The bigger number is {answer}."),
                 reply("Short.", f"The bigger number is {other}."),
                 f"The bigger number is {answer}.",
                 reply("We look at the whole parts first, then the decimals" + ", then more" * (3 + q))]
        for i, text in enumerate(texts):
            ids = tokenizer.encode(text, add_special_tokens=False)
            out.append(ids[:MAX_LEN] if i == 3 else ids[:MAX_LEN - 1] + [tokenizer.eos_token_id])
    return out


def conversations():
    return [[{"role": "system", "content": "Think, then answer."}, {"role": "user", "content": q}]
            for q, _ in QUESTIONS]


def reference_for(tokenizer, policy):
    ref = tiny_model_for(tokenizer, seed=1)
    ref.load_state_dict({k: 0.5 * (v + w) for (k, v), w in zip(policy.state_dict().items(),
                                                                 ref.state_dict().values())})
    return ref.eval()


def run_trl(tokenizer, tmp_path, monkeypatch, loss_type, beta, num_iterations, steps, scale_rewards):
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer
    from trl.trainer import grpo_trainer

    model = trl_ready(tiny_model_for(tokenizer))
    initial = copy.deepcopy(model)
    ref = reference_for(tokenizer, model)
    # TRL builds its reference by reloading the policy by name; ours lives in memory.
    monkeypatch.setattr(grpo_trainer, "create_model_from_path", lambda *a, **k: trl_ready(copy.deepcopy(ref)))
    # The generation batch is split into micro-batches in order (TRL shuffles it; bnpo depends on the split).
    monkeypatch.setattr(grpo_trainer, "shuffle_sequence_dict", lambda d: d)
    dataset = Dataset.from_list([{"prompt": c, "task": "compare_decimals", "answer": a}
                                 for c, (_, a) in zip(conversations(), QUESTIONS)])
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=PER_DEVICE,
                      gradient_accumulation_steps=ACCUM, num_generations=G, max_completion_length=MAX_LEN,
                      temperature=TEMPERATURE, loss_type=loss_type, beta=beta, num_iterations=num_iterations,
                      epsilon=0.2, epsilon_high=0.28, scale_rewards=scale_rewards, max_steps=steps,
                      learning_rate=LR, lr_scheduler_type="constant", max_grad_norm=1.0, shuffle_dataset=False,
                      seed=0, bf16=False, fp16=False, use_cpu=True, report_to="none", logging_steps=1,
                      save_strategy="no", disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
                      gradient_checkpointing=False, router_aux_loss_coef=0.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    trainer = GRPOTrainer(model=model, reward_funcs=list(rewards.REWARD_FUNCS), args=args, train_dataset=dataset,
                          processing_class=tokenizer, optimizers=(optimizer, None))
    rounds = iter(range(steps))

    def fixed_generation(prompt_ids, images, multimodal_fields, num_generations, *a, **k):
        completions = fixed_completions(tokenizer, next(rounds))
        assert len(prompt_ids) == len(completions)
        return completions, None

    trainer._generate_single_turn = fixed_generation
    advantages = []
    score = trainer._generate_and_score_completions

    def recording_score(inputs):
        out = score(inputs)
        advantages.append(out["advantages"].clone())
        return out

    trainer._generate_and_score_completions = recording_score
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    return logs, advantages, initial, ref


CONFIGS = [(t, b, 2, 2, "group") for t in grpo.LOSS_TYPES for b in (0.0, 0.05)] + \
          [("dapo", 0.05, 1, 2, "batch"), ("bnpo", 0.0, 1, 2, "none")]


@pytest.mark.parametrize("loss_type, beta, num_iterations, steps, scale_rewards", CONFIGS)
def test_equal_to_trl(tokenizer, tmp_path, monkeypatch, record_diff, loss_type, beta, num_iterations, steps,
                      scale_rewards):
    logs, trl_advantages, model, ref = run_trl(tokenizer, tmp_path, monkeypatch, loss_type, beta, num_iterations,
                                               steps, scale_rewards)
    assert len(logs) == steps
    settings = grpo.GRPOSettings(num_generations=G, prompts_per_step=len(QUESTIONS), micro_batch=PER_DEVICE,
                                 max_completion_length=MAX_LEN, temperature=TEMPERATURE, loss_type=loss_type,
                                 beta=beta, num_iterations=num_iterations, epsilon=0.2, epsilon_high=0.28,
                                 scale_rewards=scale_rewards, max_grad_norm=1.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=LR)
    names = [grpo.reward_name(f) for f in rewards.REWARD_FUNCS]
    ours = []
    for round_ in range(steps // num_iterations):
        repeated = [c for c in conversations() for _ in range(G)]
        rollout = grpo.make_rollout(tokenizer, repeated, fixed_completions(tokenizer, round_))
        columns = {"task": ["compare_decimals"] * len(repeated), "answer": [a for _, a in QUESTIONS for _ in range(G)]}
        per_func = grpo.score(rollout, rewards.REWARD_FUNCS, columns)
        ours += grpo.grpo_round(model, rollout, per_func, optimizer, None, settings, names, tokenizer.eos_token_id,
                                tokenizer.pad_token_id, ref, first_step=len(ours) + 1)
    # Both sides run the same float32 operations on the same weights (SGD, so an update is lr * g and round-off
    # in g stays round-off in the weights; Adam's first step, lr * sign(g), would amplify it). What can differ is
    # summation order and TRL's RoPE positions for left padding (it counts the padding, we do not: the same
    # relative positions, other angles). Measured: a few 1e-8; 1e-6 relative is ~10x float32's epsilon headroom.
    rel, keys = 1e-6, ["loss", "grad_norm", "reward", "reward_std", "frac_reward_zero_std", "entropy",
                       *[f"rewards/{n}/{s}" for n in names for s in ("mean", "std")],
                       *[f"clip_ratio/{k}" for k in ("low_mean", "low_min", "high_mean", "high_max", "region_mean")],
                       "completions/mean_length", "completions/clipped_ratio"] + (["kl"] if beta else [])
    # The loss is a signed average of per-token terms of size |A| * ratio (+ beta * kl) that largely cancel
    # (advantages sum to zero in a group; at the first iteration with beta = 0 the loss is zero up to round-off).
    # Round-off is relative to the terms, not to their sum: the loss gets rel * that scale as absolute tolerance.
    scale = float(torch.cat(trl_advantages).abs().mean()) + beta * max(h.get("kl", 0.0) for h in logs)
    worst = 0.0
    for step, (theirs, mine) in enumerate(zip(logs, ours)):
        values = {"loss": mine.loss, "grad_norm": mine.grad_norm, **mine.metrics}
        for key in keys:
            if key not in theirs:  # TRL logs generation metrics only on steps that generated
                continue
            size = scale if key == "loss" else max(abs(theirs[key]), 1e-30)
            worst = max(worst, abs(values[key] - theirs[key]) / size)
            assert values[key] == pytest.approx(theirs[key], rel=rel, abs=rel * scale if key == "loss" else 1e-9), \
                f"{key} at step {step + 1}"
    for theirs, mine in zip(trl_advantages, ours[::num_iterations]):
        torch.testing.assert_close(torch.tensor(mine.advantages), theirs, rtol=rel, atol=1e-7)
    record_diff(f"GRPO {loss_type} beta={beta} iters={num_iterations} {scale_rewards}: max rel diff", worst, rel)
    assert logs[0]["reward_std"] > 0 and abs(logs[-1]["loss"]) > 1e-3  # not a comparison of zeros
    if num_iterations > 1:
        assert logs[1]["clip_ratio/region_mean"] > 0  # the second iteration is off-policy enough to clip
    if beta:
        assert logs[0]["kl"] > 0


def test_ensure_grpo_keeps_a_finished_folder(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "training_log.json").write_text("{}")
    monkeypatch.setattr(grpo, "ensure_reason_distill", lambda **_: pytest.fail("must not train"))
    assert grpo.ensure_grpo(tmp_path) == tmp_path
