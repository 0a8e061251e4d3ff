"""The training loops under DistributedDataParallel: 2 CPU processes (gloo) = 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from doge_from_scratch import DogeForCausalLM, dpo, grpo, sft
from doge_from_scratch.data import data_file, read_jsonl
from doge_from_scratch.testing import randomize_, tiny_config
from doge_from_scratch.tokenizer import load_tokenizer
from doge_from_scratch.train_utils import cosine_schedule, make_optimizer, optimizer_step, rank, shard, step_groups

MICRO, ACCUM, STEPS = 2, 2, 2


def build(tokenizer) -> DogeForCausalLM:
    torch.manual_seed(0)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=2, bos_token_id=0, eos_token_id=1)
    return randomize_(DogeForCausalLM(config), 0)


def global_steps(stage: str, tokenizer):
    """The same global batches whatever the number of processes: 2 * ACCUM micro-batches of MICRO items per
    step. One process runs all of them; each of two processes runs its ACCUM (``shard``)."""
    per_step = 2 * ACCUM * MICRO
    if stage == "sft":
        rows = sft.pack(sft.sft_examples(tokenizer, read_jsonl(data_file("chat", "train"), "chat")[:40]), 96)
        items, collate = rows, lambda mb: sft.collate_packed(mb, 2)
    else:
        records = read_jsonl(data_file("preference", "train"), "preference")[:per_step * STEPS]
        ref = build(tokenizer)
        randomize_(ref, 5)
        items = dpo.precompute_reference(ref.eval(), [dpo.preference_example(tokenizer, r) for r in records], 2)
        collate = lambda mb: dpo.collate_preference(mb, 2)  # noqa: E731
    items = items[:per_step * STEPS]
    chunks = [items[i:i + per_step] for i in range(0, per_step * STEPS, per_step)]
    micro = MICRO  # 2 * ACCUM micro-batches per step: all of them in one process, ACCUM each on two
    return [[collate(c[j:j + micro]) for j in range(0, per_step, micro)] for c in chunks]


def run(stage: str, world: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """Train STEPS steps of `stage`; inside a process group this process takes its shard of every step."""
    tokenizer = load_tokenizer()
    model = build(tokenizer)
    trained = model
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(model)
    objective = sft.SFT_LOSS if stage == "sft" else dpo.DPOObjective(None, beta=0.1)
    optimizer = make_optimizer(model, 1e-3)
    scheduler = cosine_schedule(optimizer, STEPS, warmup=0, min_lr_rate=0.1)
    logs = []
    for i, micro_batches in enumerate(global_steps(stage, tokenizer)):
        mine = shard(micro_batches) if world > 1 else micro_batches
        log = optimizer_step(model, mine, objective, optimizer, scheduler, max_grad_norm=1.0, step=i + 1)
        logs.append({"loss": log.loss, "grad_norm": log.grad_norm, "items": log.items, **log.metrics})
    return logs, {k: v.detach().clone().contiguous() for k, v in trained.state_dict().items()}


def length_reward(completions, **_) -> list[float]:
    """Varied, deterministic rewards for a random model (whose completions never earn the lesson's rewards)."""
    return [float(len(c) % 5) for c in completions]


GRPO_CASES = {"grpo_dapo": dict(loss_type="dapo", beta=0.05, num_iterations=2),
              "grpo_bnpo": dict(loss_type="bnpo", beta=0.0, num_iterations=1)}


def run_grpo(case: str, world: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    """STEPS GRPO rounds; every process samples the whole generation batch (same seed) and trains on its shard."""
    tokenizer = load_tokenizer()
    model = build(tokenizer)
    ref = randomize_(build(tokenizer), 5).eval()
    trained = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model
    settings = grpo.GRPOSettings(steps=STEPS, prompts_per_step=2, num_generations=4, micro_batch=2,
                                 max_completion_length=12, lr=1e-3, **GRPO_CASES[case])
    history = grpo.train_grpo(trained, tokenizer, grpo.comparison_records(8, "train", 0), [length_reward], settings,
                              ref_model=ref, progress=False)
    logs = [{"loss": h.loss, "grad_norm": h.grad_norm, "items": h.items, **h.metrics} for h in history]
    return logs, {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}


def worker(rank_: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank_, world_size=world)
    try:
        assert rank() == rank_
        for stage in ("sft", "dpo"):
            logs, weights = run(stage, world)
            save_file(weights, str(Path(out) / f"{stage}_rank{rank_}.safetensors"))
            (Path(out) / f"{stage}_rank{rank_}.json").write_text(json.dumps(logs))
        for case in GRPO_CASES:
            logs, weights = run_grpo(case, world)
            save_file(weights, str(Path(out) / f"{case}_rank{rank_}.safetensors"))
            (Path(out) / f"{case}_rank{rank_}.json").write_text(json.dumps(logs))
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    mp.spawn(worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    return out


def test_step_groups_shard_the_same_global_batch():
    items = list(range(16))
    one = step_groups(items, micro_batch=2, accumulation=2, shuffle=False)
    assert [sum(step, []) for step in one] == [list(range(0, 4)), list(range(4, 8)), list(range(8, 12)),
                                              list(range(12, 16))]


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_two_processes_equal_one(two_process_run, stage):
    logs_1, weights_1 = run(stage, world=1)
    for r in range(2):
        logs_2 = json.loads((two_process_run / f"{stage}_rank{r}.json").read_text())
        weights_2 = load_file(str(two_process_run / f"{stage}_rank{r}.safetensors"))
        assert len(logs_2) == len(logs_1) == STEPS
        for a, b in zip(logs_1, logs_2):
            assert a["items"] == b["items"]
            assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
            assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=1e-5)
        # Adam moves every weight by about lr = 1e-3 per step whatever the gradient's size, so the float32
        # round-off of the all-reduce (summing in another order) shows up as ~1e-6: allow 1% of one step.
        # Exception: a gradient entry that is itself at round-off level (m / sqrt(v) of noise) can move its
        # weight anywhere within +-lr per step in either run; a few in 10,000 do. A wrong shard or a missing
        # all-reduce moves most entries, so: at most 0.1% of entries beyond 1% of a step, none beyond 2 lr a step.
        for name, w in weights_1.items():
            diff = (weights_2[name] - w).abs()
            assert diff.max() <= 2 * 1e-3 * STEPS, f"{name}: max diff {diff.max():.2e}"
            assert (diff > 1e-5).float().mean() <= 1e-3, f"{name}: {(diff > 1e-5).sum()} of {diff.numel()} off"
    assert logs_1[0]["loss"] != logs_1[1]["loss"]  # the weights really moved between steps


@pytest.mark.parametrize("case", GRPO_CASES)
def test_grpo_two_processes_equal_one(two_process_run, case):
    """Same completions on both processes (same seed, same weights); the loss normaliser spans the processes."""
    logs_1, weights_1 = run_grpo(case, world=1)
    n_steps = STEPS * GRPO_CASES[case]["num_iterations"]
    for r in range(2):
        logs_2 = json.loads((two_process_run / f"{case}_rank{r}.json").read_text())
        weights_2 = load_file(str(two_process_run / f"{case}_rank{r}.safetensors"))
        assert len(logs_2) == len(logs_1) == n_steps
        for a, b in zip(logs_1, logs_2):
            assert a["items"] == b["items"]
            assert a["reward"] == b["reward"]  # the same completions were sampled
            for key in ("loss", "grad_norm", "clip_ratio/region_mean", "entropy"):
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-7), key
        for name, w in weights_1.items():  # the same bound as SFT and DPO above (Adam, lr 1e-3)
            diff = (weights_2[name] - w).abs()
            assert diff.max() <= 2 * 1e-3 * n_steps, f"{name}: max diff {diff.max():.2e}"
            assert (diff > 1e-5).float().mean() <= 1e-3, f"{name}: {(diff > 1e-5).sum()} of {diff.numel()} off"
    assert logs_1[0]["reward_std"] > 0 and logs_1[0]["grad_norm"] > 0
