"""Generator for notebooks/07_sft.ipynb (run: python notebooks/_src/nb07_sft.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 07 - Supervised fine-tuning: from a text predictor to a chat model

> **Run time**: about 80 s on the project's 2-core CPU (77 s on an AMD EPYC on 2026-12-04). **Uses**: the committed
> `data/tiny-doge/`, lesson 06's pretraining recipe run to its full 1400 steps.

The pretrained Doge of lesson 06 continues text. Doge-*-Instruct answer questions in turns. The model card says
how the first step was made:

> We build the Doge-Instruct by first SFT on SmolTalk and then DPO on UltraFeedback Binarized.
> SFT: smoltalk, 2 epochs, content length 2048, LR 8e-4 (20M) ... 2e-4 (320M), batch 0.25M tokens, bfloat16

and the training recipe (TRL's `SFTTrainer`) adds: **packing**, a **cosine schedule with a minimum LR ratio of
0.1** and warmup 0.1. This lesson builds each piece in plain PyTorch, on our SmolTalk stand-in (`data/chat`):

1. **Chat rendering** and **assistant-only labels**: which tokens the model is trained to write.
2. **Packing**: several conversations per row, positions restarting per conversation, no attention across
   them - and a proof that the packed loss is the unpacked loss.
3. **The loss**: summed token NLL divided by the trainable tokens of the *whole optimizer step*, gradient
   accumulation, the cosine-with-min-LR schedule.
4. **Training** the pretrained model, and a **measured effect** on held-out prompts (format and accuracy).
5. **Parity with TRL 1.16**: SFTTrainer on the same model, batches and settings logs the same loss and gradient
   norm - and what it took for our model to run inside TRL at all.
"""),
code("""
import copy
import json
import time

import matplotlib.pyplot as plt
import torch
import transformers

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.data import load_lesson_dataset
from doge_from_scratch.pretrain import ensure_pretrained
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
%matplotlib inline

base = ensure_pretrained()                 # data/tiny-doge: lesson 06's recipe, 1400 steps
tokenizer = load_tokenizer(base)
chat_train = list(load_lesson_dataset("chat", "train"))
chat_test = list(load_lesson_dataset("chat", "test"))
pretrained = DogeForCausalLM.from_pretrained(base).eval()
print(f"{sum(p.numel() for p in pretrained.parameters()) / 1e6:.2f}M parameters, "
      f"{len(chat_train)} training and {len(chat_test)} held-out conversations")
"""),
md("""
## 1. Chat rendering and assistant-only labels

A conversation becomes one token sequence in Doge's (Llama-3 style) format: one `<|begin_of_text|>`, then per
turn a header, the content and `<|end_of_text|>`. SFT trains the model to write the **assistant** turns only:
user turns are context, and learning to produce them would waste capacity (and teach the model to talk for the
user). So each token gets a label: its own id where the assistant wrote it - including the closing
`<|end_of_text|>`, which is how the model learns to *stop* - and `-100` ("ignore") everywhere else.

We render piece by piece. Each piece boundary is a special token or a line break, where byte-level BPE never
merges across, so the pieces tokenised separately give exactly the ids of the whole text.
"""),
code("""
IGNORE = -100

def render(messages):
    \"\"\"-> (ids, trained): trained[i] is 1 where the assistant wrote token i.\"\"\"
    def enc(text: str) -> list[int]:
        return tokenizer.encode(text, add_special_tokens=False)

    ids, trained = [tokenizer.bos_token_id], [0]
    for m in messages:
        header = enc(f"<|start_header_id|>{m['role']}<|end_header_id|>\\n")
        body = enc(m["content"]) + [tokenizer.eos_token_id]
        gap = enc("\\n\\n")
        ids += header + body + gap
        trained += [0] * len(header) + [int(m["role"] == "assistant")] * len(body) + [0] * len(gap)
    return ids, trained

def example(messages):
    ids, trained = render(messages)
    return {"input_ids": ids, "labels": [t if keep else IGNORE for t, keep in zip(ids, trained)]}

conversation = chat_train[3]["messages"]
ids, trained = render(conversation)
print("".join(f"[{tokenizer.decode([t])}]" if k else tokenizer.decode([t]) for t, k in zip(ids, trained)))
"""),
md("""
Above, the bracketed tokens are the ones with a label. The tokenizer's chat template marks the assistant turns
with `{% generation %}` blocks, so transformers can produce the same mask (TRL's `assistant_only_loss` relies on
it). Our rendering must agree with it on every conversation:
"""),
code("""
# NBVAL_CHECK_OUTPUT
mismatches = 0
for row in chat_train:
    ref = tokenizer.apply_chat_template(row["messages"], tokenize=True, return_dict=True,
                                        return_assistant_tokens_mask=True)
    mismatches += render(row["messages"]) != (list(ref["input_ids"]), list(ref["assistant_masks"]))
examples = [example(row["messages"]) for row in chat_train]
trainable = sum(sum(label != IGNORE for label in e["labels"]) for e in examples)
total = sum(len(e["input_ids"]) for e in examples)
print(f"conversations differing from apply_chat_template: {mismatches}")
print(f"tokens: {total}, with a label: {trainable} ({trainable / total:.0%})")
"""),
md("""
## 2. Packing

Conversations have very different lengths. Padding every row of a batch to the longest one wastes compute on
pad tokens; **packing** fills each row of `max_length` tokens with several whole conversations instead. We use
best-fit decreasing: longest conversations first, each into the fullest row that still has room.
"""),
code("""
MAX_LEN = 256

def pack(examples, max_length):
    rows, space = [], []
    for e in sorted(examples, key=lambda e: -len(e["input_ids"])):
        n = len(e["input_ids"])
        fits = [r for r in range(len(rows)) if space[r] >= n]
        if fits:
            r = min(fits, key=lambda r: space[r])
            rows[r].append(e)
            space[r] -= n
        else:
            rows.append([e])
            space.append(max_length - n)
    return rows

rows = pack(examples, MAX_LEN)
lengths = [len(e["input_ids"]) for e in examples]
print(f"{len(examples)} conversations ({min(lengths)}-{max(lengths)} tokens) -> {len(rows)} packed rows of "
      f"{MAX_LEN}; fill {total / (len(rows) * MAX_LEN):.1%}")
print(f"padding each batch of 8 to its longest instead: fill "
      f"{total / sum(8 * max(lengths[i:i + 8]) for i in range(0, len(lengths), 8)):.1%}")
"""),
md("""
A packed row must compute exactly what its conversations compute one by one. Two things make that so:

- **positions restart** at 0 for every conversation (RoPE sees the same positions as without packing);
- **attention stays inside a conversation**: a block-diagonal causal mask.

Our model derives the second from the first: when it gets `position_ids` and no `attention_mask`, every place
where the position does not grow by one starts a new sequence (the rule transformers uses for padding-free
batches), and a token may only attend to earlier tokens of its own sequence. Padding at the end of a row gets
position 0, so each pad token is a one-token sequence of its own with no label.
"""),
code("""
def collate_packed(rows, length):
    ids = torch.full((len(rows), length), tokenizer.pad_token_id)
    labels = torch.full((len(rows), length), IGNORE)
    positions = torch.zeros((len(rows), length), dtype=torch.long)
    for b, row in enumerate(rows):
        t = 0
        for e in row:
            n = len(e["input_ids"])
            ids[b, t:t + n], labels[b, t:t + n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"])
            positions[b, t:t + n] = torch.arange(n)
            t += n
    return {"input_ids": ids, "labels": labels, "position_ids": positions}

def sequence_ids(position_ids):
    step = torch.diff(position_ids, prepend=position_ids[:, :1] - 1, dim=-1)
    return (step != 1).cumsum(-1)

packed = collate_packed(pack(examples[:12], 96)[:1], 96)       # one row holding several short conversations
seq = sequence_ids(packed["position_ids"])[0]
allowed = (seq[:, None] == seq[None, :]) & torch.ones(96, 96, dtype=torch.bool).tril()
fig, ax = plt.subplots(1, 2, figsize=(10, 4))
ax[0].plot(packed["position_ids"][0], ".-")
ax[0].set(title="position_ids of a packed row", xlabel="token")
ax[1].imshow(allowed, cmap="Greys")
ax[1].set(title="who may attend to whom", xlabel="key", ylabel="query")
plt.tight_layout()
plt.show()
"""),
md("""
**The test**: the summed NLL (and its gradient) of packed rows equals that of the same conversations padded one
per row - and that of each conversation on its own.
"""),
code("""
def summed_nll(model, batch):
    \"\"\"-> (sum of next-token NLL over labelled tokens, how many there are).\"\"\"
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    # -log softmax(logits)[target] = logsumexp(logits) - logits[target] (the accurate way in float32, see section 5)
    nll = torch.logsumexp(logits, -1) - logits.gather(-1, targets.clamp(min=0)[..., None])[..., 0]
    counted = targets != IGNORE
    return (nll * counted).sum(), counted.sum()

def collate_padded(examples):
    length = max(len(e["input_ids"]) for e in examples)
    batch = {"input_ids": torch.full((len(examples), length), tokenizer.pad_token_id),
             "labels": torch.full((len(examples), length), IGNORE),
             "attention_mask": torch.zeros((len(examples), length), dtype=torch.long)}
    for b, e in enumerate(examples):
        n = len(e["input_ids"])
        batch["input_ids"][b, :n], batch["labels"][b, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"])
        batch["attention_mask"][b, :n] = 1
    return batch

some = examples[:24]
some_rows = pack(some, MAX_LEN)
model = copy.deepcopy(pretrained)
loss_packed, n_packed = summed_nll(model, collate_packed(some_rows, MAX_LEN))
grad_packed = torch.autograd.grad(loss_packed / n_packed, model.lm_head.weight)[0]
loss_padded, n_padded = summed_nll(model, collate_padded(some))
grad_padded = torch.autograd.grad(loss_padded / n_padded, model.lm_head.weight)[0]
with torch.no_grad():
    one_by_one = sum(summed_nll(model, collate_padded([e]))[0] for e in some)
print(f"{len(some)} conversations in {len(some_rows)} packed rows")
print(f"summed NLL packed {loss_packed.item():.4f}, padded {loss_padded.item():.4f}, "
      f"one by one {one_by_one.item():.4f}; tokens {n_packed.item()} = {n_padded.item()}")
print(f"max |gradient difference| {(grad_packed - grad_padded).abs().max().item():.1e}")
assert torch.allclose(loss_packed, loss_padded, rtol=1e-5) and torch.allclose(loss_packed, one_by_one, rtol=1e-5)
"""),
md("""
## 3. The loss of an optimizer step

An optimizer step consumes several **micro-batches** (gradient accumulation; on several GPUs, several processes
each with their own). Which average is "the loss"? TRL (and transformers' Trainer, through
`num_items_in_batch`) use one definition: **the summed token NLL of the whole step divided by the number of
trainable tokens of the whole step**. Every assistant token weighs the same, however the tokens fall into
micro-batches. Averaging each micro-batch first ("mean of means") would give the tokens of a short micro-batch
more weight. To divide by the step's total while back-propagating micro-batch by micro-batch, count first:
"""),
code("""
def step_loss_and_backward(model, micro_batches):
    n_step = sum(int((mb["labels"][:, 1:] != IGNORE).sum()) for mb in micro_batches)  # count first
    total = 0.0
    for mb in micro_batches:
        loss_sum, _ = summed_nll(model, mb)
        (loss_sum / n_step).backward()          # gradients add up to d(sum / n_step)
        total += loss_sum.item()
    return total / n_step

a, b = collate_packed(rows[:1], MAX_LEN), collate_padded(examples[:2])   # a full row, a short batch
model.zero_grad()
ours = step_loss_and_backward(model, [a, b])
means = [(s / n).item() for s, n in (summed_nll(model, a), summed_nll(model, b))]
counts = [int((x["labels"][:, 1:] != IGNORE).sum()) for x in (a, b)]
print(f"tokens per micro-batch {counts}; step loss {ours:.4f} vs mean of means {sum(means) / 2:.4f}")
"""),
md("""
The learning rate follows the recipe: linear warmup over the first 10% of steps, then half a cosine from the
peak down to **10%** of it (not to zero) at the last step - transformers' `cosine_with_min_lr`.
"""),
code("""
import math

def cosine_with_min_lr(step, warmup, total, min_rate=0.1):
    if step < warmup:
        return step / max(1, warmup)
    progress = (step - warmup) / max(1, total - warmup)
    return min_rate + (1 - min_rate) * 0.5 * (1 + math.cos(math.pi * progress))

total_steps = 100
plt.figure(figsize=(5, 2.5))
plt.plot([cosine_with_min_lr(s, math.ceil(0.1 * total_steps), total_steps) for s in range(total_steps + 1)])
plt.xlabel("optimizer step")
plt.ylabel("LR / peak LR")
plt.title("cosine with min LR ratio 0.1, warmup 0.1")
plt.show()
"""),
md("""
## 4. Training, and what it changes

Our loop (`doge_from_scratch.train_utils.optimizer_step`) is the function above plus gradient clipping at 1.0,
AdamW (betas 0.9/0.95, weight decay 0.01 on everything but biases and norms, as Trainer does) and the schedule.
`doge_from_scratch.sft.train_sft` runs it over packed rows. The lesson-scale settings:
"""),
code("""
from doge_from_scratch import sft
from doge_from_scratch.evaluate import accuracy_table, evaluate_replies, held_out_chats

settings = sft.SFTSettings()
print(settings)
"""),
md("""
**Before**: what does the pretrained model do with a chat prompt? We ask it the held-out questions (test split:
problems never seen in training, and the held-out phrasings of small talk) and grade each reply with the task's
own checker (`tasks.check_answer`): *accuracy* = the checker accepts the answer, *format* = the reply ends with
`<|end_of_text|>` without starting a new turn. Greedy decoding, at most 40 new tokens, on every distinct held-out
question (`evaluate.held_out_chats`: the test splits of the chat and preference data, each prompt once).
"""),
code("""
held_out = held_out_chats()
print(f"{len(held_out)} distinct held-out questions")
t0 = time.time()
before = evaluate_replies(pretrained, tokenizer, held_out, max_new_tokens=40)
print(f"pretrained: accuracy {before['accuracy']:.0%}, chat format {before['format']:.0%} "
      f"({time.time() - t0:.0f}s)")
for row, reply in list(zip(held_out, before["replies"]))[:3]:
    print(f"  Q: {row['messages'][-2]['content']!r}\\n  A: {reply[:100]!r}")
"""),
code("""
model = copy.deepcopy(pretrained)
t0 = time.time()
history = sft.train_sft(model, tokenizer, chat_train, settings, progress=False)
print(f"{len(history)} optimizer steps in {time.time() - t0:.0f}s; "
      f"loss {history[0].loss:.3f} -> {history[-1].loss:.3f}")
fig, ax = plt.subplots(1, 2, figsize=(10, 3))
ax[0].plot([h.loss for h in history])
ax[0].set(xlabel="step", ylabel="loss (assistant tokens)", title="SFT loss")
ax[1].plot([h.lr for h in history])
ax[1].set(xlabel="step", ylabel="LR", title="schedule")
plt.tight_layout()
plt.show()
"""),
code("""
after = evaluate_replies(model, tokenizer, held_out, max_new_tokens=40)
print(f"{'':12}{'accuracy':>10}{'format':>10}")
for name, r in (("pretrained", before), ("SFT", after)):
    print(f"{name:12}{r['accuracy']:>10.0%}{r['format']:>10.0%}")
print()
print(accuracy_table({"pretrained": before, "SFT": after}))
for row, reply in list(zip(held_out, after["replies"]))[:4]:
    print(f"  Q: {row['messages'][-2]['content']!r}\\n  A: {reply!r}")
"""),
md("""
How to read the table: each accuracy comes with its 95% Wilson interval (where the true rate lies, given n
answers) and the accuracy a guesser would get on the same questions (one of the two numbers for a comparison, a
capital from the list, an ordering of the given digits, a sum from 2 to 198, a known small-talk reply). A task
is learnt when its interval's lower end is above its chance column; overlapping intervals between two models
mean the data cannot tell them apart.

What the run saved here shows, plainly: SFT lifts the overall accuracy from 23% to 35%, and the two intervals
do not overlap. Nearly all of the gain is in one task. Reversals go from 1 right of 81 to about half, far above
the chance of guessing an ordering of the digits. Comparisons were already above chance before SFT: the corpus
holds comparison questions in the "Question: ... Answer: ..." form (lesson 06), and the base model answers them in
chat form too. SFT moves them a little higher, within the interval. Additions and capitals stay at chance: the
model writes a sum of the right shape with the wrong digits ("56 + 11 = 74"), and answers a capital question about
another country altogether ("The capital of Belgium is Brussels" for Greece). Small talk has 11 questions, too few
to judge.

This is the lesson's payoff from a base pretrained long enough. On lesson 06's own 800-step run, the same SFT gets
17% overall and only reversals clear of chance (`docs/lesson-models.md`): the shorter base has not yet learnt to
carry a name or a number from the question into its answer.

**SFT copies its data's habits too.** Our SmolTalk stand-in imitates answers written by two models (see
`data.chat_response`): writer A answers correctly; writer B, whose users phrase reversals as "Write these
digits in reverse order: ...", echoes the list unreversed about two times in three - the kind of flaw real
synthetic chat data has. Split the reversal questions by phrasing:
"""),
code("""
from doge_from_scratch.tasks import reversals_right_by_phrasing

print("reversals right, SFT model:", reversals_right_by_phrasing(held_out, after["correct"]))
"""),
md("""
The model learnt writer B's habit along with everything else. Lesson 08 shows what preference data judged by
the task's checker does about it.
"""),
code("""
from doge_from_scratch.paths import ARTIFACTS_DIR, PROJECT_ROOT
from doge_from_scratch.sft import save_stage

sft_folder = save_stage(model, tokenizer, ARTIFACTS_DIR / "sft", history, settings)
(sft_folder / "eval.json").write_text(json.dumps({"before": {k: before[k] for k in ("accuracy", "format")},
                                                   "after": {k: after[k] for k in ("accuracy", "format")}}))
print("saved for lessons 08 and 09:", sft_folder.relative_to(PROJECT_ROOT))
"""),
md("""
## 5. Parity with TRL's SFTTrainer

The recipe ran TRL's `SFTTrainer`. If our loop is the same algorithm, then on the same model, the same batches
and the same settings, it must log the same loss and gradient norm at every step. We run TRL on a slice of the
chat data (packing, assistant-only loss, accumulation over 2 micro-batches, cosine with min LR), record the
micro-batches each of its optimizer steps consumed, and replay them through our `optimizer_step`.

**What it took for our model to run inside TRL** (it is a `transformers.PreTrainedModel` with a config class):
- `config_class = DogeConfig` (a `PreTrainedConfig`), `base_model_prefix = "model"`: TRL 1.16 replaces the
  forward with a *fused LM head* that runs `model.base_model` (our `DogeModel`) and projects through
  `get_output_embeddings()` only at labelled positions;
- a `generation_config` (TRL writes the pad/eos ids into it; transformers only creates one for classes that
  inherit its `GenerationMixin`, so `train_utils.trl_ready` adds it);
- `DogeModel.forward` accepting `position_ids` with **no attention mask** and keeping packed sequences apart:
  TRL's packing is padding-free (it flattens the micro-batch into one row) and relies on exactly that;
- settings: `bf16=False` (it defaults to True, even on CPU), `use_cpu=True`, `report_to="none"`, and
  `router_aux_loss_coef=0.0`: our config has MoE fields, so TRL would ask a dense model for a router loss.

One numerical detail mattered: our per-token NLL is `logsumexp(logits) - logit[target]`, which is what TRL's
fused head accumulates. `F.cross_entropy` over a `[B, V, T]` layout was ~50x less accurate in float32 on CPU
(3.7e-6 relative on a step's loss, measured against float64) - enough to fail a 1e-6 comparison.

Each step is compared from the weights TRL had when it took that step (recorded with the batch). Replaying
all four steps from the start instead lets two float32 implementations drift apart: their last bits differ
(the two loss reductions do not sum in the same order), each Adam update turns tiny gradient differences into
weight differences, and a step whose loss jumps amplifies them - we measured a few 1e-6 by step 3 or 4, at this
learning rate or a quarter of it. Comparing from the same weights tests what parity means here: the same loss
and the same gradient for the same model and batch.
"""),
code("""
import tempfile
import warnings

from datasets import Dataset, disable_progress_bars
from transformers import PrinterCallback
from trl import SFTConfig, SFTTrainer

from doge_from_scratch.train_utils import cosine_schedule, make_optimizer, optimizer_step, trl_ready

warnings.filterwarnings("ignore", category=FutureWarning)
disable_progress_bars()  # TRL's tokenize/pack passes over 48 rows: a saved page would keep their 0% bars
trl_model = trl_ready(copy.deepcopy(pretrained))
ours_model = copy.deepcopy(pretrained)
args = SFTConfig(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=2, gradient_accumulation_steps=2,
                 max_steps=4, learning_rate=settings.lr, lr_scheduler_type="cosine_with_min_lr",
                 lr_scheduler_kwargs={"min_lr_rate": 0.1}, warmup_steps=0.1, weight_decay=0.01,
                 adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, packing=True,
                 max_length=MAX_LEN, assistant_only_loss=True, seed=0, bf16=False, gradient_checkpointing=False,
                 use_cpu=True, report_to="none", router_aux_loss_coef=0.0, logging_steps=1, save_strategy="no",
                 disable_tqdm=True)
trainer = SFTTrainer(model=trl_model, args=args, train_dataset=Dataset.from_list(
    [{"messages": r["messages"]} for r in chat_train[:48]]), processing_class=tokenizer)
trainer.remove_callback(PrinterCallback)  # it prints every log dict; the table below shows the same numbers
consumed, weights_before = {}, {}
trl_training_step = trainer.training_step
def recording_step(model_, inputs, *a, **k):
    step = trainer.state.global_step
    if step not in weights_before:
        weights_before[step] = {name: t.detach().clone() for name, t in model_.state_dict().items()}
    consumed.setdefault(step, []).append({key: inputs[key].clone() for key in ("input_ids", "labels", "position_ids")})
    return trl_training_step(model_, inputs, *a, **k)
trainer.training_step = recording_step
trainer.train()
trl_logs = [h for h in trainer.state.log_history if "grad_norm" in h]

optimizer = make_optimizer(ours_model, args.learning_rate, 0.01, (0.9, 0.95), 1e-8)
scheduler = cosine_schedule(optimizer, len(trl_logs), warmup=0.1, min_lr_rate=0.1)
print(f"{'step':>4}{'TRL loss':>14}{'our loss':>14}{'rel diff':>10}{'TRL |g|':>12}{'our |g|':>12}{'rel diff':>10}")
worst = 0.0
for step, log in enumerate(trl_logs):
    ours_model.load_state_dict(weights_before[step])
    ours = optimizer_step(ours_model, consumed[step], sft.SFT_LOSS, optimizer, scheduler, 1.0, step + 1)
    d_loss = abs(ours.loss - log["loss"]) / abs(log["loss"])
    d_norm = abs(ours.grad_norm - log["grad_norm"]) / abs(log["grad_norm"])
    worst = max(worst, d_loss, d_norm)
    print(f"{step + 1:>4}{log['loss']:>14.8f}{ours.loss:>14.8f}{d_loss:>10.1e}{log['grad_norm']:>12.6f}"
          f"{ours.grad_norm:>12.6f}{d_norm:>10.1e}")
"""),
code("""
# NBVAL_CHECK_OUTPUT
print(f"every step within 1e-6 relative: {worst < 1e-6}")
"""),
md("""
## 6. Check against the package

The notebook's rendering, packing, loss and schedule must be what `doge_from_scratch.sft` and
`doge_from_scratch.train_utils` compute.
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch.train_utils import cosine_with_min_lr as package_schedule

for row in chat_train[:200]:
    assert sft.render_chat(tokenizer, row["messages"]) == render(row["messages"])
    assert sft.sft_example(tokenizer, row["messages"]) == example(row["messages"])
assert sorted(map(len, map(lambda r: sum((e["input_ids"] for e in r), []), sft.pack(examples, MAX_LEN)))) == \\
    sorted(map(len, map(lambda r: sum((e["input_ids"] for e in r), []), rows)))
batch = collate_packed(some_rows, MAX_LEN)
assert all(torch.equal(batch[k], sft.collate_packed(some_rows, tokenizer.pad_token_id, MAX_LEN)[k]) for k in batch)
with torch.no_grad():
    ours_sum, ours_n, _ = sft.sft_summed_loss(pretrained, batch)
    assert (torch.allclose(ours_sum, summed_nll(pretrained, batch)[0], rtol=1e-6)
            and ours_n == summed_nll(pretrained, batch)[1])
assert all(abs(package_schedule(s, 10, 100) - cosine_with_min_lr(s, 10, 100)) < 1e-12 for s in range(101))
reversals = [i for i, task in enumerate(after["tasks"]) if task == "reverse_digits"]
assert after["format"] >= max(before["format"], 0.9)
assert sum(after["correct"][i] for i in reversals) > sum(before["correct"][i] for i in reversals) + 10
print("doge_from_scratch.sft matches the notebook; SFT keeps the chat format and teaches the reversal answers")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/07_sft.ipynb`.

1. The SFT loss per token. Predict: for a batch with one 1-token answer and one 7-token answer, which weighs
   more, per token and per sequence?
2. The loss of an optimizer step made of several micro-batches (section 3), as TRL's `num_items_in_batch`
   does.
3. Position ids of a packed row (section 2).
"""),
code("""
from doge_from_scratch.exercises import check_packed_positions, check_sft_loss, check_step_loss


def sft_loss(logits, labels):
    \"\"\"sft_loss(logits, labels) -> scalar: logits[t] predicts labels[t + 1]; the summed NLL over every label that
    is not -100, divided by how many there are in the whole batch (model.causal_lm_loss).\"\"\"
    raise NotImplementedError  # your code here


check_sft_loss(sft_loss)
"""),
code("""
def step_loss(micro_batches):
    \"\"\"step_loss(micro_batches) -> scalar: the loss of one optimizer step made of several micro-batches, each a
    (logits, labels) pair - every trained token of the step weighs the same (TRL's num_items_in_batch:
    model.causal_lm_loss with the step's token count).\"\"\"
    raise NotImplementedError  # your code here


check_step_loss(step_loss)
"""),
code("""
def packed_positions(lengths, length):
    \"\"\"packed_positions(lengths, length) -> [length] int64: the position ids of one packed row holding examples
    of these lengths, restarting at 0 for each; padding up to length gets 0 (sft.collate_packed).\"\"\"
    raise NotImplementedError  # your code here


check_packed_positions(packed_positions)
"""),
md("""
## Further reading

- Llama Team, *The Llama 3 Herd of Models*, [arXiv:2407.21783](https://arxiv.org/abs/2407.21783) (the chat
  format)
- Model card: [SmallDoge/Doge-60M-Instruct](https://huggingface.co/SmallDoge/Doge-60M-Instruct) (SFT on
  SmolTalk, then DPO)
- Checked against: trl `SFTTrainer` (1.16) and transformers' `num_items_in_batch` loss; our
  `doge_from_scratch.sft`
"""),
]

if __name__ == "__main__":
    print(write_notebook("07_sft.ipynb", cells))
