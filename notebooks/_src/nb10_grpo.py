"""Generator for notebooks/10_grpo.ipynb (run: python notebooks/_src/nb10_grpo.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 10 - GRPO: rewards instead of answers

> **Run time**: about 4 minutes (225 s) on the project's 2-core CPU (an AMD EPYC, 2026-12-04), 15 s of it for the
> cold start and 195 s for the 120 GRPO steps. **Uses**: lesson 09's distilled
> student `artifacts/reason_distill/` (0.47M parameters, built on the committed `data/tiny-doge-student/`). A missing
> one is trained first with lesson 09's settings (`grpo.ensure_reason_distill`), in under a minute.
> **Writes** `artifacts/grpo/`, the model the evaluation lesson loads.

Lesson 09's student writes a thought section and a solution section, and is right on 42% of held-out
comparisons, below the 50% of a coin: SFT on traces teaches it what a trace *looks like* more than which answer is
right. The
Doge-160M-Reason-Distill card is tagged `grpo`, and the small-doge recipes train their reasoning models with
**Group Relative Policy Optimisation** (GRPO, DeepSeekMath 2402.03300) on two rewards: is the answer right,
and is the reply in the thought/solution format.

GRPO needs no answers to imitate, only a way to *score* an answer. For each prompt the model samples a **group**
of G completions; each completion's advantage is how much better it scored than its group's average. Completions
that beat their group become more likely, the others less likely - a policy gradient whose baseline is the group
itself, with no value network. The pieces, in plain PyTorch:

1. the **rewards**: answer correctness (the tasks' own checkers) and format, hardened against reward hacking;
2. **sampling a group** with our own `generate` (lesson 05), seeded and batched;
3. **group-relative advantages** (`scale_rewards` "group", "batch" or "none");
4. the **clipped policy-ratio objective** (PPO's, with `epsilon` and `epsilon_high`), reuse of a batch for
   `num_iterations` with the sampling policy's log-probs, and the optional **KL to a frozen reference** (`beta`,
   the k3 estimator);
5. the four **loss normalisations** of TRL's `GRPOTrainer` (`grpo`, `bnpo`, `dr_grpo`, `dapo`) and why TRL's
   defaults are `beta = 0` and `dapo`;
6. a **cold start** (a short SFT on worked comparisons, as DeepSeek-R1 began its RL), then GRPO on decimal
   comparisons - the cards' own "3.9 or 3.11?" - and the measured effect of each on **held-out** questions, with
   95% intervals and the chance level.

`doge_from_scratch.grpo` holds the same code; `tests/test_grpo.py` checks that TRL 1.16's `GRPOTrainer` logs the
same loss, advantages, rewards, clip ratios and KL as ours on the same completions (every loss type, beta 0 and
0.05, one and two iterations), and `tests/test_ddp.py` that two processes train exactly like one.
"""),
code("""
import copy
import time
import warnings

import matplotlib.pyplot as plt
import torch
import transformers

from doge_from_scratch import DogeForCausalLM, grpo, rewards
from doge_from_scratch.data import REASONING_SYSTEM_PROMPT
from doge_from_scratch.evaluate import sign_test, wilson_interval
from doge_from_scratch.paths import ARTIFACTS_DIR
from doge_from_scratch.sft import save_stage
from doge_from_scratch.tasks import NUMBER
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
warnings.filterwarnings("ignore", category=FutureWarning)
%matplotlib inline
lesson_start = time.time()

student_folder = grpo.ensure_reason_distill()   # lesson 09's student (trained here first if it is missing)
tokenizer = load_tokenizer(student_folder)
student = DogeForCausalLM.from_pretrained(student_folder).eval()
print(f"lesson 09's student: {sum(p.numel() for p in student.parameters()) / 1e6:.2f}M parameters, "
      f"{student.config.num_hidden_layers} layers")
"""),
md("""
## 1. The prompts: decimal comparisons, train and held-out

Each prompt is the card's system prompt and one question "Which number is bigger, x or y?". Half of the
questions are the trap of the cards' example, the same whole part with one and two decimals (3.9 vs 3.11), where
a model that compares "9" with "11" gets it wrong. A question's train/test split is a hash of its pair of
numbers (`tasks.split_of`), so the held-out questions are pairs GRPO never sees. Chance on a two-way question is
50% - for a model that always writes a well-formed reply and names one of the two numbers at random.
"""),
code("""
# NBVAL_CHECK_OUTPUT
train_prompts = grpo.comparison_records(2000, "train", seed=0)
held_out = grpo.comparison_records(240, "test", seed=1)
def questions(rows):
    return {r["prompt"][-1]["content"] for r in rows}


print(f"{len(train_prompts)} training prompts, {len(held_out)} held-out prompts, "
      f"shared questions: {len(questions(train_prompts) & questions(held_out))}")
def trap(r):
    # the task's own number pattern (the questions come in several phrasings; only the two decimals are numbers)
    first, second = NUMBER.findall(r["prompt"][-1]["content"])
    return first.split(".")[0] == second.split(".")[0]


print(f"held-out trap questions (same whole part): {sum(map(trap, held_out))}")
for r in held_out[:3]:
    print(f"  {r['prompt'][-1]['content']!r:45} answer {r['answer']}")
"""),
md("""
## 2. Rewards, and the ways to cheat them

A reward is whatever the policy will maximise, loopholes included. Two functions, each returning one float per
completion with TRL's calling convention (`prompts=`, `completions=` and every dataset column as a keyword), so
they plug unchanged into TRL's `GRPOTrainer`:

- **format**: exactly one `<|begin_of_thought|> ... <|end_of_thought|>` then exactly one
  `<|begin_of_solution|> ... <|end_of_solution|>`, nothing but whitespace outside them, and neither section empty;
- **accuracy**: the task's own checker (`tasks.check_answer`: under the card's system prompt it already needs a
  thought and a solution and reads only the solution), plus two guards - the strict format, and, for a two-way
  question, a solution that names *both* numbers scores nothing ("3.9 3.11" would otherwise be right whenever the
  checker's last-number rule lands on the answer).

Here they are on honest replies and on the cheats a policy could find:
"""),
code("""
# NBVAL_CHECK_OUTPUT
BT, ET, BS, ES = rewards.TAGS
def reply(thought="We compare 3.9 and 3.11.", solution="The bigger number is 3.9."):
    return f"{BT}\\n\\n{thought}\\n\\n{ET}\\n\\n{BS}\\n\\n{solution}\\n\\n{ES}"

attempts = {
    "right": reply(),
    "wrong": reply(solution="The bigger number is 3.11."),
    "no sections": "The bigger number is 3.9.",
    "empty thought": reply(thought=""),
    "solution before thought": f"{BS} The bigger number is 3.9. {ES} {BT} We compare. {ET}",
    "two thought sections": f"{BT} a {ET} {BT} b {ET} {BS} The bigger number is 3.9. {ES}",
    "two answers": reply() + reply(solution="The bigger number is 3.11."),
    "text after the end": reply() + " Or 3.11.",
    "answer stuffing": reply(solution="3.11 3.9"),
}
prompt = [{"role": "system", "content": REASONING_SYSTEM_PROMPT},
          {"role": "user", "content": "Which number is bigger, 3.9 or 3.11?"}]
fmt = rewards.format_reward(completions=list(attempts.values()))
acc = rewards.accuracy_reward(prompts=[prompt] * len(attempts), completions=list(attempts.values()),
                              task=["compare_decimals"] * len(attempts), answer=["3.9"] * len(attempts))
print(f"{'attempt':26}{'format':>8}{'accuracy':>10}")
for name, f, a in zip(attempts, fmt, acc):
    print(f"{name:26}{f:>8.0f}{a:>10.0f}")
"""),
md("""
## 3. Sampling a group

For each prompt, G completions sampled from the current policy with our `generate` (no top-k or top-p, as in
TRL, at the recipe's temperature 0.7: the log-probs we train on are those of the distribution we sampled from). All
G x prompts rows go through `generate` as one left-padded batch, with a seed, so a run reproduces. A completion
ends at its first end-of-turn token; the mask covers it up to and including that token.
"""),
code("""
G = 8
snippet_question = [{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                    {"role": "user", "content": "Which number is bigger, 3.9 or 3.11?"}]
demo = [{"prompt": snippet_question, "task": "compare_decimals", "answer": "3.9"}, held_out[1]]
rollout = grpo.sample_groups(student, tokenizer, [r["prompt"] for r in demo], num_generations=G,
                             max_new_tokens=112, temperature=0.7, seed=0)
columns = {k: [r[k] for r in demo for _ in range(G)] for k in ("task", "answer")}
per_func = grpo.score(rollout, rewards.REWARD_FUNCS, columns)
print("completion lengths (tokens):", rollout.completion_mask.sum(1).tolist())
for i in (0, 1, G, G + 1):
    a, f = per_func[i].tolist()
    print(f"--- question {i // G}, completion {i % G}: accuracy {a:.0f}, format {f:.0f}\\n{rollout.texts[i]}")
"""),
md("""
## 4. Group-relative advantages

With r_i the summed rewards of the G completions of one prompt:

A_i = (r_i - mean(r)) / (std(r) + 1e-4)

The group's mean is the baseline: a completion is pushed up only if it beat its siblings. The std is the unbiased
one (TRL's). `scale_rewards="batch"` divides by the std of the whole generation batch instead (PPO-Lite), and
`"none"` does not divide at all (Dr. GRPO: dividing by a group's std weighs the questions where the group
disagrees only a little - nearly always right or nearly always wrong - as much as the uncertain ones). A group
whose completions all score the same has A = 0: it teaches nothing, which is why GRPO needs a model that is
sometimes right.
"""),
code("""
r = per_func.sum(1)
groups = r.view(-1, G)
by_hand = ((groups - groups.mean(1, keepdim=True)) / (groups.std(1, keepdim=True) + 1e-4)).flatten()
ours, _ = grpo.group_advantages(r, G, "group")
for g in range(len(demo)):
    print(f"question {g}: rewards    {groups[g].tolist()}")
    print(f"            advantages {[round(x, 2) for x in by_hand[g * G:(g + 1) * G].tolist()]}")
assert torch.allclose(ours, by_hand)
"""),
md("""
## 5. The objective

GRPO keeps PPO's clipped surrogate, per token. With rho_t = pi_theta(o_t | ...) / pi_old(o_t | ...), the ratio of
the current policy to the one that sampled the completion:

loss_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A) + beta KL_t

- At the first update on fresh samples pi_theta = pi_old, so rho = 1 and the loss is -A per token: its gradient
  is A times the gradient of log pi, the plain policy gradient. The clip matters when a batch is reused
  (`num_iterations` > 1): once a token's probability has moved by more than epsilon in the advantage's direction,
  its gradient stops. `epsilon_high` > epsilon (DAPO's "clip higher", 0.28) lets unlikely tokens with positive
  advantage grow further before the clip, which keeps exploration alive.
- KL_t is the k3 estimator of KL(pi_theta || pi_ref) against a frozen reference: with d = log pi_ref - log
  pi_theta, KL_t = exp(d) - d - 1 >= 0, unbiased and low-variance on samples from pi_theta. TRL 1.16 also
  multiplies it by rho_t (`use_bias_correction_kl`), which makes its gradient the true reverse-KL gradient when
  the samples came from pi_old.

The log-probs are those of the temperature-scaled distribution, logits / temperature, the one that sampled.
"""),
code("""
def token_logps(model, batch, temperature=0.7):
    ids = torch.cat((batch["prompt_ids"], batch["completion_ids"]), 1)
    mask = torch.cat((batch["prompt_mask"], batch["completion_mask"]), 1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)          # left padding does not count
    width = batch["completion_ids"].shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=width + 1).logits
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, -1)
    return logp.gather(-1, batch["completion_ids"][..., None])[..., 0] * batch["completion_mask"]

def token_loss(logps, old_logps, adv, eps_low, eps_high, beta=0.0, ref_logps=None):
    ratio = torch.exp(logps - old_logps)
    loss = -torch.min(ratio * adv[:, None], ratio.clamp(1 - eps_low, 1 + eps_high) * adv[:, None])
    if beta:
        d = ref_logps - logps
        loss = loss + beta * (d.exp() - d - 1) * ratio
    return loss

batch = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
         "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask}
logps = token_logps(student, batch)
# pretend one update happened: a perturbed copy plays pi_theta, the student pi_old and the reference
moved = copy.deepcopy(student)
with torch.no_grad():
    for p in moved.parameters():
        p.add_(0.02 * torch.randn_like(p))
new_logps = token_logps(moved, batch)
loss = token_loss(new_logps, logps.detach(), by_hand, 0.2, 0.28, beta=0.04, ref_logps=logps.detach())
ratio = (new_logps - logps).exp()[batch["completion_mask"].bool()]
print(f"ratios after the perturbation: {ratio.min():.2f} .. {ratio.max():.2f}; "
      f"tokens outside [0.8, 1.28]: {((ratio < 0.8) | (ratio > 1.28)).float().mean():.0%}")
"""),
md("""
### One prompt prefix for every row

`token_logps` above runs every row whole. But every prompt here starts with the card's long system prompt: of
a row's ~248 prompt tokens, the first 225 are the same in all rows, at the same positions (positions count real
tokens only, so left padding does not move them). Their keys and values are then the same in every row too.
`grpo.completion_logps` runs that prefix through the model **once**, as one row, and lets every row attend to its
keys and values (`KVCache.expand_batch`: views, no copies); only the rest of each row - its last ~24 prompt tokens,
still left padded, and the completion - is computed once per row. Under autograd the single prefix receives the
summed gradient of all rows, which is what the whole rows would have sent it.

The numbers are the whole rows' up to float32 round-off: a padded key adds exactly zero to a softmax wherever it
sits (`tests/test_grpo.py` checks log-probs and every parameter's gradient against a float64 evaluation). A round's
update goes from rows of ~358 tokens to ~133, and on the project's machine from 2.5 s to 0.54 s (Intel Xeon, 64
completions). Sampling does the same: `generate`'s fast decoder prefills a prefix that every row of a batch shares
once and copies its keys, values and biases into each row (`fast_decode.FastStepper.prefill`), which takes the
sampling of 64 completions from 2.46 s to 1.59 s (AMD EPYC) with the same completions. That is what pays for the
rounds of section 7.
"""),
code("""
shared = grpo.shared_prefix_length(batch["prompt_ids"], batch["prompt_mask"])
print(f"prompt tokens per row: {sorted(set(batch['prompt_mask'].sum(1).tolist()))}, shared by every row: {shared}")
by_path, best = {}, {False: float("inf"), True: float("inf")}
for _ in range(3):  # interleaved, best of 3: the first call of each also pays one-time costs
    for share in (False, True):
        t0 = time.perf_counter()
        with torch.no_grad():
            by_path[share] = grpo.completion_logps(student, batch, 0.7, share_prefix=share)[0]
        best[share] = min(best[share], time.perf_counter() - t0)
for share in (False, True):
    print(f"{'shared prefix' if share else 'whole rows':14} {1000 * best[share]:6.1f} ms (best of 3)")
print(f"largest log-prob difference: {(by_path[True] - by_path[False]).abs().max():.1e}")
"""),
md("""
### Four ways to average the token losses

m is the completion-token mask, L = `max_completion_length`:

| loss_type | reduction | note |
|---|---|---|
| `grpo` | mean over sequences of (sum_t loss m / sum_t m) | the paper's; each sequence weighs the same, so a long wrong answer's tokens are each punished less than a short one's: a length bias |
| `bnpo` | sum loss m / sum m, per micro-batch | token-level, but depends on how the batch is split |
| `dr_grpo` | sum loss m / (sequences x L) | Dr. GRPO: a constant normaliser, no length bias |
| `dapo` | sum loss m / tokens in the whole generation batch | DAPO: token-level over the global batch; TRL's default |

Each is a *summed* loss over a micro-batch plus an item count (tokens, sequences, or 1 per micro-batch) whose
total over the optimizer step is the normaliser; the shared loop of lessons 07-09 (`train_utils.optimizer_step`)
divides by that total over every micro-batch and every process, so accumulation and DDP give one big batch's
gradient.
"""),  # noqa: E501 - rows of a markdown table cannot be wrapped
code("""
mask = batch["completion_mask"].float()
L = 112
reduced = {
    "grpo": ((loss * mask).sum(-1) / mask.sum(-1)).mean(),
    "bnpo": (loss * mask).sum() / mask.sum(),
    "dr_grpo": (loss * mask).sum() / (mask.shape[0] * L),
    "dapo": (loss * mask).sum() / mask.sum(),     # one micro-batch = the whole generation batch here
}
for name, value in reduced.items():
    print(f"{name:8} {value.item():+.5f}")
"""),
md("""
### TRL's defaults, and why

- **`beta = 0.0`**: no KL term, so no reference model (half the memory and a forward pass fewer per step).
  The KL penalty comes from RLHF with a learned reward model, which a policy can exploit by drifting far from
  the SFT model. With *verifiable* rewards - a checker, not a model - there is no such model to exploit, a
  reasoning policy is meant to move away from its start, and the clip already limits each step; DAPO
  (2503.14476) drops the term for these reasons. (DeepSeek-R1 used 0.001.)
- **`loss_type = "dapo"`**: token-level averaging over the whole generation batch: every token counts the same
  whatever the length of its completion (no length bias, unlike `grpo`), and the result does not depend on how
  the batch is split into micro-batches or processes (unlike `bnpo`).
- `epsilon = 0.2` with `epsilon_high = epsilon`, `scale_rewards = "group"`, `num_iterations = 1`, G = 8,
  temperature 1, learning rate 1e-6 (for billion-parameter models; ours has about a million and learns at 2e-4).

Our recipe below keeps `beta = 0` and `dapo`.
"""),
md("""
## 6. Before GRPO: the student, and a cold start

Greedy replies to the 240 held-out questions, judged by the same strict checks as the rewards: **correct** means
right, well formed and not hedging; **formatted** means exactly one non-empty thought and solution. 95% Wilson
intervals.
"""),
code("""
def report(name, result):
    n = result["n"]
    for key in ("correct", "formatted"):
        k = result[f"n_{key}"]
        lo, hi = wilson_interval(k, n)
        print(f"{name:22}{key:>10}: {k:>3}/{n} = {k / n:6.1%}  (95% CI {lo:.1%} .. {hi:.1%})")

t0 = time.time()
distilled = grpo.evaluate_reasoning(student, tokenizer, held_out, max_new_tokens=110, batch_size=24)
report("lesson 09's student", distilled)
print(f"chance (a well-formed reply naming one of the two numbers at random): 50%; ({time.time() - t0:.0f}s)")
"""),
md("""
### The cold start

Lesson 09's reasoning data holds 100 comparisons among its 400 traces: the student learnt the layout of a
trace, not the comparison. DeepSeek-R1 met the same problem at scale and began its RL from a **cold start**: SFT
on a few thousand worked reasoning traces, so that the policy's samples are right often enough for the rewards to
have something to reinforce. Ours is `grpo.cold_start`: 400 fresh comparisons of the *training* split, with the
dataset's own worked traces (`data.reasoning_record`), one epoch of SFT at 1e-3 (`grpo.COLD_START_SETTINGS`).
GRPO then starts from that model, and its gain is measured against it.
"""),
code("""
started = copy.deepcopy(student)
t0 = time.time()
cold_history = grpo.cold_start(started, tokenizer, progress=False)
print(f"cold start: {grpo.COLD_START_TRACES} comparison traces, {len(cold_history)} steps, "
      f"{time.time() - t0:.0f}s, loss {cold_history[0].loss:.3f} -> {cold_history[-1].loss:.3f}")
before = grpo.evaluate_reasoning(started.eval(), tokenizer, held_out, max_new_tokens=110, batch_size=24)
report("lesson 09's student", distilled)
report("after the cold start", before)
"""),
md("""
## 7. Training

The recipe (`grpo.GRPOSettings` defaults): 120 steps, per step 8 prompts x G = 8 completions, `beta = 0`,
`loss_type = "dapo"`, `epsilon = 0.2`, `scale_rewards = "group"`, one iteration per batch, AdamW at a constant
2e-4 and gradient clipping at 1. Rewards: accuracy + format, weight 1 each. (Measured on the cold-started student,
scored on these 240 held-out questions along runs of this recipe on an AMD EPYC: 181 right after 40 steps, 190
after 80, 201 after 120 and 201 after 160. Other sizes of cold start land far apart, and not in order: with 200
traces the start is 130 and 120 steps end at 185; with 300, 112 and 145; with 800, 190 and 180. With one run each,
these differences may be the luck of one SFT and one GRPO run as much as the size. Without the cold start, from
lesson 09's student itself: 136, 143, 158 and 156 after 40, 80, 120 and 160 on the AMD EPYC, and 142, 147, 167, 183
and 189 after 40, 80, 120, 160 and 240 on an Intel Xeon. The same recipe ends tens of answers apart on two machines:
float round-off differs between their CPUs, and 120 rounds of sampling carry it into different completions. The
cold start's size (one pick of four) and the step count were chosen on these same held-out questions, so the
figures below are optimistic; `docs/lesson-models.md` has the runs.)
Two choices differ from TRL's defaults, both measured while building this lesson:

- **`max_completion_length = 112`**: the longest comparison trace has 109 tokens; a tighter limit cuts the trap
  questions' traces (they need the extra "two decimal places" step) before their solution, and a cut-off reply
  scores 0 whatever it would have said.
- **temperature 0.7** (TRL: 1.0): sharper samples, closer to the greedy replies we score, so more groups hold a
  right answer to learn from (at 0.7, 98% of the first step's samples were well formed); the log-probs trained on
  are those of the same tempered distribution.
"""),
code("""
settings = grpo.GRPOSettings()
policy = copy.deepcopy(started)
t0 = time.time()
history = grpo.train_grpo(policy, tokenizer, train_prompts, settings=settings, progress=False)
policy.eval()
print(f"{len(history)} steps, {settings.generation_batch_size} completions each, {time.time() - t0:.0f}s")
print(f"mean reward {history[0].metrics['reward']:.2f} -> {history[-1].metrics['reward']:.2f}")
"""),
code("""
steps = [h.step for h in history]
series = {"mean reward (accuracy + format)": "reward", "accuracy reward": "rewards/accuracy_reward/mean",
          "format reward": "rewards/format_reward/mean", "completion length (tokens)": "completions/mean_length"}
fig, ax = plt.subplots(1, 3, figsize=(14, 3.5))
ax[0].plot(steps, [h.metrics["reward"] for h in history], label="total")
ax[0].set_title("mean reward per step")
ax[0].set_ylim(0, 2.05)
ax[1].plot(steps, [h.metrics["rewards/accuracy_reward/mean"] for h in history], label="accuracy")
ax[1].plot(steps, [h.metrics["rewards/format_reward/mean"] for h in history], label="format")
ax[1].axhline(0.5, color="k", ls="--", lw=1, label="chance (accuracy)")
ax[1].set_title("training samples: accuracy and format")
ax[1].set_ylim(0, 1.02)
ax[1].legend(fontsize=8)
ax[2].plot(steps, [h.metrics["completions/mean_length"] for h in history])
ax[2].set_title("mean completion length (tokens)")
for a in ax:
    a.set_xlabel("step")
plt.tight_layout()
plt.show()
"""),
md("""
## 8. After GRPO: the same held-out questions
"""),
code("""
t0 = time.time()
after = grpo.evaluate_reasoning(policy, tokenizer, held_out, max_new_tokens=110, batch_size=24)
report("lesson 09's student", distilled)
report("after the cold start", before)
report("after GRPO", after)
print(f"({time.time() - t0:.0f}s)")
for subset, keep in (("trap questions (same whole part)", trap), ("different whole parts", lambda r: not trap(r))):
    idx = [i for i, r in enumerate(held_out) if keep(r)]
    k_before, k_after = sum(before["correct"][i] for i in idx), sum(after["correct"][i] for i in idx)
    print(f"{subset:34} correct before {k_before}/{len(idx)}, after {k_after}/{len(idx)}")
def names_one_option(record, text):
    solution = rewards.extract_solution(text) or ""
    return len(rewards._numbers(record["prompt"][-1]["content"]) & rewards._numbers(solution)) == 1
for name, result in (("before", before), ("after", after)):
    k = sum(names_one_option(r, t) for r, t in zip(held_out, result["replies"]))
    print(f"{name}: the solution names exactly one of the question's two numbers in {k}/{len(held_out)}")
def paired(new, old):
    # questions right only with `new`, and only with `old`: the two counts the sign test reads
    pairs = list(zip(new["correct"], old["correct"]))
    return sum(n and not o for n, o in pairs), sum(o and not n for n, o in pairs)


gains, drops = paired(after, before)
print(f"GRPO against its start, paired: right only after GRPO {gains}, only before {drops}; "
      f"sign test p = {sign_test(gains, drops):.1e}")
whole_gains, whole_drops = paired(after, distilled)
print(f"cold start + GRPO against lesson 09's student: right only after {whole_gains}, only before {whole_drops}; "
      f"sign test p = {sign_test(whole_gains, whole_drops):.1e}")
lo_after, _ = wilson_interval(after["n_correct"], after["n"])
_, hi_before = wilson_interval(before["n_correct"], before["n"])
print(f"GRPO's intervals separated (after's lower bound {lo_after:.1%} > its start's upper bound {hi_before:.1%}):",
      lo_after > hi_before)
"""),
md("""
What the figures say (the committed run, on an AMD EPYC; the printed numbers are the measurement):

- **The cold start does most of the work.** 400 worked comparisons take lesson 09's student from 42.1% (101/240,
  95% CI 36.0-48.4%), below a coin's 50%, to 75.4% (181/240, 69.6-80.4%) in 15 seconds.
- **GRPO adds to it**: 83.8% (201/240, 78.6-87.9%), with the format at 100% throughout. On the same questions 24 are
  right only after GRPO and 4 only before (sign test p = 1.8e-4), so the gain is real. But it is 20 answers, and the
  two 95% intervals still overlap (78.6% against 80.4%), so this run does not meet the lesson's aim of separate
  intervals. Nor does it reach 90%.
- Together, against lesson 09's student: 102 questions right only after, 2 only before.

The split by kind says where GRPO helped. The trap questions (equal whole parts, the "3.9 or 3.11" kind) were
already right 109 of 117 after the cold start, and are 112 after. The questions whose whole parts differ went
from 72 to 89 of 123. The thoughts still mean what they say: the model writes the branch the question needs (equal
or different whole parts) in 186 of 240 replies (measured on the saved model), and no thought stutters. GRPO from
lesson 09's student alone, in this lesson's previous version, had drifted: the thoughts called every pair's whole
parts different and stuttered "SoSo" while the solutions were learnt around them (65.8%, 158/240).

What is left is copying. Of the 39 wrong answers, 36 name a number that is not one of the question's two: "Is 14.9
or 18.49 the bigger number?" gets the equal-parts branch with "16.90 and 18.49", then "The bigger number is
18.9". Lesson 09's student has 0.47M parameters and 4 layers 96 wide, and at that size copying a two- or four-digit
number through a 110-token trace is itself the hard part.

What else was tried for 90% on the same 240 questions, and did *not* get there (`docs/lesson-models.md` has the
runs):

- **other cold-start sizes** (section 7): 200, 300 and 800 traces end at 185, 145 and 180 after 120 GRPO steps.
  With 200 the gain from GRPO is larger (130 -> 185) and its intervals are apart, but the model ends lower;
- **more GRPO steps without a cold start**: the own-base student flattened near 158 on this machine and reached 189
  after 240 steps on an Intel Xeon; rounds of 16 prompts, a learning rate of 3e-4, temperature 1.0, a cosine
  decay and a reward for copying the question's numbers gained nothing;
- on lesson 09's earlier student (the chat model cut to 3 layers): **a reward on the thought** (164 against 166
  without it), and **1600 fresh comparison traces** (196 before GRPO, 194 after);
- **a different comparison trace** in the reasoning data: one that writes both whole parts before it decides
  ended at 143 (59.6%), one that goes digit by digit at 156 (65.0%).

A few held-out questions, before and after (greedy):
"""),
code("""
for i in range(3):
    print(f"=== {held_out[i]['prompt'][-1]['content']}  (answer {held_out[i]['answer']})")
    print(f"--- before ({'right' if before['correct'][i] else 'wrong'}):\\n{before['replies'][i]}")
    print(f"--- after ({'right' if after['correct'][i] else 'wrong'}):\\n{after['replies'][i]}")
"""),
md("""
## 9. The card's snippet, after GRPO

The Doge-160M-Reason-Distill card's usage code on its own question, with our `from_pretrained` and `generate`
(sampling at temperature 0.8, top-p 0.9, as the card does), after saving the model like a Hub folder to
`artifacts/grpo` (the evaluation lesson loads it from there). Then greedy, the way the held-out questions were scored.

The card's snippet calls `apply_chat_template` without `add_generation_prompt=True`, so its prompt ends after the
user's turn, with no assistant header. No lesson trained on that, and the sampled reply skips its thought: it
opens a solution section at once and says "The bigger number is 3.9." - right, but not a well-formed reply. With
the header added and the same seed (measured, not run here) it writes the same reply as the greedy one below. That
one uses the header, like every score in this lesson, and it is **right for the right reason**: the whole parts
are both 3, so it writes 3.90 and 3.11 and compares 90 with 11 hundredths. (Before the cold start was added, the
lesson's GRPO model answered this question right with a thought that called the whole parts different.)
"""),
code("""
grpo_folder = save_stage(policy, tokenizer, ARTIFACTS_DIR / "grpo", history, settings)

from transformers import AutoTokenizer, GenerationConfig, TextStreamer

tokenizer = AutoTokenizer.from_pretrained(str(grpo_folder))
model = DogeForCausalLM.from_pretrained(grpo_folder)

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
code("""
greedy = grpo.evaluate_reasoning(model, tokenizer, [{"prompt": conversation, "task": "compare_decimals",
                                                     "answer": "3.9"}])
print(greedy["replies"][0])
print("greedy answer right and well formed:", greedy["correct"][0])
"""),
md("""
## 10. Check against the package
"""),
code("""
# NBVAL_CHECK_OUTPUT
package_logps, _ = grpo.completion_logps(student, batch, temperature=0.7)
assert torch.allclose(package_logps, logps, rtol=1e-5, atol=1e-6)
package_loss, _ = grpo.clipped_token_loss(new_logps, logps.detach(), by_hand, 0.2, 0.28, beta=0.04,
                                          ref_logps=logps.detach())
assert torch.allclose(package_loss, loss, rtol=1e-5, atol=1e-7)
assert grpo.GRPOSettings().beta == 0.0 and grpo.GRPOSettings().loss_type == "dapo"
assert len(held_out) >= 200 and not questions(train_prompts) & questions(held_out)
print("doge_from_scratch.grpo matches the notebook's log-probs, loss and advantages")
"""),
code("""
print(f"lesson run time: {time.time() - lesson_start:.0f}s")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/10_grpo.ipynb`.

1. Group-relative advantages (section 4). Predict the advantages of a group whose rewards are all equal.
2. The clipped token loss (section 5). Replace the min by a max and predict which updates stop being limited.
"""),
code("""
from doge_from_scratch.exercises import check_clipped_loss, check_group_advantages


def advantages(rewards, num_generations):
    \"\"\"advantages(rewards, num_generations) -> [N]: each reward minus its group's mean, divided by the group's
    sample (n - 1) standard deviation + 1e-4; groups are consecutive rows
    (grpo.group_advantages(scale_rewards="group")).\"\"\"
    raise NotImplementedError  # your code here


check_group_advantages(advantages)
"""),
code("""
def clipped_loss(logps, old_logps, advantages, eps_low, eps_high):
    \"\"\"clipped_loss(logps, old_logps, advantages, eps_low, eps_high) -> [b, C]: per token -min(r A, clip(r, 1 -
    eps_low, 1 + eps_high) A), r = exp(logps - old_logps). logps, old_logps: [b, C]; advantages: [b]
    (grpo.clipped_token_loss with beta = 0).\"\"\"
    raise NotImplementedError  # your code here


check_clipped_loss(clipped_loss)
"""),
md("""
## Further reading

- Shao et al., *DeepSeekMath* (GRPO), [arXiv:2402.03300](https://arxiv.org/abs/2402.03300)
- Schulman et al., *Proximal Policy Optimization Algorithms*,
  [arXiv:1707.06347](https://arxiv.org/abs/1707.06347)
- Model card: [SmallDoge/Doge-160M-Reason-Distill](https://huggingface.co/SmallDoge/Doge-160M-Reason-Distill)
- Checked against: trl `GRPOTrainer` (1.16); our `doge_from_scratch.grpo` and `rewards`
"""),
]

if __name__ == "__main__":
    print(write_notebook("10_grpo.ipynb", cells))
