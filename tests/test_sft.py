"""SFT (lesson 07): chat rendering, assistant-only labels, packing, and parity with TRL 1.16's SFTTrainer."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from doge_from_scratch import sft
from doge_from_scratch.data import data_file, read_jsonl
from doge_from_scratch.testing import tiny_model_for
from doge_from_scratch.train_utils import (cosine_schedule, cosine_with_min_lr, make_optimizer,
                                           optimizer_step, trl_ready)


@pytest.fixture(scope="module")
def chat_rows():
    return read_jsonl(data_file("chat", "train"), "chat")




def test_render_chat_matches_the_chat_template(tokenizer, chat_rows):
    reasoning = read_jsonl(data_file("reasoning", "train"), "reasoning")[:20]
    for row in list(chat_rows[:100]) + reasoning:
        ids, mask = sft.render_chat(tokenizer, row["messages"])
        ref = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                            return_assistant_tokens_mask=True)
        assert ids == list(ref["input_ids"])
        assert mask == list(ref["assistant_masks"])


def test_render_chat_rejects_bad_messages(tokenizer):
    with pytest.raises(ValueError, match="message 1: unknown role 'tool'"):
        sft.render_chat(tokenizer, [{"role": "user", "content": "hi"}, {"role": "tool", "content": "x"}])


def test_pack_respects_length_and_keeps_every_example(tokenizer, chat_rows):
    examples = sft.sft_examples(tokenizer, chat_rows[:60], max_length=96)
    rows = sft.pack(examples, 96)
    assert all(sum(len(e["input_ids"]) for e in row) <= 96 for row in rows)
    assert sorted(map(tuple, (e["input_ids"] for row in rows for e in row))) == sorted(
        tuple(e["input_ids"]) for e in examples)
    assert len(rows) < len(examples)  # several conversations share a row
    with pytest.raises(ValueError, match="more than max_length"):
        sft.pack([{"input_ids": [1] * 10, "labels": [1] * 10}], 5)


def test_packed_loss_and_gradients_equal_unpacked(tokenizer, chat_rows):
    """Positions restart per conversation and attention stays inside it: packing changes nothing but speed."""
    model = tiny_model_for(tokenizer)
    examples = sft.sft_examples(tokenizer, chat_rows[:12])
    rows = sft.pack(examples, 160)
    assert any(len(row) > 1 for row in rows)
    packed = sft.collate_packed(rows, tokenizer.pad_token_id)
    padded = sft.collate_padded(examples, tokenizer.pad_token_id)

    def loss_and_grads(batch):
        model.zero_grad()
        total, count, _ = sft.sft_summed_loss(model, batch)
        (total / count).backward()
        return total.detach(), count, [p.grad.clone() for p in model.parameters()]

    loss_p, n_p, grads_p = loss_and_grads(packed)
    loss_u, n_u, grads_u = loss_and_grads(padded)
    assert int(n_p) == int(n_u) == sum(sft.count_trainable(sft.collate_padded([e], 2)) for e in examples)
    torch.testing.assert_close(loss_p, loss_u, rtol=1e-5, atol=0)
    for gp, gu in zip(grads_p, grads_u):
        torch.testing.assert_close(gp, gu, rtol=1e-4, atol=1e-6)
    # and one conversation at a time
    one_by_one = sum(sft.sft_summed_loss(model, sft.collate_padded([e], 2))[0].detach() for e in examples)
    torch.testing.assert_close(loss_p, one_by_one, rtol=1e-5, atol=0)


def test_cosine_with_min_lr_matches_transformers():
    from transformers.optimization import get_cosine_with_min_lr_schedule_with_warmup

    param = torch.nn.Parameter(torch.zeros(1))
    ours = cosine_schedule(torch.optim.SGD([param], lr=2.0), total_steps=37, warmup=0.1, min_lr_rate=0.1)
    ref = get_cosine_with_min_lr_schedule_with_warmup(torch.optim.SGD([param], lr=2.0), num_warmup_steps=4,
                                                      num_training_steps=37, min_lr_rate=0.1)
    for _ in range(40):
        assert ours.get_last_lr() == pytest.approx(ref.get_last_lr(), rel=1e-12)
        ours.optimizer.step(), ours.step(), ref.optimizer.step(), ref.step()
    assert cosine_with_min_lr(37, 4, 37, 0.1) == pytest.approx(0.1)


# ----------------------------------------------------------------------------------------------------------
# Parity with TRL's SFTTrainer
# ----------------------------------------------------------------------------------------------------------

LR, STEPS, MICRO, ACCUM, MAX_LEN = 1e-3, 3, 2, 2, 128


@pytest.fixture(scope="module")
def trl_run(tokenizer, chat_rows, tmp_path_factory):
    """Run TRL's SFTTrainer (packing, assistant-only loss, accumulation, cosine min-LR) and record its batches."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    model = trl_ready(tiny_model_for(tokenizer))
    initial = copy.deepcopy(model)
    dataset = Dataset.from_list([{"messages": r["messages"]} for r in chat_rows[:16]])
    args = SFTConfig(
        output_dir=str(tmp_path_factory.mktemp("trl_sft")), per_device_train_batch_size=MICRO,
        gradient_accumulation_steps=ACCUM, max_steps=STEPS, learning_rate=LR, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.1, weight_decay=0.01, adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, packing=True, max_length=MAX_LEN,
        assistant_only_loss=True, seed=0,
        # settings TRL needs spelled out: bf16 defaults to True even on CPU; a dense model has no router loss
        bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=True, report_to="none",
        router_aux_loss_coef=0.0, logging_steps=1, save_strategy="no", disable_tqdm=True,
        dataloader_num_workers=0)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    # Record what each optimizer step really consumed (an epoch's last step may hold fewer micro-batches).
    steps: dict[int, list[dict[str, torch.Tensor]]] = {}
    training_step = trainer.training_step

    def recording_step(model, inputs, *args, **kwargs):
        keep = ("input_ids", "labels", "position_ids", "attention_mask")
        steps.setdefault(trainer.state.global_step, []).append({k: v.clone() for k, v in inputs.items() if k in keep})
        return training_step(model, inputs, *args, **kwargs)

    trainer.training_step = recording_step
    trainer.train()
    logs = [h for h in trainer.state.log_history if "loss" in h and "grad_norm" in h]
    return {"initial": initial, "trained": model, "steps": [steps[i] for i in sorted(steps)], "logs": logs,
            "packed_rows": trainer.train_dataset}


def test_our_labels_equal_trl_prepared_sequences(tokenizer, chat_rows, trl_run):
    ours = sorted((tuple(e["input_ids"]), tuple(e["labels"])) for e in sft.sft_examples(tokenizer, chat_rows[:16]))
    theirs = []
    for row in trl_run["packed_rows"]:
        start = 0
        for n in row["seq_lengths"]:
            theirs.append((tuple(row["input_ids"][start:start + n]), tuple(row["labels"][start:start + n])))
            start += n
    assert sorted(theirs) == ours


def test_loss_and_grad_norm_equal_trl(trl_run):
    """Same model, batches and settings: our loop logs TRL's loss and gradient norm (1e-6 relative)."""
    model = trl_run["initial"]
    optimizer = make_optimizer(model, LR, weight_decay=0.01, betas=(0.9, 0.95), eps=1e-8)
    scheduler = cosine_schedule(optimizer, STEPS, warmup=0.1, min_lr_rate=0.1)
    assert len(trl_run["steps"]) == len(trl_run["logs"]) == STEPS
    for step, (log, micro_batches) in enumerate(zip(trl_run["logs"], trl_run["steps"])):
        ours = optimizer_step(model, micro_batches, sft.SFT_LOSS, optimizer, scheduler,
                              max_grad_norm=1.0, step=step + 1)
        assert ours.loss == pytest.approx(log["loss"], rel=1e-6), f"step {step + 1}"
        assert ours.grad_norm == pytest.approx(log["grad_norm"], rel=1e-6), f"step {step + 1}"
        assert ours.lr == pytest.approx(log["learning_rate"], rel=1e-9, abs=1e-15)
    for (name, p), q in zip(model.named_parameters(), trl_run["trained"].parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=lambda m: f"{name}: {m}")


def test_step_normalises_by_tokens_of_the_whole_step(tokenizer, chat_rows):
    """Accumulating two micro-batches equals one batch holding both (sum / step tokens, not mean of means)."""
    examples = sft.sft_examples(tokenizer, chat_rows[:8])
    a, b = sft.collate_padded(examples[:3], 2), sft.collate_padded(examples[3:8], 2)
    both = sft.collate_padded(examples[:8], 2)
    grads = []
    for micro in ([a, b], [both]):
        model = tiny_model_for(tokenizer)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)
        orig_step = opt.step
        captured = {}

        def step(*args, **kwargs):
            captured["g"] = [p.grad.clone() for p in model.parameters()]
            return orig_step(*args, **kwargs)

        opt.step = step
        log = optimizer_step(model, micro, sft.SFT_LOSS, opt, max_grad_norm=None)
        grads.append((log.loss, captured["g"]))
    assert grads[0][0] == pytest.approx(grads[1][0], rel=1e-6)
    for g1, g2 in zip(grads[0][1], grads[1][1]):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-7)
    assert not math.isnan(grads[0][0])
