"""Supervised fine-tuning (lesson 07): chat rendering, assistant-only labels, packing, the token-summed loss.

How Doge-*-Instruct-SFT were made (model card): TRL's SFTTrainer on SmolTalk, 2 epochs, packing, cosine schedule
with a minimum LR ratio of 0.1 and warmup 0.1. This module does each of those steps in plain PyTorch:

1. ``render_chat``: a conversation -> token ids plus a mask of the tokens the assistant wrote (its content and
   the end-of-turn token that teaches it to stop). Equal to ``apply_chat_template(...,
   return_assistant_tokens_mask=True)`` with the project's template.
2. ``pack``: several conversations per row (best-fit decreasing). Positions restart at 0 for each conversation;
   the model sees restarting ``position_ids`` with no ``attention_mask`` and attends only within a conversation,
   so a packed row computes exactly what the conversations would compute one by one.
3. ``sft_summed_loss``: summed next-token NLL over assistant tokens; the shared loop divides by the number of
   assistant tokens of the whole optimizer step (all micro-batches, all processes) - TRL's normalisation.
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from .atomic import atomic_write_text
from .data import load_lesson_dataset
from .model import DogeForCausalLM
from .paths import ARTIFACTS_DIR
from .pretrain import ensure_pretrained
from .tokenizer import TURN_SEPARATOR, chat_turns, load_tokenizer
from .train_utils import (OptimizerSettings, StageLoss, StepLog, cosine_schedule, make_optimizer, rank, step_groups,
                          token_nll, train, world_size)

IGNORE = -100


# ----------------------------------------------------------------------------------------------------------
# 1. Rendering and labels
# ----------------------------------------------------------------------------------------------------------


def render_chat(tokenizer, messages: Sequence[Mapping[str, str]]) -> tuple[list[int], list[int]]:
    """Doge's chat format (``tokenizer.chat_turns``), encoded piece by piece -> (token ids, assistant mask).

    ``<|begin_of_text|>`` then per turn ``<|start_header_id|>{role}<|end_header_id|>\\n{content}<|end_of_text|>\\n\\n``.
    Every piece boundary is a special token or a line break, where byte-level BPE never merges across, so
    tokenising the pieces separately gives the same ids as tokenising the whole text. A message's content is
    encoded with special tokens off: an ``<|end_of_text|>`` or header typed into it stays text and cannot end
    the turn or open another (as in ``DogeTokenizer.apply_chat_template``).
    """
    def encode(text: str, as_text: bool = False) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False, split_special_tokens=as_text) if text else []

    ids, mask = [tokenizer.bos_token_id], [0]
    separator = encode(TURN_SEPARATOR)
    for role, header, content in chat_turns(messages):
        header_ids = encode(header)
        body = encode(content, as_text=True) + [tokenizer.eos_token_id]
        ids += header_ids + body + separator
        trained = 1 if role == "assistant" else 0
        mask += [0] * len(header_ids) + [trained] * len(body) + [0] * len(separator)
    return ids, mask


def sft_example(tokenizer, messages: Sequence[Mapping[str, str]],
                max_length: int | None = None) -> dict[str, list[int]]:
    """input_ids and labels (the id where the assistant wrote it, -100 elsewhere), truncated to ``max_length``."""
    ids, mask = render_chat(tokenizer, messages)
    labels = [t if m else IGNORE for t, m in zip(ids, mask)]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def sft_examples(tokenizer, records: Sequence[Mapping[str, Any]], max_length: int | None = None) -> list[dict]:
    """``sft_example`` for each record's ``messages``; rows left without an assistant token are dropped."""
    out = []
    for i, record in enumerate(records):
        if "messages" not in record:
            raise KeyError(f"record {i} has no 'messages' field (keys: {sorted(record)})")
        example = sft_example(tokenizer, record["messages"], max_length)
        if any(label != IGNORE for label in example["labels"]):
            out.append(example)
    return out


# ----------------------------------------------------------------------------------------------------------
# 2. Packing and collation
# ----------------------------------------------------------------------------------------------------------


def pack(examples: Sequence[dict[str, list[int]]], max_length: int) -> list[list[dict[str, list[int]]]]:
    """Best-fit decreasing: longest first, each into the fullest row it still fits. -> rows of examples.

    Examples longer than ``max_length`` must be truncated first (``sft_example(max_length=...)``).
    """
    order = sorted(range(len(examples)), key=lambda i: -len(examples[i]["input_ids"]))
    rows: list[list[int]] = []
    space: list[int] = []
    for i in order:
        n = len(examples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"example {i} has {n} tokens, more than max_length={max_length}; truncate it first")
        fits = [r for r in range(len(rows)) if space[r] >= n]
        if fits:
            r = min(fits, key=lambda r: space[r])
            rows[r].append(i)
            space[r] -= n
        else:
            rows.append([i])
            space.append(max_length - n)
    return [[examples[i] for i in sorted(row)] for row in rows]


def collate_packed(rows: Sequence[Sequence[dict[str, list[int]]]], pad_token_id: int,
                   length: int | None = None) -> dict[str, torch.Tensor]:
    """Rows of examples -> input_ids, labels, position_ids: [B, L]; no attention_mask.

    Positions restart at 0 for each example; padding gets position 0 too (each pad token is then a
    one-token "sequence" of its own, with label -100), so the model needs no mask at all.
    """
    length = length or max(sum(len(e["input_ids"]) for e in row) for row in rows)
    ids = torch.full((len(rows), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), length), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e["input_ids"])
            if t + n > length:
                raise ValueError(f"row {b} holds {sum(len(x['input_ids']) for x in row)} tokens > length {length}")
            ids[b, t:t + n] = torch.tensor(e["input_ids"])
            labels[b, t:t + n] = torch.tensor(e["labels"])
            positions[b, t:t + n] = torch.arange(n)
            t += n
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def collate_padded(examples: Sequence[dict[str, list[int]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """One example per row, right-padded -> input_ids, labels, attention_mask: [B, L]."""
    length = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), length), pad_token_id, dtype=torch.long)
    labels = torch.full((len(examples), length), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        ids[b, :n], labels[b, :n], mask[b, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


# ----------------------------------------------------------------------------------------------------------
# 3. The loss
# ----------------------------------------------------------------------------------------------------------


def count_trainable(batch: Mapping[str, torch.Tensor]) -> int:
    """Label tokens that some position predicts (labels[:, 1:] != -100): the loss denominator's share."""
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def model_inputs(batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}


def sft_summed_loss(model, batch: Mapping[str, torch.Tensor]):
    """(summed NLL over trainable labels, their count, metric sums). The loop divides by the step's count."""
    logits = model(**model_inputs(batch)).logits
    nll = token_nll(logits, batch["labels"])
    trained = batch["labels"][:, 1:] != IGNORE
    with torch.no_grad():
        correct = (logits[:, :-1].argmax(-1) == batch["labels"][:, 1:]) & trained
    return nll.sum(), trained.sum(), {"mean_token_accuracy": correct.sum().float()}


SFT_LOSS = StageLoss(sft_summed_loss, count_trainable)


# ----------------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------------


@dataclass
class SFTSettings(OptimizerSettings):
    """The recipe's knobs, at lesson scale (the card: 2 epochs, packing, cosine min-LR 0.1, warmup 0.1)."""

    lr: float = 4e-3
    epochs: int = 2
    max_examples: int | None = None  # use only the first N records (lesson runs stay within minutes on a CPU)
    max_length: int = 256
    rows_per_micro_batch: int = 4
    accumulation: int = 2
    packing: bool = True


def sft_step_batches(examples: Sequence[dict], tokenizer, settings: SFTSettings) -> list[list[dict]]:
    """Pack (or not), then cut into optimizer steps of collated micro-batches for this process."""
    pad = tokenizer.pad_token_id
    if settings.packing:
        rows = pack(examples, settings.max_length)
        groups = step_groups(rows, settings.rows_per_micro_batch, settings.accumulation, settings.epochs,
                             settings.seed)
        return [[collate_packed(mb, pad) for mb in step] for step in groups]
    groups = step_groups(list(examples), settings.rows_per_micro_batch, settings.accumulation, settings.epochs,
                         settings.seed)
    return [[collate_padded(mb, pad) for mb in step] for step in groups]


def train_sft(model, tokenizer, records: Sequence[Mapping[str, Any]], settings: SFTSettings | None = None,
              progress: bool = True) -> list[StepLog]:
    """Fine-tune ``model`` in place on chat ``records``; returns the per-step log."""
    settings = settings or SFTSettings()
    torch.manual_seed(settings.seed)
    records = list(records)[:settings.max_examples] if settings.max_examples else list(records)
    examples = sft_examples(tokenizer, records, settings.max_length)
    steps = sft_step_batches(examples, tokenizer, settings)
    optimizer = make_optimizer(model, settings.lr, settings.weight_decay, settings.betas)
    scheduler = cosine_schedule(optimizer, len(steps), settings.warmup, settings.min_lr_rate)
    return train(model, steps, SFT_LOSS, optimizer, scheduler, settings.max_grad_norm, progress, len(steps), "SFT")


def save_stage(model, tokenizer, folder: str | Path, history: Sequence[StepLog], settings) -> Path:
    """Model (safetensors + config), tokenizer and a training log, in one folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(str(folder))
    log = {"settings": asdict(settings), "history": [asdict(h) for h in history]}
    atomic_write_text(folder / "training_log.json", json.dumps(log, indent=1))
    return folder


def finished_stage(folder: str | Path | None, default_name: str, who: str) -> tuple[Path, bool]:
    """A post-training stage's folder (``folder``, else artifacts/``default_name``) and whether it already holds the
    finished stage (what ``save_stage`` writes last: config.json and training_log.json). The ``ensure_*`` helpers
    train in one process, so under DDP a missing stage is an error naming ``who``."""
    folder = Path(folder) if folder is not None else ARTIFACTS_DIR / default_name
    done = (folder / "config.json").is_file() and (folder / "training_log.json").is_file()
    if not done and world_size() > 1:
        raise RuntimeError(f"{who} trains in one process; run it before starting a distributed job")
    return folder, done


def ensure_sft(folder: str | Path | None = None, pretrained: str | Path | None = None,
               settings: SFTSettings | None = None, progress: bool = True) -> Path:
    """The SFT model of lesson 07: trained from the pretrained model on the chat train split unless ``folder``
    already holds one (so lessons 08 and 09 run on their own)."""
    folder, done = finished_stage(folder, "sft", "ensure_sft")
    if done:
        return folder
    base = Path(ensure_pretrained(pretrained, progress=progress))
    model = DogeForCausalLM.from_pretrained(base)
    tokenizer = load_tokenizer(base)
    settings = settings or SFTSettings()
    history = train_sft(model, tokenizer, list(load_lesson_dataset("chat", "train")), settings, progress)
    return save_stage(model, tokenizer, folder, history, settings)


def main(argv: Sequence[str] | None = None) -> None:
    """``torchrun --nproc_per_node 2 -m doge_from_scratch.sft --out artifacts/sft_ddp``: the same loop under DDP.

    Each process builds the same step list and trains on its shard of every step (``train_utils.shard``);
    the loss is divided by the step's token count summed over processes, so the run equals one process.
    """
    parser = argparse.ArgumentParser(description="SFT of the pretrained lesson model (single process or torchrun).")
    parser.add_argument("--out", default=str(ARTIFACTS_DIR / "sft_ddp"))
    parser.add_argument("--max-examples", type=int, default=None)
    parser.add_argument("--epochs", type=int, default=SFTSettings.epochs)
    args = parser.parse_args(argv)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    base = Path(ensure_pretrained())  # run once before launching several processes
    model = DogeForCausalLM.from_pretrained(base)
    tokenizer = load_tokenizer(base)
    settings = SFTSettings(max_examples=args.max_examples, epochs=args.epochs)
    wrapped = DistributedDataParallel(model) if distributed else model
    history = train_sft(wrapped, tokenizer, list(load_lesson_dataset("chat", "train")), settings,
                        progress=rank() == 0)
    if rank() == 0:
        save_stage(model, tokenizer, args.out, history, settings)
        print(f"{len(history)} steps, loss {history[0].loss:.4f} -> {history[-1].loss:.4f}, saved {args.out}")
    if distributed:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
