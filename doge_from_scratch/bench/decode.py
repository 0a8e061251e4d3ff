"""CPU decode speed of model.generate, int8 weights and transformers' generate against the matmul floor.

``model.generate`` decodes through the fast decoder by default; every path is timed against the
weight-matrix-product floor measured in the same run.

    python -m doge_from_scratch.bench decode [--sizes Doge-20M,Doge-60M] [--dtypes float32,bfloat16,int8]
                                             [--batch-sizes 1,8,16] [--new-tokens 128] [--prompt-tokens 32]
                                             [--threads 1] [--compile none|auto|step] [--repeats 3]
                                             [--clock cpu|wall] [--quality] [--out FILE]

For every published size (random weights, the same in both implementations) and weight format:

- ``generate``: ``DogeForCausalLM.generate`` as the model cards' snippet calls it, greedy. In eval mode it
  decodes through the model's ``FastDoge`` copy (fused weights, preallocated cache, no mask), eager;
- ``int8`` (the ``int8`` weight format): ``FastDoge(model, weights="int8")``, int8 weights with one scale per
  output channel (``doge_from_scratch.int8``), the rest of the decoder in float32;
- ``compiled`` (with ``--compile``): the same fast decoder (float or int8) with its per-token step compiled;
- ``transformers``: ``transformers.DogeForCausalLM.generate`` (sdpa attention, greedy, its own cache), on
  float32 weights for the int8 rows;
- ``floor``: the weight matrix products alone for one token (fused q/k/v, o, gate/up, down per layer, and
  the LM head, in the decoder's weight format: every weight read once), the memory-bound lower bound.

A streamer timestamps every new token, so the prompt pass is excluded the same way for all; a rate is new
tokens after the first over the time from the first to the last (times the batch size for batched rows).
Each number is the best of ``--repeats`` runs, interleaved so that load hits every path alike. The floor is
timed the same way: as many back-to-back tokens of nothing but matrix products.

Batched rows (``--batch-sizes``): that many prompts of different lengths (left padded, as lesson evaluation
and GRPO groups batch them), decoded together by ``model.generate`` and by transformers' batched generate on
the same prompts and mask; the floor multiplies a [batch, in] block by every weight.

Which clock: on a machine shared with other jobs, wall time mostly measures how often the scheduler
lets us run (a 2-core machine with 6 busy processes gives each about a third of a core, and longer
steps are preempted more often than short ones). ``--clock cpu`` (the default) divides by this
process's CPU time instead, with ``--threads 1`` so that CPU time is the work done; memory-bandwidth
contention still shows. ``--clock wall --threads 2`` is the number to quote on an idle machine. Both
clocks' rates are in the JSON either way (``cpu_time_tok_s``, ``wall_time_tok_s``).

Decode peak memory: how far the process's resident set (the kernel's high-water mark VmHWM, reset just
before the call) rises above its level at the start of one generate call, after ``malloc_trim`` has handed
the allocator's free pages back to the kernel, so that memory the call reuses is counted again. That is the
prompt pass, the KV cache and the per-token workspace, on top of the weights (listed separately: the bytes
the decoder reads per token; ``model.generate`` keeps its fused copy beside the teaching model's weights).

``--quality`` adds the int8 quality cost for each size (``int8.int8_quality``: max logits difference,
perplexity on the lesson validation rows, greedy agreement over 128 tokens, all against float32). On random
weights the perplexity is near the vocabulary size, so the lesson model (lesson 05) is where it reads best.

Prints a table, then one JSON line (``rows``: batch 1; ``batched_rows``: the larger batches).
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import os
import platform
import time

import torch

from ..atomic import atomic_write_text
from ..config import DogeConfig
from ..fast_decode import FastDoge, fast_decoder_for
from ..generation import generate
from ..int8 import int8_quality, linear, summarise
from ..model import DogeForCausalLM
from ..paths import TINY_DOGE_DIR
from ..pretrain import validation_rows
from ..testing import copy_into_reference, randomize_

SIZES = ("Doge-20M", "Doge-60M", "Doge-160M", "Doge-320M")
CARD_TOKENS_PER_S = {"Doge-20M": 142, "Doge-60M": 62, "Doge-160M": 28, "Doge-320M": 16}
# weight format -> dtype of the teaching model and of the transformers reference it is compared with
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "int8": torch.float32}
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


def _trim_heap() -> None:
    """Return the C allocator's free pages to the kernel (glibc), so a call that reuses them shows in the RSS."""
    name = ctypes.util.find_library("c")
    if name is None:
        return
    libc = ctypes.CDLL(name)
    if hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


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


def time_generate(run, new_tokens: int, batch: int = 1) -> tuple[float, float, int]:
    """run(streamer) generates; -> (CPU-time and wall-time decode tokens/s over all rows, growth of the peak
    RSS over the RSS at the start of the call)."""
    clock = TokenClock()
    _trim_heap()
    _reset_peak_rss()
    before = _rss_bytes()
    run(clock)
    peak = _peak_rss_bytes() - before
    if len(clock.wall) != new_tokens:
        raise RuntimeError(f"expected {new_tokens} new tokens, got {len(clock.wall)}")
    return batch * clock.cpu_tokens_per_s(), batch * clock.wall_tokens_per_s(), peak


def matmul_floor_tokens_per_s(fast, tokens: int, batch: int = 1) -> tuple[float, float]:
    """Tokens/s if a token cost only its weight matrix products (each weight read once, in the decoder's own
    format: float or int8), timed like a decode run: ``tokens`` steps of ``batch`` rows back to back.
    -> (CPU-time rate, wall-time rate), counting every row's token."""
    config, dtype = fast.config, fast.dtype
    x_h = torch.randn(batch, config.hidden_size, dtype=dtype)
    x_o = torch.randn(batch, config.num_attention_heads * config.head_dim, dtype=dtype)
    x_i = torch.randn(batch, config.intermediate_size, dtype=dtype)

    def one_token() -> None:
        for layer in fast.layers:
            linear(x_h, layer.qkv)
            linear(x_o, layer.o)
            linear(x_h, layer.gate_up)
            linear(x_i, layer.down)
        linear(x_h, fast.lm_head)

    one_token()
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(tokens):
        one_token()
    return batch * tokens / (time.process_time() - cpu), batch * tokens / (time.perf_counter() - wall)


# ------------------------------------------------------------------------------------------ one config
def build_pair(size: str, dtype: torch.dtype):
    """Our teaching model (random weights, eval mode) and transformers' on the same weights, both in ``dtype``."""
    import transformers

    # eos None: every run decodes exactly new_tokens tokens
    config = DogeConfig.from_preset(size, eos_token_id=None)
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(config), seed=0).eval().to(dtype)
    fields = {k: v for k, v in config.to_dict().items() if k not in ("attention_variant", "moe_router_split")}
    ref_config = transformers.DogeConfig(**fields)
    ref_config._attn_implementation = "sdpa"
    reference = transformers.DogeForCausalLM(ref_config).eval().to(dtype)
    copy_into_reference(model, reference)
    return model, reference


def batch_prompts(batch: int, prompt_tokens: int, vocab: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``batch`` prompts of different lengths, left padded to ``prompt_tokens`` -> (ids, mask or None at batch 1)."""
    ids = torch.randint(3, vocab, (batch, prompt_tokens), generator=torch.Generator().manual_seed(1))
    if batch == 1:
        return ids, None
    mask = torch.ones_like(ids)
    for row in range(batch):
        mask[row, :min(2 * (row % 8), prompt_tokens - 1)] = 0
    return ids.masked_fill(mask == 0, 2), mask


def decoders(model, weights: str, compile_step: bool) -> dict:
    """Our decode paths for one weight format: name -> object ``generation.generate`` runs."""
    if weights == "int8":
        paths = {"int8": FastDoge(model, weights="int8")}
    else:
        paths = {"generate": model}
    if compile_step:
        paths["compiled"] = FastDoge(model, compile=True, weights="int8" if weights == "int8" else "float")
    return paths


def time_paths(runs: dict, fast, new: int, batch: int, repeats: int) -> tuple[dict, dict, dict]:
    """Best-of-``repeats`` rates of every run (interleaved) and the floor. -> (cpu rates, wall rates, peaks)."""
    cpu_rate = dict.fromkeys([*runs, "floor"], 0.0)
    wall_rate = dict(cpu_rate)
    peaks = dict.fromkeys(runs, 0)
    for _ in range(repeats):  # interleaved, so a burst of load hits every path alike
        for name, run in runs.items():
            cpu, wall, peak = time_generate(run, new, batch)
            cpu_rate[name], wall_rate[name] = max(cpu_rate[name], cpu), max(wall_rate[name], wall)
            peaks[name] = max(peaks[name], peak)
        cpu, wall = matmul_floor_tokens_per_s(fast, new - 1, batch)
        cpu_rate["floor"], wall_rate["floor"] = max(cpu_rate["floor"], cpu), max(wall_rate["floor"], wall)
    return cpu_rate, wall_rate, peaks


def summarise_row(size: str, weights: str, batch: int, ours: str, rates: dict, cpu_rate: dict, wall_rate: dict,
                  peaks: dict, fast, same_ids: bool, args) -> dict:
    """One result row: our main path ``ours`` against the floor, transformers and the card."""
    floor, mine, theirs = rates["floor"], rates[ours], rates["transformers"]
    card = CARD_TOKENS_PER_S[size]
    row = {
        "size": size, "dtype": weights, "batch": batch, "path": ours, "ours_tok_s": round(mine, 1),
        "transformers_tok_s": round(theirs, 1), "floor_tok_s": round(floor, 1), "card_tok_s": card,
        "ours_over_floor": round(mine / floor, 3), "ours_over_transformers": round(mine / theirs, 3),
        "transformers_over_floor": round(theirs / floor, 3), "ours_over_card": round(mine / card, 3),
        "floor_ms_per_token": round(1e3 * batch / floor, 3),
        "ours_decode_peak_mib": round(peaks[ours] / MIB, 2),
        "transformers_decode_peak_mib": round(peaks["transformers"] / MIB, 2),
        "ours_weights_mib": round(fast.weight_bytes() / MIB), "greedy_ids_equal_transformers": same_ids,
        "clock": args.clock, "cpu_time_tok_s": {k: round(v, 1) for k, v in cpu_rate.items()},
        "wall_time_tok_s": {k: round(v, 1) for k, v in wall_rate.items()},
    }
    if "compiled" in rates:
        row["compiled_tok_s"] = round(rates["compiled"], 1)
        row["compiled_over_floor"] = round(rates["compiled"] / floor, 3)
    return row


def bench_one(size: str, weights: str, args) -> list[dict]:
    """Every path of one size and weight format, at every batch size. -> one row per batch size."""
    model, reference = build_pair(size, DTYPES[weights])
    compile_step = args.compile == "step" or (args.compile == "auto" and model.config.num_hidden_layers <= 16)
    ours = decoders(model, weights, compile_step)
    main = "int8" if weights == "int8" else "generate"
    fast = ours["int8"] if weights == "int8" else fast_decoder_for(model)
    new, rows = args.new_tokens, []
    for batch in args.batch_sizes:
        ids, mask = batch_prompts(batch, args.prompt_tokens, model.config.vocab_size)
        runs = {name: (lambda s, d=decoder: generate(d, ids, mask, max_new_tokens=new, streamer=s))
                for name, decoder in ours.items()}
        runs["transformers"] = lambda s: reference.generate(ids, attention_mask=mask, max_new_tokens=new,
                                                            do_sample=False, eos_token_id=None, pad_token_id=2,
                                                            streamer=s)
        with torch.inference_mode():
            warm = {name: run(None) for name, run in runs.items()}  # compiles when asked, and warms caches
            same_ids = bool(torch.equal(warm[main], warm["transformers"]))
            cpu_rate, wall_rate, peaks = time_paths(runs, fast, new, batch, args.repeats)
        rates = cpu_rate if args.clock == "cpu" else wall_rate
        rows.append(summarise_row(size, weights, batch, main, rates, cpu_rate, wall_rate, peaks, fast, same_ids,
                                  args))
    if weights == "int8" and args.quality:
        rows[0]["quality"] = int8_quality_of(model, args)
    return rows


def int8_quality_of(model, args, limit_docs: int = 32) -> dict:
    """``int8.int8_quality`` on the lesson validation rows (their first row's start as the greedy prompt)."""
    rows = validation_rows(limit_docs=limit_docs, seq_len=128)
    quality = int8_quality(model, rows, rows[:1, :args.prompt_tokens], new_tokens=128)
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in quality.items()}


def lesson_model_quality(args) -> dict | None:
    """The int8 cost on the lesson's pretrained model (trained weights: where perplexity and agreement mean
    something; random weights have near-flat logits), over the whole validation split; None if it is not built."""
    if not (TINY_DOGE_DIR / "model.safetensors").exists():
        return None
    model = DogeForCausalLM.from_pretrained(TINY_DOGE_DIR).eval()
    return {"size": "lesson model (data/tiny-doge)", **int8_quality_of(model, args, limit_docs=10 ** 9)}


# ------------------------------------------------------------------------------------------ table
def machine_description() -> str:
    cpu = platform.processor() or "cpu"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


PATH_NAMES = {"generate": "model.generate", "int8": "FastDoge int8"}


def markdown_table(rows: list[dict]) -> str:
    head = ("| model | weights | batch | path | tok/s | transformers tok/s | matmul floor tok/s | / floor "
            "| / transformers | transformers / floor | model card tok/s | / card | weights MiB "
            "| decode peak MiB ours / transformers |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        compiled = (f" (compiled {r['compiled_tok_s']}, {r['compiled_over_floor']:.2f} of the floor)"
                    if "compiled_tok_s" in r else "")
        lines.append(f"| {r['size']} | {r['dtype']} | {r['batch']} | {PATH_NAMES[r['path']]}{compiled} | "
                     f"{r['ours_tok_s']} | {r['transformers_tok_s']} | {r['floor_tok_s']} | "
                     f"{r['ours_over_floor']:.2f} | {r['ours_over_transformers']:.2f} | "
                     f"{r['transformers_over_floor']:.2f} | {r['card_tok_s']} | {r['ours_over_card']:.2f} | "
                     f"{r['ours_weights_mib']} | {r['ours_decode_peak_mib']} / {r['transformers_decode_peak_mib']} |")
    return "\n".join(lines)


def quality_lines(rows: list[dict], lesson: dict | None) -> list[str]:
    pairs = [(f"{r['size']} (random weights)", r["quality"]) for r in rows if "quality" in r]
    pairs += [("lesson model (trained)", lesson)] if lesson else []
    return [f"int8 vs float32, {name}: {summarise([q])}" for name, q in pairs]


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m doge_from_scratch.bench decode", description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=",".join(SIZES), help="comma-separated presets")
    p.add_argument("--dtypes", default="float32,bfloat16,int8", help="comma-separated: float32, bfloat16, int8")
    p.add_argument("--batch-sizes", default="1,8,16", help="comma-separated batch sizes (prompts of several lengths)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--prompt-tokens", type=int, default=32)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: one core's work, measurable by CPU time while others share the machine)")
    p.add_argument("--compile", choices=("auto", "none", "step"), default="none",
                   help="also time the fast decoder with its step compiled (auto: models of at most 16 layers)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per path (best counts)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu",
                   help="rates from process CPU time (robust on a shared machine; use with --threads 1) or wall time")
    p.add_argument("--quality", action="store_true",
                   help="int8 rows: also measure the quality cost against float32 (int8.int8_quality)")
    p.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = p.parse_args(argv)
    args.sizes = [s for s in args.sizes.split(",") if s]
    args.dtypes = [d for d in args.dtypes.split(",") if d]
    try:
        args.batch_sizes = [int(b) for b in args.batch_sizes.split(",") if b]
    except ValueError:
        p.error(f"--batch-sizes {args.batch_sizes!r}: comma-separated integers")
    for s in args.sizes:
        if s not in CARD_TOKENS_PER_S:
            p.error(f"unknown size {s!r}; choose from {list(CARD_TOKENS_PER_S)}")
    for d in args.dtypes:
        if d not in DTYPES:
            p.error(f"unknown dtype {d!r}; choose from {list(DTYPES)}")
    if args.new_tokens < 2 or args.prompt_tokens < 1 or args.repeats < 1 or not args.batch_sizes \
            or min(args.batch_sizes) < 1:
        p.error("need --new-tokens >= 2, --prompt-tokens >= 1, --repeats >= 1, batch sizes >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(args.threads)
    rows = []
    start = time.perf_counter()
    for size in args.sizes:
        for dtype_name in args.dtypes:
            for row in bench_one(size, dtype_name, args):
                rows.append(row)
                print(f"{size:10s} {dtype_name:9s} batch {row['batch']:3d} {PATH_NAMES[row['path']]:15s} "
                      f"{row['ours_tok_s']:7.1f} tok/s | transformers {row['transformers_tok_s']:7.1f} | floor "
                      f"{row['floor_tok_s']:7.1f} | /floor {row['ours_over_floor']:.2f} | /transformers "
                      f"{row['ours_over_transformers']:.2f}", flush=True)
    lesson = lesson_model_quality(args) if args.quality and "int8" in args.dtypes else None
    machine = machine_description()
    print()
    print(f"Decode, {args.prompt_tokens}-token prompts (left padded in batches), {args.new_tokens} new tokens, greedy, "
          f"{args.clock} clock; {machine}. Peak: resident-set growth during one generate call (see --help)")
    print(markdown_table(rows))
    for line in quality_lines(rows, lesson):
        print(line)
    summary = {"bench": "decode", "machine": machine, "new_tokens": args.new_tokens,
               "prompt_tokens": args.prompt_tokens, "threads": args.threads, "compile": args.compile,
               "clock": args.clock,
               "wall_s": round(time.perf_counter() - start, 1), "rows": [r for r in rows if r["batch"] == 1],
               "batched_rows": [r for r in rows if r["batch"] != 1], "int8_quality_lesson_model": lesson}
    if args.out:
        atomic_write_text(args.out, json.dumps(summary, indent=1))
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
