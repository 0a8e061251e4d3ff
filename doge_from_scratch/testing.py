"""Helpers shared by the tests and the lessons' parity cells: tiny configs, weight randomisation and
the installed reference model built on the same weights."""

from __future__ import annotations

import copy

import torch

from .config import DogeConfig
from .model import DogeForCausalLM


def tiny_config(**overrides) -> DogeConfig:
    """A small grouped-query Doge that runs in milliseconds (override any field)."""
    fields = dict(vocab_size=97, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  keep_window_size=256, tie_word_embeddings=False, pad_token_id=0)
    fields.update(overrides)
    return DogeConfig(**fields)


@torch.no_grad()
def randomize_(model: torch.nn.Module, seed: int = 0, scale: float = 0.5) -> torch.nn.Module:
    """Move every parameter away from its initial value so that a wrong formula cannot hide.

    At initialisation A = 0 (no dynamic bias), the residual scales and norms are ones: bugs in
    any of them are invisible there. Multiplicative noise keeps magnitudes sensible.
    """
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        noise = torch.randn(p.shape, generator=g, dtype=torch.float32).to(p.dtype)
        if name.endswith(".A"):
            p.copy_(noise * scale)
        elif p.dim() == 1:  # norms, residual scales, biases
            p.mul_(1 + scale * noise).add_(0.1 * noise)
        else:
            p.add_(0.02 * noise)
    return model


def reference_model(config: DogeConfig, attn_implementation: str = "eager"):
    """transformers' own DogeForCausalLM for the same (native) config, in float32, eval mode."""
    import transformers

    fields = {k: v for k, v in config.to_dict().items() if k not in ("attention_variant", "moe_router_split")}
    ref_config = transformers.DogeConfig(**fields)
    ref_config._attn_implementation = attn_implementation
    return transformers.DogeForCausalLM(ref_config).eval()


def copy_into_reference(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    """Load our weights into the reference by name (they share every parameter name)."""
    missing, unexpected = reference.load_state_dict(ours.state_dict(), strict=False)
    real_missing = [k for k in missing if k != "lm_head.weight" or not ours.config.tie_word_embeddings]
    if real_missing or unexpected:
        raise KeyError(f"state dicts differ: missing {real_missing}, unexpected {list(unexpected)}")


def model_and_reference(config: DogeConfig, seed: int = 1, attn_implementation: str = "eager"):
    """(ours, transformers' model) in eval mode with the same ``randomize_``d weights (seed ``seed``)."""
    ours = randomize_(DogeForCausalLM(config).eval(), seed)
    reference = reference_model(config, attn_implementation)
    copy_into_reference(ours, reference)
    return ours, reference


def tiny_model_for(tokenizer, seed: int = 0, **overrides):
    """A randomised ``tiny_config`` model whose vocabulary and special ids are the tokenizer's."""
    torch.manual_seed(seed)
    config = tiny_config(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, **overrides)
    return randomize_(DogeForCausalLM(config), seed)


# ------------------------------------------------------------------ float32 error against float64
# Two float32 implementations of the same formula disagree by their rounding, and how much depends on the
# processor (AVX2, AVX-512, NEON), the BLAS blocking and the thread count. A fixed bound on ours - reference is
# therefore tuned to one machine. What does not depend on the machine is the question "is ours further from the
# exact answer than the reference is?". The exact answer is the same computation in float64 (its own rounding,
# ~1e-16 relative, is far below float32's 6e-8), so each check measures
#     ours_error = max |ours - exact|,   reference_error = max |reference - exact|
# and requires ours_error <= ERROR_MULTIPLE * reference_error + FLOOR_ULPS * eps32 * scale, scale = max |exact|.
# The floor covers quantities the reference happens to get (almost) exactly right, where any other summation
# order would be "infinitely" worse; a few ulps of the quantity's size is the least rounding any float32 result
# carries. The multiple allows a different but equally good order of operations: float32 sums of n terms have
# errors that grow like sqrt(n) * eps with a constant that depends on the order, and on every machine measured
# (the closing notes of issue 11) ours stayed below 3x the reference's error.
ERROR_MULTIPLE = 4.0
FLOOR_ULPS = 8.0
F32_EPS = torch.finfo(torch.float32).eps


def float64_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A float64 twin with the same (float32-representable) weights: the "exact" evaluation of the formula.

    A transformers model is switched to its sdpa attention: the eager one runs its softmax in float32 even
    for float64 inputs (so it is not exact, ~1e-7 off), and it turns the dtype-minimum fill of a fully padded
    row into -inf, i.e. NaN. Ours is set to its "auto" backend, which keeps every operation in float64.
    """
    twin = copy.deepcopy(model).double()
    if hasattr(twin, "set_attn_implementation"):
        twin.set_attn_implementation("sdpa")
    elif hasattr(twin, "set_attention_backend"):
        twin.set_attention_backend("auto")
    return twin


def float32_error_check(name: str, ours: torch.Tensor, reference: torch.Tensor | list[torch.Tensor],
                        exact: torch.Tensor, multiple: float = ERROR_MULTIPLE, floor_ulps: float = FLOOR_ULPS) -> dict:
    """Compare two float32 results by their distance to the float64 one (same shape, any dims).

    ``reference`` may be several float32 evaluations of the same quantity by the reference (its eager and sdpa
    kernels, the batch in another order): its error is then the largest of theirs. Callers with tensors of one or
    two entries (a gradient of ``A``) should also stack several batches: a single rounding error is a poor estimate
    of how large float32 rounding is there (two independent errors of the same spread differ by more than 4x one
    time in six).

    Returns a dict with ``ours_error``, ``reference_error``, ``scale``, ``bound``, ``ratio`` (``multiple`` times
    ours_error over the bound: <= ``multiple`` exactly when the check passes) and ``ok``.
    """
    references = reference if isinstance(reference, (list, tuple)) else [reference]
    for tensor in [ours, *references]:
        if tensor.shape != exact.shape:
            raise ValueError(f"{name}: shapes differ: {tuple(tensor.shape)} vs exact {tuple(exact.shape)}")
    exact = exact.detach().double()
    ours_error = (ours.detach().double() - exact).abs().max().item()
    reference_error = max((r.detach().double() - exact).abs().max().item() for r in references)
    scale = exact.abs().max().item()
    floor = floor_ulps * F32_EPS * scale
    bound = multiple * reference_error + floor
    # ours_error / (reference_error + floor / multiple): <= multiple exactly when ours_error <= bound
    ratio = multiple * ours_error / max(bound, 1e-300)
    return dict(name=name, ours_error=ours_error, reference_error=reference_error, scale=scale, bound=bound,
                ratio=ratio, ok=ours_error <= bound)


def failed_checks(checks: list[dict]) -> str:
    """One line per failed check, for an assertion message."""
    return "\n".join(f"{c['name']}: ours {c['ours_error']:.2e} from float64, reference {c['reference_error']:.2e}, "
                     f"bound {c['bound']:.2e} (ratio {c['ratio']:.2f})" for c in checks if not c["ok"])


NEAR_TIE_ULPS = 64.0


@torch.no_grad()
def greedy_agreement(got: torch.Tensor, expected: torch.Tensor, exact_model: torch.nn.Module,
                     near_tie_ulps: float = NEAR_TIE_ULPS) -> tuple[bool, str]:
    """Whether two greedy continuations agree, up to a near tie. got, expected: [B, T] token ids.

    Two float32 implementations pick the same argmax except where the two best logits are closer than their
    rounding. So where the ids first differ, the float64 model (``float64_copy`` of the reference) scores the
    shared prefix: if its two best logits there are within ``near_tie_ulps`` float32 ulps of the logits' scale,
    both tokens are correct greedy choices in float32 and the continuations may part (nothing after that point
    is comparable); otherwise the disagreement is real. Returns (ok, a one-line description).
    """
    if got.shape != expected.shape:
        return False, f"shapes differ: {tuple(got.shape)} vs {tuple(expected.shape)}"
    for row in range(got.shape[0]):
        differ = (got[row] != expected[row]).nonzero()
        if len(differ) == 0:
            continue
        t = int(differ[0])
        logits = exact_model(expected[row:row + 1, :t]).logits[0, -1].double()
        top2 = logits.topk(2).values
        margin, bound = (top2[0] - top2[1]).item(), near_tie_ulps * F32_EPS * logits.abs().max().item()
        if margin > bound:
            return False, (f"row {row}: ids part at position {t} ({int(got[row, t])} vs {int(expected[row, t])}) "
                           f"where the float64 top-2 margin is {margin:.2e} > near-tie bound {bound:.2e}")
    return True, "equal ids (up to near ties)"
