"""Reasoning distillation (lesson 09): the generalized JSD equals TRL 1.16's generalized_jsd_loss."""

from __future__ import annotations

import pytest
import torch

from doge_from_scratch import DogeForCausalLM, distill, sft
from doge_from_scratch.data import data_file, read_jsonl
from doge_from_scratch.testing import randomize_, tiny_config
from doge_from_scratch.tokenizer import load_tokenizer


def trl_generalized_jsd():
    from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss


def random_logits(seed: int, shape=(3, 7, 50)) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    student = (2 * torch.randn(shape, generator=g, dtype=torch.float64)).requires_grad_()
    teacher = 2 * torch.randn(shape, generator=g, dtype=torch.float64) + 0.5
    labels = torch.randint(0, shape[-1], shape[:2], generator=g)
    labels[0, :3] = -100
    labels[2, 5:] = -100
    return student, teacher, labels


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_jsd_equals_trl(beta, temperature):
    """Same logits, same labels: same loss value and same gradient w.r.t. the student's logits."""
    student, teacher, labels = random_logits(int(beta * 10) + int(temperature))
    ref = trl_generalized_jsd()(student, teacher, labels=labels, beta=beta, temperature=temperature)
    (ref_grad,) = torch.autograd.grad(ref, student)
    total, count = distill.jsd_loss(student, teacher, labels, beta=beta, temperature=temperature)
    ours = total / count
    (our_grad,) = torch.autograd.grad(ours, student)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(our_grad, ref_grad, rtol=1e-8, atol=1e-12)
    # float32, as in training: equal to float32 round-off
    s32, t32 = student.detach().float(), teacher.float()
    ref32 = trl_generalized_jsd()(s32, t32, labels=labels, beta=beta, temperature=temperature)
    torch.testing.assert_close(distill.jsd_loss(s32, t32, labels, beta, temperature)[0] / count, ref32,
                               rtol=1e-6, atol=1e-7)


def test_jsd_without_labels_and_with_num_items_equals_trl():
    student, teacher, labels = random_logits(7)
    ref = trl_generalized_jsd()(student, teacher, beta=0.5)  # batchmean without labels: divides by batch size
    total, _ = distill.jsd_loss(student, teacher, None, beta=0.5)
    torch.testing.assert_close(total / student.shape[0], ref)
    ref_n = trl_generalized_jsd()(student, teacher, labels=labels, beta=0.5, num_items_in_batch=40)
    torch.testing.assert_close(distill.jsd_loss(student, teacher, labels, 0.5)[0] / 40, ref_n)


def test_jsd_end_points_and_properties():
    student, teacher, _ = random_logits(3)
    log_s, log_t = student.log_softmax(-1), teacher.log_softmax(-1)
    forward_kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    reverse_kl = (log_s.exp() * (log_s - log_t)).sum(-1)
    torch.testing.assert_close(distill.generalized_jsd(student, teacher, 0.0), forward_kl)
    torch.testing.assert_close(distill.generalized_jsd(student, teacher, 1.0), reverse_kl)
    mid = distill.generalized_jsd(student, teacher, 0.5)
    assert bool((mid >= 0).all()) and bool((mid <= torch.log(torch.tensor(2.0)) + 1e-6).all())  # JSD <= log 2
    assert float(distill.generalized_jsd(student, student, 0.5).abs().max()) < 1e-6
    with pytest.raises(ValueError, match="beta=1.5"):
        distill.generalized_jsd(student, teacher, 1.5)
    with pytest.raises(ValueError, match="differ"):
        distill.jsd_loss(student, teacher[:, :, :10])


def test_logit_distillation_objective_counts_assistant_tokens():
    tokenizer = load_tokenizer()
    rows = read_jsonl(data_file("reasoning", "train"), "reasoning")[:3]
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=2, bos_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    student, teacher = randomize_(DogeForCausalLM(config), 0), randomize_(DogeForCausalLM(config), 1)
    examples = sft.sft_examples(tokenizer, rows)
    batch = sft.collate_packed(sft.pack(examples, 2048), tokenizer.pad_token_id)
    total, count, _ = distill.LogitDistillation(teacher, beta=0.5).summed(student, batch)
    assert int(count) == sft.count_trainable(batch)
    # by hand, shifted: the logits at t are judged where labels[t + 1] counts
    with torch.no_grad():
        jsd = distill.generalized_jsd(student(**sft.model_inputs(batch)).logits,
                                      teacher(**sft.model_inputs(batch)).logits, 0.5)
    by_hand = sum(float(jsd[b, t]) for b in range(jsd.shape[0]) for t in range(jsd.shape[1] - 1)
                  if batch["labels"][b, t + 1] != -100)
    assert float(total) == pytest.approx(by_hand, rel=1e-5)


def test_solution_span_starts_at_the_replys_tag_not_the_system_prompts():
    tok = load_tokenizer()
    record = read_jsonl(data_file("reasoning", "test"), "reasoning")[0]
    example = sft.sft_examples(tok, [record])[0]
    targets = torch.tensor(example["labels"][1:])
    trained = targets != -100
    begin = tok.convert_tokens_to_ids("<|begin_of_solution|>")
    ids = torch.tensor(example["input_ids"][1:])
    assert int((ids == begin).sum()) == 2  # the card's system prompt names the tag; the reply uses it
    span = targets[distill.solution_mask(targets, trained, begin)].tolist()
    reply = record["messages"][-1]["content"]
    solution = "<|begin_of_solution|>" + reply.split("<|begin_of_solution|>", 1)[1]
    assert tok.decode(span) == solution + "<|end_of_text|>"
    assert not distill.solution_mask(targets, torch.zeros_like(trained), begin).any()


def test_teacher_traces_keep_only_well_formed_right_replies(monkeypatch):
    """Sequence-level data from the teacher: its reply becomes the assistant turn; malformed replies are dropped
    always, wrong ones unless ``only_correct=False``; the prompt (system + question) is kept as it was."""
    rows = [r for r in read_jsonl(data_file("reasoning", "train"), "reasoning") if r["task"] == "compare_decimals"][:3]
    assert len(rows) == 3

    def trace(number: str) -> str:
        return (f"<|begin_of_thought|>\n\nCompare.\n\n<|end_of_thought|>\n\n<|begin_of_solution|>\n\n"
                f"The bigger number is {number}.\n\n<|end_of_solution|>")

    smaller = [n for n in rows[1]["messages"][-2]["content"].rstrip("?").replace(",", " ").split()
               if n[0].isdigit() and n != rows[1]["answer"]][0]
    scripted = [trace(rows[0]["answer"]) + "<|end_of_text|>", trace(smaller) + "<|end_of_text|>",
                f"The bigger number is {rows[2]['answer']}.<|end_of_text|>"]  # right, but no sections
    calls = []

    def fake_chat_replies(model, tokenizer, prompts, max_new_tokens, batch_size):
        calls.append(prompts)
        return list(scripted)

    monkeypatch.setattr(distill, "chat_replies", fake_chat_replies)
    kept, replies = distill.teacher_traces(None, None, rows)
    assert replies == scripted
    assert [m["role"] for m in calls[0][0]] == ["system", "user"]
    assert calls[0][0] == rows[0]["messages"][:-1]
    assert len(kept) == 1 and kept[0]["task"] == rows[0]["task"] and kept[0]["answer"] == rows[0]["answer"]
    assert kept[0]["messages"][:-1] == rows[0]["messages"][:-1]
    assert kept[0]["messages"][-1] == {"role": "assistant", "content": trace(rows[0]["answer"])}
    assert rows[0]["messages"][-1]["content"] != trace(rows[0]["answer"])  # the input record is not changed
    kept_all, _ = distill.teacher_traces(None, None, rows, only_correct=False)
    assert [r["messages"][-1]["content"] for r in kept_all] == [trace(rows[0]["answer"]), trace(smaller)]
