"""Batch-1 CPU decode speed: our fast decoder against transformers' generate and the matrix-product floor.

    python -m doge_from_scratch.bench decode [--sizes Doge-20M,Doge-60M] [--dtypes float32,bfloat16]
                                             [--new-tokens 128] [--prompt-tokens 32] [--threads 1]
                                             [--compile auto|none|step] [--repeats 3] [--clock cpu|wall]
                                             [--out FILE]

For every published size (random weights, the same in both implementations) and dtype:

- ``ours``: ``FastDoge`` (fused weights, preallocated cache, no mask) via our ``generate``, greedy;
- ``transformers``: ``transformers.DogeForCausalLM.generate`` (sdpa attention, greedy, its own cache);
- ``floor``: the weight matrix products alone for one token (fused q/k/v, o, gate/up, down per layer, and
  the LM head: every weight read once), the memory-bound lower bound on the time of a decoded token.

A streamer timestamps every new token, so the 32-token prefill is excluded the same way for both;
a rate is new tokens after the first over the time from the first to the last. Each number is the
best of ``--repeats`` runs, interleaved so that load hits all three alike. The floor is timed the same
way: as many back-to-back tokens of nothing but matrix products.

Which clock: on a machine shared with other jobs, wall time mostly measures how often the scheduler
lets us run (a 2-core machine with 6 busy processes gives each about a third of a core, and longer
steps are preempted more often than short ones). ``--clock cpu`` (the default) divides by this
process's CPU time instead, with ``--threads 1`` so that CPU time is the work done; memory-bandwidth
contention still shows. ``--clock wall --threads 2`` is the number to quote on an idle machine. Both
clocks' rates are in the JSON either way (``cpu_time_tok_s``, ``wall_time_tok_s``).

Decode peak memory is how far the process's resident set rises above its level just before a generate
call (the kernel's high-water mark, reset then): cache, activations and workspace, on top of the
weights (listed separately: ours are the fused copies in the benchmarked dtype).

``--compile auto`` compiles our per-token step with ``torch.compile`` for models of at most 16 layers,
where it measured faster than eager and compiles in about a minute; larger models run eager (one
graph of 24-32 unrolled layers takes many minutes to compile on 2 cores, and per-token overhead is a
small share of their time anyway).

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
import torch.nn.functional as F

SIZES = ("Doge-20M", "Doge-60M", "Doge-160M", "Doge-320M")
CARD_TOKENS_PER_S = {"Doge-20M": 142, "Doge-60M": 62, "Doge-160M": 28, "Doge-320M": 16}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MIB = 1024 ** 2


# ------------------------------------------------------------------------------------------ memory
def _reset_peak_rss() -> None:
    """Reset the kernel's resident-set high-water mark (VmHWM) to the current resident set."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------------------------------------ timing
class TokenClock:
    """A streamer that timestamps every new token (both generates call ``put`` once per token), in wall
    time and in this process's CPU time."""

    def __init__(self) -> None:
        self.wall: list[float] = []
        self.cpu: list[float] = []
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.wall.append(time.perf_counter())
        self.cpu.append(time.process_time())

    def end(self) -> None:
        pass

    @staticmethod
    def rate(stamps: list[float]) -> float:
        """New tokens after the first over the time from the first to the last."""
        if len(stamps) < 2:
            raise RuntimeError("fewer than two tokens were generated; cannot time decoding")
        return (len(stamps) - 1) / (stamps[-1] - stamps[0])

    def wall_tokens_per_s(self) -> float:
        return self.rate(self.wall)

    def cpu_tokens_per_s(self) -> float:
        return self.rate(self.cpu)


def time_generate(run, new_tokens: int) -> tuple[float, float, int]:
    """run(streamer) generates; -> (CPU-time and wall-time decode tokens/s, growth of the peak RSS over
    the RSS before the call)."""
    clock = TokenClock()
    _reset_peak_rss()
    before = _rss_bytes()
    run(clock)
    peak = _peak_rss_bytes() - before
    if len(clock.wall) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {len(clock.wall)}")
    return clock.cpu_tokens_per_s(), clock.wall_tokens_per_s(), peak


def matmul_floor_tokens_per_s(fast, tokens: int) -> tuple[float, float]:
    """Tokens/s if a token cost only its weight matrix products (each weight read once), timed like a
    decode run: ``tokens`` tokens back to back. -> (CPU-time rate, wall-time rate)."""
    config, dtype = fast.config, fast.dtype
    x_h = torch.randn(1, config.hidden_size, dtype=dtype)
    x_o = torch.randn(1, config.num_attention_heads * config.head_dim, dtype=dtype)
    x_i = torch.randn(1, config.intermediate_size, dtype=dtype)

    def one_token() -> None:
        for layer in fast.layers:
            F.linear(x_h, layer.qkv)
            F.linear(x_o, layer.o)
            F.linear(x_h, layer.gate_up)
            F.linear(x_i, layer.down)
        F.linear(x_h, fast.lm_head)

    one_token()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        one_token()
    return tokens / (time.process_time() - cpu), tokens / (time.perf_counter() - wall)


# ------------------------------------------------------------------------------------------ one config
def bench_one(size: str, dtype_name: str, args) -> dict:
    import transformers

    from ..config import DogeConfig
    from ..fast_decode import FastDoge
    from ..generation import generate
    from ..model import DogeForCausalLM
    from ..testing import copy_into_reference, randomize_

    dtype = DTYPES[dtype_name]
    # eos None: every run decodes exactly new_tokens tokens
    config = DogeConfig.from_preset(size, eos_token_id=None)
    torch.manual_seed(0)
    model = DogeForCausalLM(config).eval()
    randomize_(model, seed=0)
    model.to(dtype)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("attention_variant", "moe_router_split")}
    ref_config = transformers.DogeConfig(**fields)
    ref_config._attn_implementation = "sdpa"
    reference = transformers.DogeForCausalLM(ref_config).eval().to(dtype)
    copy_into_reference(model, reference)

    compile_step = args.compile == "step" or (args.compile == "auto" and config.num_hidden_layers <= 16)
    start = time.perf_counter()
    fast = FastDoge(model, dtype=dtype, compile=compile_step)
    del model
    prompt = torch.randint(3, config.vocab_size, (1, args.prompt_tokens), generator=torch.Generator().manual_seed(1))
    new = args.new_tokens

    def ours(streamer):
        return generate(fast, prompt, max_new_tokens=new, streamer=streamer)

    def theirs(streamer):
        return reference.generate(prompt, max_new_tokens=new, do_sample=False, eos_token_id=None, pad_token_id=2,
                                  streamer=streamer)

    with torch.inference_mode():
        warm_ours = ours(None)  # compiles when asked, and warms caches
        warm_up_s = time.perf_counter() - start
        warm_theirs = theirs(None)
        same_ids = bool(torch.equal(warm_ours, warm_theirs))
        cpu_rate = {"ours": 0.0, "transformers": 0.0, "floor": 0.0}
        wall_rate = dict(cpu_rate)
        peaks = {"ours": 0, "transformers": 0}
        for _ in range(args.repeats):  # interleaved, so a burst of load hits all three alike
            for name, run in (("ours", ours), ("transformers", theirs)):
                cpu, wall, peak = time_generate(run, new)
                cpu_rate[name], wall_rate[name] = max(cpu_rate[name], cpu), max(wall_rate[name], wall)
                peaks[name] = max(peaks[name], peak)
            cpu, wall = matmul_floor_tokens_per_s(fast, new - 1)
            cpu_rate["floor"], wall_rate["floor"] = max(cpu_rate["floor"], cpu), max(wall_rate["floor"], wall)
    rates = cpu_rate if args.clock == "cpu" else wall_rate
    floor_rate, ours_rate, ref_rate = rates["floor"], rates["ours"], rates["transformers"]
    ours_peak, ref_peak = peaks["ours"], peaks["transformers"]
    return {
        "size": size, "dtype": dtype_name, "ours_tok_s": round(ours_rate, 1),
        "transformers_tok_s": round(ref_rate, 1), "floor_tok_s": round(floor_rate, 1),
        "card_tok_s": CARD_TOKENS_PER_S[size],
        "ours_over_floor": round(ours_rate / floor_rate, 3), "ours_over_transformers": round(ours_rate / ref_rate, 3),
        "ours_over_card": round(ours_rate / CARD_TOKENS_PER_S[size], 3),
        "floor_ms_per_token": round(1e3 / floor_rate, 3),
        "ours_decode_peak_mib": round(ours_peak / MIB, 1), "transformers_decode_peak_mib": round(ref_peak / MIB, 1),
        "ours_weights_mib": round(fast.weight_bytes() / MIB), "compiled": compile_step,
        "warm_up_s": round(warm_up_s, 1), "greedy_ids_equal_transformers": same_ids,
        "clock": args.clock, "cpu_time_tok_s": {k: round(v, 1) for k, v in cpu_rate.items()},
        "wall_time_tok_s": {k: round(v, 1) for k, v in wall_rate.items()},
    }


# ------------------------------------------------------------------------------------------ table
def machine_description() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | dtype | ours tok/s | transformers tok/s | matmul floor tok/s | model card tok/s "
            "| ours / floor | ours / transformers | ours / card | weights MiB | decode peak MiB ours / transformers |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        lines.append(f"| {r['size']} | {r['dtype']} | {r['ours_tok_s']} | {r['transformers_tok_s']} | "
                     f"{r['floor_tok_s']} | {r['card_tok_s']} | {r['ours_over_floor']:.2f} | "
                     f"{r['ours_over_transformers']:.2f} | {r['ours_over_card']:.2f} | {r['ours_weights_mib']} | "
                     f"{r['ours_decode_peak_mib']} / {r['transformers_decode_peak_mib']} |")
    return "\n".join(lines)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m doge_from_scratch.bench decode", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated presets")
    p.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32, bfloat16")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: one core's work, measurable by CPU time while others share the machine)")
    p.add_argument("--compile", choices=("auto", "none", "step"), default="auto")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per implementation (best counts)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="rates from process CPU time (robust on a shared machine; use with --threads 1) or wall time")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    for s in args.sizes:
        if s not in CARD_TOKENS_PER_S:
            p.error(f"unknown size {s!r}; choose from {list(CARD_TOKENS_PER_S)}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {list(DTYPES)}")
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.repeats < 1:
        p.error("need --new-tokens >= 2, --prompt-tokens >= 1, --repeats >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    rows = []
    start = time.perf_counter()
    for size in args.sizes:
        for dtype_name in args.dtypes:
            row = bench_one(size, dtype_name, args)
            rows.append(row)
            print(f"{size:10s} {dtype_name:9s} ours {row['ours_tok_s']:7.1f} tok/s | transformers "
                  f"{row['transformers_tok_s']:7.1f} | floor {row['floor_tok_s']:7.1f} | ours/floor "
                  f"{row['ours_over_floor']:.2f} | ours/transformers {row['ours_over_transformers']:.2f}", flush=True)
    machine = machine_description()
    print()
    print(f"Decode, batch 1, {args.prompt_tokens}-token prompt, {args.new_tokens} new tokens, greedy, "
          f"{args.clock} clock; {machine}")
    print(markdown_table(rows))
    summary = {"bench": "decode", "machine": machine, "new_tokens": args.new_tokens,
               "prompt_tokens": args.prompt_tokens, "threads": args.threads, "compile": args.compile, "clock": args.clock,
               "wall_s": round(time.perf_counter() - start, 1), "rows": rows}
    if args.out:
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(summary, f, indent=1)
        os.replace(tmp, args.out)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
