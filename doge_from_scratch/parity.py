"""Parity against published checkpoints: ``python -m doge_from_scratch.parity MODEL``.

MODEL is a Hub id (read from the local Hub cache, downloaded when online) or a local folder. The
checkpoint is loaded into our model and into a reference that can run it, both run the same token
ids, and the report gives the max abs logits difference in float32 and bfloat16, the greedy-token
agreement over N new tokens and, on a mismatch, the first layer and sub-module where the two part
(``debug``: forward hooks on both models).

Which reference runs a checkpoint is ``references.load_reference``'s choice (see ``references``).

``--against FOLDER`` loads the reference from other weights, which turns the tool into a diff between
two checkpoints (an edited or corrupted copy against its original): the debugger names the first
module whose output changed.

Exit status: 0 parity holds, 1 mismatch, 2 the checkpoint cannot be read (one line, no traceback),
3 no reference can run it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from . import debug
from .attention import BACKENDS
from .checkpoint import CheckpointError, inspect_checkpoint, resolve_folder
from .model import DogeForCausalLM
from .references import NoReference, checkpoint_generation, load_reference, quiet_transformers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
# A float32 mismatch is a real difference; bfloat16 is reported, not judged by the same bar.
FLOAT32_RTOL = 1e-4


# ------------------------------------------------------------------------------------------- devices
def pick_device(name: str = "auto") -> torch.device:
    """``auto``: the CUDA GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError("--device cuda asked for, but torch sees no CUDA GPU")
    return device


# ------------------------------------------------------------------------------------------- running
@torch.no_grad()
def logits_of(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] -> float32 logits [B, T, V] on the CPU (a plain forward, no cache)."""
    return model(input_ids=input_ids, use_cache=False).logits.float().cpu()


@torch.no_grad()
def greedy(model: nn.Module, input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy decoding with each model's own KV cache. [B, T] -> new token ids [B, new_tokens]."""
    out = model(input_ids=input_ids, use_cache=True)
    tokens = []
    for _ in range(new_tokens):
        token = out.logits[:, -1].argmax(-1, keepdim=True)
        tokens.append(token)
        out = model(input_ids=token, past_key_values=out.past_key_values, use_cache=True)
    return torch.cat(tokens, dim=-1).cpu()


def prompt_ids(vocab_size: int, batch: int, length: int, seed: int) -> torch.Tensor:
    """Deterministic token ids (no tokenizer needed, so the check also runs on weights alone). -> [B, T]"""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab_size, (batch, length), generator=generator)


@dataclass
class DtypeResult:
    dtype: str
    max_abs_diff: float
    max_abs_logit: float
    argmax_agree: int
    positions: int
    greedy_agree: int  # length of the common prefix of the two greedy continuations (per batch row: minimum)
    greedy_tokens: int
    ok: bool
    # for a low-precision dtype, how far each model moved from its own float32 logits (None: not measured)
    ours_vs_float32: float | None = None
    reference_vs_float32: float | None = None


@dataclass
class ParityReport:
    model: str
    folder: str
    generation: str
    variant: str
    device: str
    reference: str
    notes: list[str]
    results: list[DtypeResult] = field(default_factory=list)
    divergence: str | None = None
    divergence_layer: int | None = None
    divergence_module: str | None = None
    layers: list[tuple[str, float, float]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results if r.dtype == "float32")

    def to_json(self) -> str:
        return json.dumps({**asdict(self), "ok": self.ok})


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    same = (a == b).all(dim=0)  # [N]: every batch row agrees at this step
    return int(same.long().cumprod(0).sum())


def run_parity(model: str, *, against: str | None = None, device: str = "auto",
               dtypes: tuple[str, ...] = ("float32", "bfloat16"), batch: int = 1, seq_len: int = 32,
               new_tokens: int = 16, seed: int = 0, rtol: float = FLOAT32_RTOL, backend: str = "auto",
               trust_remote_code: bool = False) -> ParityReport:
    """Load MODEL into ours and into a reference, compare, and debug a float32 mismatch. See the module doc."""
    folder = resolve_folder(model)
    ref_folder = resolve_folder(against) if against else folder
    dev = pick_device(device)
    generation = checkpoint_generation(folder)
    report = None
    float32_logits = None
    for name in sorted(dtypes, key=lambda d: d != "float32"):  # float32 first: the others are measured against it
        dtype = DTYPES[name]
        ours = DogeForCausalLM.from_pretrained(folder, dtype=dtype, device=dev)
        ours.set_attention_backend(backend)
        ref_source = against or model
        reference, notes = load_reference(ref_folder, dtype, dev, trust_remote_code,
                                          source=None if Path(ref_source).is_dir() else ref_source)
        if report is None:
            report = ParityReport(model=str(model), folder=str(folder), generation=generation,
                                  variant=ours.config.attention_variant, device=str(dev),
                                  reference=reference.label + (f" (weights from {against})" if against else ""),
                                  notes=notes)
        ids = prompt_ids(ours.config.vocab_size, batch, seq_len, seed).to(dev)
        ours_logits, ref_logits = logits_of(ours, ids), logits_of(reference.model, ids)
        diff = float((ours_logits - ref_logits).abs().max())
        scale = float(ref_logits.abs().max())
        argmax_agree = int((ours_logits.argmax(-1) == ref_logits.argmax(-1)).sum())
        ours_greedy, ref_greedy = greedy(ours, ids, new_tokens), greedy(reference.model, ids, new_tokens)
        agree = _common_prefix(ours_greedy, ref_greedy)
        ok = diff <= rtol * max(scale, 1.0) and agree == new_tokens if name == "float32" else True
        result = DtypeResult(name, diff, scale, argmax_agree, ids.numel(), agree, new_tokens, ok)
        if name == "float32":
            float32_logits = (ours_logits, ref_logits)
        elif float32_logits is not None:
            result.ours_vs_float32 = float((ours_logits - float32_logits[0]).abs().max())
            result.reference_vs_float32 = float((ref_logits - float32_logits[1]).abs().max())
        report.results.append(result)
        if name == "float32" and not ok:
            divergence = debug.compare_recordings(
                debug.record_outputs(ours, lambda m: m(input_ids=ids, use_cache=False)),
                debug.record_outputs(reference.model, lambda m: m(input_ids=ids, use_cache=False)),
                rtol=rtol, model=ours)
            report.divergence = divergence.summary()
            report.divergence_layer = divergence.layer
            report.divergence_module = divergence.sub_module
            report.layers = debug.layer_table(divergence)
        del ours, reference
    return report


# ---------------------------------------------------------------------------------------------- output
def format_report(report: ParityReport) -> str:
    lines = [f"parity: {report.model}",
             f"  folder     {report.folder}",
             f"  checkpoint generation {report.generation} ({report.variant} attention); device {report.device}",
             "  ours       doge_from_scratch DogeForCausalLM",
             f"  reference  {report.reference}"]
    lines += [f"  note       {note}" for note in report.notes]
    lines.append("")
    lines.append(f"  {'dtype':<9} {'max|dlogits|':>12} {'max|logits|':>11} {'argmax agree':>13} "
                 f"{'greedy agree':>13}  verdict")
    for r in report.results:
        verdict = ("ok" if r.ok else "MISMATCH") if r.dtype == "float32" else "(reported)"
        lines.append(f"  {r.dtype:<9} {r.max_abs_diff:>12.3g} {r.max_abs_logit:>11.3g} "
                     f"{r.argmax_agree:>6}/{r.positions:<6} {r.greedy_agree:>6}/{r.greedy_tokens:<6}  {verdict}")
    for r in report.results:
        if r.ours_vs_float32 is not None:
            lines.append(f"  {r.dtype} vs each model's own float32 logits: ours {r.ours_vs_float32:.3g}, "
                         f"reference {r.reference_vs_float32:.3g} (max abs)")
    if report.divergence:
        lines += ["", f"  {report.divergence}", "", "  per layer (float32):",
                  f"    {'output of':<28} {'max|diff|':>10} {'relative':>9}"]
        lines += [f"    {name:<28} {d:>10.3g} {rel:>9.2g}" for name, d, rel in report.layers]
    return "\n".join(lines)


class UsageError(Exception):
    """A command-line argument the tool cannot use; main prints it as one line and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse would print the usage block and exit; main decides instead
        raise UsageError(message)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be >= 1")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"{text} must be a finite number > 0")
    return value


def _device_name(text: str) -> str:
    if text != "auto":
        try:
            torch.device(text)
        except RuntimeError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a device (auto, cpu, cuda, cuda:1, ...)") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m doge_from_scratch.parity", description=__doc__.split("\n")[0])
    parser.add_argument("model", help="Hub id (e.g. SmallDoge/Doge-20M) or local model folder")
    parser.add_argument("--against", help="load the reference from these weights instead (a checkpoint diff)")
    parser.add_argument("--device", default="auto", type=_device_name,
                        help="auto (CUDA when present, else CPU), cpu or cuda")
    parser.add_argument("--dtypes", default="float32,bfloat16", help="comma-separated: float32,bfloat16")
    parser.add_argument("--batch", type=_positive_int, default=1)
    parser.add_argument("--seq-len", type=_positive_int, default=32, help="prompt tokens")
    parser.add_argument("--new-tokens", type=_positive_int, default=16, help="greedy tokens compared")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rtol", type=_positive_float, default=FLOAT32_RTOL,
                        help="float32 tolerance relative to max|logits| (and per module in the debugger)")
    parser.add_argument("--backend", default="auto", choices=BACKENDS, help="our attention backend")
    parser.add_argument("--trust-remote-code", action="store_true",
                        help="for classic checkpoints, try their own remote code first (runs downloaded code)")
    parser.add_argument("--json", action="store_true", help="also print the report as one JSON line")
    return parser


def _parse(argv: list[str] | None) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    args.dtypes = tuple(d.strip() for d in args.dtypes.split(",") if d.strip())
    unknown = [d for d in args.dtypes if d not in DTYPES]
    if unknown or not args.dtypes:
        raise UsageError(f"argument --dtypes: unknown dtype(s) {unknown}; choose from {sorted(DTYPES)}")
    return args


def _error_line(err: BaseException) -> str:
    return "; ".join(line.strip() for line in str(err).splitlines() if line.strip())


def main(argv: list[str] | None = None) -> int:
    """Exit status: 0 parity, 1 mismatch, 2 bad arguments or unreadable checkpoint (one line), 3 no reference."""
    try:
        args = _parse(argv)
        quiet_transformers()
        # Read and check both folders with our loader first (config.json, safetensors headers, shapes): any
        # unreadable file is then a CheckpointError naming it, before a reference loader meets it.
        for name in filter(None, (args.model, args.against)):
            inspect_checkpoint(DogeForCausalLM, name)
        report = run_parity(args.model, against=args.against, device=args.device, dtypes=args.dtypes,
                            batch=args.batch, seq_len=args.seq_len, new_tokens=args.new_tokens, seed=args.seed,
                            rtol=args.rtol, backend=args.backend, trust_remote_code=args.trust_remote_code)
    except (UsageError, CheckpointError) as err:
        print(f"parity: error: {_error_line(err)}", file=sys.stderr)
        return 2
    except NoReference as err:
        print(f"parity: no reference can run {args.model}: {err}", file=sys.stderr)
        return 3
    print(format_report(report))
    if args.json:
        print(report.to_json())
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
