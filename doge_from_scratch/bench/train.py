"""Training throughput: our DogeForCausalLM against transformers' on the same config, batch and dtype.

    python -m doge_from_scratch.bench train [--config tiny|doge-20m] [--batch 8] [--seq 256] [--dtype float32]

One training step = forward + loss + backward + AdamW step, the unit a pretraining run repeats. Both models
hold the same weights and see the same batch; steps of the two are interleaved (ours, theirs, ours, ...) so a
shared, noisy machine slows both alike, and the median step time of each is reported. The last line printed
is JSON for scripts.

Beside each step time: the AdamW step's share (``--optimizer``: torch's per-parameter loop, its ``foreach`` or its
``fused`` CPU kernel, the same on every side; transformers' Trainer defaults to the fused one on torch >= 2.8) and
the matrix-product share (the self time of aten::mm/addmm/bmm/baddbmm in one profiled step over that same step's
wall time, so it stays a share of one step on a busy machine): the training floor, the part no element-wise work
removes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence

import torch

from ..model import DogeForCausalLM
from ..pretrain import tiny_doge_config
from ..testing import copy_into_reference, reference_model

CONFIGS: dict[str, Callable[[], object]] = {
    # The model lesson 06 pretrains (vocabulary of the project's tokenizer, ~1.5k).
    "tiny": lambda: tiny_doge_config(1497),
    # Doge-20M's published shape (vocab 32768, 8 layers of 256).
    "doge-20m": lambda: tiny_doge_config(32768, hidden_size=256, intermediate_size=512, num_hidden_layers=8,
                                         num_attention_heads=2, num_key_value_heads=1),
}
DTYPES = {"float32": None, "bfloat16": torch.bfloat16}


OPTIMIZERS = {"loop": dict(foreach=False), "foreach": dict(foreach=True), "fused": dict(fused=True)}
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm")


def make_step(model: torch.nn.Module, batch: torch.Tensor, autocast_dtype: torch.dtype | None,
              optimizer_kind: str = "loop") -> Callable[[], tuple[float, float]]:
    """A training step of ``model`` on ``batch``; calling it returns (step seconds, optimizer-step seconds)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.01,
                                  **OPTIMIZERS[optimizer_kind])

    def step() -> tuple[float, float]:
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
            loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        before_optimizer = time.perf_counter()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ended = time.perf_counter()
        return ended - started, ended - before_optimizer

    return step


@contextlib.contextmanager
def _without_profiler_lines():
    """The CPU profiler writes two "USDT: ... profiler_start/stop" lines to the process's stderr per use; drop
    those, pass anything else on."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # stderr is not a file (captured): nothing to filter
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile() as caught:
        os.dup2(caught.fileno(), fd)
        try:
            yield
        finally:
            os.dup2(saved, fd)
            os.close(saved)
            caught.seek(0)
            for line in caught:
                if not line.startswith(b"USDT:"):
                    sys.stderr.buffer.write(line)
            sys.stderr.flush()


def matmul_share(step: Callable[[], tuple[float, float]]) -> float:
    """The matrix products' self time in one profiled step over that step's own wall time.

    Both come from the same step: a median taken over other steps can be shorter than a profiled step slowed by a
    neighbour's load, and the "share" would pass 1.
    """
    with _without_profiler_lines(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        elapsed, _ = step()
    return sum(e.self_cpu_time_total for e in prof.key_averages() if e.key in MATMUL_OPS) / 1e6 / elapsed


def measure(config_name: str, batch_size: int, seq_len: int, dtype: str, steps: int, warmup: int,
            attn_implementations: Sequence[str] = ("sdpa", "eager"), seed: int = 0,
            compiled: bool = False, optimizer_kind: str = "loop") -> list[dict]:
    config = CONFIGS[config_name]()
    torch.manual_seed(seed)
    ours = DogeForCausalLM(config).train()
    contenders = {"doge_from_scratch": ours}
    for impl in attn_implementations:
        reference = reference_model(config, attn_implementation=impl).train()
        copy_into_reference(ours, reference)
        contenders[f"transformers ({impl})"] = reference
    if compiled:
        # Both sides compiled, so the comparison stays like for like (compilation fuses the small
        # element-wise ops that dominate a tiny model's step on a CPU, in either implementation).
        contenders["doge_from_scratch compiled"] = torch.compile(ours)
        contenders["transformers (sdpa) compiled"] = torch.compile(contenders["transformers (sdpa)"])
    batch = torch.randint(0, config.vocab_size, (batch_size, seq_len), generator=torch.Generator().manual_seed(seed))
    steppers = {name: make_step(model, batch, DTYPES[dtype], optimizer_kind) for name, model in contenders.items()}
    times: dict[str, list[float]] = {name: [] for name in steppers}
    optimizer_times: dict[str, list[float]] = {name: [] for name in steppers}
    for i in range(warmup + steps):
        for name, step in steppers.items():  # interleaved: machine load hits every contender alike
            elapsed, in_optimizer = step()
            if i >= warmup:
                times[name].append(elapsed)
                optimizer_times[name].append(in_optimizer)
    matmul = {name: matmul_share(step) for name, step in steppers.items()}
    tokens = batch_size * seq_len
    ours_median = statistics.median(times["doge_from_scratch"])
    return [
        {"config": config_name, "model": name, "dtype": dtype, "batch": batch_size, "seq": seq_len,
         "optimizer": optimizer_kind, "median_step_s": statistics.median(t),
         "tokens_per_s": tokens / statistics.median(t),
         "speedup_of_ours": statistics.median(t) / ours_median,
         "optimizer_share": statistics.median(optimizer_times[name]) / statistics.median(t),
         "matmul_share": matmul[name]}
        for name, t in times.items()
    ]


def print_table(rows: list[dict]) -> None:
    header = (f"{'config':9s} {'model':30s} {'dtype':9s} {'optimizer':9s} {'batch x seq':>11s} {'step ms':>9s} "
              f"{'tokens/s':>10s} {'ours is':>8s} {'AdamW':>6s} {'matmul':>7s}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['config']:9s} {r['model']:30s} {r['dtype']:9s} {r['optimizer']:9s} "
              f"{str(r['batch']) + ' x ' + str(r['seq']):>11s} {1000 * r['median_step_s']:9.1f} "
              f"{r['tokens_per_s']:10.0f} {r['speedup_of_ours']:7.2f}x {r['optimizer_share']:6.1%} "
              f"{r['matmul_share']:7.1%}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doge_from_scratch.bench train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", choices=sorted(CONFIGS), action="append",
                        help="model config(s) to measure (default: tiny and doge-20m)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--dtype", choices=sorted(DTYPES), action="append", help="default: float32")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per model first")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--optimizer", choices=sorted(OPTIMIZERS), action="append",
                        help="torch.optim.AdamW's implementation, the same for every model (default: loop)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd versions of ours and transformers (sdpa)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for config_name in args.config or ["tiny", "doge-20m"]:
        for dtype in args.dtype or ["float32"]:
            for optimizer_kind in args.optimizer or ["loop"]:
                rows += measure(config_name, args.batch, args.seq, dtype, args.steps, args.warmup,
                                compiled=args.compile, optimizer_kind=optimizer_kind)
    print_table(rows)
    # Headline: our speed over the faster transformers attention implementation, per config and dtype.
    ratios = {}
    for r in rows:
        if r["model"].startswith("transformers") and not r["model"].endswith("compiled"):
            key = f"{r['config']}/{r['dtype']}/{r['optimizer']}"
            ratios[key] = min(ratios.get(key, float("inf")), r["speedup_of_ours"])
    compiled = {f"{r['config']}/{r['dtype']}/{r['optimizer']}": r["median_step_s"] for r in rows
                if r["model"] == "doge_from_scratch compiled"}
    compiled_ratios = {key: r["median_step_s"] / compiled[key] for r in rows
                       if r["model"] == "transformers (sdpa) compiled"
                       for key in [f"{r['config']}/{r['dtype']}/{r['optimizer']}"]}
    summary = {"benchmark": "train", "threads": args.threads, "speedup_vs_best_transformers": ratios,
               "compiled_speedup_vs_compiled_transformers": compiled_ratios,
               "min_speedup": min(ratios.values()), "target": 1.3, "rows": rows}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    main()
