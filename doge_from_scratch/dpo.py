"""Direct Preference Optimisation (lesson 08).

How Doge-*-Instruct were made (model card): DPO on UltraFeedback-binarized after SFT, LR = SFT LR / 10,
sigmoid loss with beta 0.1 (TRL's default), 2 epochs. The pieces, in plain PyTorch:

- a pair (prompt, chosen, rejected) is tokenised as prompt + chosen and prompt + rejected; only completion
  tokens count. A batch stacks the B chosen rows first, then the B rejected rows: [2B, T].
- ``sequence_logps``: log p(completion | prompt) = the SUM of the completion tokens' log-probs.
- a frozen reference (the SFT model) scores the same rows once; its log-probs can be precomputed.
- with r = beta * (log p_policy - log p_ref) for chosen (c) and rejected (r) completions, delta = (c - r) / beta:
      sigmoid: -log sigmoid(beta * delta)
      hinge:   relu(1 - beta * delta)
      ipo:     (delta_avg - 1 / (2 beta))^2, delta_avg using per-token averages of the log-ratios
- metrics: rewards/chosen, rewards/rejected (means of the r's), rewards/accuracies (chosen > rejected, strict),
  rewards/margins (mean of chosen - rejected).
- optionally, ``sft_weight`` times the chosen completions' mean token NLL (RPO, Pang et al. 2024; TRL's
  ``loss_type=["sigmoid", "sft"], loss_weights=[1, sft_weight]``): the pair loss alone can lower the chosen
  answer's likelihood as long as the rejected one falls faster, and that degrades what the model writes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .data import load_lesson_dataset
from .model import DogeForCausalLM
from .sft import ensure_sft, finished_stage, save_stage
from .tokenizer import load_tokenizer
from .train_utils import (OptimizerSettings, StageLoss, StepLog, cosine_schedule, make_optimizer, step_groups,
                          token_nll, train)

LOSS_TYPES = ("sigmoid", "hinge", "ipo")
METRICS = ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins")


# ----------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------


def _as_messages(value: Any, role: str) -> list[dict[str, str]]:
    return [{"role": role, "content": value}] if isinstance(value, str) else [dict(m) for m in value]


def preference_example(tokenizer, record: Mapping[str, Any]) -> dict[str, list[int]]:
    """prompt_ids (up to the assistant header), chosen_ids and rejected_ids (the completions, eos included).

    The prompt is rendered with the generation prompt; each completion is what the full conversation adds
    after it, so prompt + completion is exactly the chat-template rendering of the whole conversation.
    """
    for key in ("prompt", "chosen", "rejected"):
        if key not in record:
            raise KeyError(f"preference record has no {key!r} field (keys: {sorted(record)})")
    prompt = _as_messages(record["prompt"], "user")
    prompt_ids = list(tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True,
                                                    return_dict=False))
    out = {"prompt_ids": prompt_ids}
    for key in ("chosen", "rejected"):
        full = list(tokenizer.apply_chat_template(prompt + _as_messages(record[key], "assistant"), tokenize=True,
                                                  return_dict=False))
        if full[:len(prompt_ids)] != prompt_ids:
            raise ValueError(f"the rendered prompt is not a prefix of prompt + {key}; check the chat template")
        out[f"{key}_ids"] = full[len(prompt_ids):]
    return out


def collate_preference(examples: Sequence[Mapping[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """-> input_ids, attention_mask, completion_mask: [2B, T] (chosen rows, then rejected rows), right-padded."""
    rows = ([e["prompt_ids"] + e["chosen_ids"] for e in examples]
            + [e["prompt_ids"] + e["rejected_ids"] for e in examples])
    completion = ([[0] * len(e["prompt_ids"]) + [1] * len(e["chosen_ids"]) for e in examples]
                  + [[0] * len(e["prompt_ids"]) + [1] * len(e["rejected_ids"]) for e in examples])
    length = max(map(len, rows))
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    attention = torch.zeros((len(rows), length), dtype=torch.long)
    completion_mask = torch.zeros((len(rows), length), dtype=torch.long)
    for i, (row, comp) in enumerate(zip(rows, completion)):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        completion_mask[i, :len(row)] = torch.tensor(comp)
    batch = {"input_ids": ids, "attention_mask": attention, "completion_mask": completion_mask}
    if "ref_chosen_logps" in examples[0]:
        batch["ref_chosen_logps"] = torch.tensor([e["ref_chosen_logps"] for e in examples])
        batch["ref_rejected_logps"] = torch.tensor([e["ref_rejected_logps"] for e in examples])
    return batch


# ----------------------------------------------------------------------------------------------------------
# Log-probs and the loss
# ----------------------------------------------------------------------------------------------------------


def completion_nll(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """-log p(token) at each completion token, 0 elsewhere. -> [2B, T-1]"""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    labels = batch["input_ids"].masked_fill(batch["completion_mask"] == 0, -100)
    return token_nll(logits, labels)


def sequence_logps(model, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Sum of log p(token) over each row's completion tokens. -> [2B]"""
    return -completion_nll(model, batch).sum(dim=1)


def chosen_token_nll(nll: torch.Tensor, completion_mask: torch.Tensor) -> torch.Tensor:
    """Mean NLL over all chosen completion tokens of a micro-batch (TRL's "sft" loss). nll [2B, T-1] -> []"""
    chosen_tokens = completion_mask[: nll.shape[0] // 2, 1:].sum()
    return nll[: nll.shape[0] // 2].sum() / chosen_tokens.clamp(min=1)


@torch.no_grad()
def reference_logps(ref_model, batch: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The frozen reference's (chosen [B], rejected [B]) log-probs, precomputed ones if the batch carries them."""
    if "ref_chosen_logps" in batch:
        return batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    was_training = ref_model.training
    ref_model.eval()
    chosen, rejected = sequence_logps(ref_model, batch).chunk(2)
    ref_model.train(was_training)
    return chosen, rejected


def dpo_loss(chosen_logps: torch.Tensor, rejected_logps: torch.Tensor, ref_chosen_logps: torch.Tensor,
             ref_rejected_logps: torch.Tensor, beta: float = 0.1, loss_type: str = "sigmoid",
             chosen_lengths: torch.Tensor | None = None, rejected_lengths: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-pair losses [B] and per-pair metric values [B] (means of these are TRL's logged metrics).

    All log-prob arguments are [B]; ``*_lengths`` ([B], completion token counts) are needed for ipo only.
    """
    if loss_type not in LOSS_TYPES:
        raise ValueError(f"unknown DPO loss_type {loss_type!r}; choose one of {LOSS_TYPES}")
    chosen_ratio = chosen_logps - ref_chosen_logps
    rejected_ratio = rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -F.logsigmoid(beta * delta)
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * delta)
    else:
        if chosen_lengths is None or rejected_lengths is None:
            raise ValueError("loss_type='ipo' needs chosen_lengths and rejected_lengths (completion token counts)")
        per_token = chosen_ratio / chosen_lengths.clamp(min=1) - rejected_ratio / rejected_lengths.clamp(min=1)
        losses = (per_token - 1 / (2 * beta)) ** 2
    chosen_reward, rejected_reward = beta * chosen_ratio.detach(), beta * rejected_ratio.detach()
    metrics = {"rewards/chosen": chosen_reward, "rewards/rejected": rejected_reward,
               "rewards/accuracies": (chosen_reward > rejected_reward).float(),
               "rewards/margins": chosen_reward - rejected_reward}
    return losses, metrics


class DPOObjective(StageLoss):
    """The summed DPO loss of a micro-batch for ``train_utils.optimizer_step`` (items = pairs)."""

    def __init__(self, ref_model=None, beta: float = 0.1, loss_type: str = "sigmoid", sft_weight: float = 0.0) -> None:
        self.ref_model, self.beta, self.loss_type, self.sft_weight = ref_model, beta, loss_type, sft_weight
        super().__init__(self.summed, lambda batch: batch["input_ids"].shape[0] // 2)

    def pair_losses(self, model, batch):
        nll = completion_nll(model, batch)
        chosen, rejected = (-nll.sum(dim=1)).chunk(2)
        if "ref_chosen_logps" not in batch and self.ref_model is None:
            raise ValueError("DPO needs a reference: pass ref_model or precompute ref_chosen/rejected_logps")
        ref_chosen, ref_rejected = reference_logps(self.ref_model, batch)
        lengths = batch["completion_mask"].sum(dim=1)
        losses, metrics = dpo_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.loss_type,
                                   *lengths.chunk(2))
        metrics.update({"logps/chosen": chosen.detach(), "logps/rejected": rejected.detach()})
        if self.sft_weight:
            # Every pair carries the micro-batch's token mean, so the step's pair average is TRL's average of
            # micro-batch means (equal-sized micro-batches).
            losses = losses + self.sft_weight * chosen_token_nll(nll, batch["completion_mask"])
        return losses, metrics

    def summed(self, model, batch):
        losses, metrics = self.pair_losses(model, batch)
        return losses.sum(), torch.tensor(losses.shape[0]), {k: v.sum() for k, v in metrics.items()}


# ----------------------------------------------------------------------------------------------------------
# Training and evaluation
# ----------------------------------------------------------------------------------------------------------


@dataclass
class DPOSettings(OptimizerSettings):
    lr: float = 4e-4  # the recipe: SFT LR / 10
    beta: float = 0.1
    loss_type: str = "sigmoid"
    # Not in the card's recipe (TRL's default is 0): measured in lesson 08, without it the lesson model's
    # generations got worse while its preference metrics improved.
    sft_weight: float = 1.0
    epochs: int = 2
    pairs_per_micro_batch: int = 8
    accumulation: int = 2
    max_pairs: int | None = None  # all pairs: 2 epochs over the lesson's 2000 take about a minute on 2 cores


@torch.no_grad()
def precompute_reference(ref_model, examples: Sequence[dict], pad_token_id: int, batch_size: int = 32) -> list[dict]:
    """Score every pair once with the frozen reference; training then never runs the reference again."""
    out = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        chosen, rejected = reference_logps(ref_model, collate_preference(chunk, pad_token_id))
        out += [{**e, "ref_chosen_logps": float(c), "ref_rejected_logps": float(r)}
                for e, c, r in zip(chunk, chosen, rejected)]
    return out


def train_dpo(model, ref_model, tokenizer, records: Sequence[Mapping[str, Any]], settings: DPOSettings | None = None,
              progress: bool = True) -> list[StepLog]:
    """Optimise ``model`` in place against the frozen ``ref_model`` (its log-probs precomputed once)."""
    settings = settings or DPOSettings()
    torch.manual_seed(settings.seed)
    records = list(records)[:settings.max_pairs] if settings.max_pairs else list(records)
    examples = [preference_example(tokenizer, r) for r in records]
    examples = precompute_reference(ref_model, examples, tokenizer.pad_token_id)
    groups = step_groups(examples, settings.pairs_per_micro_batch, settings.accumulation, settings.epochs,
                         settings.seed)
    steps = [[collate_preference(mb, tokenizer.pad_token_id) for mb in step] for step in groups]
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay, settings.betas)
    scheduler = cosine_schedule(optimizer, len(steps), settings.warmup, settings.min_lr_rate)
    objective = DPOObjective(None, settings.beta, settings.loss_type, settings.sft_weight)
    return train(model, steps, objective, optimizer, scheduler, settings.max_grad_norm, progress, len(steps), "DPO")


@torch.no_grad()
def preference_metrics(model, ref_model, tokenizer, records: Sequence[Mapping[str, Any]], beta: float = 0.1,
                       batch_size: int = 32) -> dict[str, float]:
    """Held-out DPO metrics: mean rewards, preference accuracy (implicit reward ranks chosen first), margin."""
    model.eval()
    sums = {k: 0.0 for k in METRICS}
    objective = DPOObjective(ref_model, beta)
    examples = [preference_example(tokenizer, r) for r in records]
    for start in range(0, len(examples), batch_size):
        batch = collate_preference(examples[start:start + batch_size], tokenizer.pad_token_id)
        _, metrics = objective.pair_losses(model, batch)
        for k in METRICS:
            sums[k] += float(metrics[k].sum())
    return {k: v / len(examples) for k, v in sums.items()}


def ensure_dpo(folder: str | Path | None = None, sft_folder: str | Path | None = None,
               settings: DPOSettings | None = None, progress: bool = True) -> Path:
    """The DPO model of lesson 08, trained from the SFT model (``ensure_sft``) unless ``folder`` has one."""
    folder, done = finished_stage(folder, "dpo", "ensure_dpo")
    if done:
        return folder
    base = ensure_sft(sft_folder, progress=progress)
    model, ref = DogeForCausalLM.from_pretrained(base), DogeForCausalLM.from_pretrained(base).eval()
    tokenizer = load_tokenizer(base)
    settings = settings or DPOSettings()
    history = train_dpo(model, ref, tokenizer, list(load_lesson_dataset("preference", "train")), settings, progress)
    return save_stage(model, tokenizer, folder, history, settings)
