"""Generator for notebooks/09_reasoning_distillation.ipynb.

Run: python notebooks/_src/nb09_reasoning_distillation.py
"""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 09 - Reasoning distillation: sequence-level and logit-level

> **Run time**: about 4-5 minutes on the project's 2-core CPU (261 s on an AMD EPYC on 2026-12-04; a missing
> lesson-07 model adds about 40 s). **Uses**:
> lesson 07's SFT model `artifacts/sft/` (built on the committed `data/tiny-doge/`; a missing one is trained
> first, in about a minute) and the student's own pretrained base, the committed `data/tiny-doge-student/`.

Doge-160M-Reason-Distill is a small model that thinks before it answers. Its card says how it was made:

> We build the Doge-Reason-Distill by SFT on Reason-Distill. (2 epochs, length 4096, LR 4e-4, bfloat16)

Reason-Distill holds *traces written by larger teacher models*: a thought section between
`<|begin_of_thought|>` and `<|end_of_thought|>`, then a solution between `<|begin_of_solution|>` and
`<|end_of_solution|>`, under a fixed system prompt. Training a student on a teacher's *outputs* is
**sequence-level distillation**: plain SFT (lesson 07) on the traces.

Going beyond the card, **logit-level distillation** trains the student on the teacher's *whole next-token
distribution* at every position, not just the one token the teacher wrote - with the generalized Jensen-Shannon
divergence of GKD, whose beta slides between forward KL (beta = 0) and reverse KL (beta = 1).

Plan: lesson 07's chat model as the teacher, and a student with a third of its parameters, pretrained on its own
with lesson 06's recipe; the student several ways - without
distillation, sequence-level on the dataset's traces and on the teacher's own, logit-level with beta 0 and
1 (the two ends of GKD's divergence) - and their accuracy on held-out reasoning
questions (the cards' "3.9 or 3.11" decimal comparison among them). Last, the card's own usage snippet runs on
the distilled student.
"""),
code("""
import copy
import math
import time
import warnings

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers

from doge_from_scratch import DogeForCausalLM, distill, pretrain, sft
from doge_from_scratch.data import REASONING_SYSTEM_PROMPT, load_lesson_dataset
from doge_from_scratch.tasks import check_answer
from doge_from_scratch.paths import ARTIFACTS_DIR
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)
%matplotlib inline

sft_folder = sft.ensure_sft()            # lesson 07's chat model (trained here first if it is missing)
tokenizer = load_tokenizer(sft_folder)
chat_model = DogeForCausalLM.from_pretrained(sft_folder).eval()
train_rows = list(load_lesson_dataset("reasoning", "train"))
test_rows = list(load_lesson_dataset("reasoning", "test"))
print(train_rows[0]["messages"][1]["content"])
print(train_rows[0]["messages"][2]["content"])
"""),
md("""
## 1. The data: the card's system prompt, thought and solution

Every row has the card's system prompt (quoted verbatim), a question and a trace. The tags are single tokens of
our tokenizer, so the model can learn to emit them. As in SFT, only the assistant's trace is trained.
"""),
code("""
# NBVAL_CHECK_OUTPUT
ids, mask = sft.render_chat(tokenizer, train_rows[0]["messages"])
print(f"{len(ids)} tokens, {sum(mask)} trained (the trace); the system prompt alone is "
      f"{len(tokenizer.encode(REASONING_SYSTEM_PROMPT, add_special_tokens=False))} tokens")
tags = ["<|begin_of_thought|>", "<|end_of_thought|>", "<|begin_of_solution|>", "<|end_of_solution|>"]
print({t: tokenizer.convert_tokens_to_ids(t) for t in tags})
print("tasks in the held-out questions:", sorted({r["task"] for r in test_rows}))
"""),
md("""
## 2. Teacher and student

- **Teacher**: lesson 07's chat model (4 layers, hidden 192), trained here on the traces - the "larger model"
  that knows how to reason in this format.
- **Student**: a Doge with a third of the teacher's parameters: the same 4 layers at half the width (hidden 96,
  3 heads of 32, MLP 192), pretrained from scratch with lesson 06's recipe on the same corpus
  (`pretrain.ensure_student_base()`, committed as `data/tiny-doge-student`; rerunning it takes about 4-5 minutes).
  Same tokenizer, same vocabulary, which logit-level distillation needs, since it compares distributions over the
  same tokens. It has never seen a chat: everything it knows about the format comes from the distillation below.
- **Why not cut the teacher down?** Earlier versions of this lesson made the student by dropping one layer of the
  chat model (the layer-dropping initialisation of DistilBERT). The teacher then had only 1.25x the student's
  parameters, not 3x (at this vocabulary the embedding is a large share of them), and that student did worse than
  the own-base student below: 18% of the held-out questions right after SFT on the traces, against 32% here. Cut to
  2 of its 4 layers, it answered nothing right (on an earlier base model).
"""),
code("""
student_base = pretrain.ensure_student_base()   # data/tiny-doge-student (pretrained again only if it is missing)


def small_student() -> DogeForCausalLM:
    \"\"\"A fresh copy of the pretrained student: every student below starts from these same weights.\"\"\"
    return DogeForCausalLM.from_pretrained(student_base).eval()


def count(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


student_init = small_student()
for name, m in (("teacher", chat_model), ("student", student_init)):
    c = m.config
    print(f"{name}: {count(m) / 1e6:.2f}M parameters ({c.num_hidden_layers} layers, hidden {c.hidden_size}, "
          f"{c.num_attention_heads} heads of {c.head_dim}, MLP {c.intermediate_size}, vocabulary {c.vocab_size})")
print(f"the teacher has {count(chat_model) / count(student_init):.1f}x the student's parameters")

# The teacher gets 3 epochs at a gentle LR (measured: 3e-3 for 2 epochs taught the format but fewer answers);
# every student 2 epochs (the card's count) with the same steps, so the comparison below is between targets
# (trace tokens vs teacher distributions), not training budgets.
teacher_settings = sft.SFTSettings(lr=1e-3, epochs=3, max_length=1024, rows_per_micro_batch=2, accumulation=1)
settings = distill.REASON_DISTILL_SETTINGS   # lr 3e-3, 2 epochs, rows of up to 1024 tokens, 2 per step
teacher = copy.deepcopy(chat_model)
t0 = time.time()
teacher_log = sft.train_sft(teacher, tokenizer, train_rows, teacher_settings, progress=False)
teacher.eval()
print(f"teacher trained on the traces: {len(teacher_log)} steps, {time.time() - t0:.0f}s, "
      f"loss {teacher_log[0].loss:.2f} -> {teacher_log[-1].loss:.2f}")
"""),
md("""
## 3. Sequence-level distillation (the card's way)

Sequence-level distillation is plain SFT (lesson 07's loop) of the student on traces a teacher wrote. The card's
student learnt from a trace set that larger models had written. Our `data/reasoning` plays that part, so the
first student learns from the dataset's traces.
"""),
code("""
def sft_student(rows: list[dict], what: str) -> tuple[DogeForCausalLM, list]:
    \"\"\"A fresh student after the lesson's SFT on ``rows``: the same settings for every sequence-level student.\"\"\"
    t0 = time.time()
    student = small_student()
    log = sft.train_sft(student, tokenizer, rows, settings, progress=False)
    print(f"SFT on {what}: {len(log)} steps, {time.time() - t0:.0f}s, loss {log[0].loss:.2f} -> {log[-1].loss:.2f}")
    return student.eval(), log


data_student, data_log = sft_student(train_rows, "the dataset's traces")
"""),
md("""
The second student learns from *our* teacher. The teacher answers each of the 400 training questions greedily,
and only its well-formed, right answers are kept (`distill.teacher_traces`): curated trace sets drop wrong
traces the same way. The student then gets the same SFT on those traces.
"""),
code("""
from collections import Counter

t0 = time.time()
traced_rows, teacher_replies = distill.teacher_traces(teacher, tokenizer, train_rows)
print(f"the teacher's traces: {len(traced_rows)} of {len(train_rows)} kept (well formed and right), "
      f"{time.time() - t0:.0f}s")
print("kept per task:", {t: f"{n}/{Counter(r['task'] for r in train_rows)[t]}"
                         for t, n in sorted(Counter(r["task"] for r in traced_rows).items())})
print(traced_rows[0]["messages"][-2]["content"], "->", repr(traced_rows[0]["messages"][-1]["content"][:200]))
traced_student, _ = sft_student(traced_rows, "the teacher's traces")
"""),
md("""
## 4. Logit-level distillation: the generalized Jensen-Shannon divergence

At every trained position the teacher gives a distribution p_t over the vocabulary, the student p_s. With the
mixture m = (1 - beta) p_s + beta p_t:

JSD_beta = beta KL(p_t || m) + (1 - beta) KL(p_s || m)

For 0 < beta < 1 this is bounded (by log 2 at beta = 0.5, the usual Jensen-Shannon divergence) and symmetric at
beta = 0.5. Its end points are defined as the two KL divergences: **beta = 0: forward KL(p_t || p_s)** - the
student must put mass wherever the teacher does (mass covering, the classic distillation loss);
**beta = 1: reverse KL(p_s || p_t)** - the student is punished for mass where the teacher has none (mode
seeking). The divergences are summed over the vocabulary, then over the trace's tokens, and divided by the
number of trace tokens of the optimizer step, like the SFT loss.
"""),
code("""
def kl(log_p, log_q):
    return (log_p.exp() * (log_p - log_q)).sum(-1)

def jsd(student_logits, teacher_logits, beta):
    log_s, log_t = F.log_softmax(student_logits.float(), -1), F.log_softmax(teacher_logits.float(), -1)
    if beta == 0:
        return kl(log_t, log_s)
    if beta == 1:
        return kl(log_s, log_t)
    log_m = torch.logaddexp(log_s + math.log(1 - beta), log_t + math.log(beta))
    return beta * kl(log_t, log_m) + (1 - beta) * kl(log_s, log_m)

# one position, two distributions over 3 tokens: how the choice of beta weighs a student that misses a mode
teacher_p = torch.tensor([0.5, 0.45, 0.05]).log()
students = {"covers both modes": [0.4, 0.4, 0.2], "picks one mode": [0.9, 0.05, 0.05]}
print(f"{'student':20}" + "".join(f"{f'beta={b}':>11}" for b in (0, 0.5, 1)))
for name, p in students.items():
    print(f"{name:20}" + "".join(f"{jsd(torch.tensor(p).log(), teacher_p, b).item():>11.3f}" for b in (0, 0.5, 1)))
"""),
md("""
Forward KL (beta = 0) punishes the student that drops the teacher's second mode much more than the one that
spreads out; reverse KL (beta = 1) is the other way round. TRL computes the same divergence in
`GKDTrainer.generalized_jsd_loss`; our `distill.jsd_loss` must give the same number on the same logits (also a
unit test, with gradients and temperatures):
"""),
code("""
from trl.experimental.gkd import GKDTrainer

batch = sft.collate_packed(sft.pack(sft.sft_examples(tokenizer, train_rows[:4]), 1024), tokenizer.pad_token_id)
with torch.no_grad():
    s_logits = student_init(**sft.model_inputs(batch)).logits
    t_logits = teacher(**sft.model_inputs(batch)).logits
labels = batch["labels"]
shifted = (s_logits[:, :-1], t_logits[:, :-1], labels[:, 1:])
print(f"{'beta':>6}{'TRL':>14}{'ours':>14}{'notebook':>14}{'rel diff':>10}")
rel_diffs = []
for beta in (0.0, 0.5, 1.0):
    ref = GKDTrainer.generalized_jsd_loss(*shifted[:2], labels=shifted[2], beta=beta).item()
    total, n = distill.jsd_loss(s_logits, t_logits, labels, beta, shift=True)
    by_hand = jsd(shifted[0], shifted[1], beta)[shifted[2] != -100].mean().item()
    rel_diffs.append(abs(total.item() / n.item() - ref) / ref)
    print(f"{beta:>6}{ref:>14.8f}{total.item() / n.item():>14.8f}{by_hand:>14.8f}{rel_diffs[-1]:>10.1e}")
"""),
code("""
# NBVAL_CHECK_OUTPUT
print("our JSD equals TRL's generalized_jsd_loss to 1e-6:", max(rel_diffs) < 1e-6)
"""),
md("""
Now train one student per end of the divergence, forward KL (beta = 0) and reverse KL (beta = 1), from the same
initialisation, on the same batches as the student trained on the dataset's traces - only the target differs: the
teacher's distribution instead of the trace's token. (A third student at beta = 0.5 would cost another 50-100 s
and, in the runs before this lesson dropped it, learnt as slowly as beta = 1: no well-formed reply in free
generation. Exercise: train it with `distill.DistillSettings(beta=0.5, ...)` and see.)
"""),
code("""
logit_students, logit_logs = {}, {}
for beta in (0.0, 1.0):
    t0 = time.time()
    student = small_student()
    distill_settings = distill.DistillSettings(lr=settings.lr, beta=beta, epochs=settings.epochs,
                                               max_length=settings.max_length,
                                               rows_per_micro_batch=settings.rows_per_micro_batch,
                                               accumulation=settings.accumulation)
    logit_logs[beta] = distill.train_logit_distill(student, teacher, tokenizer, train_rows, distill_settings,
                                                   progress=False)
    logit_students[beta] = student.eval()
    print(f"logit-level beta={beta}: {time.time() - t0:.0f}s, JSD {logit_logs[beta][0].loss:.3f} -> "
          f"{logit_logs[beta][-1].loss:.3f}")
"""),
md("""
## 5. Measured effect: accuracy on held-out reasoning questions

First, teacher-forced on all held-out questions (cheap and deterministic): given the reference trace so far, how
well does each model predict the next token? **nll** per trace token, **token accuracy**, and **solution exact**:
the share of questions whose whole solution section (from `<|begin_of_solution|>` to the end of the turn) the
model predicts token for token - the answer, given the reference thought.
"""),
code("""
t0 = time.time()
models = {"teacher (1.58M)": teacher, "student, no distillation": student_init,
          "student, dataset traces": data_student, "student, teacher's traces": traced_student,
          **{f"student, logit-level beta={b}": m for b, m in logit_students.items()}}
forced = {name: distill.trace_metrics(m, tokenizer, test_rows) for name, m in models.items()}
print(f"({len(test_rows)} held-out questions, {time.time() - t0:.0f}s)")
print(f"{'model':32}{'nll':>8}{'token acc':>11}{'solution exact':>16}")
for name, r in forced.items():
    print(f"{name:32}{r['nll']:>8.3f}{r['token_accuracy']:>11.1%}{r['solution_exact']:>16.1%}")
"""),
md("""
Then free generation, the real test: each model answers 240 distinct held-out questions (`evaluate.held_out_reasoning`:
the reasoning test split's problems, never seen in training; the committed test file is the first 80 of them)
under the card's system prompt, greedy, at most 110 new tokens (the longest trace has 109). Two scores from the
tasks' checker: **answer + format** (`check_answer` on the reasoning record: the reply must have a thought
section and a solution section, and the solution must be right) and **answer only** (the task's checker on the
whole reply, whatever its shape); and **format** alone (a thought section, then a solution section).
"""),
code("""
from doge_from_scratch.evaluate import accuracy_table, chance_of, held_out_reasoning, wilson_interval
from doge_from_scratch.generation import chat_replies
from doge_from_scratch.tasks import is_well_formed_reasoning, prompt_and_reference

questions = held_out_reasoning(240)

def score(model):
    strict, lenient, formed, per_task = [], [], [], {}
    # 8 prompts per left-padded batch: each row decodes as if alone, about 2.5x faster than one at a time here
    replies = chat_replies(model, tokenizer, [prompt_and_reference(row)[0] for row in questions],
                           max_new_tokens=110, batch_size=8)
    for row, reply in zip(questions, replies):
        strict.append(check_answer(row, reply))
        lenient.append(check_answer({"task": row["task"], "answer": row["answer"]}, reply))
        formed.append(is_well_formed_reasoning(reply))
        per_task.setdefault(row["task"], []).append(strict[-1])
    def mean(xs: list) -> float:
        return sum(xs) / len(xs)

    return {"answer+format": mean(strict), "answer only": mean(lenient), "format": mean(formed),
            **{t: mean(v) for t, v in sorted(per_task.items())},
            "_strict": {"correct": strict, "tasks": [row["task"] for row in questions],
                        "chance": [chance_of(row) for row in questions]}}

t0 = time.time()
results = {name: score(m) for name, m in models.items()}
columns = [c for c in next(iter(results.values())) if not c.startswith("_")]
print(f"({time.time() - t0:.0f}s)")
print(f"{'model':32}" + "".join(f"{c[:16]:>17}" for c in columns))
for name, r in results.items():
    print(f"{name:32}" + "".join(f"{r[c]:>17.0%}" for c in columns))
short = {"teacher (1.58M)": "teacher", "student, no distillation": "no distill",
         "student, dataset traces": "dataset", "student, teacher's traces": "teacher's",
         "student, logit-level beta=0.0": "beta=0", "student, logit-level beta=1.0": "beta=1"}
print("\\nanswer + format, with 95% intervals and the chance of a format-aware guess:")
print(accuracy_table({short.get(n, n): r["_strict"] for n, r in results.items()}))
"""),
code("""
names = [n for n in results if n.startswith("student")]
x = torch.arange(len(names))
fig, ax = plt.subplots(1, 2, figsize=(13, 3.8))
ax[0].bar(x - 0.2, [forced[n]["solution_exact"] for n in names], 0.4, label="solution exact (teacher-forced)")
ax[0].bar(x + 0.2, [results[n]["answer+format"] for n in names], 0.4, label="answer + format (generated)")
ax[0].axhline(forced["teacher (1.58M)"]["solution_exact"], color="k", ls="--", lw=1, label="teacher, solution exact")
ax[0].set_ylabel("held-out accuracy")
ax[0].set_ylim(0, 1)
ax[0].legend(fontsize=8)
ax[1].bar(x, [forced[n]["nll"] for n in names], 0.5, color="tab:gray")
ax[1].axhline(forced["teacher (1.58M)"]["nll"], color="k", ls="--", lw=1, label="teacher")
ax[1].set_ylabel("held-out NLL per trace token")
ax[1].legend(fontsize=8)
for a in ax:
    a.set_xticks(x, [n.replace("student, ", "") for n in names], rotation=15)
fig.suptitle("0.47M-parameter students on held-out reasoning questions")
plt.tight_layout()
plt.show()
"""),
md("""
What the tables say (the committed run; the numbers above are the measurement):

- **Teacher-forced, distillation works and is large.** Given the reference thought, the undistilled student
  finishes no solution correctly (0%). The student trained on the dataset's traces gets 69%, the forward-KL
  (beta = 0) student 66%, the teacher 76%: the student a third the teacher's size comes within 7-10 points of it
  here. beta = 1 learns far more slowly (the mode-seeking reverse KL gives small gradients where the student puts
  little mass) and does not yet write the format. The student of the teacher's own traces gets 52%: it saw 291
  traces, not 400, and only 5 of them additions.
- **Free generation, every student that learnt the format beats the undistilled one.** On 240 held-out questions the
  undistilled student, which has never seen a chat, is right on none (interval up to 1.6%; it does answer in plain
  text, "The bigger number is 13.63.", which the lenient column counts). The dataset-trace student is right on 32.5%
  [26.9, 38.7], the teacher's-trace student on 31.7% [26.1, 37.8], the forward-KL student on 24.6% [19.6, 30.4]:
  each interval clear of the undistilled one and of the whole set's chance level, 18% (a format-aware guess: one of
  the two numbers, a known capital, an ordering of the digits). Most of that is reversals (33-57% against a 9%
  chance) and, for the dataset-trace student, additions (9.3% [4.6, 18.0] against 0.5%). Their comparisons sit at
  about the 50% of naming one of the two numbers.
- **The teacher is right on 46%**: reversals 97%, comparisons 58%, additions and capitals at chance. No student
  reaches it; the teacher's traces do not close the gap (a student that reverses a list half the time does not
  learn the rest from 100 right reversal traces in two epochs).
- **Against the students of earlier versions of this lesson** (the chat model with its last layer dropped, 1.26M
  parameters, the same settings and questions): 18.3% (dataset traces), 17.5% (teacher's traces), 22.9%
  (beta = 0). The smaller student with its own pretraining does better on all three. A reason visible in the
  tables: the cut model had lost the layer that reverses a list (11-21% on reversals), while this one has all of
  its layers, only narrower.
"""),
md("""
## 6. The card's usage snippet, on the distilled student

The card loads `SmallDoge/Doge-160M-Reason-Distill` with `AutoModelForCausalLM` and generates with sampling
(temperature 0.8, top-p 0.9) and a `TextStreamer`. We save the student trained on the dataset's traces, the
card's route, like a Hub folder (lesson 10 starts from it) and run the snippet against it - with our
`DogeForCausalLM.from_pretrained` in place of `AutoModelForCausalLM` and our own `generate` (lesson 05). The
snippet calls `apply_chat_template` without `add_generation_prompt=True`, so its prompt ends after the user's turn,
with no assistant header, which no lesson trains on. In the committed run the sampled reply names the right
number, 3.9, but opens with a stray `<|end_of_solution|>` and skips its thought. With the header added and the same
seed (measured, not run here) the student writes the whole trace and miscopies a number on the way: "Write both
with two decimal places: 3.90 and 3.11 ... So 3.91 is bigger than 3.2", then answers 3.91. Lesson 10 trains on
exactly this kind of question.
"""),
code("""
student_folder = sft.save_stage(data_student, tokenizer, ARTIFACTS_DIR / "reason_distill", data_log, settings)

from transformers import AutoTokenizer, GenerationConfig, TextStreamer

tokenizer = AutoTokenizer.from_pretrained(str(student_folder))
model = DogeForCausalLM.from_pretrained(student_folder)

generation_config = GenerationConfig(
      max_new_tokens=100,
      use_cache=True,
      do_sample=True,
      temperature=0.8,
      top_p=0.9,
      repetition_penalty=1.0
)
steamer = TextStreamer(
      tokenizer=tokenizer,
      skip_prompt=True
)

system_prompt = REASONING_SYSTEM_PROMPT    # the card's text, verbatim (see doge_from_scratch.data)
prompt = "Which number is bigger, 3.9 or 3.11?"
conversation = [
    {"role": "system", "content": system_prompt},
    {"role": "user", "content": prompt}
]
inputs = tokenizer.apply_chat_template(
    conversation=conversation,
    tokenize=True,
    return_tensors="pt",
    return_dict=False,
)

torch.manual_seed(0)
outputs = model.generate(
    inputs,
    tokenizer=tokenizer,
    generation_config=generation_config,
    streamer=steamer
)
"""),
md("""
## 7. Check against the package
"""),
code("""
# NBVAL_CHECK_OUTPUT
with torch.no_grad():
    for beta in (0.0, 0.3, 0.5, 1.0):
        assert torch.allclose(distill.generalized_jsd(s_logits, t_logits, beta), jsd(s_logits, t_logits, beta),
                              rtol=1e-5, atol=1e-7)
assert count(teacher) >= 3 * count(student_init)   # issue 13: a teacher with at least 3x the student's parameters
assert all(getattr(student_init.config, k) == v for k, v in pretrain.STUDENT_MODEL.items())
best_logit = min(forced[f"student, logit-level beta={b}"]["nll"] for b in logit_students)
assert forced["student, teacher's traces"]["nll"] < forced["student, no distillation"]["nll"]
assert best_logit < forced["student, no distillation"]["nll"]
best_exact = max(forced[f"student, logit-level beta={b}"]["solution_exact"] for b in logit_students)
assert (min(forced["student, teacher's traces"]["solution_exact"], best_exact)
        > forced["student, no distillation"]["solution_exact"])

def interval(name: str) -> tuple[float, float]:
    correct = results[name]["_strict"]["correct"]
    return wilson_interval(sum(correct), len(correct))

# free generation: the 95% intervals of both kinds of distillation clear the undistilled student's
best_logit_name = max((f"student, logit-level beta={b}" for b in logit_students), key=lambda n: interval(n)[0])
for name in ("student, dataset traces", best_logit_name):
    assert interval(name)[0] > interval("student, no distillation")[1], name
print("doge_from_scratch.distill matches the notebook; both distillations beat the undistilled student, "
      "teacher-forced and in free generation")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/09_reasoning_distillation.ipynb`.

1. KL(p || q) from log-probabilities. Predict: is KL(p || q) equal to KL(q || p)?
2. The generalized Jensen-Shannon divergence, with its two limits beta = 0 and beta = 1.
"""),
code("""
from doge_from_scratch.exercises import check_generalized_jsd, check_kl


def kl(log_p, log_q):
    \"\"\"kl(log_p, log_q) -> [...]: KL(p || q) = sum_v p (log p - log q) over the last axis, from log-probabilities
    (distill._kl).\"\"\"
    raise NotImplementedError  # your code here


check_kl(kl)
"""),
code("""
def jsd(student_logits, teacher_logits, beta):
    \"\"\"jsd(student_logits, teacher_logits, beta) -> [...]: with m = (1 - beta) p_s + beta p_t, beta KL(p_t || m)
    + (1 - beta) KL(p_s || m); beta = 0 is KL(p_t || p_s), beta = 1 KL(p_s || p_t) (distill.generalized_jsd,
    TRL's GKD loss).\"\"\"
    raise NotImplementedError  # your code here


check_generalized_jsd(jsd)
"""),
md("""
## Further reading

- Agarwal et al., *On-Policy Distillation of Language Models: Learning from Self-Generated Mistakes* (GKD),
  [arXiv:2306.13649](https://arxiv.org/abs/2306.13649)
- Kim and Rush, *Sequence-Level Knowledge Distillation*, [arXiv:1606.07947](https://arxiv.org/abs/1606.07947)
- Model card: [SmallDoge/Doge-160M-Reason-Distill](https://huggingface.co/SmallDoge/Doge-160M-Reason-Distill)
  (its system prompt and thought / solution format)
- Checked against: trl `GKDTrainer.generalized_jsd_loss`; our `doge_from_scratch.distill`
"""),
]

if __name__ == "__main__":
    print(write_notebook("09_reasoning_distillation.ipynb", cells))
