"""Group Relative Policy Optimisation (lesson 10), with TRL 1.16's ``GRPOTrainer`` semantics.

One round of GRPO:

1. sample a *group* of G completions for each of the step's prompts with our own ``generate`` (seeded, batched);
2. score every completion with the reward functions (``rewards``), weighted and summed: r [N] (N = prompts * G);
3. group-relative advantages: A = r - mean(r of its group), divided by std + 1e-4 (``scale_rewards``: the
   group's std, the whole batch's std, or not at all);
4. ``num_iterations`` optimizer steps on these completions: with the ratio rho_t = pi(o_t) / pi_old(o_t) per token,
       loss_t = -min(rho_t A, clip(rho_t, 1 - epsilon, 1 + epsilon_high) A) + beta * KL_t
   where pi_old is the policy that sampled (rho = 1 at the first iteration, with gradient) and KL_t is the k3
   estimator of KL(pi || pi_ref), exp(q - p) - (q - p) - 1 for log-probs p (policy) and q (frozen reference),
   times rho_t (TRL's ``use_bias_correction_kl``, on by default);
5. reduce the token losses (``loss_type``; m = completion-token mask, L = max_completion_length):
       grpo:    mean over sequences of (sum_t loss m / sum_t m)     (per-sequence mean: a length bias)
       bnpo:    sum loss m / sum m per micro-batch, averaged over micro-batches
       dr_grpo: sum loss m / (sequences * L)
       dapo:    sum loss m / tokens of the whole generation batch   (TRL's default)

Log-probs are of the temperature-scaled distribution the completions were sampled from (logits / temperature),
as TRL computes them. The micro-batch losses reuse ``train_utils.optimizer_step``: each loss type is a summed
loss with an item count whose total over the step is the normaliser above, so gradient accumulation and DDP
give the gradient of one big batch. Under ``torchrun`` every process samples the whole generation batch with the
same seed (identical weights, identical completions, no gathering) and trains on its shard of the micro-batches.

As in TRL's default, one generation batch makes one optimizer step per iteration (``steps_per_generation`` =
gradient accumulation steps).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from .cache import KVCache, shared_prefix_length, split_shared_prefix
from .data import REASONING_SYSTEM_PROMPT, reasoning_record
from .distill import ensure_reason_distill
from .generation import chat_replies
from .model import DogeForCausalLM
from .rewards import REWARD_FUNCS, is_correct, is_strictly_formatted
from .sft import SFTSettings, finished_stage, save_stage, train_sft
from .tasks import TASKS, Problem, prompt_and_reference
from .tokenizer import load_tokenizer
from .train_utils import (OptimizerSettings, StageLoss, StepLog, all_reduce_sum, cosine_schedule, make_optimizer,
                          optimizer_step, progress_bar, rank, shard, world_size)

LOSS_TYPES = ("grpo", "bnpo", "dr_grpo", "dapo")
SCALE_REWARDS = ("group", "batch", "none")
RewardFunc = Callable[..., list[float]]


# ----------------------------------------------------------------------------------------------------------
# 1. Sampling groups
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """N = prompts * G completions; rows g*G .. g*G + G - 1 answer prompt g.

    prompt_ids / prompt_mask: [N, P] left-padded; completion_ids / completion_mask: [N, C] right-padded, the mask
    covering each completion up to and including its first eos (TRL's mask). texts: the completions decoded with
    special tokens kept (the section tags are visible to the rewards), cut after the eos.
    """

    prompt_ids: torch.Tensor
    prompt_mask: torch.Tensor
    completion_ids: torch.Tensor
    completion_mask: torch.Tensor
    texts: list[str]
    conversations: list[list[dict[str, str]]]


def render_prompts(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]]) -> list[list[int]]:
    """Each conversation rendered up to the assistant header (the generation prompt)."""
    return [list(tokenizer.apply_chat_template(list(c), add_generation_prompt=True, tokenize=True,
                                               return_dict=False)) for c in conversations]


def pad_rows(rows: Sequence[Sequence[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Lists of ids -> (ids [N, W], mask [N, W]) padded on the left or on the right."""
    width = max(1, max(map(len, rows)))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        ids[i, cols] = torch.tensor(list(row), dtype=torch.long)
        mask[i, cols] = 1
    return ids, mask


def up_to_eos(ids: Sequence[int], eos_ids: Sequence[int]) -> list[int]:
    """A completion's ids up to and including its first eos (all of them if it never stopped)."""
    ids = list(ids)
    for i, token in enumerate(ids):
        if token in eos_ids:
            return ids[:i + 1]
    return ids


def make_rollout(tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]],
                 completions: Sequence[Sequence[int]]) -> Rollout:
    """A Rollout from given completion ids (one per conversation; already repeated G times per prompt)."""
    if len(conversations) != len(completions):
        raise ValueError(f"{len(conversations)} conversations but {len(completions)} completions")
    eos = [tokenizer.eos_token_id]
    completions = [up_to_eos(c, eos) for c in completions]
    prompt_ids, prompt_mask = pad_rows(render_prompts(tokenizer, conversations), tokenizer.pad_token_id, left=True)
    completion_ids, completion_mask = pad_rows(completions, tokenizer.pad_token_id, left=False)
    texts = [tokenizer.decode(c, skip_special_tokens=False) for c in completions]
    return Rollout(prompt_ids, prompt_mask, completion_ids, completion_mask, texts,
                   [[dict(m) for m in c] for c in conversations])


@torch.no_grad()
def sample_groups(model, tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]], num_generations: int,
                  max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, top_k: int | None = None,
                  seed: int = 0, batch_size: int = 64) -> Rollout:
    """G sampled completions per conversation, ``batch_size`` rows per left-padded ``generate`` call.

    Chunk i samples with seed ``seed + i``: the same seed reproduces the same completions on any process.
    In eval mode ``generate`` decodes with the model's fast copy (``fast_decode``, about 3x faster here); the
    log-probs GRPO trains on always come from the model's own forward.
    """
    repeated = [list(c) for c in conversations for _ in range(num_generations)]
    prompts = render_prompts(tokenizer, repeated)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    completions: list[list[int]] = []
    for i, start in enumerate(range(0, len(prompts), batch_size)):
        ids, mask = pad_rows(prompts[start:start + batch_size], tokenizer.pad_token_id, left=True)
        out = model.generate(ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=True,
                             temperature=temperature, top_p=top_p, top_k=top_k or None, seed=seed + i,
                             eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        completions += out[:, ids.shape[1]:].tolist()
    if was_training:
        model.train()
    return make_rollout(tokenizer, repeated, completions)


# ----------------------------------------------------------------------------------------------------------
# 2-3. Rewards and group-relative advantages
# ----------------------------------------------------------------------------------------------------------


def reward_name(fn: RewardFunc) -> str:
    return getattr(fn, "__name__", type(fn).__name__)


def score(rollout: Rollout, reward_funcs: Sequence[RewardFunc], columns: Mapping[str, Sequence[Any]]) -> torch.Tensor:
    """rewards_per_func [N, F]: each function on every completion; ``columns`` hold one value per completion."""
    n = len(rollout.texts)
    ids = [row[mask.bool()].tolist() for row, mask in zip(rollout.completion_ids, rollout.completion_mask)]
    out = torch.zeros(n, len(reward_funcs))
    for j, fn in enumerate(reward_funcs):
        values = fn(prompts=rollout.conversations, completions=rollout.texts, completion_ids=ids, **columns)
        if len(values) != n:
            raise ValueError(f"reward function {reward_name(fn)!r} returned {len(values)} rewards for {n} completions")
        out[:, j] = torch.tensor([float(v) for v in values], dtype=torch.float32)
    return out


def group_advantages(rewards: torch.Tensor, num_generations: int, scale_rewards: str = "group"
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(advantages [N], the std used [N]) from rewards [N] in groups of ``num_generations`` consecutive rows.

    std is the unbiased (Bessel) standard deviation, of the group ("group", also computed for "none", where it
    only feeds the zero-std metric) or of the whole batch ("batch"); 1e-4 keeps a constant group finite (its
    advantages are 0 anyway).
    """
    if scale_rewards not in SCALE_REWARDS:
        raise ValueError(f"scale_rewards={scale_rewards!r}: choose one of {SCALE_REWARDS}")
    if rewards.numel() % num_generations:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {num_generations}")
    grouped = rewards.view(-1, num_generations)
    mean = grouped.mean(dim=1).repeat_interleave(num_generations)
    if scale_rewards == "batch":
        std = rewards.std().expand_as(rewards)
    else:
        std = grouped.std(dim=1).repeat_interleave(num_generations)
    advantages = rewards - mean
    if scale_rewards != "none":
        advantages = advantages / (std + 1e-4)
    return advantages, std


# ----------------------------------------------------------------------------------------------------------
# 4-5. Per-token log-probs and the clipped objective
# ----------------------------------------------------------------------------------------------------------


def compute_shared_prefix(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, shared: int
                          ) -> tuple[KVCache, torch.Tensor, torch.Tensor]:
    """Run the ``shared`` leading prompt tokens every row has through ``model`` once, as one row.

    -> (its cache, expanded to the b rows; each row's prompt after the prefix [b, R] and its mask, still left
    padded: the last (length - shared) columns of each row).
    """
    prefix, rest, rest_mask = split_shared_prefix(prompt_ids, prompt_mask, shared)
    cache = model(input_ids=prefix, use_cache=True, logits_to_keep=1).past_key_values.expand_batch(len(prompt_ids))
    return cache, rest, rest_mask


def completion_logps(model, batch: Mapping[str, torch.Tensor], temperature: float = 1.0,
                     with_entropy: bool = False, share_prefix: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """log pi(o_t | prompt, o_<t) of each completion token under logits / temperature: [b, C] (0 on padding),
    and the next-token entropy at those positions [b, C] if asked.

    Positions count real tokens only (left padding and the prompt's real length), as in ``generate``.
    ``share_prefix``: the leading tokens all prompts share (lesson 10's system prompt: 225 of about 248) go
    through the model once, as one row whose keys and values every row attends to, and only the rest of each
    row is computed b times. The same numbers up to float32 round-off (a masked key adds exactly 0 to a softmax
    either way), and under autograd the prefix gets the summed gradient of all rows. Only for rows that fit in
    the keep window: past it each query keeps the top-k keys by bias, and equal biases (a repeated token's) make
    which of them it keeps depend on where the columns sit, so longer rows are computed whole (as is any model
    that is not this package's ``DogeForCausalLM``).
    """
    prompt_ids, prompt_mask = batch["prompt_ids"], batch["prompt_mask"]
    completion_ids, completion_mask = batch["completion_ids"], batch["completion_mask"]
    policy = getattr(model, "module", model)
    # ours only: another model (transformers' Doge) returns its own cache type, without expand_batch
    fits = isinstance(policy, DogeForCausalLM) and (
        prompt_ids.shape[1] + completion_ids.shape[1] <= policy.config.keep_window_size)
    shared = shared_prefix_length(prompt_ids, prompt_mask) if share_prefix and fits else 0
    cache = None
    if shared:
        cache, prompt_ids, prompt_mask = compute_shared_prefix(model, prompt_ids, prompt_mask, shared)
    ids = torch.cat((prompt_ids, completion_ids), dim=1)
    mask = torch.cat((prompt_mask, completion_mask), dim=1)
    positions = shared + (mask.cumsum(-1) - 1).clamp(min=0)
    if shared:
        mask = torch.cat((mask.new_ones(mask.shape[0], shared), mask), dim=1)
    width = completion_ids.shape[1]
    logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=cache,
                   logits_to_keep=width + 1).logits
    logp = torch.log_softmax(logits[:, :-1].float() / temperature, dim=-1)
    keep = completion_mask.bool()
    token_logps = logp.gather(-1, completion_ids.unsqueeze(-1)).squeeze(-1).masked_fill(~keep, 0.0)
    entropy = None
    if with_entropy:
        entropy = -(logp.exp() * logp).sum(-1).masked_fill(~keep, 0.0).detach()
    return token_logps, entropy


def clipped_token_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor, epsilon: float,
                       epsilon_high: float, beta: float = 0.0, ref_logps: torch.Tensor | None = None,
                       bias_correction_kl: bool = True) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token loss [b, C] and per-token diagnostics: ratio, clip indicators, kl (zeros when beta = 0).

    logps, old_logps, ref_logps: [b, C]; advantages: [b].
    """
    adv = advantages.unsqueeze(1)
    ratio = torch.exp(logps - old_logps)
    clipped = torch.clamp(ratio, 1 - epsilon, 1 + epsilon_high)
    loss = -torch.min(ratio * adv, clipped * adv)
    kl = torch.zeros_like(logps)
    if beta != 0.0:
        if ref_logps is None:
            raise ValueError("beta != 0 needs the reference model's log-probs (ref_logps)")
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        if bias_correction_kl:
            kl = kl * ratio
        loss = loss + beta * kl
    low = (ratio < 1 - epsilon) & (adv < 0)
    high = (ratio > 1 + epsilon_high) & (adv > 0)
    dtype = logps.dtype
    return loss, {"kl": kl.detach(), "low": low.to(dtype), "high": high.to(dtype), "region": (low | high).to(dtype)}


@dataclass
class GRPOSettings(OptimizerSettings):
    """GRPO knobs with TRL 1.16's names; defaults are lesson 10's recipe (TRL's own defaults noted)."""

    lr: float = 2e-4                # TRL 1e-6 (for billion-parameter models)
    steps: int = 120                # generation rounds (optimizer steps = steps * num_iterations); lesson 09's
                                    # own-base student, 240 held-out comparisons, after 80 / 120 / 160 rounds:
                                    # 147 / 167 / 183 right (Intel Xeon), 143 / 158 / 156 (AMD EPYC, where a round
                                    # took 2.7 s and 160 rounds would not fit the lesson's 6 minutes)
    prompts_per_step: int = 8
    num_generations: int = 8        # G, TRL 8
    micro_batch: int = 32           # completions per forward/backward (per process)
    max_completion_length: int = 112  # TRL 512; the longest comparison trace has 109 tokens
    temperature: float = 0.7        # TRL 1.0
    top_p: float = 1.0
    top_k: int = 0                  # 0 = off, as in TRL
    beta: float = 0.0               # TRL 0.0: no reference model
    epsilon: float = 0.2
    epsilon_high: float | None = None  # None = epsilon
    num_iterations: int = 1
    scale_rewards: str = "group"
    loss_type: str = "dapo"
    reward_weights: list[float] | None = None
    bias_correction_kl: bool = True  # TRL's use_bias_correction_kl
    warmup: float = 0.0
    min_lr_rate: float = 1.0        # constant LR after warmup
    betas: tuple[float, float] = (0.9, 0.99)
    share_prefix: bool = True       # the prompts' common prefix computed once per micro-batch (completion_logps)
    generation_batch_size: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        self.generation_batch_size = self.prompts_per_step * self.num_generations
        if self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type={self.loss_type!r}: choose one of {LOSS_TYPES}")
        if self.scale_rewards not in SCALE_REWARDS:
            raise ValueError(f"scale_rewards={self.scale_rewards!r}: choose one of {SCALE_REWARDS}")
        if self.num_generations < 2:
            raise ValueError(f"num_generations={self.num_generations}: GRPO needs at least 2 completions per prompt")
        if self.num_iterations < 1:
            raise ValueError(f"num_iterations={self.num_iterations} must be at least 1")

    @property
    def eps_high(self) -> float:
        return self.epsilon if self.epsilon_high is None else self.epsilon_high


_STATS = ("kl", "low", "high", "region", "entropy")


class GRPOObjective(StageLoss):
    """The summed clipped loss of a micro-batch for ``optimizer_step``; item counts make ``loss_type``'s normaliser.

    Per micro-batch it also keeps token sums of the diagnostics (``stats``) for TRL's metrics, which are means over
    the tokens of each micro-step (summed over processes), averaged over the step's micro-steps.
    """

    def __init__(self, settings: GRPOSettings) -> None:
        self.s = settings
        self.stats: list[dict[str, torch.Tensor]] = []
        super().__init__(self.summed, self.items)

    def items(self, batch: Mapping[str, torch.Tensor]) -> int:
        if self.s.loss_type == "dapo":
            return int(batch["completion_mask"].sum())
        if self.s.loss_type == "bnpo":
            return 1
        return int(batch["completion_ids"].shape[0])

    def summed(self, model, batch):
        s = self.s
        logps, entropy = completion_logps(model, batch, s.temperature, with_entropy=True, share_prefix=s.share_prefix)
        old = batch.get("old_logps")
        old = logps.detach() if old is None else old
        loss, diag = clipped_token_loss(logps, old, batch["advantages"], s.epsilon, s.eps_high, s.beta,
                                        batch.get("ref_logps"), s.bias_correction_kl)
        mask = batch["completion_mask"].float()
        per_seq = (loss * mask).sum(-1)
        if s.loss_type == "grpo":
            total = (per_seq / mask.sum(-1).clamp(min=1.0)).sum()
        elif s.loss_type == "bnpo":
            total = per_seq.sum() / mask.sum().clamp(min=1.0)
        elif s.loss_type == "dr_grpo":
            total = per_seq.sum() / s.max_completion_length
        else:
            total = per_seq.sum()
        lengths = mask.sum(-1)
        stats = {k: (diag[k] * mask).sum() for k in ("kl", "low", "high", "region")}
        stats["entropy"] = (entropy * mask).sum()
        stats["tokens"] = mask.sum()
        stats["low_seq_min"] = ((diag["low"] * mask).sum(-1) / lengths).min()
        stats["high_seq_max"] = ((diag["high"] * mask).sum(-1) / lengths).max()
        self.stats.append({k: v.detach() for k, v in stats.items()})
        return total, torch.tensor(self.items(batch)), {}

    def step_metrics(self) -> dict[str, float]:
        """TRL's kl / entropy / clip_ratio metrics for the micro-batches seen since the last call."""
        per_micro = []
        for stats in self.stats:
            sums = all_reduce_sum(torch.stack([stats[k] for k in (*_STATS, "tokens")]))
            low_min, high_max = stats["low_seq_min"].clone(), stats["high_seq_max"].clone()
            if world_size() > 1:
                dist.all_reduce(low_min, op=dist.ReduceOp.MIN)
                dist.all_reduce(high_max, op=dist.ReduceOp.MAX)
            tokens = sums[-1].clamp(min=1.0)
            row = {k: float(sums[i] / tokens) for i, k in enumerate(_STATS)}
            row.update(low_min=float(low_min), high_max=float(high_max))
            per_micro.append(row)
        self.stats = []
        mean = lambda key: sum(r[key] for r in per_micro) / len(per_micro)  # noqa: E731
        out = {"entropy": mean("entropy"), "clip_ratio/low_mean": mean("low"), "clip_ratio/low_min": mean("low_min"),
               "clip_ratio/high_mean": mean("high"), "clip_ratio/high_max": mean("high_max"),
               "clip_ratio/region_mean": mean("region")}
        if self.s.beta != 0.0:
            out["kl"] = mean("kl")
        return out


# ----------------------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------------------


def rollout_metrics(rollout: Rollout, rewards_per_func: torch.Tensor, weights: torch.Tensor, std: torch.Tensor,
                    names: Sequence[str], eos_id: int, pad_id: int) -> dict[str, float]:
    """TRL's generation-time metrics: reward mean/std (total and per function), zero-std share, lengths."""
    rewards = (rewards_per_func * weights).sum(dim=1)
    lengths = rollout.completion_mask.sum(dim=1).float()
    last = rollout.completion_ids.gather(1, (lengths.long() - 1).clamp(min=0).unsqueeze(1)).squeeze(1)
    truncated = ~torch.isin(last, torch.tensor([eos_id, pad_id]))
    terminated = lengths[~truncated] if bool((~truncated).any()) else torch.zeros(1)
    out = {"reward": float(rewards.mean()), "reward_std": float(rewards.std()),
           "frac_reward_zero_std": float(torch.isclose(std, torch.zeros_like(std)).float().mean()),
           "completions/mean_length": float(lengths.mean()), "completions/min_length": float(lengths.min()),
           "completions/max_length": float(lengths.max()), "completions/clipped_ratio": float(truncated.float().mean()),
           "completions/mean_terminated_length": float(terminated.mean())}
    for j, name in enumerate(names):
        out[f"rewards/{name}/mean"] = float(rewards_per_func[:, j].mean())
        out[f"rewards/{name}/std"] = float(rewards_per_func[:, j].std())
    return out


@dataclass
class GRPOStepLog(StepLog):
    """A StepLog plus the completions' advantages [N] (TRL logs them per completion)."""

    advantages: list[float] = field(default_factory=list)
    completions: list[str] = field(default_factory=list)


def micro_batches(batch: Mapping[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """Consecutive row slices of ``size`` rows, trimmed to the padding they need (values do not change)."""
    out = []
    n = batch["prompt_ids"].shape[0]
    for start in range(0, n, size):
        part = {k: v[start:start + size] for k, v in batch.items()}
        p_cols = part["prompt_mask"].any(0).nonzero()
        c_cols = part["completion_mask"].any(0).nonzero()
        p_from, c_to = int(p_cols[0]) if len(p_cols) else 0, int(c_cols[-1]) + 1 if len(c_cols) else 1
        for k in ("prompt_ids", "prompt_mask"):
            part[k] = part[k][:, p_from:]
        for k in ("completion_ids", "completion_mask", "old_logps", "ref_logps"):
            if k in part:
                part[k] = part[k][:, :c_to]
        out.append(part)
    return out


@torch.no_grad()
def scored_logps(model, batch: Mapping[str, torch.Tensor], settings: GRPOSettings) -> torch.Tensor:
    """Log-probs [N, C] of the whole generation batch under ``model`` (no gradient), a micro-batch at a time."""
    parts = []
    width = batch["completion_ids"].shape[1]
    for part in micro_batches(batch, settings.micro_batch):
        logps, _ = completion_logps(model, part, settings.temperature, share_prefix=settings.share_prefix)
        parts.append(torch.nn.functional.pad(logps, (0, width - logps.shape[1])))
    return torch.cat(parts)


def grpo_round(model, rollout: Rollout, rewards_per_func: torch.Tensor, optimizer, scheduler, settings: GRPOSettings,
               names: Sequence[str], eos_id: int, pad_id: int, ref_model=None, first_step: int = 1
               ) -> list[GRPOStepLog]:
    """``num_iterations`` optimizer steps on one scored generation batch (every process holds all of it)."""
    s = settings
    weights = torch.tensor(s.reward_weights or [1.0] * rewards_per_func.shape[1], dtype=torch.float32)
    if len(weights) != rewards_per_func.shape[1]:
        raise ValueError(f"{len(weights)} reward_weights for {rewards_per_func.shape[1]} reward functions")
    rewards = (rewards_per_func * weights).sum(dim=1)
    advantages, std = group_advantages(rewards, s.num_generations, s.scale_rewards)
    generation = rollout_metrics(rollout, rewards_per_func, weights, std, names, eos_id, pad_id)
    batch = {"prompt_ids": rollout.prompt_ids, "prompt_mask": rollout.prompt_mask,
             "completion_ids": rollout.completion_ids, "completion_mask": rollout.completion_mask,
             "advantages": advantages}
    policy = model.module if hasattr(model, "module") else model
    if s.num_iterations > 1:  # later iterations need the sampling policy's log-probs
        batch["old_logps"] = scored_logps(policy, batch, s)
    if s.beta != 0.0:
        if ref_model is None:
            raise ValueError("beta != 0 needs a ref_model")
        batch["ref_logps"] = scored_logps(ref_model, batch, s)
    per_process = len(rollout.texts) // world_size()
    if len(rollout.texts) % (world_size() * s.micro_batch) or per_process < s.micro_batch:
        raise ValueError(f"generation batch of {len(rollout.texts)} completions does not split into micro-batches "
                         f"of {s.micro_batch} on {world_size()} process(es)")
    mine = shard(micro_batches(batch, s.micro_batch))
    objective = GRPOObjective(s)
    logs = []
    for it in range(s.num_iterations):
        log = optimizer_step(model, mine, objective, optimizer, scheduler, s.max_grad_norm, step=first_step + it)
        logs.append(GRPOStepLog(step=log.step, loss=log.loss, grad_norm=log.grad_norm, lr=log.lr, items=log.items,
                                metrics={**generation, **objective.step_metrics()},
                                advantages=advantages.tolist(), completions=list(rollout.texts)))
    return logs


def record_prompt(record: Mapping[str, Any]) -> list[dict[str, str]]:
    """The messages to prompt with: a ``prompt`` field (TRL's prompt-only layout), else everything before the
    record's last assistant turn (chat and reasoning rows)."""
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if isinstance(prompt, list) and "chosen" not in record:
        return [dict(m) for m in prompt]
    return prompt_and_reference(record)[0]


def prompt_order(n: int, prompts_per_step: int, steps: int, seed: int) -> list[list[int]]:
    """Indices of each round's prompts: seeded permutations of the records, one after another."""
    order: list[int] = []
    epoch = 0
    while len(order) < steps * prompts_per_step:
        order += torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        epoch += 1
    return [order[i * prompts_per_step:(i + 1) * prompts_per_step] for i in range(steps)]


def train_grpo(model, tokenizer, records: Sequence[Mapping[str, Any]], reward_funcs: Sequence[RewardFunc] | None = None,
               settings: GRPOSettings | None = None, ref_model=None, progress: bool = True,
               on_round: Callable[[int, Rollout], None] | None = None) -> list[GRPOStepLog]:
    """Optimise ``model`` in place with GRPO on ``records`` (each with a prompt and the reward columns).

    A record's prompt is ``record_prompt(record)``; its other fields (task, answer) reach the reward
    functions as columns. ``model`` may be wrapped in DistributedDataParallel.
    """
    s = settings or GRPOSettings()
    reward_funcs = list(reward_funcs or REWARD_FUNCS)
    names = [reward_name(f) for f in reward_funcs]
    records = list(records)
    torch.manual_seed(s.seed)
    optimizer = make_optimizer(model, s.lr, s.weight_decay, s.betas)
    scheduler = cosine_schedule(optimizer, s.steps * s.num_iterations, s.warmup, s.min_lr_rate)
    policy = model.module if hasattr(model, "module") else model
    history: list[GRPOStepLog] = []
    bar = progress_bar(prompt_order(len(records), s.prompts_per_step, s.steps, s.seed), desc="GRPO",
                       disable=not progress or rank() != 0)
    for round_index, indices in enumerate(bar):
        chosen = [records[i] for i in indices]
        conversations = [record_prompt(r) for r in chosen]
        rollout = sample_groups(policy, tokenizer, conversations, s.num_generations, s.max_completion_length,
                                s.temperature, s.top_p, s.top_k, seed=s.seed * 100_003 + round_index,
                                batch_size=s.generation_batch_size)
        if on_round is not None:
            on_round(round_index, rollout)
        columns = {k: [r.get(k) for r in chosen for _ in range(s.num_generations)]
                   for k in chosen[0] if k not in ("messages", "prompt")}
        rewards_per_func = score(rollout, reward_funcs, columns)
        history += grpo_round(model, rollout, rewards_per_func, optimizer, scheduler, s, names,
                              tokenizer.eos_token_id, tokenizer.pad_token_id, ref_model, len(history) + 1)
        bar.set_postfix(refresh=False, reward=f"{history[-1].metrics['reward']:.2f}")
    return history


# ----------------------------------------------------------------------------------------------------------
# Lesson data and artifacts
# ----------------------------------------------------------------------------------------------------------


def comparison_problems(n: int, split: str, seed: int) -> list[Problem]:
    """``n`` distinct decimal-comparison problems of ``split``, drawn with ``random.Random(seed)``."""
    rng, seen, out = random.Random(seed), set(), []
    task = TASKS["compare_decimals"]
    while len(out) < n:
        problem = task.sample_in_split(rng, split)
        if problem.key in seen:
            continue
        seen.add(problem.key)
        out.append(problem)
    return out


def comparison_records(n: int, split: str, seed: int) -> list[dict[str, Any]]:
    """``n`` distinct decimal-comparison questions of ``split`` under the card's reasoning system prompt."""
    return [{"prompt": [{"role": "system", "content": REASONING_SYSTEM_PROMPT},
                        {"role": "user", "content": problem.question}],
             "task": problem.task, "answer": problem.answer} for problem in comparison_problems(n, split, seed)]


# The cold start before GRPO (DeepSeek-R1's name for it): SFT on worked comparison traces of the training split,
# in the reasoning dataset's format. Lesson 09's data holds only 100 comparisons; 400 more, one epoch at a third of
# lesson 09's learning rate, lift its student from 101 to 181 of lesson 10's 240 held-out questions (AMD EPYC)
COLD_START_TRACES = 400
COLD_START_SEED = 7
COLD_START_SETTINGS = SFTSettings(lr=1e-3, epochs=1, max_length=1024, rows_per_micro_batch=2, accumulation=1)


def cold_start_records(n: int = COLD_START_TRACES, seed: int = COLD_START_SEED) -> list[dict[str, Any]]:
    """``n`` training-split comparisons with their worked traces (``data.reasoning_record``), for SFT."""
    return [reasoning_record(problem) for problem in comparison_problems(n, "train", seed)]


def cold_start(model, tokenizer, records: Sequence[Mapping[str, Any]] | None = None,
               settings: SFTSettings | None = None, progress: bool = True) -> list[StepLog]:
    """SFT ``model`` in place on comparison traces (default ``cold_start_records()``, ``COLD_START_SETTINGS``)."""
    records = cold_start_records() if records is None else records
    return train_sft(model, tokenizer, records, settings or COLD_START_SETTINGS, progress)


def evaluate_reasoning(model, tokenizer, records: Sequence[Mapping[str, Any]], max_new_tokens: int = 110,
                       batch_size: int = 16) -> dict[str, Any]:
    """Greedy replies to each record's prompt, judged by the rewards' strict checks.

    Returns the replies, per-record ``correct`` (``rewards.is_correct``: right, well formed, not hedging) and
    ``formatted`` (``rewards.is_strictly_formatted``) flags, and their counts.
    """
    prompts = [record_prompt(r) for r in records]
    replies = chat_replies(model, tokenizer, prompts, max_new_tokens, batch_size)
    correct = [is_correct(p, text, r["task"], r["answer"]) for p, text, r in zip(prompts, replies, records)]
    formatted = [is_strictly_formatted(text) for text in replies]
    return {"replies": replies, "correct": correct, "formatted": formatted, "n": len(records),
            "n_correct": sum(correct), "n_formatted": sum(formatted)}


def ensure_grpo(folder: str | Path | None = None, settings: GRPOSettings | None = None,
                progress: bool = True) -> Path:
    """Lesson 10's GRPO model (lesson 09's student after the ``cold_start`` and ``train_grpo`` with the default
    recipe on 2000 training comparisons), trained here unless ``folder`` (default artifacts/grpo) already holds one."""
    folder, done = finished_stage(folder, "grpo", "ensure_grpo")
    if done:
        return folder
    base = ensure_reason_distill(progress=progress)
    model, tokenizer = DogeForCausalLM.from_pretrained(base), load_tokenizer(base)
    cold_start(model, tokenizer, progress=progress)
    settings = settings or GRPOSettings()
    history = train_grpo(model, tokenizer, comparison_records(2000, "train", seed=0), settings=settings,
                         progress=progress)
    return save_stage(model, tokenizer, folder, history, settings)
