"""How the models are measured: free generation judged by the lesson tasks' checkers (lessons 07-10), and benchmark
scoring from scratch, the way lm-evaluation-harness (lm-eval 0.4.13) scores the model cards' tables (lesson 11).

Free generation: ``evaluate_replies`` answers each held-out record greedily and lets its task's checker judge;
``held_out_chats`` and ``held_out_reasoning`` are the held-out sets (test-split problems, each prompt once), and
``accuracy_table`` prints every accuracy with its Wilson 95% interval and the chance accuracy on the same records
(``chance_of``: a uniform guess among the answers the question allows).

Multiple choice by log-likelihood. A question becomes a *context* string (a task description, few-shot examples,
the question) and each answer choice a *continuation* (the target delimiter, a space, then the choice). The score of a
choice is the summed log-probability of its continuation tokens given the context:

    ll(choice) = sum_t log p(cont_t | context, cont_<t)

``acc`` is 1 when the best choice by ll is the gold one; ``acc_norm`` divides ll by the choice's length in characters
first (the harness's ``len(choice)``, without the delimiter), so long answers are not punished for having more tokens
to pay for. Ties go to the first choice (``numpy.argmax``).

Tokenisation at the boundary, as the harness's causal models do it (``LM._encode_pair``): trailing whitespace of the
context moves to the front of the continuation, then ``encode(context + continuation)`` is split after
``len(encode(context))`` tokens. A BPE that merges a space into the next word (" Cairo") would otherwise see a
context ending in a bare space that it never saw in training. An empty context is replaced by one prefix token
(bos, or eos if there is none). The model sees ``(context + continuation)[:-1]``, truncated from the left to its
maximum length.

Generation with verifiable answers: greedy chat replies (``generation.chat_replies``), scored by exact match of the
extracted, normalised answer, or by IFEval's checks (``length_constraints:number_words``, ``startend:end_checker``,
``punctuation:no_comma``, strict and loose as IFEval defines them).

Every score comes with the harness's standard error: the sample standard deviation over items / sqrt(n); a group
of subtasks (MMLU's subjects) pools the subtasks' variances, as the harness does. The harness's HFLM runs on our
model instance as it is (``harness_lm``; tests/test_evaluate.py holds the two to the same numbers).

    python -m doge_from_scratch.evaluate artifacts/sft --tasks doge_arc,doge_piqa     # local benchmark files
    python -m doge_from_scratch.evaluate SmallDoge/Doge-60M-Instruct --tasks arc_easy,piqa   # the harness's tasks
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import string
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .benchmarks import BENCHMARK_DIR, read_benchmark
from .checkpoint import CheckpointError, resolve_folder
from .data import REASONING_SYSTEM_PROMPT, generate_rows, load_lesson_dataset
from .generation import chat_replies
from .model import DogeForCausalLM
from .references import quiet_transformers
from .tasks import DataFormatError, check_answer, cut_at_end_of_turn, prompt_and_reference, task_of
from .tokenizer import BEGIN_SOLUTION, END_SOLUTION, END_THOUGHT, load_tokenizer
from .train_utils import progress_bar

# ------------------------------------- free generation judged by the lesson tasks' checkers (lessons 07-10)

def follows_chat_format(reply: str, eos_token: str) -> bool:
    """The turn ends with the end-of-turn token and contains no new header (it answered, then stopped)."""
    return eos_token in reply and "<|start_header_id|>" not in reply.split(eos_token, 1)[0]


def evaluate_replies(model: nn.Module, tokenizer, records: Sequence[dict[str, Any]], max_new_tokens: int = 64,
                     progress: bool = False, batch_size: int = 1) -> dict[str, Any]:
    """Generate a reply to each record's prompt and score it with the task's own checker.

    Returns accuracy (checker says right), format (stopped with end-of-turn), per-task accuracy and the replies.
    ``batch_size`` > 1 generates that many prompts at once (left-padded; much faster, the same replies up to
    float32 round-off in the padded rows).
    """
    records = list(records)
    prompts = [prompt_and_reference(record)[0] for record in records]
    generated = []
    for start in progress_bar(range(0, len(records), batch_size), desc="generate", disable=not progress):
        generated += chat_replies(model, tokenizer, prompts[start:start + batch_size], max_new_tokens, batch_size)
    replies, right, formatted, per_task = [], [], [], {}
    for record, reply in zip(records, generated):
        ok = bool(check_answer(record, reply))
        replies.append(reply)
        right.append(ok)
        formatted.append(follows_chat_format(reply, tokenizer.eos_token))
        per_task.setdefault(record.get("task", "?"), []).append(ok)
    n = max(1, len(records))
    return {"accuracy": sum(right) / n, "format": sum(formatted) / n,
            "per_task": {k: sum(v) / len(v) for k, v in sorted(per_task.items())},
            "replies": replies, "correct": right, "tasks": [record.get("task", "?") for record in records],
            "chance": [chance_of(record) for record in records]}


def held_out_chats() -> list[dict[str, Any]]:
    """The distinct held-out chat questions (lessons 07-08): the test splits of the chat and preference data,
    each prompt once (both splits hold test-split problems only, and small talk repeats its held-out phrasings)."""
    records, seen = [], set()
    for kind in ("chat", "preference"):
        for record in load_lesson_dataset(kind, "test"):
            prompt = json.dumps(prompt_and_reference(record)[0])
            if prompt not in seen:
                seen.add(prompt)
                records.append(record)
    return records


def held_out_reasoning(n: int = 240) -> list[dict[str, Any]]:
    """``n`` distinct held-out reasoning questions (lesson 09): the test split's stream of Reason-Distill-style
    records (``data.generate_rows``; the committed data/reasoning/test.jsonl holds its first 80), each question once.
    Test-split problems only, so none is in any training file."""
    records, seen = [], set()
    for record in generate_rows("reasoning", "test", 16 * n):  # the stream repeats a question about 1 row in 4
        question = record["messages"][1]["content"]
        if question not in seen:
            seen.add(question)
            records.append(record)
    if len(records) < n:
        raise ValueError(f"the reasoning test split gave {len(records)} distinct questions in {16 * n} rows, not {n}")
    return records[:n]


def chance_of(record: Mapping[str, Any]) -> float:
    """The chance accuracy on one record: its task's uniform guess among the answers the question allows."""
    return task_of(record, "chance_of").chance(record["answer"])


def accuracy_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """"all", then each task in order of first appearance: n, right, accuracy, Wilson 95% interval (low, high)
    and the mean chance accuracy on the same records. ``result`` is an ``evaluate_replies`` output."""
    groups: dict[str, list[int]] = {"all": list(range(len(result["correct"])))}
    for i, task in enumerate(result["tasks"]):
        groups.setdefault(task, []).append(i)
    rows = []
    for task, idx in groups.items():
        right = sum(bool(result["correct"][i]) for i in idx)
        low, high = wilson_interval(right, len(idx))
        rows.append({"task": task, "n": len(idx), "right": right, "accuracy": right / len(idx), "low": low,
                     "high": high, "chance": sum(result["chance"][i] for i in idx) / len(idx)})
    return rows


def accuracy_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """Per model (the keys) and per task: n, right, accuracy with its Wilson 95% interval, and the chance
    accuracy on the same records. ``results`` are ``evaluate_replies`` outputs on the same records."""
    lines = [f"{'model':14}{'task':18}{'n':>5}{'right':>7}{'accuracy':>10}{'95% interval':>17}{'chance':>9}"]
    for name, result in results.items():
        for r in accuracy_rows(result):
            interval = f"[{r['low']:.1%}, {r['high']:.1%}]"
            lines.append(f"{name:14}{r['task']:18}{r['n']:>5}{r['right']:>7}{r['accuracy']:>10.1%}"
                         f"{interval:>17}{r['chance']:>9.1%}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------- statistics


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """(mean, standard error of the mean) with the sample standard deviation (n - 1), as the harness reports it.

    One item has no spread to estimate: its stderr is nan.
    """
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The Wilson score 95% interval for a binomial proportion: every accuracy the lessons report carries one
    (unlike the normal approximation it stays inside [0, 1] and is honest at 0 or n successes)."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test for two models scored on the same questions.

    ``wins``: questions only model B gets right; ``losses``: only model A. Questions both get right or both wrong
    say nothing about which is better. If B were no better than A, each of the ``wins + losses`` split questions
    would fall either way with probability 1/2. The result is the probability of a split at least this uneven.
    """
    if wins < 0 or losses < 0:
        raise ValueError(f"wins={wins}, losses={losses}: counts cannot be negative")
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2 ** n)


def pooled_stderr(stderrs: Sequence[float], sizes: Sequence[int]) -> float:
    """Standard error of a size-weighted mean of subtask means, as the harness reports a group (MMLU over its
    subjects): the subtasks' sample variances pooled, sum((n_i - 1) n_i se_i^2) / (N - k), over N. It leaves out
    the spread *between* subjects, so it is a little smaller than the stderr of all items taken as one task."""
    if len(stderrs) != len(sizes) or not sizes:
        raise ValueError(f"{len(stderrs)} stderrs for {len(sizes)} subtask sizes")
    total = sum(sizes)
    pooled_var = sum((n - 1) * se ** 2 * n for se, n in zip(stderrs, sizes)) / (total - len(sizes))
    return math.sqrt(pooled_var / total)


def first_argmax(values: Sequence[float]) -> int:
    """Index of the largest value; the first one on ties (what numpy.argmax returns)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def choice_metrics(lls: Sequence[float], choices: Sequence[str], gold: int) -> dict[str, float]:
    """acc (raw ll) and acc_norm (ll per character of the choice text) for one question."""
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} is outside the {len(choices)} choices")
    per_char = [ll / len(c) for ll, c in zip(lls, choices)]
    return {"acc": float(first_argmax(lls) == gold), "acc_norm": float(first_argmax(per_char) == gold)}


# ---------------------------------------------------------------------------------------- tokenisation


def _encode(tokenizer, text: str, add_special_tokens: bool | None = None) -> list[int]:
    """The harness's ``tok_encode``: the tokenizer's own default, except that text already starting with the bos
    string is not given a second bos."""
    if add_special_tokens is None:
        bos = tokenizer.bos_token
        add_special_tokens = not (bos and text.startswith(bos))
    return list(tokenizer.encode(text, add_special_tokens=add_special_tokens))


def prefix_token_id(tokenizer) -> int:
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """(context ids, continuation ids) split the way the harness splits them at the boundary (module docstring)."""
    if context == "":
        cont = _encode(tokenizer, continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        return ([prefix], cont) if cont[:1] != [prefix] else (cont[:1], cont[1:])
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = _encode(tokenizer, context + continuation)
    context_ids = _encode(tokenizer, context)
    return context_ids, whole[len(context_ids):]


# --------------------------------------------------------------------------------------- log-likelihood


@dataclass(frozen=True)
class LoglikelihoodResult:
    logprob: float  # summed log-probability of the continuation tokens
    is_greedy: bool  # every continuation token is the argmax at its position
    n_tokens: int


def _model_inputs(context_ids: list[int], cont_ids: list[int], max_length: int) -> list[int]:
    if not cont_ids:
        raise ValueError("an empty continuation has no log-likelihood (an empty choice text?)")
    return (context_ids + cont_ids)[-(max_length + 1):][:-1]


@torch.no_grad()
def loglikelihoods(model, tokenizer, pairs: Sequence[tuple[str, str]], batch_size: int = 32,
                   max_length: int | None = None) -> list[LoglikelihoodResult]:
    """log p(continuation | context) for each (context, continuation) string pair.

    Requests with the same model input (a shared context and one-token continuations, as MMLU's letters are) run
    once, as the harness's logits cache does. Inputs are sorted longest first and run ``batch_size`` at a time,
    right-padded with no attention mask: the model is causal, so padding after a row's last token cannot change
    that row's logits. Log-softmax in float32.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    max_length = max_length or model.config.max_position_embeddings
    encoded = [encode_pair(tokenizer, c, x) for c, x in pairs]
    inputs = [tuple(_model_inputs(c, x, max_length)) for c, x in encoded]
    users: dict[tuple[int, ...], list[int]] = {}
    for i, row in enumerate(inputs):
        users.setdefault(row, []).append(i)
    unique = sorted(users, key=lambda ids: (-len(ids), ids))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    device = next(model.parameters()).device
    model.eval()
    results: list[LoglikelihoodResult | None] = [None] * len(inputs)
    for start in range(0, len(unique), batch_size):
        rows = unique[start:start + batch_size]
        ids = torch.full((len(rows), len(rows[0])), pad, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, :len(row)] = torch.tensor(row)
        log_probs = torch.log_softmax(model(ids.to(device)).logits.float(), dim=-1)
        for r, row in enumerate(rows):
            for i in users[row]:
                cont = torch.tensor(encoded[i][1], device=device)
                scores = log_probs[r, len(row) - len(cont):len(row)]  # position t predicts token t + 1
                picked = scores.gather(-1, cont[:, None]).squeeze(-1)
                results[i] = LoglikelihoodResult(float(picked.sum()), bool((scores.argmax(-1) == cont).all()),
                                                 len(cont))
    return results  # type: ignore[return-value]


# ------------------------------------------------------------------------------------- multiple choice


@dataclass(frozen=True)
class MultipleChoiceItem:
    """One question: the full context (description, few-shot examples, question) and the answer texts."""

    context: str
    choices: list[str]
    gold: int
    target_delimiter: str = " "

    def continuations(self) -> list[str]:
        return [self.target_delimiter + c for c in self.choices]


def fewshot_context(question: str, shots: Sequence[tuple[str, str]] = (), description: str = "",
                    target_delimiter: str = " ", fewshot_delimiter: str = "\n\n") -> str:
    """description + each example's question, delimiter, answer and example delimiter + the question.

    The harness renders plain-text prompts this way: the description is glued to the first example as it is (real
    task descriptions end in a blank line), and every example ends with the few-shot delimiter.
    """
    examples = "".join(q + target_delimiter + a + fewshot_delimiter for q, a in shots)
    return description + examples + question


# Doc formats: a row of the real data set -> (question text, choice texts, gold index), as the harness's YAMLs
# (arc_easy, piqa, hellaswag, mmlu default) render them.
def arc_doc(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    labels = list(row["choices"]["label"])
    if row["answerKey"] not in labels:
        raise DataFormatError(f"ARC row {row.get('id', '?')}: answerKey {row['answerKey']!r} not in labels {labels}")
    return f"Question: {row['question']}\nAnswer:", list(row["choices"]["text"]), labels.index(row["answerKey"])


def piqa_doc(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    return f"Question: {row['goal']}\nAnswer:", [row["sol1"], row["sol2"]], int(row["label"])


def hellaswag_clean(text: str) -> str:
    """HellaSwag's clean-up of WikiHow artefacts: " [title]" becomes ". ", other [tags] go, double spaces halve."""
    text = text.strip().replace(" [title]", ". ")
    return re.sub(r"\[.*?\]", "", text).replace("  ", " ")


def hellaswag_doc(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    query = hellaswag_clean(f"{row['activity_label']}: {row['ctx_a']} {row['ctx_b'].capitalize()}")
    return query, [hellaswag_clean(e) for e in row["endings"]], int(row["label"])


def mmlu_doc(row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:", ["A", "B", "C", "D"], int(row["answer"])


def mmlu_description(subject: str) -> str:
    return f"The following are multiple choice questions (with answers) about {subject.replace('_', ' ')}.\n\n"


def multiple_choice_items(doc: Callable[[Mapping[str, Any]], tuple[str, list[str], int]],
                          rows: Sequence[Mapping[str, Any]], fewshot_rows: Sequence[Mapping[str, Any]] = (),
                          num_fewshot: int = 0, description: Callable[[Mapping[str, Any]], str] | None = None,
                          group: Callable[[Mapping[str, Any]], Any] | None = None) -> list[MultipleChoiceItem]:
    """Items for ``rows``, each with the first ``num_fewshot`` rows of ``fewshot_rows`` (of the same ``group``, e.g.
    MMLU's subject) as examples: the harness's ``first_n`` sampler, which MMLU uses."""
    items = []
    for row in rows:
        pool = [r for r in fewshot_rows if group is None or group(r) == group(row)]
        if len(pool) < num_fewshot:
            raise ValueError(f"{num_fewshot}-shot needs {num_fewshot} examples, the few-shot rows have {len(pool)}")
        shots = []
        for shot in pool[:num_fewshot]:
            q, choices, gold = doc(shot)
            shots.append((q, choices[gold]))
        question, choices, gold = doc(row)
        context = fewshot_context(question, shots, description(row) if description else "")
        items.append(MultipleChoiceItem(context, choices, gold))
    return items


@dataclass
class TaskResult:
    """Scores of one task: ``metrics[name] = (value, stderr)``, plus what each item got (for inspection)."""

    name: str
    metrics: dict[str, tuple[float, float]]
    n: int
    chance: float | None
    items: list[dict[str, Any]] = field(default_factory=list)
    subtasks: dict[str, dict[str, tuple[float, float]]] = field(default_factory=dict)  # e.g. MMLU's subjects


def score_multiple_choice(model, tokenizer, name: str, items: Sequence[MultipleChoiceItem], batch_size: int = 32,
                          chance: float | None = None, groups: Sequence[str] | None = None,
                          metric_names: Sequence[str] = ("acc", "acc_norm")) -> TaskResult:
    """acc and acc_norm (or those of ``metric_names``) with stderr. With ``groups`` (one label per item, e.g. MMLU's
    subject) each group is a subtask and the task is their size-weighted group, its stderr pooled as the harness
    pools it."""
    pairs = [(item.context, cont) for item in items for cont in item.continuations()]
    results = iter(loglikelihoods(model, tokenizer, pairs, batch_size))
    per_item = []
    for item in items:
        lls = [next(results).logprob for _ in item.choices]
        per_item.append({"lls": lls, "gold": item.gold, **choice_metrics(lls, item.choices, item.gold)})
    metrics = {m: mean_stderr([r[m] for r in per_item]) for m in metric_names}
    subtasks: dict[str, dict[str, tuple[float, float]]] = {}
    if groups is not None:
        members: dict[str, list[dict[str, Any]]] = {}
        for label, record in zip(groups, per_item):
            members.setdefault(label, []).append(record)
        subtasks = {g: {m: mean_stderr([r[m] for r in rs]) for m in metric_names} for g, rs in members.items()}
        sizes = [len(rs) for rs in members.values()]
        metrics = {m: (metrics[m][0], pooled_stderr([subtasks[g][m][1] for g in members], sizes))
                   for m in metric_names}
    if chance is None:
        chance = sum(1 / len(item.choices) for item in items) / len(items)
    return TaskResult(name, metrics, len(items), chance, per_item, subtasks)


# ------------------------------------------------------------------------------------------ generation

def extract_answer(reply: str) -> str:
    """The short answer in a lesson-style reply: what follows its last "is" or "=" ("The capital of Egypt is
    Cairo." -> "Cairo."); the whole reply when there is neither."""
    reply = reply.strip()
    marks = list(re.finditer(r"=|\bis\b", reply))
    return reply[marks[-1].end():].strip() if marks else reply


def normalise_answer(text: str) -> str:
    """Lower case, single spaces, no punctuation at either end (a full stop inside "3.11" stays)."""
    text = " ".join(text.lower().split())
    return text.strip(string.punctuation + " ")


def exact_match(reply: str, answer: str) -> bool:
    return normalise_answer(extract_answer(reply)) == normalise_answer(answer)


def count_words(text: str) -> int:
    """IFEval's word count: runs of word characters (letters, digits, underscore)."""
    return len(re.findall(r"\w+", text))


def _follows(instruction_id: str, kwargs: Mapping[str, Any], response: str, where: str) -> bool:
    if instruction_id == "length_constraints:number_words":
        n, relation = count_words(response), kwargs["relation"]
        if relation == "less than":
            return n < kwargs["num_words"]
        if relation == "at least":
            return n >= kwargs["num_words"]
        raise DataFormatError(f"{where}: number_words relation {relation!r}; expected 'less than' or 'at least'")
    if instruction_id == "startend:end_checker":
        return response.strip().strip('"').lower().endswith(kwargs["end_phrase"].strip().lower())
    if instruction_id == "punctuation:no_comma":
        return "," not in response
    raise DataFormatError(f"{where}: instruction {instruction_id!r} is not one this scorer checks "
                          "(length_constraints:number_words, startend:end_checker, punctuation:no_comma)")


def _loose_variants(response: str) -> list[str]:
    """IFEval's loose reading: the response, without its first and/or last line, each also without asterisks."""
    lines = response.split("\n")
    cut = [response, "\n".join(lines[1:]).strip(), "\n".join(lines[:-1]).strip(), "\n".join(lines[1:-1]).strip()]
    return cut[:1] + [cut[0].replace("*", "")] + cut[1:] + [c.replace("*", "") for c in cut[1:]]


def instruction_results(row: Mapping[str, Any], response: str, loose: bool = False, where: str = "") -> list[bool]:
    """One bool per instruction of an IFEval row. An empty (or all-space) response follows nothing."""
    ids, kwargs = row["instruction_id_list"], row["kwargs"]
    if len(ids) != len(kwargs):
        raise DataFormatError(f"{where}: {len(ids)} instructions but {len(kwargs)} kwargs entries")
    variants = _loose_variants(response) if loose else [response]
    return [any(r.strip() and _follows(i, kw, r, where) for r in variants) for i, kw in zip(ids, kwargs)]


def ifeval_scores(rows: Sequence[Mapping[str, Any]], responses: Sequence[str]) -> dict[str, tuple[float, float]]:
    """prompt- and instruction-level accuracy, strict and loose. Instruction level averages over all instructions
    of all prompts (the harness gives it no stderr, its aggregation being a custom function; ours treats the
    instructions as the items)."""
    out = {}
    for mode in ("strict", "loose"):
        per_prompt = [instruction_results(row, resp, mode == "loose", f"ifeval row {i + 1}")
                      for i, (row, resp) in enumerate(zip(rows, responses))]
        out[f"prompt_level_{mode}_acc"] = mean_stderr([float(all(p)) for p in per_prompt])
        out[f"inst_level_{mode}_acc"] = mean_stderr([float(x) for p in per_prompt for x in p])
    return out


def after_thinking(reply: str, think_end: str) -> str:
    """The answer part of a reasoning reply: what follows the last ``think_end`` (the harness's ``think_end_token``
    rule; the whole reply when there is none), without our solution-section tags."""
    answer = reply.split(think_end)[-1].lstrip()
    return answer.replace(BEGIN_SOLUTION, "").replace(END_SOLUTION, "").strip()


def _replies(model, tokenizer, prompts: Sequence[str], max_new_tokens: int, batch_size: int,
             system_prompt: str | None = None, think_end: str | None = None) -> list[str]:
    """Greedy one-turn chat replies, cut at the end of the turn (and after the thinking, for a reasoning model)."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    replies = chat_replies(model, tokenizer, [system + [{"role": "user", "content": p}] for p in prompts],
                           max_new_tokens, batch_size)
    replies = [cut_at_end_of_turn(r) for r in replies]
    return [after_thinking(r, think_end) for r in replies] if think_end else replies


@dataclass(frozen=True)
class ChatFormat:
    """How generation tasks talk to a model: a system prompt, where its thinking ends, and a token budget."""

    system_prompt: str | None = None
    think_end: str | None = None
    max_new_tokens: int = 48


def reasoning_format(max_new_tokens: int = 160) -> ChatFormat:
    """The Reason-Distill card's system prompt; the answer is what follows ``<|end_of_thought|>``."""
    return ChatFormat(REASONING_SYSTEM_PROMPT, END_THOUGHT, max_new_tokens)


# ------------------------------------------------------------------------------------------ the tasks


@dataclass(frozen=True)
class LocalTask:
    """One of the project's benchmark files, scored like the real benchmark whose format it has."""

    name: str
    imitates: str  # the real benchmark
    run: Callable[..., TaskResult]


def _mc_task(name: str, file: str, doc, chance: float | None = None, fewshot_file: str | None = None,
             num_fewshot: int = 0, description=None, group=None,
             metric_names: Sequence[str] = ("acc", "acc_norm")) -> Callable[..., TaskResult]:
    def run(model, tokenizer, folder: str | Path = BENCHMARK_DIR, limit: int | None = None, batch_size: int = 32,
            **_: Any) -> TaskResult:
        rows = read_benchmark(file, folder)[:limit]
        shots = read_benchmark(fewshot_file, folder) if fewshot_file else []
        items = multiple_choice_items(doc, rows, shots, num_fewshot, description, group)
        labels = [group(r) for r in rows] if group else None
        return score_multiple_choice(model, tokenizer, name, items, batch_size, chance, labels, metric_names)

    return run


def _run_ifeval(model, tokenizer, folder: str | Path = BENCHMARK_DIR, limit: int | None = None, batch_size: int = 32,
                chat: ChatFormat = ChatFormat(), **_: Any) -> TaskResult:
    rows = read_benchmark("ifeval", folder)[:limit]
    replies = _replies(model, tokenizer, [r["prompt"] for r in rows], chat.max_new_tokens, batch_size,
                       chat.system_prompt, chat.think_end)
    items = [{"prompt": r["prompt"], "reply": reply, "strict": instruction_results(r, reply)}
             for r, reply in zip(rows, replies)]
    return TaskResult("doge_ifeval", ifeval_scores(rows, replies), len(rows), None, items)


def _run_qa(model, tokenizer, folder: str | Path = BENCHMARK_DIR, limit: int | None = None, batch_size: int = 32,
            chat: ChatFormat = ChatFormat(), **_: Any) -> TaskResult:
    rows = read_benchmark("qa_test", folder)[:limit]
    replies = _replies(model, tokenizer, [r["question"] for r in rows], chat.max_new_tokens, batch_size,
                       chat.system_prompt, chat.think_end)
    items = [{"question": r["question"], "answer": r["answer"], "reply": reply,
              "exact_match": exact_match(reply, r["answer"])} for r, reply in zip(rows, replies)]
    metrics = {"exact_match": mean_stderr([float(i["exact_match"]) for i in items])}
    return TaskResult("doge_qa", metrics, len(rows), 0.0, items)


LOCAL_TASKS: dict[str, LocalTask] = {t.name: t for t in (
    LocalTask("doge_arc", "ARC (arc_easy)", _mc_task("doge_arc", "arc_test", arc_doc)),
    LocalTask("doge_piqa", "PIQA", _mc_task("doge_piqa", "piqa_validation", piqa_doc)),
    LocalTask("doge_hellaswag", "HellaSwag", _mc_task("doge_hellaswag", "hellaswag_validation", hellaswag_doc)),
    # the harness's MMLU reports acc only: its continuations are single letters, so acc_norm would be the same
    LocalTask("doge_mmlu", "MMLU (5-shot)", _mc_task("doge_mmlu", "mmlu_test", mmlu_doc, 0.25, "mmlu_dev", 5,
                                                     lambda r: mmlu_description(r["subject"]), lambda r: r["subject"],
                                                     ("acc",))),
    LocalTask("doge_ifeval", "IFEval", _run_ifeval),
    LocalTask("doge_qa", "short-answer QA (exact match)", _run_qa),
)}
# The metric each task's headline column shows (the cards' IFEval column is prompt-level strict accuracy).
HEADLINE = {"doge_arc": "acc", "doge_piqa": "acc", "doge_hellaswag": "acc_norm", "doge_mmlu": "acc",
            "doge_ifeval": "prompt_level_strict_acc", "doge_qa": "exact_match"}


def evaluate(model, tokenizer, tasks: Sequence[str] = tuple(LOCAL_TASKS), limit: int | None = None,
             batch_size: int = 32, folder: str | Path = BENCHMARK_DIR, chat: ChatFormat = ChatFormat()
             ) -> dict[str, TaskResult]:
    """Score ``model`` on the project's benchmark files (``LOCAL_TASKS``). ``chat`` is how the generation tasks
    prompt it (``reasoning_format()`` for a thought/solution model); multiple choice is plain text either way."""
    unknown = [t for t in tasks if t not in LOCAL_TASKS]
    if unknown:
        raise ValueError(f"unknown local task(s) {unknown}; local tasks are {sorted(LOCAL_TASKS)}")
    return {t: LOCAL_TASKS[t].run(model, tokenizer, folder=folder, limit=limit, batch_size=batch_size, chat=chat)
            for t in tasks}


def format_results(results: Mapping[str, TaskResult]) -> str:
    """A markdown table in the harness's layout: task, n, metric, value, stderr."""
    lines = ["| task | n | metric | value | stderr |", "|---|---|---|---|---|"]
    for name, result in results.items():
        for metric, (value, err) in result.metrics.items():
            lines.append(f"| {name} | {result.n} | {metric} | {value:.4f} | {err:.4f} |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ CLI


def harness_lm(model, tokenizer, batch_size: int = 16):
    """lm-eval's HFLM around our model instance and tokenizer.

    Log-likelihood requests need nothing more. Generation requests (IFEval, BBH, GSM8K) call
    ``model.generate(input_ids, max_length=..., stopping_criteria=...)`` in transformers' style; our decoder takes
    ``max_new_tokens`` and has no stopping criteria, so ``_model_generate`` translates: the budget becomes
    ``max_new_tokens`` and the stop strings are left to the harness, which cuts every generation at them anyway.
    """
    from lm_eval.models.huggingface import HFLM

    # its warning about being handed a model instance (ours, on purpose) would bury a failure's one line
    logging.getLogger("lm_eval").setLevel(logging.ERROR)

    class DogeHFLM(HFLM):
        def _model_generate(self, context, max_length: int, stop: list[str], **kwargs):
            kwargs.pop("use_cache", None)
            kwargs.setdefault("do_sample", False)
            if not kwargs["do_sample"]:
                kwargs.pop("temperature", None)
            return self.model.generate(context, kwargs.pop("attention_mask", None),
                                       max_new_tokens=max_length - context.shape[1],
                                       eos_token_id=self.tokenizer.eos_token_id,
                                       pad_token_id=self.tokenizer.pad_token_id, **kwargs)

    return DogeHFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size, device=str(model.device))


def run_harness_tasks(model, tokenizer, tasks: Sequence[str], limit: int | None, batch_size: int,
                      num_fewshot: int | None, apply_chat_template: bool) -> dict[str, Any]:
    """lm-eval's own task registry (it downloads the data sets from the Hub) on our model, through its HFLM class."""
    import lm_eval

    lm = harness_lm(model, tokenizer, batch_size)
    return lm_eval.simple_evaluate(model=lm, tasks=list(tasks), num_fewshot=num_fewshot, limit=limit,
                                   apply_chat_template=apply_chat_template)["results"]


def load_model_and_tokenizer(name_or_path: str):
    """Our loader (every checkpoint generation, safetensors only) and the tokenizer stored beside the weights."""
    folder = resolve_folder(name_or_path)
    return DogeForCausalLM.from_pretrained(folder).eval(), load_tokenizer(folder)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m doge_from_scratch.evaluate",
        description="Score a Doge checkpoint on benchmarks, as lm-evaluation-harness does.")
    parser.add_argument("model", help="a local model folder or a Hub id (org/name)")
    parser.add_argument("--tasks", default=",".join(LOCAL_TASKS),
                        help=f"comma-separated; local: {', '.join(LOCAL_TASKS)}; any other name is an lm-eval task "
                             "(arc_easy, piqa, hellaswag, mmlu, ifeval, ...), which needs the Hub")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N items of each task")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--reasoning", action="store_true",
                        help="generation tasks: the Reason-Distill system prompt, score what follows the thinking")
    parser.add_argument("--num-fewshot", type=int, default=None, help="lm-eval tasks only")
    parser.add_argument("--apply-chat-template", action="store_true", help="lm-eval tasks only")
    return parser


def _fail(message: str) -> int:
    print(f"evaluate: error: {' '.join(message.split())}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_transformers()
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    local = [t for t in tasks if t in LOCAL_TASKS]
    harness = [t for t in tasks if t not in LOCAL_TASKS]
    try:
        model, tokenizer = load_model_and_tokenizer(args.model)
    except (CheckpointError, FileNotFoundError) as err:
        return _fail(str(err))
    if local:
        try:
            chat = reasoning_format() if args.reasoning else ChatFormat()
            print(format_results(evaluate(model, tokenizer, local, args.limit, args.batch_size, chat=chat)))
        except (DataFormatError, FileNotFoundError) as err:
            return _fail(str(err))
    if harness:
        try:
            results = run_harness_tasks(model, tokenizer, harness, args.limit, args.batch_size, args.num_fewshot,
                                        args.apply_chat_template)
        except Exception as err:  # the harness fails in many ways offline (task data, registry); say it in a line
            return _fail(f"lm-eval tasks {harness} could not run ({type(err).__name__}: "
                         f"{str(err).splitlines()[0] if str(err) else 'no details'}); they download their data "
                         "sets from the Hub")
        for task, metrics in results.items():
            print(task, {k: v for k, v in metrics.items() if k != "alias"})
    return 0


if __name__ == "__main__":
    sys.exit(main())
