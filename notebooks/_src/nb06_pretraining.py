"""Generator for notebooks/06_pretraining.ipynb (run: python notebooks/_src/nb06_pretraining.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 06 - Pretraining a tiny Doge on a CPU

> **Run time**: about 4 minutes on the project's 2-core CPU (240 s on an AMD EPYC on 2026-12-04). **Uses**: nothing
> from earlier lessons; it writes its own run to `artifacts/pretrained/`. Lessons 07 on start from
> `data/tiny-doge/`, the same recipe run to its full length and committed (section 6 says why it is longer).

The Doge models start as next-token predictors trained on a large text corpus; everything later (SFT, DPO,
reasoning distillation) fine-tunes that pretrained network. This lesson writes the pretraining loop from
scratch and runs it, scaled down so that it finishes in about four minutes on two CPU cores.

The small-doge recipe, and what we keep of it:

| | small-doge (Doge-20M) | this lesson |
|---|---|---|
| optimizer | AdamW, betas (0.9, 0.95), eps 1e-8, weight decay 0.01 | same |
| schedule | warmup-stable-decay, peak LR 8e-3 | same shape, peak 2e-3 |
| gradient clipping | 1.0 | 1.0 |
| precision | bfloat16 | float32 (bfloat16 autocast is a switch) |
| context | 2048 tokens | 256 tokens |
| model | 256 hidden, 8 layers, 32768 vocab | 192 hidden, 4 layers, ~1.5k vocab |

**What you will learn**

1. Packing documents into fixed-length training rows.
2. The warmup-stable-decay (WSD) learning-rate schedule, plotted.
3. One optimizer step by hand: gradient accumulation, clipping, AdamW with selective weight decay.
4. A full run with validation loss, loss curves, and text samples before and after.
5. Checkpoints that resume *exactly* (safetensors + JSON, no pickle), and the Hugging Face-format folder that
   lessons 07 on start from.
"""),
code("""
import dataclasses
import json
import math
import time

import matplotlib.pyplot as plt
import torch
from transformers.optimization import get_wsd_schedule

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch import data as D
from doge_from_scratch import pretrain as P
from doge_from_scratch import tasks
from doge_from_scratch.generation import chat_reply, continue_text
from doge_from_scratch.paths import ARTIFACTS_DIR, PRETRAINED_DIR, PROJECT_ROOT, TINY_DOGE_DIR
from doge_from_scratch.tokenizer import load_tokenizer
from doge_from_scratch.train_utils import wsd_lr_factor

torch.manual_seed(0)
torch.set_num_threads(2)
%matplotlib inline

tok = load_tokenizer()
recipe = P.PretrainSettings()  # the lessons' recipe: data/tiny-doge is its run, ensure_pretrained() reruns it
cfg = dataclasses.replace(recipe, steps=800)  # this lesson's run: the same recipe, shortened to fit its time
print(cfg)
"""),
md("""
## 1. Packing documents into rows

The corpus (`data/pretrain/`, see lesson 00) is a list of short documents: mostly worked questions and answers
("Question: ... Answer: ...", the way worked examples appear on the web, some with the worked steps in between)
about sums, decimals, lists and capitals, plus stories, facts and a small share of chat transcripts in Doge's
format. Padding each document to a
fixed length would waste most of the compute, so we **pack**: wrap every document as
`<|begin_of_text|> text <|end_of_text|>`, concatenate them all, and cut the stream into rows of `seq_len`
tokens. Every position is a real token; the model learns that a new document starts after an
`<|end_of_text|>`. Chat transcripts already start and end with those tokens and are not wrapped twice.
"""),
code("""
# NBVAL_CHECK_OUTPUT
docs = [row["text"] for row in D.load_lesson_dataset("pretrain", "train")]
val_docs = [row["text"] for row in D.load_lesson_dataset("pretrain", "test")]


def pack_by_hand(texts, seq_len):
    stream = []
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if ids[:1] != [tok.bos_token_id]:
            ids = [tok.bos_token_id] + ids
        if ids[-1:] != [tok.eos_token_id]:
            ids = ids + [tok.eos_token_id]
        stream += ids
    n = len(stream) // seq_len
    return torch.tensor(stream[: n * seq_len]).view(n, seq_len)


rows_by_hand = pack_by_hand(docs[:40], 64)
assert torch.equal(rows_by_hand, P.pack_documents(docs[:40], tok, 64))
train_rows = P.pack_documents(docs, tok, cfg.seq_len)
val_rows = P.pack_documents(val_docs, tok, cfg.seq_len)
print(f"train: {len(docs)} documents -> {tuple(train_rows.shape)} rows = {train_rows.numel():,} tokens")
print(f"val:   {len(val_docs)} documents -> {tuple(val_rows.shape)} rows = {val_rows.numel():,} tokens")
print(f"one step = {cfg.rows_per_micro_batch} rows x {cfg.accumulation} micro-batches x {cfg.seq_len} = "
      f"{cfg.tokens_per_step:,} tokens; {cfg.steps} steps = "
      f"{cfg.steps * cfg.tokens_per_step / train_rows.numel():.2f} epochs")
print(repr(tok.decode(train_rows[0, :60])))
"""),
md("""
## 2. The model

A Doge-20M-shaped network shrunk for a CPU: 4 decoder layers of Dynamic Mask Attention (3 query heads sharing
one key/value head) and a gated MLP, tied input/output embeddings, vocabulary rounded up to a multiple of 64.
"""),
code("""
# NBVAL_CHECK_OUTPUT
model_config = P.tiny_doge_config(len(tok))
print({k: getattr(model_config, k) for k in ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                            "num_attention_heads", "num_key_value_heads", "tie_word_embeddings"]})
torch.manual_seed(cfg.seed)
fresh = DogeForCausalLM(model_config)
n_params = sum(p.numel() for p in fresh.parameters())
print(f"{n_params:,} parameters ({model_config.vocab_size * model_config.hidden_size:,} of them the tied embedding)")
print(f"a uniform guess over {model_config.vocab_size} tokens has loss ln(V) = {math.log(model_config.vocab_size):.2f}")
"""),
md("""
## 3. The warmup-stable-decay schedule

WSD has three phases: a short linear **warmup** from 0 to the peak learning rate (AdamW's moment estimates
are poor in the first steps, so big steps then are risky), a long **stable** phase at the peak, and a short
**decay** to (near) zero at the end, where long runs usually see the loss drop faster (section 6 shows what
our short run does). Unlike a cosine schedule it does not
need to know the run length in advance for most of the run: one can keep training from any stable-phase
checkpoint and only redo the decay. We use 10% warmup and 20% cosine decay.
"""),
code("""
def wsd(step, warmup, stable, decay, min_ratio=0.0):
    if step < warmup:
        return min_ratio + (1 - min_ratio) * step / warmup
    if step < warmup + stable:
        return 1.0
    if step < warmup + stable + decay:
        progress = (step - warmup - stable) / decay
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio


warmup, stable, decay = cfg.phase_steps()
steps = list(range(cfg.steps))
lrs = [cfg.lr * wsd(s, warmup, stable, decay) for s in steps]
fig, ax = plt.subplots(figsize=(7, 2.8))
ax.plot(steps, lrs)
for x in (warmup, warmup + stable):
    ax.axvline(x, color="gray", ls=":")
ax.set(xlabel="optimizer step", ylabel="learning rate",
       title=f"WSD: {warmup} warmup, {stable} stable, {decay} decay steps")
plt.show()
"""),
code("""
# NBVAL_CHECK_OUTPUT
sgd = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
reference = get_wsd_schedule(sgd, num_warmup_steps=warmup, num_decay_steps=decay, num_training_steps=cfg.steps)
assert all(abs(wsd(s, warmup, stable, decay) - reference.lr_lambdas[0](s)) < 1e-12 for s in steps)
assert all(wsd(s, warmup, stable, decay) == wsd_lr_factor(s, warmup, stable, decay) for s in steps)
print("hand-written WSD == transformers.get_wsd_schedule == doge_from_scratch.train_utils.wsd_lr_factor")
"""),
md("""
## 4. One optimizer step, by hand

An optimizer step sees `rows_per_micro_batch x accumulation` rows. We run the micro-batches one after another
and let the gradients add up, dividing each loss by the number of micro-batches (every row has the same number
of tokens, so this is exactly the mean loss of the whole step). Then:

- **clip** the global gradient norm to 1.0 (one bad batch cannot throw the weights far),
- **AdamW** step - weight decay only on matrices and embeddings; RMSNorm weights, residual scales and the DMA
  `A` vectors are left alone (decaying a residual scale towards 0 would shrink the signal, not regularise it),
- advance the schedule.

Which rows form each micro-batch is a pure function of (seed, micro-batch index) - a fresh seeded shuffle per
epoch - so there is no data-loader state to save in a checkpoint.
"""),
code("""
torch.manual_seed(cfg.seed)
hand_model = DogeForCausalLM(model_config).train()
matrices = [p for p in hand_model.parameters() if p.dim() >= 2]
vectors = [p for p in hand_model.parameters() if p.dim() < 2]
optimizer = torch.optim.AdamW([{"params": matrices, "weight_decay": cfg.weight_decay},
                               {"params": vectors, "weight_decay": 0.0}],
                              lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: wsd(s, warmup, stable, decay))
order = P.RowSchedule(len(train_rows), cfg.rows_per_micro_batch, cfg.seed)

hand_losses = []
for step in range(3):
    step_loss = 0.0
    for micro in range(cfg.accumulation):
        batch = train_rows[order.rows(step * cfg.accumulation + micro)]
        logits = hand_model(input_ids=batch).logits
        # next-token loss: position t predicts token t+1
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        (loss / cfg.accumulation).backward()
        step_loss += loss.item() / cfg.accumulation
    grad_norm = torch.nn.utils.clip_grad_norm_(hand_model.parameters(), cfg.max_grad_norm)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad()
    hand_losses.append(step_loss)
    print(f"step {step + 1}: loss {step_loss:.4f}  grad norm {grad_norm:.3f}  next lr {scheduler.get_last_lr()[0]:.2e}")
"""),
md("""
## 5. Before training

What does the untrained model write? Greedy decoding with lesson 05's `generate` (`continue_text` for raw text,
`chat_reply` for a chat) from a story opening and from a chat prompt:
"""),
code("""
print(continue_text(fresh, tok, "Once upon a time,", max_new_tokens=30))
print(chat_reply(fresh, tok, [{"role": "user", "content": "What is 23 + 45?"}], max_new_tokens=20,
                 skip_special_tokens=True).strip())
print(f"validation loss before training: {P.evaluate(fresh, val_rows):.3f}")
"""),
md("""
## 6. The full run

`P.pretrain` is the loop of section 4 plus evaluation every `eval_every` steps, progress (a live bar in a
terminal, one summary line in a notebook), optional
bfloat16 autocast, and a checkpoint every `checkpoint_every` steps. Here it runs 800 steps, about four
minutes. The model the other lessons use, `data/tiny-doge` (lessons 02 and 05 look inside it, 07 on fine-tune
it), is the same recipe run to its full 1400 steps (about seven minutes here), stored in bfloat16:
`ensure_pretrained()` returns that folder, and reruns the recipe into it if it was deleted. The end of this
section compares the two runs.
"""),
code("""
checkpoint_dir = ARTIFACTS_DIR / "pretrain_checkpoints"
started = time.perf_counter()
result = P.pretrain(cfg, tok, checkpoint_dir=checkpoint_dir)
print(f"{time.perf_counter() - started:.0f} s, {result.tokens_per_second:,.0f} training tokens/s")
print(f"validation loss {result.val_history[0]['val_loss']:.3f} -> {result.final_val_loss:.3f}")
folder = P.save_pretrained_model(result, tok, PRETRAINED_DIR, cfg)
print("saved to", folder.relative_to(PROJECT_ROOT), sorted(p.name for p in folder.iterdir()))
"""),
code("""
fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
hist_steps = [h["step"] for h in result.history]
ax1.plot(hist_steps, [h["loss"] for h in result.history], label="train (per step)")
ax1.plot([v["step"] for v in result.val_history], [v["val_loss"] for v in result.val_history], "o-", label="validation")
ax1.set(xlabel="optimizer step", ylabel="loss", yscale="log", title="next-token loss")
ax1.legend()
ax2.plot(hist_steps, [h["lr"] for h in result.history])
ax2.set(xlabel="optimizer step", ylabel="learning rate", title="schedule as run")
for ax in (ax1, ax2):
    for boundary in (warmup, warmup + stable):
        ax.axvline(boundary, color="grey", ls=":", lw=1)
plt.tight_layout()
plt.show()
print("validation loss by step:", ", ".join(f"{v['step']}: {v['val_loss']:.2f}" for v in result.val_history))
phases = {"warmup": (0, warmup), "stable": (warmup, warmup + stable), "decay": (warmup + stable, cfg.steps)}
for name, (first, last) in phases.items():
    losses = [h["loss"] for h in result.history[first:last]]
    print(f"{name:7s} steps {first:3d}-{last:3d}: training loss {losses[0]:.2f} -> {losses[-1]:.2f}")
"""),
md("""
Read the curves with the printout under them (dotted lines: the ends of warmup and of the stable phase).
In the committed run the loss falls steeply during warmup and the first stable steps: most of the corpus is
templated, so once the model has learnt the templates only the genuinely unpredictable parts (which numbers,
which names) remain. After that the validation loss keeps falling, more slowly but steadily, all the way to the
last step - no plateau and no sudden drop - and the decay phase carries on that decline rather than adding a
step of its own at this size. The last hundred steps still lower the loss, so a shorter run would give a
visibly weaker model (section 7 shows what this one writes). Your rerun may differ in the last digits; the shape
is what the recipe gives.

**Why the later lessons use a longer run.** The committed `data/tiny-doge` ran the same recipe for 1400 steps.
Its curves, beside this run's:
"""),
code("""
committed = json.loads((TINY_DOGE_DIR / "pretrain_summary.json").read_text())
fig, ax = plt.subplots(figsize=(6.5, 3.2))
for name, vals in [(f"this lesson ({cfg.steps} steps)", result.val_history),
                   (f"data/tiny-doge ({committed['pretrain_settings']['steps']} steps)", committed["val_history"])]:
    ax.plot([v["step"] for v in vals[1:]], [v["val_loss"] for v in vals[1:]], "o-", ms=3, label=name)
ax.set(xlabel="optimizer step", ylabel="validation loss", title="the same recipe, two lengths")
ax.legend()
plt.tight_layout()
plt.show()
print(f"final validation loss: this run {result.final_val_loss:.3f}, data/tiny-doge {committed['final_val_loss']:.3f} "
      f"({committed['seconds']:.0f} s of training when it was made)")
"""),
md("""
The longer run stays at the peak LR until step 1120, where this one starts its decay at step 640. So at step 800
it is still above this run (0.58 against about 0.53), and it ends only a few hundredths lower. That small
difference in loss is a large one in what the model can be taught. After lesson 07's SFT, scored on all 344
held-out chats (`python -m doge_from_scratch.bench recipes`; the runs are in `docs/lesson-models.md`): the
800-step base answers 17% correctly, and only reversing digits ends clear of chance. The 1400-step base answers
35%, and both comparing decimals and reversing digits end clear of chance. The failure the shorter base shows
after SFT is copying: it names the capital of a country it was not asked about, or answers 17.4 for 17.48. Its
layers have not yet learnt to carry a name or a number from the question into the answer. Validation loss alone
would not have told us this, because most of the corpus is template text that both runs predict equally well.

## 7. After training
"""),
code("""
model = result.model.eval()
for prompt in ["Once upon a time,", "The capital of France is", "Question: Reverse the list: 3 1 4 1 5\\nAnswer:"]:
    print(continue_text(model, tok, prompt, max_new_tokens=40), "\\n")
for question in ["Hi, how are you doing today?", "What is 23 + 45?", "Which number is bigger, 3.9 or 3.11?"]:
    reply = chat_reply(model, tok, [{"role": "user", "content": question}], max_new_tokens=30, skip_special_tokens=True)
    print(question, "->", reply.strip())
"""),
md("""
The samples look like the corpus. How often does the base model already answer chat questions correctly?
Only a small share of the corpus is chat-formatted task questions, so this is the baseline that SFT
(lesson 07) improves on. Greedy replies to the first test questions of each task, checked by the tasks' own
checkers:
"""),
code("""
chat_test = D.load_lesson_dataset("chat", "test")
correct, total = {}, {}
for row in chat_test.select(range(80)):
    prompt, _ = tasks.prompt_and_reference(row)
    reply = chat_reply(model, tok, prompt, max_new_tokens=24, skip_special_tokens=True).strip()
    total[row["task"]] = total.get(row["task"], 0) + 1
    correct[row["task"]] = correct.get(row["task"], 0) + tasks.check_answer(row, reply)
for task in sorted(total):
    print(f"{task:17s} {correct[task]:3d} / {total[task]:3d}")
print(f"overall accuracy of the pretrained model: {sum(correct.values()) / sum(total.values()):.2f}")
"""),
md("""
## 8. Checkpoints and exact resumption

A checkpoint must let a run continue as if it had never stopped. That needs more than the weights: the AdamW
moments (`exp_avg`, `exp_avg_sq`, step counts), the scheduler's position, the RNG state and the history. We
store tensors in safetensors and everything else in JSON - no pickle, so loading a checkpoint cannot run code.
Each checkpoint is written to a temporary folder and renamed into place, and `latest.json` is replaced
atomically afterwards: a crash mid-save leaves the previous checkpoint intact.
"""),
code("""
# NBVAL_CHECK_OUTPUT
latest = P.latest_checkpoint(checkpoint_dir)
print(json.loads((checkpoint_dir / "latest.json").read_text()))
print(sorted(p.name for p in latest.iterdir()))
trainer_state = json.loads((latest / "trainer_state.json").read_text())
print(sorted(trainer_state))
"""),
md("""
The proof is a resumed run: train a small model for 8 steps in one go, and again stopping after 4 steps and
resuming from the checkpoint. The loss curves must be identical, number for number
(`tests/test_pretrain.py` checks the same).
"""),
code("""
# NBVAL_CHECK_OUTPUT
import tempfile
from pathlib import Path

small = P.PretrainSettings(seq_len=64, rows_per_micro_batch=4, accumulation=2, steps=8, eval_every=4,
                         checkpoint_every=4, max_train_docs=200, max_val_docs=20,
                         model_overrides=dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                              num_attention_heads=2))
with tempfile.TemporaryDirectory() as tmp:
    whole = P.pretrain(small, tok, checkpoint_dir=Path(tmp) / "a", progress=False)
    P.pretrain(small, tok, checkpoint_dir=Path(tmp) / "b", stop_after=4, progress=False)
    resumed = P.pretrain(small, tok, checkpoint_dir=Path(tmp) / "b", resume=True, progress=False)
same = [a["loss"] == b["loss"] for a, b in zip(whole.history, resumed.history)]
print(f"{sum(same)} of {len(same)} step losses identical after resuming at step 4;",
      "validation losses identical:", whole.val_history == resumed.val_history)
"""),
md("""
## 9. Check against the package

The hand-written loop of section 4 must give exactly the package's first steps, the saved folder must load
in `transformers` and give the same logits, and the committed `data/tiny-doge` must be this recipe with
nothing changed but its length.
"""),
code("""
import transformers

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
package_first_steps = P.pretrain(cfg, tok, stop_after=3, progress=False)
reference = transformers.DogeForCausalLM.from_pretrained(PRETRAINED_DIR).eval()
ids = val_rows[:2, :128]
with torch.no_grad():
    diff = (reference(input_ids=ids).logits - model(input_ids=ids).logits).abs().max().item()
print(f"max |logits difference| transformers vs ours: {diff:.2e}")
"""),
code("""
# NBVAL_CHECK_OUTPUT
assert all(abs(a - b["loss"]) < 1e-5 for a, b in zip(hand_losses, package_first_steps.history)), (
    hand_losses, package_first_steps.history)
assert committed["pretrain_settings"] == json.loads(json.dumps(dataclasses.replace(cfg, steps=recipe.steps).to_json()))
assert P.ensure_pretrained() == TINY_DOGE_DIR and committed["final_val_loss"] < result.final_val_loss
assert diff < 1e-4, diff
assert result.final_val_loss < 0.35 * result.val_history[0]["val_loss"]
assert all(same) and whole.val_history == resumed.val_history
print("doge_from_scratch.pretrain matches the hand-written loop; "
      "the saved model loads in transformers with the same logits")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/06_pretraining.ipynb`.

1. The warmup-stable-decay schedule (section 3). Change `min_ratio` to 0.1 and predict the factor at step 0
   and at the last step.
2. One AdamW step by hand (section 4), checked against `torch.optim.AdamW`. What is the difference from Adam
   with L2 regularisation?
"""),
code("""
from doge_from_scratch.exercises import check_adamw_step, check_wsd


def wsd(step, warmup, stable, decay, min_ratio=0.0):
    \"\"\"wsd(step, warmup, stable, decay, min_ratio) -> float: the learning-rate factor of a warmup-stable- decay
    schedule with a cosine decay (train_utils.wsd_lr_factor), at every step of three schedules.\"\"\"
    raise NotImplementedError  # your code here


check_wsd(wsd)
"""),
code("""
def adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay):
    \"\"\"adamw_step(param, grad, exp_avg, exp_avg_sq, step, lr, betas, eps, weight_decay) -> (param, exp_avg,
    exp_avg_sq): optimizer step number step (1 for the first) of torch.optim.AdamW, decoupled weight decay and
    bias correction included.\"\"\"
    raise NotImplementedError  # your code here


check_adamw_step(adamw_step)
"""),
md("""
## Further reading

- Loshchilov and Hutter, *Decoupled Weight Decay Regularization* (AdamW),
  [arXiv:1711.05101](https://arxiv.org/abs/1711.05101)
- Hu et al., *MiniCPM* (the warmup-stable-decay schedule),
  [arXiv:2404.06395](https://arxiv.org/abs/2404.06395)
- Shi et al., *Wonderful Matrices*, [arXiv:2412.11834](https://arxiv.org/abs/2412.11834), and the
  SmallDoges/small-doge training recipes
- Checked against: `torch.optim.AdamW`; our `doge_from_scratch.pretrain`
"""),
]

if __name__ == "__main__":
    print(write_notebook("06_pretraining.ipynb", cells))
