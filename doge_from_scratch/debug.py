"""A layer-by-layer debugger: where do two implementations of the same network part?

Both models run the same input with a forward hook on every sub-module. Each hook keeps the
module's output (the first tensor when a module returns a tuple), keyed by the module's name. Our
parameter names equal transformers', so module names line up; names that exist in only one model
(``q_norm`` in a classic model, a remote-code module) or outputs of different shapes are left out of
the comparison and listed as such.

Hooks fire when a module *finishes*, so children report before their parent: ``q_proj`` comes
before ``self_attn``, ``self_attn`` before the decoder layer. Walking our model's firing order, the
first module whose output differs by more than the tolerance is therefore the most specific place
where the two computations part. If all of its sub-modules agree, the difference is in the module's
own arithmetic or its own parameters (``A`` of an attention block, the residual scales of a layer);
``Divergence.own_parameters`` lists them.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass, field

import torch
from torch import nn

from .checkpoint import CLASSIC_RENAMES

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)(?:\.|$)")


def canonical_name(name: str) -> str:
    """A module name in transformers' spelling (generation A names are renamed as their weights are)."""
    probe = name + ".weight"
    for pattern, repl in CLASSIC_RENAMES:
        probe = re.sub(pattern, repl, probe)
    return probe[: -len(".weight")] if probe.endswith(".weight") else probe


def first_tensor(output) -> torch.Tensor | None:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        for item in output:
            found = first_tensor(item)
            if found is not None:
                return found
    if hasattr(output, "logits"):
        return output.logits
    return None


@dataclass
class Recording:
    """What the hooks saw: {canonical module name: tensor as float32 on the CPU}, in firing order."""

    outputs: OrderedDict[str, torch.Tensor]
    inputs: dict[str, torch.Tensor]


@torch.no_grad()
def record_outputs(model: nn.Module, run) -> Recording:
    """Run ``run(model)`` with a hook on every named sub-module and keep each one's first input and output.

    Modules are listed in the order they finished (first call only: a module that runs twice keeps
    its first output).
    """
    outputs: OrderedDict[str, torch.Tensor] = OrderedDict()
    inputs: dict[str, torch.Tensor] = {}
    handles = []

    def hook_for(name: str):
        def hook(_module, args, output):
            tensor = first_tensor(output)
            if tensor is not None and name not in outputs and tensor.is_floating_point():
                outputs[name] = tensor.detach().to("cpu", torch.float32)
                arg = first_tensor(tuple(args))
                if arg is not None and arg.is_floating_point():
                    inputs[name] = arg.detach().to("cpu", torch.float32)

        return hook

    for name, module in model.named_modules():
        if name and not isinstance(module, (nn.ModuleList, nn.ModuleDict)):
            handles.append(module.register_forward_hook(hook_for(canonical_name(name))))
    try:
        run(model)
    finally:
        for handle in handles:
            handle.remove()
    return Recording(outputs, inputs)


@dataclass
class ModuleDiff:
    name: str
    max_abs: float
    scale: float  # max |reference output|
    exceeds: bool = False  # max_abs > atol + rtol * scale (or NaN) for the tolerances it was measured with

    @property
    def relative(self) -> float:
        return self.max_abs / max(self.scale, 1e-30)


@dataclass
class Divergence:
    """The result of comparing two recordings."""

    compared: list[ModuleDiff]
    first: ModuleDiff | None
    only_ours: list[str] = field(default_factory=list)
    only_reference: list[str] = field(default_factory=list)
    shape_mismatch: list[str] = field(default_factory=list)
    own_parameters: list[str] = field(default_factory=list)
    entered_at: str | None = None  # the first differing hooked output when the parent is named instead

    @property
    def layer(self) -> int | None:
        """The decoder layer index of the first divergence (None: outside the layers, or none)."""
        if self.first is None:
            return None
        match = _LAYER.search(self.first.name)
        return int(match[1]) if match else None

    @property
    def sub_module(self) -> str | None:
        """The part of the first divergent name below its decoder layer, e.g. ``mlp.down_proj``."""
        if self.first is None:
            return None
        match = _LAYER.search(self.first.name)
        if not match:
            return self.first.name
        rest = self.first.name[match.end():]
        return rest or "(the layer itself)"

    def summary(self) -> str:
        if self.first is None:
            return f"no divergence: all {len(self.compared)} compared module outputs agree"
        where = (f"layer {self.layer}, sub-module {self.sub_module}" if self.layer is not None
                 else f"module {self.first.name}")
        line = (f"first divergence: {where} ({self.first.name}): max|diff| {self.first.max_abs:.3g} "
                f"(relative {self.first.relative:.2g})")
        if self.entered_at:
            own = ", ".join(self.own_parameters) or "none"
            before = "" if self.entered_at == "its output" else f" before {self.entered_at}"
            line += (f"; every sub-module it ran{before} agrees, so the difference is in "
                     f"its own arithmetic or own parameters ({own})")
        return line


def _differs(out: torch.Tensor, ref: torch.Tensor, rtol: float, atol: float) -> ModuleDiff | None:
    """max|out - ref| against atol + rtol * max|ref| (NaN counts as a difference); None if shapes differ."""
    if out.shape != ref.shape:
        return None
    max_abs = float((out - ref).abs().max()) if out.numel() else 0.0
    scale = float(ref.abs().max()) if ref.numel() else 0.0
    return ModuleDiff("", max_abs, scale, exceeds=not max_abs <= atol + rtol * scale)


def parent_name(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def compare_recordings(ours: Recording, reference: Recording, rtol: float = 1e-4, atol: float = 1e-6,
                       model: nn.Module | None = None) -> Divergence:
    """Walk our firing order; the first module with max|diff| > atol + rtol * max|ref| is the culprit.

    If that module's *input* already differs, nothing hooked produced the difference: it came from
    arithmetic between sub-modules (a residual scale, the attention's own softmax and bias), so the
    parent module is named instead. ``model`` (ours) lets the result list the culprit's own parameters.
    """
    compared, first, mismatched = [], None, []
    for name, out in ours.outputs.items():
        if name not in reference.outputs:
            continue
        diff = _differs(out, reference.outputs[name], rtol, atol)
        if diff is None:
            mismatched.append(f"{name} {tuple(out.shape)} vs {tuple(reference.outputs[name].shape)}")
            continue
        diff.name = name
        compared.append(diff)
        if first is None and diff.exceeds:
            first = diff
    result = Divergence(compared, first,
                        only_ours=[n for n in ours.outputs if n not in reference.outputs],
                        only_reference=[n for n in reference.outputs if n not in ours.outputs],
                        shape_mismatch=mismatched)
    if first is None:
        return result
    ours_in, ref_in = ours.inputs.get(first.name), reference.inputs.get(first.name)
    input_diff = _differs(ours_in, ref_in, rtol, atol) if ours_in is not None and ref_in is not None else None
    if input_diff is not None and input_diff.exceeds and parent_name(first.name):
        parent = parent_name(first.name)
        parent_diff = next((d for d in compared if d.name == parent), None)
        result.first = parent_diff or ModuleDiff(parent, first.max_abs, first.scale, exceeds=True)
        result.entered_at = first.name
    elif any(d.name.startswith(first.name + ".") for d in compared):
        result.entered_at = "its output"  # a composite module whose sub-modules all agree
    if model is not None:
        result.own_parameters = _own_parameters(model, result.first.name)
    return result


def _own_parameters(model: nn.Module, canonical: str) -> list[str]:
    for name, module in model.named_modules():
        if canonical_name(name) == canonical:
            return [f"{canonical}.{p}" for p, _ in module.named_parameters(recurse=False)]
    return []


def layer_table(divergence: Divergence) -> list[tuple[str, float, float]]:
    """One row per decoder layer output (and embedding / final norm / head): name, max|diff|, relative."""
    rows = []
    for diff in divergence.compared:
        if re.fullmatch(r"(?:model\.)?(?:layers\.\d+|embed_tokens|norm)|lm_head", diff.name):
            rows.append((diff.name, diff.max_abs, diff.relative))
    return rows
