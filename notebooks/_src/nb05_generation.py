"""Generator for notebooks/05_generation.ipynb (run: python notebooks/_src/nb05_generation.py)."""

from nbbuild import code, md, write_notebook

cells = [
md("""
# Lesson 05 - Generation: KV cache, sampling, streaming and a fast CPU decoder

> **Run time**: about 26 s on the project's 2-core CPU. **Uses**: the trained tiny Doge committed in
> `data/tiny-doge` (no training here).

A language model gives next-token logits. Generation turns that into text: pick a token, append it, ask
again. This lesson builds the machinery of the model cards' first code block from first principles:

```python
generation_config = GenerationConfig(max_new_tokens=100, use_cache=True, do_sample=True,
                                     temperature=0.8, top_p=0.9, repetition_penalty=1.0)
steamer = TextStreamer(tokenizer=tokenizer, skip_prompt=True)
outputs = model.generate(inputs, tokenizer=tokenizer, generation_config=generation_config, streamer=steamer)
```

**What you will learn**

1. Why a KV cache: the cost per token with and without one, measured and plotted.
2. The cache built step by step, and why Doge's dynamic-mask bias needs nothing extra in it.
3. Sampling strategies - greedy, temperature, top-k, top-p, repetition penalty - and the distributions they
   produce.
4. A streamer that prints text as it comes.
5. The cards' usage example running on our model; batched prompts with left padding.
6. Parity: token-for-token the same ids as transformers' `generate`.
7. Speed: a fused decoder for the CPU against transformers and the model cards' tokens/s.
"""),
code("""
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F
import transformers

from doge_from_scratch import DogeConfig, DogeForCausalLM
from doge_from_scratch.pretrain import TINY_DOGE_DIR
from doge_from_scratch.testing import (copy_into_reference, failed_checks, float32_error_check, float64_copy,
                                       randomize_, reference_model)
from doge_from_scratch.tokenizer import load_tokenizer

torch.manual_seed(0)
torch.set_num_threads(2)
transformers.logging.set_verbosity_error()
%matplotlib inline

tokenizer = load_tokenizer()          # the project's tokenizer (data/tokenizer), Doge's specials and chat format
# The trained tiny Doge shipped in data/tiny-doge: lesson 06's recipe at 1400 steps (hidden 192, 4 layers, 3 heads,
# 1 KV head), pretrained on the project's small corpus of stories, facts and sums, so what it writes is readable.
model = DogeForCausalLM.from_pretrained(TINY_DOGE_DIR).eval()
config = model.config
print(len(tokenizer), "tokens in the vocabulary;", sum(p.numel() for p in model.parameters()) // 1000, "k parameters")
"""),
md("""
## 1. Why a cache

Generating without a cache means running the whole sequence through the model for every new token: the
t-th token costs a forward pass over t positions, so n tokens cost O(n^2) token-passes.

But causal attention means position t's keys and values never change once computed. Keep them, and a new
token needs only *its own* projections plus one attention row over the stored keys: one token-pass per step.
Below, the same greedy generation with `cache="none"` (recompute everything) and `cache="static"` (our
preallocated cache); a callback streamer timestamps each token.
"""),
code("""
from doge_from_scratch.generation import CallbackStreamer, generate


def per_token_ms(cache: str, prompt: torch.Tensor, new_tokens: int) -> list[float]:
    stamps = []
    streamer = CallbackStreamer(lambda token: stamps.append(time.perf_counter()))
    # eos_token_id=[]: no stop token, so both runs time every one of the new tokens
    generate(model, prompt, max_new_tokens=new_tokens, cache=cache, streamer=streamer, eos_token_id=[])
    return [1e3 * (b - a) for a, b in zip(stamps, stamps[1:])]


prompt = torch.randint(3, len(tokenizer), (1, 16), generator=torch.Generator().manual_seed(0))
new_tokens = 150
torch.set_num_threads(1)   # one thread: steadier timings on a machine shared with other jobs
timings = {cache: per_token_ms(cache, prompt, new_tokens) for cache in ("none", "static")}
torch.set_num_threads(2)
with torch.no_grad():  # the same ids either way
    assert torch.equal(generate(model, prompt, max_new_tokens=40, cache="none"),
                       generate(model, prompt, max_new_tokens=40, cache="static"))

fig, ax = plt.subplots(1, 2, figsize=(11, 3.5))
for cache, ms in timings.items():
    positions = range(prompt.shape[1] + 1, prompt.shape[1] + 1 + len(ms))
    ax[0].plot(positions, ms, label=f"cache={cache!r}")
    ax[1].plot(positions, torch.tensor(ms).cumsum(0) / 1e3, label=f"cache={cache!r}")
ax[0].set(xlabel="sequence length", ylabel="ms per new token", title="cost of one token")
ax[1].set(xlabel="sequence length", ylabel="seconds", title="total time")
for a in ax:
    a.legend()
plt.tight_layout()
for cache, ms in timings.items():
    print(f"{cache:>6}: {sum(ms) / 1e3:.2f} s for {len(ms)} tokens")
"""),
md("""
Without the cache the time per token climbs with the length; with it the line is flat (attention over
a few hundred cached keys is cheap next to the weight products). The price is memory: every layer keeps a key
and a value vector per KV head per position - `2 * layers * n_kv * head_dim * positions * bytes`.
"""),
code("""
# NBVAL_CHECK_OUTPUT
for name in ("Doge-20M", "Doge-60M", "Doge-160M", "Doge-320M"):
    c = DogeConfig.from_preset(name)
    cache_bytes = 2 * c.num_hidden_layers * c.num_key_value_heads * c.head_dim * 2048 * 4
    print(f"{name:10s} KV cache for 2048 positions in float32: {cache_bytes / 2**20:6.0f} MiB")
"""),
md("""
## 2. The cache, step by step

What a cache needs (`attention.KVCacheLike`): `update(key, value, layer_idx)` stores this step's keys
[B, n_kv, T, d] (after k_norm and RoPE - they never change again) and values, and returns *all* of them;
`get_seq_length()` says how many positions are stored, which is where the new token's position starts.

The simplest version grows Python lists by concatenation. We write it here and run one prefill plus
decoding steps, checking each step's logits against a full forward pass without any cache.
"""),
code("""
class ListCache:
    \"\"\"The plainest KV cache: per layer, keys and values grown with torch.cat.\"\"\"

    def __init__(self):
        self.keys, self.values = [], []

    def update(self, key, value, layer_idx):
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        else:
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key), dim=-2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value), dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx=0):
        return self.keys[layer_idx].shape[-2] if self.keys else 0


ids = torch.randint(3, len(tokenizer), (1, 24), generator=torch.Generator().manual_seed(1))
cache = ListCache()
# Cached and uncached runs round differently in float32; each is judged by its distance to the float64 result
# (the cached one may be at most 4x further from it than the uncached one, plus a few ulps).
exact_model = float64_copy(model)
worst, checks = 0.0, []
with torch.no_grad():
    logits = model(ids[:, :8], past_key_values=cache, use_cache=True).logits[:, -1]   # prefill 8 tokens
    for t in range(8, 24):                                                            # then one at a time
        full = model(ids[:, :t]).logits[:, -1]
        worst = max(worst, (logits - full).abs().max().item())
        checks.append(float32_error_check(f"{t} tokens", logits, full, exact_model(ids[:, :t]).logits[:, -1]))
        logits = model(ids[:, t:t + 1], past_key_values=cache, use_cache=True).logits[:, -1]
print("cache holds", cache.get_seq_length(), "positions; keys of layer 0:", tuple(cache.keys[0].shape))
print(f"largest difference cached vs uncached logits: {worst:.1e} "
      f"(logits up to {max(c['scale'] for c in checks):.0f} in size)")
assert all(c["ok"] for c in checks), failed_checks(checks)
"""),
md("""
**What about Doge's dynamic mask?** Each key s carries a bias `b_s = exp(A * softplus(dt_proj(v_s)))` added to
every query's score for it. It is a function of the key's *value vector alone*, so the cached values are
enough: the attention layer recomputes the bias from all cached values at each step, exactly as the
reference does. And because it depends on nothing else, the bias of key s is the same number at every later
step - so a decoder may just as well store it once (our fast decoder below does). Let us verify that it
never changes:
"""),
code("""
from doge_from_scratch.attention import dynamic_bias

attn = model.model.layers[0].self_attn
with torch.no_grad():
    bias_at_8 = dynamic_bias(cache.values[0][:, :, :8], attn.dt_proj, attn.A)     # as seen after the prefill
    bias_at_24 = dynamic_bias(cache.values[0], attn.dt_proj, attn.A)              # as seen 16 steps later
print("bias of the first 8 keys, recomputed later - largest change:",
      (bias_at_24[..., :8] - bias_at_8).abs().max().item())
"""),
md("""
The list cache copies the whole cache at every `torch.cat`. `StaticKVCache` allocates one buffer per layer
for `prompt + max_new_tokens` positions up front; a step writes its slice in place and attention reads a view
of the filled part. Same numbers, no copies. `generate` uses it by default.
"""),
code("""
from doge_from_scratch.cache import StaticKVCache

static = StaticKVCache.for_model(config, batch_size=1, max_length=24)
with torch.no_grad():
    a = model(ids[:, :8], past_key_values=static, use_cache=True).logits
    b = model(ids[:, 8:9], past_key_values=static, use_cache=True).logits
    reference_logits = model(ids[:, :9]).logits
print("static cache buffer per layer:", tuple(static.keys[0].shape), "- filled:", static.get_seq_length())
print("step logits vs uncached:", (b[:, -1] - reference_logits[:, -1]).abs().max().item())
"""),
md("""
## 3. Choosing the next token

The logits become a distribution by softmax. How we pick from it decides the character of the text:

- **greedy**: always the argmax. Deterministic, prone to loops.
- **temperature** T: softmax(logits / T). T < 1 sharpens, T > 1 flattens.
- **top-k**: keep the k most likely tokens, renormalise.
- **top-p (nucleus)**: keep the smallest set of most likely tokens whose probability reaches p. Adapts to the
  shape: few tokens when the model is sure, many when it is not.
- **repetition penalty** p: for tokens already in the text, divide positive logits by p and multiply
  negative ones by p (both make them less likely).

The order (transformers', which the cards rely on): repetition penalty, then temperature, top-k, top-p,
then softmax and a multinomial draw. Written from the definitions:
"""),
code("""
def my_repetition_penalty(logits, previous_ids, penalty):
    out = logits.clone()
    for token in set(previous_ids.tolist()):
        out[token] = out[token] / penalty if out[token] > 0 else out[token] * penalty
    return out


def my_top_k(logits, k):
    kth_best = logits.sort(descending=True).values[k - 1]
    return logits.masked_fill(logits < kth_best, float("-inf"))


def my_top_p(logits, p):
    probs, order = logits.softmax(-1).sort(descending=True)
    mass_before = probs.cumsum(-1) - probs            # probability of the tokens ranked above each one
    keep_sorted = mass_before < p                     # keep until the kept mass reaches p (always the top one)
    keep = torch.zeros_like(keep_sorted).scatter(0, order, keep_sorted)
    return logits.masked_fill(~keep, float("-inf"))


# A real next-token distribution: the trained model after the start of a story
prompt_ids = tokenizer("Once upon a time, there was a little", return_tensors="pt").input_ids
# and one after a prompt that already contains the likely answer, where a repetition penalty has work to do
loop_ids = tokenizer("The capital of Sweden is Stockholm. The capital of Sweden is", return_tensors="pt").input_ids
with torch.no_grad():
    logits = model(prompt_ids).logits[0, -1]
    loop_logits = model(loop_ids).logits[0, -1]
settings = {
    "greedy": F.one_hot(logits.argmax(), logits.shape[0]).float(),
    "T = 1": logits.softmax(-1),
    "T = 0.5": (logits / 0.5).softmax(-1),
    "T = 1.5": (logits / 1.5).softmax(-1),
    "top-k 10": my_top_k(logits, 10).softmax(-1),
    "top-p 0.9": my_top_p(logits, 0.9).softmax(-1),
    "T 0.8 + top-p 0.9 (cards)": my_top_p(logits / 0.8, 0.9).softmax(-1),
}
order = logits.argsort(descending=True)[:40]
fig, axes = plt.subplots(2, 4, figsize=(15, 5.5), sharey=True)
for ax, (name, probs) in zip(axes.flat, settings.items()):
    ax.bar(range(40), probs[order].numpy())
    kept = int((probs > 0).sum())
    ax.set_title(f"{name}\\n{kept} tokens possible", fontsize=10)
    ax.set_xlabel("token rank (by raw logit)")
# The last panel has its own prompt: T = 1 with and without the penalty on the prompt's tokens
penalised = my_repetition_penalty(loop_logits, loop_ids[0], 1.5).softmax(-1)
loop_order = loop_logits.argsort(descending=True)[:40]
ax = axes[1, 3]
ax.bar(range(40), loop_logits.softmax(-1)[loop_order].numpy(), color="lightgrey", label="T = 1")
ax.bar(range(40), penalised[loop_order].numpy(), width=0.5, label="+ rep. penalty 1.5")
ax.set_title("'...Sweden is Stockholm. The capital\\nof Sweden is' (T = 1 vs penalty 1.5)", fontsize=10)
ax.set_xlabel("token rank (by raw logit)")
ax.legend(fontsize=8)
axes[0, 0].set_ylabel("probability")
axes[1, 0].set_ylabel("probability")
plt.tight_layout()
plt.show()


def top(probs: torch.Tensor) -> str:
    \"\"\"probs: [V] -> the three likeliest tokens with their probabilities.\"\"\"
    return ", ".join(f"{tokenizer.decode([int(i)])!r} {probs[i]:.2f}" for i in probs.topk(3).indices)


print("story prompt, T = 1:          ", top(logits.softmax(-1)))
print("Stockholm prompt, T = 1:      ", top(loop_logits.softmax(-1)))
print("Stockholm prompt, penalty 1.5:", top(penalised))
"""),
md("""
After the story prompt the trained model hesitates between several animals, so temperature, top-k and top-p
each visibly reshape the bars. After the second prompt it is sure of ` Stockholm` - a word already in the
prompt - and the penalty (1.5, dividing that positive logit by 1.5) takes away a large share of its
probability, handing it to other capitals. That is the penalty's blind spot: it cannot tell a loop from a fact
the text is supposed to repeat. Over a whole story it breaks loops and, just as readily, the consistency of a
character's name:
"""),
code("""
story = tokenizer("Once upon a time", return_tensors="pt").input_ids
for penalty in (1.0, 1.3):
    out = generate(model, story, max_new_tokens=45, repetition_penalty=penalty)   # greedy
    print(f"repetition_penalty={penalty}: {tokenizer.decode(out[0])!r}\\n")
"""),
md("""
The package versions (`generation.apply_repetition_penalty`, `top_k_filter`, `top_p_filter`) work on
batches and are vectorised; they must agree with ours above and with transformers' processors:
"""),
code("""
from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

from doge_from_scratch.generation import apply_repetition_penalty, top_k_filter, top_p_filter

seen = torch.zeros(1, logits.shape[0], dtype=torch.bool)
seen[0, prompt_ids[0]] = True
checks = {
    "top-k": (top_k_filter(logits[None], 10)[0], my_top_k(logits, 10), TopKLogitsWarper(10)(None, logits[None])[0]),
    "top-p": (top_p_filter(logits[None], 0.9)[0], my_top_p(logits, 0.9),
              TopPLogitsWarper(0.9)(None, logits[None].clone())[0]),
    "repetition": (apply_repetition_penalty(logits[None], seen, 2.0)[0],
                   my_repetition_penalty(logits, prompt_ids[0], 2.0), None),
}
for name, (package, ours, theirs) in checks.items():
    assert torch.equal(package, ours), name
    assert theirs is None or torch.equal(package, theirs), name
print("package == hand-written == transformers for", list(checks))
"""),
md("""
Sampling is reproducible: seeding `torch.manual_seed` right before `generate` gives exactly the draw
transformers makes (same processing, same `torch.multinomial` on the same probabilities); `seed=` uses a
private generator instead and leaves the global random state alone.
"""),
code("""
# NBVAL_CHECK_OUTPUT
a = generate(model, prompt_ids, max_new_tokens=20, do_sample=True, temperature=0.8, top_p=0.9, seed=42)
b = generate(model, prompt_ids, max_new_tokens=20, do_sample=True, temperature=0.8, top_p=0.9, seed=42)
c = generate(model, prompt_ids, max_new_tokens=20, do_sample=True, temperature=0.8, top_p=0.9, seed=43)
print("same seed, same text:", torch.equal(a, b), "| other seed, other text:", not torch.equal(a, c))
"""),
md("""
## 4. Streaming

`generate` calls a streamer's `put(ids)` once with the prompt and once per new token, and `end()` at the end
(transformers' protocol, so its streamers work with our `generate` too). Printing each token's text as it
comes is almost right - but byte-level BPE tokens can end in the middle of a UTF-8 character or a word, so a
streamer decodes everything it has and prints only the part that is final: up to the last space, and never a
half character (decoded as U+FFFD). A minimal one:
"""),
code("""
class MiniStreamer:
    def __init__(self, tokenizer):
        self.tokenizer, self.tokens, self.printed, self.prompt_done = tokenizer, [], 0, False

    def put(self, ids):
        if not self.prompt_done:          # the first call carries the prompt: skip it
            self.prompt_done = True
            return
        self.tokens += ids.reshape(-1).tolist()
        text = self.tokenizer.decode(self.tokens)
        if text.endswith("\\ufffd"):
            return
        cut = text.rfind(" ") + 1
        if cut > self.printed:
            print(text[self.printed:cut], end="", flush=True)
            self.printed = cut

    def end(self):
        print(self.tokenizer.decode(self.tokens)[self.printed:])


out = generate(model, prompt_ids, max_new_tokens=30, streamer=MiniStreamer(tokenizer), seed=0,
               do_sample=True, temperature=0.8, top_p=0.9)
"""),
md("""
The package's `TextStreamer` does the same (plus newlines, and an `on_text` callback instead of `print`
if you want the pieces), and `TextIteratorStreamer` lets another thread iterate over the text.
"""),
code("""
from doge_from_scratch.generation import TextStreamer

pieces = []
out = generate(model, prompt_ids, max_new_tokens=30, seed=0, do_sample=True, temperature=0.8, top_p=0.9,
               streamer=TextStreamer(tokenizer, skip_prompt=True, on_text=lambda text, final: pieces.append(text)))
print(len(pieces), "pieces:", pieces[:5], "...")
assert "".join(pieces) == tokenizer.decode(out[0, prompt_ids.shape[1]:])
"""),
md("""
## 5. The model cards' example, on our model

The cards' code, unchanged except for where the model and tokenizer come from (no download here: our
tokenizer and the trained tiny model above; it is only pretrained, but its corpus holds some chat transcripts,
so a greeting may already get a fitting reply - answering questions is lesson 07's work) and the streamer's
import (ours; transformers' `TextStreamer` works the same with our `generate`). `GenerationConfig` is
transformers' own; `generate` reads it, leaving unset fields at transformers' defaults (so `top_k` is 50
here, as in transformers).
"""),
code("""
from transformers import GenerationConfig

from doge_from_scratch.generation import TextStreamer

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

prompt = "Hi, how are you doing today?"
conversation = [
    {"role": "user", "content": prompt}
]
inputs = tokenizer.apply_chat_template(
    conversation=conversation,
    tokenize=True,
    return_tensors="pt",
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
**Batches** need padding, on the *left*: every row's last real token then sits in the last column, so each
step writes all rows' new tokens into one new column. Positions count real tokens only
(`cumsum(attention_mask) - 1`) and padded keys are masked, so each row comes out exactly as if generated alone:
"""),
code("""
# NBVAL_CHECK_OUTPUT
tokenizer.padding_side = "left"
texts = ["Once upon a time", "The weather today is", "Hello"]
batch = tokenizer(texts, return_tensors="pt", padding=True)
batched = generate(model, batch.input_ids, batch.attention_mask, max_new_tokens=25)
for i, text in enumerate(texts):
    ids = tokenizer(text, return_tensors="pt").input_ids
    alone = generate(model, ids, max_new_tokens=25)[0, ids.shape[1]:]  # shorter if this row met its eos
    new = batched[i, batch.input_ids.shape[1]:]
    same = torch.equal(new[:len(alone)], alone) and bool((new[len(alone):] == tokenizer.pad_token_id).all())
    print(f"{text!r:24} padded with {int((batch.attention_mask[i] == 0).sum())} - same as alone: {same} "
          f"({len(alone)} new tokens)")
"""),
md("""
## 6. Parity with transformers

The acceptance test: the same weights in transformers' `DogeForCausalLM` (float32), greedy, 60 new tokens,
with a prompt longer than `keep_window_size` so that the dynamic top-k mask is active at every step.
"""),
code("""
# NBVAL_CHECK_OUTPUT
long_config = DogeConfig.from_preset("Doge-20M", vocab_size=len(tokenizer), num_hidden_layers=2,
                                     keep_window_size=32)
ours = randomize_(DogeForCausalLM(long_config), seed=3).eval()
theirs = reference_model(long_config)
copy_into_reference(ours, theirs)
ids = torch.randint(3, len(tokenizer), (1, 48), generator=torch.Generator().manual_seed(2))
expected = theirs.generate(ids, max_new_tokens=60, do_sample=False, eos_token_id=None, pad_token_id=2)
print("greedy ids equal transformers:", torch.equal(generate(ours, ids, max_new_tokens=60), expected))
"""),
md("""
## 7. A fast CPU decoder

At batch 1 a decoded token multiplies one vector by every weight matrix once: reading the weights from memory
is the bulk of the work, and the time of those matrix-vector products alone is a **floor** no decoder can beat
in the same dtype. Everything else - norms, RoPE, the cache write, attention, Python - is overhead to shrink.
`fast_decode.FastDoge` builds an inference copy of the same model that:

- fuses q/k/v into one matrix and gate/up into another (4 products per layer instead of 7);
- preallocates keys, values *and the per-key bias* (computed once per key, as shown in section 2);
- builds no mask while the cache fits in the keep window: the bias row *is* the additive mask, with unfilled
  slots holding the dtype minimum exactly where the reference writes it;
- runs a flat loop over tensors per token (grouped heads ride in the query axis, no `repeat_kv`);
- prefills a prompt prefix that every row of a batch shares (a long system prompt) once, and copies its keys,
  values and biases into each row: while everything fits in the keep window a query sees every real key, so
  only the round-off changes (lesson 10's sampler gains a third of its time from it);
- optionally holds bfloat16 weights (half the bytes to read) and compiles the per-token step with
  `torch.compile`.

Prompts, padding and caches past the keep window go through the lesson-02 attention functions, so they inherit
the model's numbers. First: it is the same model.
"""),
code("""
from doge_from_scratch.fast_decode import FastDoge
from doge_from_scratch.generation import ModelStepper

fast = FastDoge(model)
plain_steps, fast_steps = ModelStepper(model, 1, 64, "static"), fast.make_stepper(1, 64)
positions = torch.arange(prompt_ids.shape[1])[None]
sequence, checks = prompt_ids, []
with torch.no_grad():
    a = plain_steps.prefill(prompt_ids, None, positions)
    b = fast_steps.prefill(prompt_ids, None, positions)
    worst = (a - b).abs().max().item()
    for step in range(30):
        checks.append(float32_error_check(f"step {step}", b, a, exact_model(sequence).logits[:, -1]))
        token, position = a.argmax(-1), positions[:, -1] + 1 + step
        sequence = torch.cat((sequence, token[:, None]), dim=1)
        a, b = plain_steps.step(token, None, position), fast_steps.step(token, None, position)
        worst = max(worst, (a - b).abs().max().item())
print(f"fast vs model, 31 steps of logits: largest difference {worst:.1e}; each step as close to float64 as "
      f"the model is: {all(c['ok'] for c in checks)}")
assert all(c["ok"] for c in checks), failed_checks(checks)
"""),
md("""
A small live timing (Doge-20M shape with its full 32768-token vocabulary, float32, 32-token prompt, 64 new
tokens): the teaching model with its cache, the fast decoder, transformers' `generate`, and the floor.
Rates divide by this process's CPU time on one thread, best of two interleaved runs: other programs may share
this machine, and CPU time counts only our own work (wall time would mostly count our turns at the CPU).
The numbers still move from run to run; the ratios are what to read.
"""),
code("""
from doge_from_scratch.bench.decode import TokenClock, matmul_floor_tokens_per_s

bench_config = DogeConfig.from_preset("Doge-20M", eos_token_id=None)
bench_model = randomize_(DogeForCausalLM(bench_config), seed=0).eval()
bench_reference = reference_model(bench_config, attn_implementation="sdpa")
copy_into_reference(bench_model, bench_reference)
bench_fast = FastDoge(bench_model)
bench_prompt = torch.randint(3, 32768, (1, 32), generator=torch.Generator().manual_seed(0))


def decode_rate(run) -> float:
    clock = TokenClock()
    run(clock)
    return clock.cpu_tokens_per_s()


runs = {
    "teaching model + cache": lambda s: generate(bench_model, bench_prompt, max_new_tokens=64, streamer=s,
                                                 decoder="teaching"),
    "FastDoge": lambda s: generate(bench_fast, bench_prompt, max_new_tokens=64, streamer=s),
    "transformers generate": lambda s: bench_reference.generate(bench_prompt, max_new_tokens=64, do_sample=False,
                                                                eos_token_id=None, pad_token_id=2, streamer=s),
}
live = {name: 0.0 for name in runs}
torch.set_num_threads(1)                            # one core's work, so CPU time measures it (see the benchmark)
with torch.inference_mode():
    for run in runs.values():
        run(None)                                   # warm up
    for _ in range(2):                              # interleaved, best of two
        for name, run in runs.items():
            live[name] = max(live[name], decode_rate(run))
    live["matmul floor"] = matmul_floor_tokens_per_s(bench_fast, 63)[0]
torch.set_num_threads(2)
for name, rate in live.items():
    print(f"{name:24s} {rate:7.1f} tokens/s   ({rate / live['matmul floor']:.2f} of the floor)")
"""),
md("""
The full benchmark - every size, float32 and bfloat16, each against transformers in the same run - is
`python -m doge_from_scratch.bench decode`; its last committed result is read here. The first two panels are
one machine, one run: ours, transformers and the matmul floor side by side. The model cards' figures were
measured on another machine (an Intel i7-11 laptop CPU), so they get a panel of their own: a bar there taller
than this machine's floor says the laptop moves weights faster, not that a decoder beat the floor.
"""),
code("""
import doge_from_scratch

results_path = Path(doge_from_scratch.__file__).parent / "bench" / "results" / "decode.json"
results = json.loads(results_path.read_text())
print("benchmark machine:", results["machine"], "| clock:", results["clock"])
rows = results["rows"]
sizes = list(dict.fromkeys(r["size"] for r in rows))
fig, axes = plt.subplots(1, 3, figsize=(15, 4), sharey=True, gridspec_kw={"width_ratios": [1, 1, 0.55]})
x = torch.arange(len(sizes)).float()
for ax, dtype in zip(axes, ("float32", "bfloat16")):
    by_size = {r["size"]: r for r in rows if r["dtype"] == dtype}
    for offset, key, label in ((-0.25, "ours_tok_s", "ours (FastDoge)"), (0.0, "transformers_tok_s", "transformers"),
                               (0.25, "floor_tok_s", "matmul floor")):
        ax.bar(x + offset, [by_size[s][key] if s in by_size else 0 for s in sizes], width=0.25, label=label)
    ax.set_xticks(x, sizes)
    ax.set_yscale("log")
    ax.set_title(f"this machine: batch-1 decode, {dtype}", fontsize=10)
axes[0].set_ylabel("tokens / s (log scale)")
axes[0].legend(fontsize=8)
card = {r["size"]: r["card_tok_s"] for r in rows}
axes[2].bar(x, [card.get(s, 0) for s in sizes], width=0.5, color="grey")
axes[2].set_xticks(x, sizes, fontsize=8)
axes[2].set_title("model cards: another machine (i7-11)\\nnot comparable with the floor", fontsize=10)
plt.tight_layout()
plt.show()
for r in rows:
    print(f"{r['size']:10s} {r['dtype']:9s} ours {r['ours_tok_s']:6.1f} | transformers {r['transformers_tok_s']:6.1f} "
          f"| ours/floor {r['ours_over_floor']:.2f} | ours/transformers {r['ours_over_transformers']:.2f}")
"""),
md("""
## Int8 weights: fewer bytes per token

At batch 1 every new token reads every weight once, so the bytes per weight set the speed limit (the "floor"
above). `FastDoge(model, weights="int8")` stores each weight matrix as int8 with one scale per output row
(W ~ scale * q, |q| <= 127): a quarter of float32's bytes. The activations stay floating point, and each weight
moves by at most half its row's step. The product runs in ATen's own int8 kernel
(`torch._weight_int8pack_mm`); `doge_from_scratch/int8.py` says why not torchao (on this CPU it was slower than
plain float weights). What int8 costs is measured, not assumed: `int8.int8_quality` compares it with float32 on
lesson 06's validation rows.
"""),
code("""
from doge_from_scratch import int8
from doge_from_scratch.pretrain import validation_rows

w = model.model.layers[0].mlp.up_proj.weight.detach()
packed = int8.quantise(w)
step = packed.scale[:, None]
print(f"one weight matrix {tuple(w.shape)}: {w.numel() * 4:,} bytes in float32 -> {packed.nbytes():,} in int8")
print("largest change of a weight / its row's step:", round(float(((packed.dequantise() - w).abs() / step).max()), 3))
quality = int8.int8_quality(model.float(), validation_rows(limit_docs=16),
                            tokenizer("The capital of Sweden is", return_tensors="pt").input_ids, new_tokens=64)
print(int8.summarise([quality]))
"""),
md("""
## Summary and the package

- The KV cache turns per-token cost from growing with the length to constant; Doge's bias is a function of
  each cached value, so keys and values are all a cache must hold.
- Sampling is a chain of logit transforms and one multinomial draw; the order and the details (ties in top-k,
  the "at least one token" rule of top-p) match transformers, so seeded samples match too.
- The fast decoder is the same model with fewer, fused operations.

Finally, the package's pieces against what this notebook built:
"""),
code("""
# NBVAL_CHECK_OUTPUT
from doge_from_scratch.cache import KVCache

package_cache, my_cache = KVCache(), ListCache()
with torch.no_grad():
    x = model(ids[:, :10].clamp(max=len(tokenizer) - 1), past_key_values=package_cache, use_cache=True).logits
    y = model(ids[:, :10].clamp(max=len(tokenizer) - 1), past_key_values=my_cache, use_cache=True).logits
assert torch.equal(x, y) and torch.equal(package_cache.keys[1], my_cache.keys[1])
assert torch.equal(top_p_filter(logits[None], 0.5)[0], my_top_p(logits, 0.5))
assert torch.equal(top_k_filter(logits[None], 3)[0], my_top_k(logits, 3))
print("package KVCache, top-k and top-p equal the notebook's versions")
"""),
md("""
## Exercises

Each exercise gives a stub to fill in and a check from `doge_from_scratch.exercises` that runs it on prepared
inputs: it prints "not yet" while the stub raises `NotImplementedError`, the first input it gets wrong
(expected against got) otherwise, and "correct" when every case agrees with the package. Solutions:
`notebooks/solutions/05_generation.ipynb`.

1. The repetition penalty. Predict what happens to a seen token with a negative logit if you divide it by the
   penalty.
2. Top-k filtering.
3. Top-p (nucleus) filtering: keep the smallest set of likely tokens reaching p, never an empty one.
"""),
code("""
from doge_from_scratch.exercises import check_repetition_penalty, check_top_k, check_top_p


def repetition_penalty(scores, seen, penalty):
    \"\"\"repetition_penalty(scores, seen, penalty) -> [B, V]: every seen token made less likely - a positive logit
    divided by the penalty, a negative one multiplied (generation.apply_repetition_penalty). scores: [B, V];
    seen: bool [B, V].\"\"\"
    raise NotImplementedError  # your code here


check_repetition_penalty(repetition_penalty)
"""),
code("""
def top_k(scores, k):
    \"\"\"top_k(scores, k) -> [B, V]: the k largest scores of each row kept, the rest -inf
    (generation.top_k_filter).\"\"\"
    raise NotImplementedError  # your code here


check_top_k(top_k)
"""),
code("""
def top_p(scores, p):
    \"\"\"top_p(scores, p) -> [B, V]: the smallest set of most likely tokens whose probability reaches p kept
    (always at least one), the rest -inf (generation.top_p_filter).\"\"\"
    raise NotImplementedError  # your code here


check_top_p(top_p)
"""),
md("""
## Further reading

- Holtzman et al., *The Curious Case of Neural Text Degeneration* (nucleus sampling),
  [arXiv:1904.09751](https://arxiv.org/abs/1904.09751)
- Keskar et al., *CTRL* (the repetition penalty), [arXiv:1909.05858](https://arxiv.org/abs/1909.05858)
- Model card: [SmallDoge/Doge-60M-Instruct](https://huggingface.co/SmallDoge/Doge-60M-Instruct) (its
  generation example and CPU speeds)
- Checked against: transformers `generation/logits_process.py` and `DogeForCausalLM.generate`; our
  `doge_from_scratch.generation`
"""),
]

if __name__ == "__main__":
    print(write_notebook("05_generation.ipynb", cells))
