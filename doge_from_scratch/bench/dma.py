"""DMA on long sequences: time and peak memory of one attention layer, forward and forward+backward.

    python -m doge_from_scratch.bench dma [--lengths 2048,8192,32768] [--device auto]

One Doge-20M attention layer (hidden 256, 2 query heads, 1 KV head, head_dim 128, keep window 2048),
batch 1, against:

- ``reference-eager`` / ``reference-sdpa``: transformers' own ``DogeAttention`` with a boolean causal mask,
- ``ours-materialised``: our copy of the reference computation (the full [B, heads, T, S] mask),
- ``ours-auto``: the default backend (fused SDPA with no mask up to the keep window, materialised past it),
- ``ours-chunked``: the exact top-k mask a block of query rows at a time, checkpointed for backward.

At 2048 tokens every key fits in the keep window (no top-k); at 8192 and 32768 the top-k decides.
Every case runs in a fresh process, so the peak memory is that case's own: on the CPU the growth of
the process's peak resident set over its resident set just before the forward (after a warm-up
on a short prefix, so loading kernels is not counted), on CUDA
``max_memory_allocated`` over the allocation before it. Forward (no grad) runs first, then
forward+backward, so the second peak covers both. A case whose estimate (the measured peak at the
previous length scaled by the growth of the attention matrix) exceeds the memory free is skipped and
reported with the estimate. Each output is compared with reference-eager's where that one ran.

Prints a table, then one JSON line. Timings taken while other jobs share the machine are noisy;
compare the ratios within one run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..attention import DogeAttention
from ..config import DogeConfig
from ..layers import RotaryEmbedding
from ..testing import randomize_

IMPLS = ("reference-eager", "reference-sdpa", "ours-materialised", "ours-auto", "ours-chunked")
LENGTHS = (2048, 8192, 32768)
SHAPE = dict(hidden_size=256, intermediate_size=512, num_hidden_layers=1, num_attention_heads=2,
             num_key_value_heads=1, keep_window_size=2048, max_position_embeddings=32768, vocab_size=128)
GIB = 1024 ** 3


# ------------------------------------------------------------------------------------------ one case
def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def build_layer(impl: str, dtype: torch.dtype, device: torch.device, seed: int = 0):
    """(module, call(x, rope) -> [B, T, H]) for one implementation, all with the same weights."""
    config = DogeConfig(**SHAPE)
    torch.manual_seed(seed)
    ours = randomize_(DogeAttention(config, 0), seed)
    if impl.startswith("ours-"):
        ours.backend = impl.removeprefix("ours-")
        return ours.to(device, dtype), lambda x, rope: ours(x, rope, None, plain_causal=True)
    import transformers
    from transformers.models.doge.modeling_doge import DogeAttention as ReferenceAttention

    fields = {k: v for k, v in config.to_dict().items() if k not in ("attention_variant", "moe_router_split")}
    ref_config = transformers.DogeConfig(**fields)
    ref_config._attn_implementation = impl.removeprefix("reference-")
    ref = ReferenceAttention(ref_config, 0)
    ref.load_state_dict(ours.state_dict())
    ref.to(device, dtype)

    def call(x, rope):
        t = x.shape[1]
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()[None, None]
        return ref(x, rope, attention_mask=causal)[0]

    return ref, call


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory_mark(device: torch.device) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    return _rss_bytes()


def _memory_peak(device: torch.device, mark: int) -> int:
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - mark
    return max(0, _peak_rss_bytes() - mark)


def run_case(impl: str, length: int, dtype: str, device: str, repeats: int, output: str | None,
             backward: bool = True) -> dict:
    dev, dt = torch.device(device), getattr(torch, dtype)
    module, call = build_layer(impl, dt, dev)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, length, SHAPE["hidden_size"], generator=g).to(dev, dt)
    rope = RotaryEmbedding(DogeConfig(**SHAPE)).to(dev)(x, torch.arange(length, device=dev)[None])
    result = {"impl": impl, "length": length}
    # warm-up on a short prefix: kernels and thread pools load once, outside the measured peak
    warm = min(length, 256)
    warm_rope = tuple(r[:, :warm] for r in rope)
    with torch.no_grad():
        call(x[:, :warm], warm_rope)
    call(x[:, :warm].clone().requires_grad_(True), warm_rope).float().sum().backward()
    module.zero_grad(set_to_none=True)

    mark = _memory_mark(dev)
    times = []
    with torch.no_grad():
        for _ in range(repeats):
            _sync(dev)
            start = time.perf_counter()
            out = call(x, rope)
            _sync(dev)
            times.append(time.perf_counter() - start)
    result["forward_s"] = min(times)
    result["forward_peak_bytes"] = _memory_peak(dev, mark)
    if output:
        save_file({"out": out.float().cpu().contiguous()}, output)
    del out

    if not backward:
        return result
    x.requires_grad_(True)
    mark = _memory_mark(dev)
    times = []
    for _ in range(repeats):
        _sync(dev)
        start = time.perf_counter()
        call(x, rope).float().square().mean().backward()
        _sync(dev)
        times.append(time.perf_counter() - start)
        x.grad = None
        module.zero_grad(set_to_none=True)
    result["backward_s"] = min(times)  # forward + backward
    result["backward_peak_bytes"] = _memory_peak(dev, mark)
    return result


# ------------------------------------------------------------------------------------------- driver
def free_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return free
    with open("/proc/meminfo") as f:
        info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024


def run_in_subprocess(impl: str, length: int, dtype: str, device: str, repeats: int, output: str,
                      threads: int, timeout: int, backward: bool = True) -> dict:
    cmd = [sys.executable, "-m", "doge_from_scratch.bench.dma", "--worker", impl, str(length), dtype, device,
           str(repeats), output, str(int(backward))]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"impl": impl, "length": length, "skipped": f"took over {timeout} s"}
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"impl": impl, "length": length, "skipped": f"failed: {last[:120]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def estimate(previous: dict | None, length: int, key: str = "backward_peak_bytes") -> int | None:
    """Peak at this length guessed from the last measured one: the T x S matrices grow quadratically."""
    if not previous or key not in previous:
        return None
    growth = (length / previous["length"]) ** 2
    if previous["impl"] == "ours-chunked":  # one block of rows x S at a time: linear in S
        growth = length / previous["length"]
    return int(previous[key] * growth)


def compare_outputs(path: str, reference_path: str) -> float | None:
    if not (os.path.exists(path) and os.path.exists(reference_path)):
        return None
    return float((load_file(path)["out"] - load_file(reference_path)["out"]).abs().max())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m doge_from_scratch.bench dma", description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", default=",".join(map(str, LENGTHS)))
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (CUDA default)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--timeout", type=int, default=900, help="seconds per case")
    parser.add_argument("--memory-fraction", type=float, default=0.7,
                        help="skip a case whose estimated peak exceeds this share of the free memory")
    parser.add_argument("--max-backward-tokens", type=int, default=None,
                        help="forward only above this length (CPU default 8192: backward at 32k takes too long "
                             "on a small CPU; CUDA default: no limit)")
    parser.add_argument("--worker", nargs=7, metavar=("IMPL", "LENGTH", "DTYPE", "DEVICE", "REPEATS", "OUT", "BWD"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        impl, length, dtype, device, repeats, out, backward = args.worker
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
        print(json.dumps(run_case(impl, int(length), dtype, device, int(repeats), out, backward == "1")))
        return 0

    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    max_backward = args.max_backward_tokens or (None if device.type == "cuda" else 8192)
    lengths = [int(n) for n in args.lengths.split(",")]
    impls = [i for i in args.impls.split(",") if i]
    unknown = [i for i in impls if i not in IMPLS]
    if unknown:
        parser.error(f"unknown implementation(s) {unknown}; choose from {IMPLS}")
    rows, last = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        for length in lengths:
            for impl in impls:
                backward = max_backward is None or length <= max_backward
                need = estimate(last.get(impl), length, "backward_peak_bytes" if backward else "forward_peak_bytes")
                budget = args.memory_fraction * free_bytes(device)
                if need is not None and need > budget:
                    row = {"impl": impl, "length": length,
                           "skipped": f"would need ~{need / GIB:.1f} GiB (free {free_bytes(device) / GIB:.1f} GiB)"}
                else:
                    repeats = 3 if length <= 2048 else 1
                    out = str(Path(tmp) / f"{impl}-{length}.safetensors")
                    row = run_in_subprocess(impl, length, dtype, str(device), repeats, out, args.threads,
                                            args.timeout, backward)
                    if "skipped" not in row and not backward:
                        row["backward"] = f"not run (forward only above {max_backward} tokens)"
                    if "skipped" not in row:
                        last[impl] = row
                        row["max_abs_diff_vs_reference_eager"] = compare_outputs(
                            out, str(Path(tmp) / f"reference-eager-{length}.safetensors"))
                rows.append(row)
                print(format_row(row), flush=True) if len(rows) > 1 else print(header() + "\n" + format_row(row),
                                                                                  flush=True)
    print(json.dumps({"benchmark": "dma", "device": str(device), "dtype": dtype, "threads": args.threads,
                      "shape": SHAPE, "rows": rows}))
    return 0


def header() -> str:
    return (f"{'impl':<18} {'tokens':>6} {'fwd s':>8} {'fwd peak':>9} {'fwd+bwd s':>9} {'fwd+bwd peak':>12} "
            f"{'max|out-eager|':>14}")


def format_row(row: dict) -> str:
    if "skipped" in row:
        return f"{row['impl']:<18} {row['length']:>6}  skipped: {row['skipped']}"
    diff = row.get("max_abs_diff_vs_reference_eager")
    bwd = (f"{row['backward_s']:>9.3f} {row['backward_peak_bytes'] / GIB:>10.2f}Gi" if "backward_s" in row
           else f"{'-':>9} {'-':>12}")
    return (f"{row['impl']:<18} {row['length']:>6} {row['forward_s']:>8.3f} "
            f"{row['forward_peak_bytes'] / GIB:>7.2f}Gi {bwd} {('-' if diff is None else f'{diff:.2e}'):>14}")


if __name__ == "__main__":
    sys.exit(main())
