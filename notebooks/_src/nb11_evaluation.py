"""Generator for notebooks/11_evaluation.ipynb (run: cd notebooks/_src && python nb11_evaluation.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 11 - Evaluation: the model cards' benchmark method, equal to lm-evaluation-harness

> **Run time**: about 1 minute on the project's 2-core CPU (40 s on an AMD EPYC on 2026-12-04). **Uses**: the committed
> `data/tiny-doge/` and the models of lessons 07-10 under `artifacts/` (`sft`, `dpo`, `reason_distill`, `grpo`).
> Opened first, it trains the missing ones with their lessons' recipes (about 10 more minutes).

Every Doge card ends with a table like this one (Doge-*-Instruct card):

| Model | IFEval (Prompt Strict Acc) | MMLU | BBH | ARC | PIQA | HellaSwag |
|---|---|---|---|---|---|---|
| Doge-20M-Instruct | 7.3 | 26.3 | 18.3 | 29.2 | 57.8 | 27.8 |
| Doge-60M-Instruct | 7.4 | 27.5 | 27.7 | 37.5 | 61.4 | 32.1 |

and the small-doge repository scores every base, instruct and reasoning model with an evaluation harness
(lm-evaluation-harness, "lm-eval"). Every lesson so far had its own checker. Here we build the harness's scoring
from scratch and check it against the real one:

- **multiple choice by log-likelihood** (ARC, PIQA, HellaSwag, MMLU): nothing is generated. Each answer choice is
  scored by the log-probability the model gives it after the question, and the best-scored choice is the model's
  answer. `acc` takes the raw score, `acc_norm` the score per character;
- **few-shot prompts** (MMLU is 5-shot): solved examples before the question;
- **generation with verifiable answers**: exact match of the short answer, and IFEval's checkable instructions
  ("answer in at most N words", "end with ...", "use no commas");
- **standard errors**, as the harness prints them beside every score.

Then a **report card**: every stage of the series (pretrained, SFT, DPO, the distilled student, GRPO) on every
task, beside the card's table.

The real benchmarks (ARC, PIQA, ...) are about science questions and everyday physics, which a model trained for
minutes on our lesson data cannot know. So the project ships small benchmark files *in the formats of the real
ones* about what the lesson models were taught - additions, the "3.9 or 3.11" comparison, reversing digits,
capitals - with held-out items only (`doge_from_scratch/benchmarks.py` makes them).
"""),
code(r"""
import os

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import json
import math
import re
import tempfile
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import transformers

from doge_from_scratch import DogeForCausalLM, benchmarks, evaluate
from doge_from_scratch.tasks import split_of
from doge_from_scratch.dpo import ensure_dpo
from doge_from_scratch.grpo import ensure_grpo, ensure_reason_distill
from doge_from_scratch.paths import PROJECT_ROOT
from doge_from_scratch.pretrain import ensure_pretrained
from doge_from_scratch.sft import ensure_sft
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore")
%matplotlib inline

# Each stage's ensure_* function returns its folder, training it first with its lesson's recipe if it is missing.
STAGES = {
    "pretrained (06)": Path(ensure_pretrained(progress=False)),   # data/tiny-doge: lesson 06's recipe, 1400 steps
    "SFT (07)": Path(ensure_sft(progress=False)),
    "DPO (08)": Path(ensure_dpo(progress=False)),
    "reason-distill student (09)": Path(ensure_reason_distill(progress=False)),
    "GRPO (10)": Path(ensure_grpo(progress=False)),
}
REASONING = {"reason-distill student (09)", "GRPO (10)"}   # answer in thought/solution sections
for name, folder in STAGES.items():
    print(f"{name:28s} {folder.relative_to(PROJECT_ROOT)}")

tokenizer = load_tokenizer(STAGES["pretrained (06)"])
base = DogeForCausalLM.from_pretrained(STAGES["pretrained (06)"]).eval()
"""),
md("""
## 1. The benchmark files

One file per format, each row shaped like a row of the real data set on the Hub (`allenai/ai2_arc`,
`piqa`, `Rowan/hellaswag`, `cais/mmlu`, `google/IFEval`), plus a short-answer set for exact match. Every scored
item's problem is in the *test* split of the lesson data, so its question never appears in a training file
(`tests/test_evaluate.py` checks the text too). Capitals are the exception that proves the rule: the pretraining
corpus states every capital (it is knowledge, not a skill), so a capital question is held out as a question only.
"""),
code(r"""
# NBVAL_CHECK_OUTPUT
rows = {name: benchmarks.read_benchmark(name) for name in benchmarks.FILES}
for name, file_rows in rows.items():
    example = {k: v for k, v in file_rows[0].items() if k != "source_key"}
    print(f"{name} ({len(file_rows)} rows): {json.dumps(example)[:240]}")
scored = [r for name, rs in rows.items() if name != "mmlu_dev" for r in rs]
assert all(split_of(r["source_key"]) == "test" for r in scored)
print(f"\n{len(scored)} scored rows, every one a test-split problem")
"""),
md("""
## 2. The score of one choice: a log-likelihood

For a question (the *context*) and a choice (the *continuation*), the harness asks the model for

ll = sum over the continuation's tokens of log p(token | context, the continuation's earlier tokens)

in one forward pass over context + continuation (minus its last token, which predicts nothing we need).

The subtle part is where the context ends and the continuation starts *in tokens*. ARC's prompt is
`"Question: ...\\nAnswer:"` and each choice is `" " + text` (the target delimiter is a space). A byte-level BPE
glues a space to the word after it (`' Cairo'` is one token), so the harness (`LM._encode_pair`) moves any
trailing space of the context into the continuation, encodes context + continuation *as one string*, and
splits after as many tokens as the context alone has. Encoding the two halves separately could give tokens the
model never saw in training.
"""),
code(r"""
# NBVAL_CHECK_OUTPUT
def show(ids):
    return [tokenizer.decode([i]) for i in ids]

def split_like_the_harness(context, continuation):
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:   # "Answer: " + "85" -> "Answer:" + " 85"
        context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    context_ids = tokenizer.encode(context)
    return context_ids, whole[len(context_ids):]

context = "Question: What is the capital of Egypt?\nAnswer: "
print("separately:      ", show(tokenizer.encode(context)[-3:]), "+", show(tokenizer.encode("Cairo")))
ctx_ids, cont_ids = split_like_the_harness(context, "Cairo")
print("like the harness:", show(ctx_ids[-3:]), "+", show(cont_ids))
print("digits are single tokens here, spaces their own:", show(tokenizer.encode(" 118")))
"""),
code(r"""
@torch.no_grad()
def continuation_logprob(model, context, continuation):
    ctx_ids, cont_ids = split_like_the_harness(context, continuation)
    ids = torch.tensor([ctx_ids + cont_ids])[:, :-1]
    log_probs = torch.log_softmax(model(ids).logits.float(), dim=-1)[0]
    n = len(cont_ids)
    # position t predicts token t + 1: the last n positions predict the continuation
    return log_probs[-n:].gather(-1, torch.tensor(cont_ids)[:, None]).sum().item()

for city in ("Cairo", "Copenhagen", "Madrid"):
    print(f"log p(' {city}' | context) = {continuation_logprob(base, context, city):8.3f}")
"""),
md("""
## 3. acc and acc_norm

`acc` is right when the choice with the highest ll is the gold one. Longer choices pay for more tokens, so the
harness also reports `acc_norm`: the best ll **per character of the choice text** (`len(choice)`, the delimiter
not counted). Ties go to the first choice (`numpy.argmax`). The harness prints both and a card picks one; our
report card below shows `acc` for ARC, PIQA and MMLU and `acc_norm` for HellaSwag, whose endings differ most in
length (a common choice; the Doge cards do not say which they used).
"""),
code(r"""
def arc_question(row):
    labels = row["choices"]["label"]
    return f"Question: {row['question']}\nAnswer:", row["choices"]["text"], labels.index(row["answerKey"])

def argmax_first(values):
    return max(range(len(values)), key=lambda i: (values[i], -i))

def score_choices(model, context, choices, gold):
    lls = [continuation_logprob(model, context, " " + c) for c in choices]
    per_char = [ll / len(c) for ll, c in zip(lls, choices)]
    return lls, float(argmax_first(lls) == gold), float(argmax_first(per_char) == gold)

question, choices, gold = arc_question(rows["arc_test"][2])
lls, acc, acc_norm = score_choices(base, question, choices, gold)
print(question)
for i, (c, ll) in enumerate(zip(choices, lls)):
    print(f"  {'*' if i == gold else ' '} {c:12s} ll {ll:8.3f}   chars {len(c):2d}   ll/char {ll / len(c):7.3f}")
print(f"acc {acc:.0f}, acc_norm {acc_norm:.0f}")

scratch_arc = [score_choices(base, *arc_question(r)) for r in rows["arc_test"]]
scratch_acc = sum(s[1] for s in scratch_arc) / len(scratch_arc)
scratch_acc_norm = sum(s[2] for s in scratch_arc) / len(scratch_arc)
print(f"\nARC-style file, pretrained model: acc {scratch_acc:.3f}, acc_norm {scratch_acc_norm:.3f}")
"""),
md("""
## 4. Few-shot prompts

MMLU is reported 5-shot: five solved examples of the same subject come before the question. The harness's MMLU
takes the *first* five rows of the subject's dev split (its `first_n` sampler), after a one-line description that
ends in a blank line; each example is its question, the target delimiter, its answer letter and a blank line.
The choices are in the prompt and the continuations are just the letters `" A"` ... `" D"`, so a model must
have learned the multiple-choice *format*, not only the facts - a reason small models sit near 25% on MMLU.
"""),
code(r"""
# NBVAL_CHECK_OUTPUT
def mmlu_question(row):
    options = "".join(f"\n{letter}. {text}" for letter, text in zip("ABCD", row["choices"]))
    return f"{row['question'].strip()}{options}\nAnswer:"

def mmlu_prompt(row, n_shot=5):
    shots = [r for r in rows["mmlu_dev"] if r["subject"] == row["subject"]][:n_shot]
    subject = row["subject"].replace("_", " ")
    description = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    examples = "".join(mmlu_question(s) + " " + "ABCD"[s["answer"]] + "\n\n" for s in shots)
    return description + examples + mmlu_question(row)

print(mmlu_prompt(rows["mmlu_test"][0], n_shot=2))
package_item = evaluate.multiple_choice_items(evaluate.mmlu_doc, rows["mmlu_test"][:1], rows["mmlu_dev"], 5,
                                              lambda r: evaluate.mmlu_description(r["subject"]),
                                              lambda r: r["subject"])[0]
assert package_item.context == mmlu_prompt(rows["mmlu_test"][0])
"""),
md("""
## 5. Standard errors

The harness prints every score with `stderr`: the sample standard deviation of the per-item scores over sqrt(n)
(Bessel's n - 1). For a 0/1 score with mean p that is sqrt(p (1 - p) / (n - 1)). With 80 ARC-style items a score
of 30% carries a standard error of about 5 points, so two models 5 points apart are not told apart; the real ARC
test set has 2376 (easy) items, about 1 point.
"""),
code(r"""
def stderr(values):
    n, mean = len(values), sum(values) / len(values)
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n)

arc_accs = [s[1] for s in scratch_arc]
p, n = scratch_acc, len(arc_accs)
print(f"ARC-style acc {p:.3f} +- {stderr(arc_accs):.3f} (n = {n}); "
      f"sqrt(p(1-p)/(n-1)) = {math.sqrt(p * (1 - p) / (n - 1)):.3f}")
"""),
md("""
## 6. Generation with verifiable answers

Generated answers are judged by rules anyone can re-run. **Exact match**: the short answer after the reply's
last "is" or "=" ("The capital of Egypt is Cairo." -> "Cairo"), lower-cased, spaces collapsed, punctuation
trimmed at both ends, must equal the gold answer treated the same way. **IFEval-style instructions**: a reply
follows "answer in at most N words" when it has fewer than N + 1 words (IFEval counts runs of letters and digits
and only knows "less than" and "at least"), "end with the phrase P" when, trimmed and without a closing quote, it
ends with P (any case), and "use no commas" when it has none. *Strict* checks the reply as is; *loose* also
accepts it without its first or last line or without asterisks. The card's IFEval column is prompt-level strict:
a prompt counts only when every instruction in it is followed.

Replies are greedy chat replies (lesson 05's `chat_replies`), since IFEval prompts are instructions to a chat
model.
"""),
code(r"""
from doge_from_scratch.tasks import cut_at_end_of_turn
from doge_from_scratch.generation import chat_replies

sft_model = DogeForCausalLM.from_pretrained(STAGES["SFT (07)"]).eval()
ifeval_rows = rows["ifeval"][:6]
replies = [cut_at_end_of_turn(r) for r in chat_replies(
    sft_model, tokenizer, [[{"role": "user", "content": r["prompt"]}] for r in ifeval_rows], 48, 6)]

def follows(instruction, kwargs, reply):
    if instruction == "length_constraints:number_words":
        words = len(re.findall(r"\w+", reply))
        return words < kwargs["num_words"] if kwargs["relation"] == "less than" else words >= kwargs["num_words"]
    if instruction == "startend:end_checker":
        return reply.strip().strip('"').lower().endswith(kwargs["end_phrase"].strip().lower())
    return "," not in reply   # punctuation:no_comma

for row, reply in zip(ifeval_rows, replies):
    mine = [bool(reply.strip()) and follows(i, kw, reply) for i, kw in zip(row["instruction_id_list"], row["kwargs"])]
    assert mine == evaluate.instruction_results(row, reply)
    print(f"{row['prompt']!r}\n  -> {reply!r}\n  {dict(zip(row['instruction_id_list'], mine))}")
"""),
md("""
## 7. The same numbers as lm-evaluation-harness

Now the real harness (lm-eval 0.4.13, pinned) on our model. Its Hugging Face class `HFLM` accepts a model
*instance*: it wraps our `DogeForCausalLM` and our tokenizer as they are (it needs `config.model_type`, which
marks the model causal, `config.max_position_embeddings`, `.device` and a forward that returns `.logits`; ours
has all four). Only its generation path (IFEval, BBH, GSM8K) asks for more: it calls `generate` the transformers
way, with `max_length` and `stopping_criteria`, which our decoder does not take; `evaluate.harness_lm` is HFLM
with that one call translated (`tests/test_evaluate.py` checks it decodes exactly as our `generate` does).
Task YAMLs in the layout of its own `arc_easy` and `piqa` configs point at our local files. We ask for every
sample's log-likelihoods and compare them with our scorer's, item by item.
"""),
code(r"""
import contextlib
import io
import logging

import datasets
import lm_eval
from lm_eval.models.huggingface import HFLM
from lm_eval.tasks import TaskManager

logging.getLogger("lm_eval").setLevel(logging.ERROR)   # it warns that it was handed a model instance: on purpose
datasets.disable_progress_bars()

task_dir = Path(tempfile.mkdtemp())
yaml_common = ("dataset_path: json\noutput_type: multiple_choice\ntest_split: test\n"
               "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
               "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n")
(task_dir / "doge_arc_h.yaml").write_text(
    f"task: doge_arc_h\ndataset_kwargs:\n  data_files:\n    test: {benchmarks.benchmark_file('arc_test')}\n"
    f"  cache_dir: {task_dir / 'cache'}\n" + yaml_common +
    'doc_to_text: "Question: {{question}}\\nAnswer:"\ndoc_to_target: "{{choices.label.index(answerKey)}}"\n'
    'doc_to_choice: "{{choices.text}}"\n')
(task_dir / "doge_piqa_h.yaml").write_text(
    f"task: doge_piqa_h\ndataset_kwargs:\n  data_files:\n    test: {benchmarks.benchmark_file('piqa_validation')}\n"
    f"  cache_dir: {task_dir / 'cache'}\n" + yaml_common +
    'doc_to_text: "Question: {{goal}}\\nAnswer:"\ndoc_to_target: label\ndoc_to_choice: "{{[sol1, sol2]}}"\n')

lm = HFLM(pretrained=base, tokenizer=tokenizer, batch_size=16, device="cpu")
with contextlib.redirect_stderr(io.StringIO()):   # its progress bars
    harness = lm_eval.simple_evaluate(model=lm, tasks=["doge_arc_h", "doge_piqa_h"], log_samples=True,
                                      task_manager=TaskManager(include_path=str(task_dir), include_defaults=False))
ours = evaluate.evaluate(base, tokenizer, ["doge_arc", "doge_piqa"])
worst = 0.0
for h_name, o_name in (("doge_arc_h", "doge_arc"), ("doge_piqa_h", "doge_piqa")):
    samples = sorted(harness["samples"][h_name], key=lambda s: s["doc_id"])
    for sample, item in zip(samples, ours[o_name].items):
        worst = max(worst, max(abs(float(r[0][0]) - ll) for r, ll in zip(sample["resps"], item["lls"])))
        assert (sample["acc"], sample["acc_norm"]) == (item["acc"], item["acc_norm"])
    for metric in ("acc", "acc_norm"):
        value, err = ours[o_name].metrics[metric]
        h = harness["results"][h_name]
        print(f"{o_name:10s} {metric:8s} ours {value:.4f} +- {err:.4f}   lm-eval {h[metric + ',none']:.4f} "
              f"+- {h[metric + '_stderr,none']:.4f}")
        assert abs(value - h[metric + ",none"]) < 1e-12 and abs(err - h[metric + "_stderr,none"]) < 1e-12
print(f"largest per-choice log-likelihood difference, ours vs lm-eval: {worst:.2e}")
assert worst < 1e-5
"""),
md("""
The scores and their standard errors are equal, and every per-choice log-likelihood agrees to round-off (the two
sides batch the rows differently, which changes only the order of float32 sums). `tests/test_evaluate.py` runs the
same comparison on ARC-, PIQA-, HellaSwag- and 5-shot MMLU-style YAMLs, and checks our boundary split against
`HFLM._encode_pair` itself.

## 8. The report card

Every stage on every task, with the package (`doge_from_scratch.evaluate`): the table gives each score with its
standard error, the plot draws chance as a dashed line. IFEval has no chance level; a model that says little
passes "at most N words" and "no commas" for free, so its floor is not zero.

The reasoning models (lesson 09's student, lesson 10's GRPO policy) were trained to answer under the card's
system prompt, thought first, solution after. Their generation tasks get that system prompt, 160 new tokens,
and are scored on what follows `<|end_of_thought|>` - the harness's `think_end_token` rule - without the
solution tags. Multiple choice is the same plain-text prompt for every model, as in the harness.
"""),
code(r"""
results = {}
for name, folder in STAGES.items():
    model = DogeForCausalLM.from_pretrained(folder).eval()
    chat = evaluate.reasoning_format() if name in REASONING else evaluate.ChatFormat()
    results[name] = evaluate.evaluate(model, load_tokenizer(folder), chat=chat)

columns = [("doge_ifeval", "IFEval (prompt strict)"), ("doge_mmlu", "MMLU (5-shot)"), ("doge_arc", "ARC"),
           ("doge_piqa", "PIQA"), ("doge_hellaswag", "HellaSwag (acc_norm)"), ("doge_qa", "QA exact match")]
header = "| stage | " + " | ".join(title for _, title in columns) + " |"
lines = [header, "|---" * (len(columns) + 1) + "|"]
for name, tasks in results.items():
    cells = []
    for task, _ in columns:
        value, err = tasks[task].metrics[evaluate.HEADLINE[task]]
        cells.append(f"{100 * value:.1f} +- {100 * err:.1f}")
    lines.append(f"| {name} | " + " | ".join(cells) + " |")
first = next(iter(results.values()))
chance = [float("nan") if first[t].chance is None else first[t].chance for t, _ in columns]
lines.append("| chance | " + " | ".join("-" if math.isnan(c) else f"{100 * c:.1f}" for c in chance) + " |")
print("\n".join(lines))
# Where the ARC-style points come from (additions, capitals, reversals), and which choice wins a reversal by raw
# ll: the right list, the list echoed as given, the list with its last digit dropped (one token shorter), other.
def reversal_pick(row, item):
    texts, pick = row["choices"]["text"], argmax_first(item["lls"])
    if pick == item["gold"]:
        return "right"
    if texts[pick] == row["source_key"].split(":", 1)[1]:
        return "echo"
    return "dropped" if len(texts[pick]) < len(texts[item["gold"]]) else "other"

for name, tasks in results.items():
    by_kind, picks = {}, {}
    for row, item in zip(rows["arc_test"], tasks["doge_arc"].items):
        kind = row["source_key"].split(":")[0]
        by_kind.setdefault(kind, []).append((item["acc"], item["acc_norm"]))
        if kind == "reverse":
            picks[reversal_pick(row, item)] = picks.get(reversal_pick(row, item), 0) + 1
    summary = ", ".join(f"{k} {sum(a for a, _ in v):.0f}/{sum(b for _, b in v):.0f} of {len(v)}"
                        for k, v in sorted(by_kind.items()))
    print(f"{name:16s} ARC acc/acc_norm by kind: {summary}; reversals won by {dict(sorted(picks.items()))}")
"""),
md("""
How to read it. Scores below chance are possible and informative: a log-likelihood benchmark is only as fair as
its distractors. The breakdown above shows where the ARC-style reversals go: by raw ll the model mostly prefers a
choice that is *shorter* - the list with its last digit dropped costs one token fewer - or the list echoed as
given (copying the question is cheap). Dividing by length (`acc_norm`) is the harness's answer to the first
bias. The PIQA-style decimal comparisons are where the models of lessons 06-08 are far above chance. The
reasoning models are scored there on the plain prompt, without their system prompt: lesson 09's student is near
chance (within two standard errors of 50%), and lesson 10's model, whose cold start and GRPO trained on decimal
comparisons, is less than 3 standard errors above it. The IFEval-style
scores mostly measure length: the pretrained model rambles on and passes almost nothing, while short replies
without commas pass two of the three instruction kinds whatever they say, which is most of what the chat models
score. The end-phrase instruction, which no lesson data ever taught, is what would separate a model that follows
instructions. And with 60-100 items per file, the standard errors are 3-6 points: differences between stages
smaller than about twice that are noise.

The card's own table (the Doge-*-Instruct model card, real benchmarks, lm-eval), for the format:

| Model | IFEval (Prompt Strict Acc) | MMLU | BBH | ARC | PIQA | HellaSwag | tokens / s on i7-11 CPU |
|---|---|---|---|---|---|---|---|
| Doge-20M-Instruct | 7.3 | 26.3 | 18.3 | 29.2 | 57.8 | 27.8 | 142 |
| Doge-60M-Instruct | 7.4 | 27.5 | 27.7 | 37.5 | 61.4 | 32.1 | 62 |
| Doge-160M-Instruct | 16.8 | 29.7 | 29.1 | 42.8 | 64.1 | 37.1 | 28 |
| Doge-320M-Instruct | 28.5 | 30.3 | 31.9 | 51.7 | 71.0 | 50.6 | 16 |

It prints no standard errors. The real test sets are large (MMLU ~14k questions, HellaSwag ~10k, PIQA ~1.8k,
ARC-Easy ~2.4k), so most of these differences are beyond their standard error of 0.5-1 point - but MMLU's 26-30
for every size is within a few points of its 25% chance, which the card does not say. BBH (BIG-Bench Hard,
generated chain-of-thought answers scored by exact match) has no counterpart here.
"""),
code(r"""
card = {"Doge-20M-Instruct": [7.3, 26.3, 29.2, 57.8, 27.8], "Doge-60M-Instruct": [7.4, 27.5, 37.5, 61.4, 32.1],
        "Doge-160M-Instruct": [16.8, 29.7, 42.8, 64.1, 37.1], "Doge-320M-Instruct": [28.5, 30.3, 51.7, 71.0, 50.6]}
card_tasks, card_chance = ["IFEval", "MMLU", "ARC", "PIQA", "HellaSwag"], [float("nan"), 25, 25, 50, 25]

fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [6, 5]})
width = 0.8 / max(1, len(results))
for k, (name, tasks) in enumerate(results.items()):
    values = [100 * tasks[t].metrics[evaluate.HEADLINE[t]][0] for t, _ in columns]
    errors = [100 * tasks[t].metrics[evaluate.HEADLINE[t]][1] for t, _ in columns]
    left.bar([i + k * width for i in range(len(columns))], values, width, yerr=errors, capsize=2, label=name)
for i, c in enumerate(chance):
    if not math.isnan(c):
        left.hlines(100 * c, i - width / 2, i + 0.8 - width / 2, colors="k", linestyles="dashed")
left.set_xticks([i + 0.4 - width / 2 for i in range(len(columns))], [t for _, t in columns], rotation=20)
left.set_ylabel("score (%)")
left.set_ylim(0, 100)
left.legend(fontsize=8)
left.set_title("lesson models on the project's benchmark files (dashed: chance, bars: +- 1 stderr)")
width_c = 0.8 / len(card)
for k, (name, values) in enumerate(card.items()):
    right.bar([i + k * width_c for i in range(len(card_tasks))], values, width_c, label=name)
for i, c in enumerate(card_chance):
    if not math.isnan(c):
        right.hlines(c, i - width_c / 2, i + 0.8 - width_c / 2, colors="k", linestyles="dashed")
right.set_xticks([i + 0.4 - width_c / 2 for i in range(len(card_tasks))], card_tasks)
right.set_ylim(0, 100)
right.legend(fontsize=8)
right.set_title("the card's table (real benchmarks)")
plt.tight_layout()
plt.show()
"""),
md("""
## 9. Check against the package

The from-scratch pieces of this lesson against `doge_from_scratch.evaluate`: the ARC-style scores, the
standard error, the boundary split.
"""),
code(r"""
# NBVAL_CHECK_OUTPUT
package_arc = evaluate.evaluate(base, tokenizer, ["doge_arc"])["doge_arc"]
assert package_arc.metrics["acc"][0] == scratch_acc and package_arc.metrics["acc_norm"][0] == scratch_acc_norm
assert abs(package_arc.metrics["acc"][1] - stderr(arc_accs)) < 1e-12
for (lls, _, _), item in zip(scratch_arc, package_arc.items):
    assert max(abs(a - b) for a, b in zip(lls, item["lls"])) < 1e-4   # one row at a time vs padded batches
assert evaluate.encode_pair(tokenizer, context, "Cairo") == split_like_the_harness(context, "Cairo")
print("doge_from_scratch.evaluate gives the notebook's numbers, and lm-eval gives the same")
"""),md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/11_evaluation.ipynb`.

1. acc and acc_norm of one multiple-choice question (section 3). Predict which of `' a'` and `' a very long
   answer'` wins acc_norm at log-likelihoods -4 and -5.
2. The mean and its standard error as the harness reports them (section 5).
"""),
code("""
from doge_from_scratch.exercises import check_choice_metrics, check_mean_stderr


def metrics(lls, choices, gold):
    \"\"\"metrics(lls, choices, gold) -> {"acc": 0/1, "acc_norm": 0/1}: acc picks the largest log-likelihood,
    acc_norm the largest per CHARACTER of the choice text; ties go to the first (evaluate.choice_metrics).\"\"\"
    raise NotImplementedError  # your code here


check_choice_metrics(metrics)
"""),
code("""
def mean_and_stderr(values):
    \"\"\"mean_and_stderr(values) -> (mean, stderr): the standard error of the mean with the sample standard
    deviation (n - 1), as lm-evaluation-harness reports it (evaluate.mean_stderr).\"\"\"
    raise NotImplementedError  # your code here


check_mean_stderr(mean_and_stderr)
"""),
md("""
## Further reading

- Gao et al., *The Language Model Evaluation Harness* (EleutherAI, lm-evaluation-harness)
- Model card: [SmallDoge/Doge-60M-Instruct](https://huggingface.co/SmallDoge/Doge-60M-Instruct) (its
  evaluation table)
- Checked against: lm-evaluation-harness (`HFLM`, `acc` / `acc_norm`, `mean_stderr`); our
  `doge_from_scratch.evaluate`
"""),
]

if __name__ == "__main__":
    print(write_notebook("11_evaluation.ipynb", cells))
