"""DPO (lesson 08): tokenisation, sequence log-probs, the three losses and their metrics, parity with TRL 1.16."""

from __future__ import annotations

import copy

import pytest
import torch

from doge_from_scratch import dpo
from doge_from_scratch.data import data_file, read_jsonl
from doge_from_scratch.testing import tiny_model_for
from doge_from_scratch.train_utils import make_optimizer, optimizer_step, trl_ready

LR, STEPS, PAIRS = 5e-4, 2, 4


@pytest.fixture(scope="module")
def pref_rows():
    return read_jsonl(data_file("preference", "train"), "preference")




def test_prompt_plus_completion_is_the_whole_conversation(tokenizer, pref_rows):
    for row in pref_rows[:30]:
        e = dpo.preference_example(tokenizer, row)
        whole = tokenizer.apply_chat_template(row["prompt"] + row["chosen"], tokenize=True, return_dict=False)
        assert e["prompt_ids"] + e["chosen_ids"] == list(whole)
        assert e["chosen_ids"][-2:] == [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("ĊĊ")]
    with pytest.raises(KeyError, match="'rejected'"):
        dpo.preference_example(tokenizer, {"prompt": "hi", "chosen": "a"})


def test_sequence_logps_sum_over_completion_only(tokenizer, pref_rows):
    model = tiny_model_for(tokenizer).eval()
    examples = [dpo.preference_example(tokenizer, r) for r in pref_rows[:3]]
    batch = dpo.collate_preference(examples, tokenizer.pad_token_id)
    logps = dpo.sequence_logps(model, batch)
    for i, e in enumerate(examples):  # one row at a time, no padding, by hand
        for j, key in enumerate(("chosen_ids", "rejected_ids")):
            ids = torch.tensor([e["prompt_ids"] + e[key]])
            logp = torch.log_softmax(model(ids).logits[0, :-1].float(), -1)
            targets = ids[0, 1:]
            by_hand = logp[torch.arange(len(targets)), targets][len(e["prompt_ids"]) - 1:].sum()
            torch.testing.assert_close(logps[i + j * len(examples)], by_hand, rtol=1e-5, atol=1e-5)


def test_losses_by_formula():
    c, r = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -4.0])
    rc, rr = torch.tensor([-5.5, -6.0]), torch.tensor([-5.0, -5.0])
    delta = (c - rc) - (r - rr)
    losses, m = dpo.dpo_loss(c, r, rc, rr, beta=0.2)
    torch.testing.assert_close(losses, torch.log1p(torch.exp(-0.2 * delta)))
    assert m["rewards/accuracies"].tolist() == [1.0, 0.0]
    hinge, _ = dpo.dpo_loss(c, r, rc, rr, beta=0.2, loss_type="hinge")
    torch.testing.assert_close(hinge, torch.clamp(1 - 0.2 * delta, min=0))
    with pytest.raises(ValueError, match="chosen_lengths"):
        dpo.dpo_loss(c, r, rc, rr, loss_type="ipo")
    with pytest.raises(ValueError, match="unknown DPO loss_type 'kto'"):
        dpo.dpo_loss(c, r, rc, rr, loss_type="kto")


def run_trl_dpo(tokenizer, rows, loss_type: str, tmp_path, sft_weight: float = 0.0):
    """TRL's DPOTrainer for STEPS optimizer steps; returns its logs, the batches it used and the models."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    model = trl_ready(tiny_model_for(tokenizer))
    initial = copy.deepcopy(model)
    # A reference that differs from the policy, so the first step already has non-zero rewards. (With
    # ref_model=None TRL would reload the model by name from the Hub; an in-memory model needs an explicit copy.)
    ref = tiny_model_for(tokenizer, seed=1).eval()
    ref.load_state_dict({k: 0.5 * (v + w) for (k, v), w in zip(model.state_dict().items(),
                                                                 ref.state_dict().values())})
    dataset = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")} for r in rows])
    args = DPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=PAIRS, gradient_accumulation_steps=1,
                     max_steps=STEPS, learning_rate=LR, lr_scheduler_type="constant", weight_decay=0.0,
                     adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, beta=0.1,
                     loss_type=[loss_type, "sft"] if sft_weight else [loss_type],
                     loss_weights=[1.0, sft_weight] if sft_weight else None, seed=0, bf16=False, fp16=False,
                     gradient_checkpointing=False,
                     use_cpu=True, report_to="none", router_aux_loss_coef=0.0, logging_steps=1, save_strategy="no",
                     disable_tqdm=True, dataloader_num_workers=0)
    trainer = DPOTrainer(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tokenizer)
    steps: dict[int, list[dict]] = {}
    training_step = trainer.training_step

    def recording_step(model_, inputs, *a, **k):
        keep = ("input_ids", "attention_mask", "completion_mask")
        steps.setdefault(trainer.state.global_step, []).append({x: v.clone() for x, v in inputs.items() if x in keep})
        return training_step(model_, inputs, *a, **k)

    trainer.training_step = recording_step
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    return logs, [steps[i] for i in sorted(steps)], initial, model, copy.deepcopy(ref)


@pytest.mark.parametrize("loss_type, sft_weight", [(t, 0.0) for t in dpo.LOSS_TYPES] + [("sigmoid", 0.7)])
def test_loss_and_metrics_equal_trl(tokenizer, pref_rows, loss_type, sft_weight, tmp_path):
    """Step 1 (same weights, same batch): equal to 1e-6. Step 2 follows one Adam update, whose first step is
    lr * sign(g) for every tiny gradient entry, so float32 round-off can flip a few entries: looser there."""
    logs, steps, model, _, ref = run_trl_dpo(tokenizer, pref_rows[:16], loss_type, tmp_path, sft_weight)
    assert len(logs) == len(steps) == STEPS
    objective = dpo.DPOObjective(ref, beta=0.1, loss_type=loss_type, sft_weight=sft_weight)
    optimizer = make_optimizer(model, LR, weight_decay=0.0, betas=(0.9, 0.95), eps=1e-8)
    for step, (log, micro) in enumerate(zip(logs, steps)):
        ours = optimizer_step(model, micro, objective, optimizer, max_grad_norm=1.0, step=step + 1)
        rel = 1e-6 if step == 0 else 1e-4
        # The loss and rewards are functions of beta * (difference of float32 sums of ~30 log-probs near -90).
        # Agreement of the log-probs to `rel` allows beta * rel * (|logp| + |ref logp|) on those differences
        # (and a loss's slope in them is at most ~1): that is the tolerance. The log-probs themselves: `rel`.
        logp_scale = 2 * max(abs(log["logps/chosen"]), abs(log["logps/rejected"]))
        tol = 0.1 * rel * logp_scale
        assert ours.loss == pytest.approx(log["loss"], rel=rel, abs=tol), f"step {step + 1}"
        assert ours.grad_norm == pytest.approx(log["grad_norm"], rel=rel), f"step {step + 1}"
        for key in dpo.METRICS:
            exact = key == "rewards/accuracies"
            assert ours.metrics[key] == pytest.approx(log[key], rel=0 if exact else rel, abs=0 if exact else tol), \
                f"{key} step {step + 1}"
        for key in ("chosen", "rejected"):
            assert ours.metrics[f"logps/{key}"] == pytest.approx(log[f"logps/{key}"], rel=rel), key
    assert logs[0]["rewards/margins"] != 0.0  # the comparison is not between zeros


def test_precomputed_reference_gives_the_same_loss(tokenizer, pref_rows):
    model, ref = tiny_model_for(tokenizer, 1), tiny_model_for(tokenizer, 2).eval()
    examples = [dpo.preference_example(tokenizer, r) for r in pref_rows[:6]]
    live = dpo.DPOObjective(ref).summed(model, dpo.collate_preference(examples, 2))
    pre = dpo.precompute_reference(ref, examples, 2, batch_size=4)
    cached = dpo.DPOObjective(None).summed(model, dpo.collate_preference(pre, 2))
    torch.testing.assert_close(live[0], cached[0], rtol=1e-5, atol=1e-6)
