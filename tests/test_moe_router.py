"""CDMoE routing: the reference split is non-causal and batch-dependent, the per-token split is neither;
the auxiliary load-balancing loss equals transformers'."""

from __future__ import annotations

import pytest
import torch

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.testing import (copy_into_reference, failed_checks, float32_error_check, float64_copy,
                                       randomize_, reference_model, tiny_config)

TOL = 1e-5
# changes well above float32 noise: what "earlier logits moved" means below
MOVED = 1e-3


def moe_config(**overrides):
    return tiny_config(is_moe=True, num_experts=16, num_experts_per_tok=4, **overrides)


def build(split: str, seed: int = 2):
    """Our model with the given split, and transformers' model, on the same randomised weights."""
    ours = randomize_(DogeForCausalLM(moe_config(moe_router_split=split)).eval(), seed)
    ref = reference_model(moe_config())
    copy_into_reference(ours, ref)
    return ours, ref


def ids_pair(length: int = 10, seed: int = 0):
    """Two inputs that differ only in their last token. -> [2, T] each (batch of 2)"""
    ids = torch.randint(3, 97, (2, length), generator=torch.Generator().manual_seed(seed))
    changed = ids.clone()
    changed[:, -1] = (ids[:, -1] + 7) % 94 + 3
    return ids, changed


@torch.no_grad()
def assert_logits_as_reference(name: str, ours, ref, ids) -> None:
    """Our logits no further from the reference's float64 logits than a few times the reference's own float32."""
    c = float32_error_check(name, ours(ids).logits, ref(ids).logits, float64_copy(ref)(ids).logits)
    assert c["ok"], failed_checks([c])


@torch.no_grad()
def earlier_change(model, ids, changed) -> float:
    """Largest change of the logits at positions before the last when only the last token changes."""
    return (model(ids).logits[:, :-1] - model(changed).logits[:, :-1]).abs().max().item()


def test_reference_split_is_not_causal_and_ours_reproduces_it(record_diff):
    ours, ref = build("reference")
    ids, changed = ids_pair()
    ref_change, ours_change = earlier_change(ref, ids, changed), earlier_change(ours, ids, changed)
    record_diff("router split 'reference': earlier-logit change (transformers)", ref_change, MOVED)
    record_diff("router split 'reference': earlier-logit change (ours)", ours_change, MOVED)
    # the published model: a later token changes earlier predictions
    assert ref_change > MOVED
    assert ours_change > MOVED
    for x in (ids, changed):  # and ours follows it, on both inputs
        assert_logits_as_reference("reference split", ours, ref, x)


def test_per_token_split_is_causal(record_diff):
    ours, ref = build("per_token")
    ids, changed = ids_pair()
    change = earlier_change(ours, ids, changed)
    record_diff("router split 'per_token': earlier-logit change (ours)", change, 1e-6)
    assert change <= 1e-6
    assert earlier_change(ref, ids, changed) > MOVED  # same weights, reference split: not causal
    with torch.no_grad():  # the switch really changes the routing of a full forward pass
        assert (ours(ids).logits - ref(ids).logits).abs().max().item() > MOVED


@torch.no_grad()
def test_reference_split_depends_on_the_batch_and_per_token_does_not():
    ids, _ = ids_pair()
    for split, batch_dependent in (("reference", True), ("per_token", False)):
        ours, _ = build(split)
        alone = ours(ids[:1]).logits
        in_batch = ours(ids).logits[:1]
        moved = (alone - in_batch).abs().max().item()
        assert (moved > MOVED) == batch_dependent, f"{split}: row 0 moved by {moved} when batched"


@torch.no_grad()
def test_splits_agree_on_a_single_token():
    """B*T = 1 (one decode step without cache): both splits read the same halves."""
    per_token, ref = build("per_token")
    assert_logits_as_reference("single token", per_token, ref, torch.tensor([[17]]))


@torch.no_grad()
def test_per_token_split_full_forward_equals_token_by_token_decoding():
    ours, _ = build("per_token")
    ids, _ = ids_pair(length=9)
    full, exact = ours(ids).logits, float64_copy(ours)(ids).logits
    out = ours(ids[:, :1], use_cache=True)
    steps = [out.logits]
    for t in range(1, ids.shape[1]):
        out = ours(ids[:, t:t + 1], past_key_values=out.past_key_values, use_cache=True)
        steps.append(out.logits)
    c = float32_error_check("per-token split, decode vs full", torch.cat(steps, 1), full, exact)
    assert c["ok"], failed_checks([c])


# ----------------------------------------------------------------------------- auxiliary loss
@pytest.mark.parametrize("masked", [False, True], ids=["no-mask", "left-padded"])
def test_aux_loss_and_loss_match_reference(masked, record_check):
    ours, ref = build("reference")
    ids, _ = ids_pair(length=12)
    mask = None
    if masked:
        mask = torch.ones_like(ids)
        mask[0, :4] = 0
    ours_out = ours(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    ref_out = ref(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    exact_out = float64_copy(ref)(ids, attention_mask=mask, labels=ids, output_router_logits=True)
    where = "left-padded" if masked else "no mask"
    checks = [float32_error_check(f"aux_loss {where}", ours_out.aux_loss, ref_out.aux_loss, exact_out.aux_loss),
              float32_error_check(f"loss incl. aux {where}", ours_out.loss, ref_out.loss, exact_out.loss)]
    assert len(ours_out.router_logits) == len(ref_out.router_logits) == ours.config.num_hidden_layers
    for i, (mine, theirs, exact) in enumerate(zip(ours_out.router_logits, ref_out.router_logits,
                                                  exact_out.router_logits)):
        checks.append(float32_error_check(f"router logits {where} layer {i}", mine, theirs, exact))
    for c in checks:
        record_check(c)
    assert all(c["ok"] for c in checks), failed_checks(checks)
    # the aux term is really part of the loss (not a zero that would make the check empty)
    plain = ours(ids, attention_mask=mask, labels=ids, output_router_logits=False)
    assert plain.aux_loss is None
    assert torch.allclose(ours_out.loss - plain.loss, ours.config.router_aux_loss_coef * ours_out.aux_loss, atol=1e-6)
    assert ours_out.aux_loss.item() > 0.5


def test_aux_loss_ignores_padding():
    """With a mask, changing the padded tokens' ids leaves the aux loss unchanged (it only counts real tokens)
    for the per-token split, whose routing of real tokens does not read the pads' logits."""
    ours, _ = build("per_token")
    ids, _ = ids_pair(length=12)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    other = ids.clone()
    other[0, :4] = (ids[0, :4] + 5) % 94 + 3
    with torch.no_grad():
        a = ours(ids, attention_mask=mask, output_router_logits=True).aux_loss
        b = ours(other, attention_mask=mask, output_router_logits=True).aux_loss
        unmasked = ours(other, output_router_logits=True).aux_loss
    assert (a - b).abs().item() <= TOL
    assert (a - unmasked).abs().item() > 1e-4
