"""What a pretraining recipe buys after SFT: held-out chat accuracy per task, with intervals and chance.

``python -m doge_from_scratch.bench recipes --variant recipe='{}' --variant short='{"steps": 800}'`` pretrains the
lesson model once per variant (``PretrainSettings`` fields as JSON, over the recipe's defaults), fine-tunes each
with lesson 07's SFT recipe, and scores greedy replies to every distinct held-out chat question
(``evaluate.held_out_chats``) with the tasks' own checkers. It prints one markdown table (per variant and task:
right/n, accuracy, 95% Wilson interval, chance, whether the interval clears chance) and a JSON line last.

This is how a change to lesson 06's recipe is judged before the lessons are re-run on it: the validation loss
alone does not tell (1000 steps reach about the loss of 1400 but far fewer right answers, see docs/lesson-models.md).
The variants run one after another on the same threads, so their times compare.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..data import load_lesson_dataset
from ..evaluate import accuracy_rows, chance_of, evaluate_replies, held_out_chats
from ..pretrain import PretrainSettings, pretrain
from ..sft import SFTSettings, train_sft
from ..tokenizer import load_tokenizer
from .decode import machine_description


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    """``NAME=JSON`` -> (name, PretrainSettings overrides); the error names the bad part."""
    name, sep, body = text.partition("=")
    if not sep or not name:
        raise ValueError(f"--variant {text!r}: expected NAME=JSON, e.g. long='{{\"steps\": 1400}}'")
    try:
        overrides = json.loads(body or "{}")
    except json.JSONDecodeError as error:
        raise ValueError(f"--variant {name}: {body!r} is not JSON ({error.msg})") from None
    if not isinstance(overrides, dict):
        raise ValueError(f"--variant {name}: expected a JSON object of PretrainSettings fields, got {body!r}")
    unknown = sorted(set(overrides) - set(PretrainSettings.__dataclass_fields__))
    if unknown:
        raise ValueError(f"--variant {name}: {unknown} are not PretrainSettings fields")
    return name, overrides


def task_rows(records: Sequence[Mapping[str, Any]], correct: Sequence[bool]) -> list[dict[str, Any]]:
    """Per task (sorted, then "all"): ``evaluate.accuracy_rows`` plus whether the interval clears chance."""
    rows = accuracy_rows({"correct": list(correct), "tasks": [r["task"] for r in records],
                          "chance": [chance_of(r) for r in records]})
    ordered = sorted(rows[1:], key=lambda r: r["task"]) + rows[:1]
    return [{**r, "clear_of_chance": r["low"] > r["chance"]} for r in ordered]


def run_variant(name: str, overrides: Mapping[str, Any], tokenizer, records: Sequence[Mapping[str, Any]],
                sft_settings: SFTSettings, max_sft_examples: int | None) -> dict[str, Any]:
    settings = PretrainSettings(**overrides)
    start = time.perf_counter()
    result = pretrain(settings, tokenizer, progress=False)
    pretrain_s = time.perf_counter() - start
    model = result.model
    chats = list(load_lesson_dataset("chat", "train"))[:max_sft_examples]
    start = time.perf_counter()
    train_sft(model, tokenizer, chats, sft_settings, progress=False)
    sft_s = time.perf_counter() - start
    scored = evaluate_replies(model.eval(), tokenizer, records, batch_size=16)
    return {"variant": name, "overrides": dict(overrides), "val_loss": result.final_val_loss,
            "pretrain_s": round(pretrain_s, 1), "sft_s": round(sft_s, 1),
            "tasks": task_rows(records, scored["correct"])}


def markdown_table(results: Sequence[Mapping[str, Any]]) -> str:
    lines = ["| variant | val loss | pretrain s | task | right / n | accuracy [95% CI] | chance | clear of chance |",
             "|---|---|---|---|---|---|---|---|"]
    for r in results:
        for t in r["tasks"]:
            lines.append(f"| {r['variant']} | {r['val_loss']:.3f} | {r['pretrain_s']:.0f} | {t['task']} | "
                         f"{t['right']}/{t['n']} | {t['accuracy']:.1%} [{t['low']:.1%}, {t['high']:.1%}] | "
                         f"{t['chance']:.1%} | {'yes' if t['clear_of_chance'] else 'no'} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doge_from_scratch.bench recipes",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--variant", action="append", default=None,
                        help="NAME=JSON of PretrainSettings overrides (repeatable; default: recipe='{}')")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-sft-examples", type=int, default=None, help="SFT on the first N chats (default all)")
    parser.add_argument("--max-eval", type=int, default=None, help="score the first N held-out chats (default all)")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(v) for v in (args.variant or ["recipe={}"])]
    except ValueError as error:
        parser.error(str(error))
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer()
    records = held_out_chats()[:args.max_eval]
    results = []
    for name, overrides in variants:
        overrides = {"num_threads": args.threads, **overrides}
        results.append(run_variant(name, overrides, tokenizer, records, SFTSettings(), args.max_sft_examples))
    print(f"machine: {machine_description()}")
    print(markdown_table(results))
    print(json.dumps({"bench": "recipes", "machine": machine_description(), "results": results}))
    return 0
