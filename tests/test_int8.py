"""Int8 weight-only decoding: the quantiser, the kernel against dequantised weights, and the model's logits
within a first-order bound built from each weight's quantisation step."""

import math

import pytest
import torch

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.fast_decode import FastDoge
from doge_from_scratch.generation import generate
from doge_from_scratch.int8 import BF16_UNIT_ROUNDOFF, QMAX, int8_matmul, int8_quality, linear, quantise
from doge_from_scratch.testing import failed_checks, float32_error_check, float64_copy, randomize_, tiny_config

F32_EPS = torch.finfo(torch.float32).eps


def gamma(n: int, unit_roundoff: float) -> float:
    """The classic bound on the relative error of an n-term dot product: n u / (1 - n u)."""
    return n * unit_roundoff / (1 - n * unit_roundoff)


def weights(rows=48, cols=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(rows, cols, generator=g) * torch.rand(rows, 1, generator=g) * 0.3
    w[3] = 0.0  # an all-zero row must not divide by zero
    return w


def test_quantise_rounds_each_weight_to_its_row_step():
    w = weights()
    packed = quantise(w)
    assert packed.q.dtype == torch.int8 and int(packed.q.abs().max()) <= QMAX
    assert torch.equal(packed.scale, packed.scale.to(torch.bfloat16).float())  # the kernel's bfloat16 scales
    assert bool((packed.scale >= w.abs().amax(1) / QMAX).all())
    # widened by at most 2 bfloat16 roundoffs before rounding up to a bfloat16 number: within 3 of the ideal
    ideal = w.abs().amax(1) / QMAX
    nonzero = ideal > 0
    assert bool((packed.scale[nonzero] <= ideal[nonzero] * (1 + 3 * BF16_UNIT_ROUNDOFF)).all())
    error = (w.double() - packed.dequantise(torch.float64)).abs()
    assert bool((error <= packed.scale.double()[:, None] / 2 * (1 + F32_EPS)).all())
    assert int(packed.q[3].abs().max()) == 0


def test_quantise_refuses_bad_weights():
    with pytest.raises(ValueError, match=r"\[out, in\] weight matrix, got shape \(4,\)"):
        quantise(torch.ones(4))
    bad = torch.ones(2, 3)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"weight \[2, 3\] holding inf or NaN"):
        quantise(bad)


def test_int8_matmul_float32_equals_dequantised_matmul():
    """float32 activations: the kernel against F.linear with the dequantised weights, both judged by their
    distance to the float64 product (the project's float32 rule)."""
    w, x = weights(), torch.randn(5, 80, generator=torch.Generator().manual_seed(1))
    packed = quantise(w)
    ours = int8_matmul(x, packed)
    reference = torch.nn.functional.linear(x, packed.dequantise())
    exact = x.double() @ packed.dequantise(torch.float64).T
    check = float32_error_check("int8 matmul float32", ours, reference, exact)
    assert check["ok"], failed_checks([check])


def test_int8_matmul_bfloat16_is_the_product_rounded_once():
    """bfloat16 activations (the decode path): each output is the exact product of the bfloat16 inputs and the
    dequantised weights, accumulated in float32 (gamma_K(eps32) of sum |x||w|) and rounded once to bfloat16."""
    w, x = weights(), torch.randn(5, 80, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    packed = quantise(w)
    ours = int8_matmul(x, packed).double()
    deq = packed.dequantise(torch.float64)
    exact = x.double() @ deq.T
    bound = BF16_UNIT_ROUNDOFF * exact.abs() + gamma(80, F32_EPS / 2) * (x.double().abs() @ deq.abs().T)
    assert bool(((ours - exact).abs() <= bound * (1 + BF16_UNIT_ROUNDOFF) + 1e-30).all())
    assert linear(x.float(), packed).dtype == torch.float32


# ------------------------------------------------------------------------------------------ whole model
def sensitivity_bound(model, packed_by_name, ids, logit_ids):
    """First-order worst-case bound and spread of int8 logit - float32 logit, for logits[0, -1, logit_ids].

    Each weight moves by at most half its row's step (s_n / 2); each matrix product's input and output are
    rounded to bfloat16 (relative u = 2^-8). To first order the logit moves by at most
        sum_W |dy/dW| s/2 + sum_inputs |dy/da| |a| u + sum_outputs |dy/dz| |z| u.
    Rounding errors are near-uniform and independent (a weight's error is uniform on [-s/2, s/2], variance
    s^2 / 12; a bfloat16 rounding's on [-u|a|, u|a|], variance (u a)^2 / 3), so the first-order change has
    standard deviation sigma = sqrt(sum (dy/dW)^2 s^2 / 12 + sum (dy/da)^2 a^2 u^2 / 3).
    -> (bound [n], sigma [n]) float64.
    """
    twin = float64_copy(model)
    captured, hooks = [], []

    def hook(module, inputs, output):
        for t in (inputs[0], output):
            t.retain_grad()
            captured.append(t)

    for name, module in twin.named_modules():
        if isinstance(module, torch.nn.Linear) and name.split(".")[-1] in packed_by_name:
            hooks.append(module.register_forward_hook(hook))
    logits = twin(ids).logits[0, -1]
    bounds, sigmas = [], []
    params = dict(twin.named_parameters())
    for i in logit_ids:
        twin.zero_grad()
        for t in captured:
            t.grad = None
        logits[i].backward(retain_graph=True)
        total, variance = 0.0, 0.0
        for pname, step in packed_by_name.items():
            for full, p in params.items():
                if full.endswith(f"{pname}.weight") and p.grad is not None:
                    moved = p.grad.abs() * step(full)[:, None]
                    total += float(moved.sum()) / 2
                    variance += float((moved ** 2).sum()) / 12
        seen = set()
        for t in captured:
            if id(t) in seen or t.grad is None:
                continue
            seen.add(id(t))
            moved = (t.grad * t).detach().abs() * BF16_UNIT_ROUNDOFF
            total += float(moved.sum())
            variance += float((moved ** 2).sum()) / 3
        bounds.append(total)
        sigmas.append(math.sqrt(variance))
    for h in hooks:
        h.remove()
    return torch.tensor(bounds, dtype=torch.float64), torch.tensor(sigmas, dtype=torch.float64)


@torch.no_grad()
def quantised_logits(fast, ids):
    return fast.make_stepper(1, ids.shape[1]).prefill(ids, None, torch.arange(ids.shape[1])[None])[0]


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
def test_int8_logits_within_first_order_quantisation_bound(tied):
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(tie_word_embeddings=tied)).eval(), seed=1)
    ids = torch.randint(3, 97, (1, 16), generator=torch.Generator().manual_seed(3))
    fast = FastDoge(model, weights="int8")
    layers = {f"model.layers.{i}": layer for i, layer in enumerate(fast.layers)}

    def step(full_name: str) -> torch.Tensor:
        """The quantisation step of each row of the teaching parameter ``full_name``."""
        if full_name.startswith("lm_head") or full_name.startswith("model.embed_tokens"):
            return fast.lm_head.scale.double()
        prefix, _, rest = full_name.rpartition(".self_attn.") if ".self_attn." in full_name else \
            full_name.rpartition(".mlp.")
        layer, proj = layers[prefix], rest.split(".")[0]
        cfg = model.config
        q_rows, kv_rows = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
        spans = {"q_proj": ("qkv", 0, q_rows), "k_proj": ("qkv", q_rows, kv_rows),
                 "v_proj": ("qkv", q_rows + kv_rows, kv_rows), "o_proj": ("o", 0, None),
                 "gate_proj": ("gate_up", 0, cfg.intermediate_size),
                 "up_proj": ("gate_up", cfg.intermediate_size, cfg.intermediate_size), "down_proj": ("down", 0, None)}
        fused_name, start, size = spans[proj]
        scale = getattr(layer, fused_name).scale.double()
        return scale[start:] if size is None else scale[start:start + size]

    names = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")
    if tied:
        names += ("embed_tokens",)
    got = quantised_logits(fast, ids).double()
    with torch.no_grad():
        reference = float64_copy(model)(ids).logits[0, -1]
    picks = list(range(0, 97, 6)) + [int(reference.argmax())]
    with torch.enable_grad():
        bound, sigma = sensitivity_bound(model, {n: step for n in names}, ids, picks)
    diff = (got[picks] - reference[picks]).abs()
    # first order: second-order terms are products of two relative errors (~1e-4 of the first-order ones);
    # a factor 1.5 covers them with room, and 8 float32 ulps of the logits cover float32's own rounding
    floor = 8 * F32_EPS * reference.abs().max()
    assert bool((diff <= 1.5 * bound + floor).all()), (diff / bound).max()
    # the worst case adds every rounding with the same sign; independent roundings stay within a few sigma
    # (6 sigma: a Gaussian exceeds it with probability 2e-9), which a wrong scale or row order would not
    assert bool((diff <= 6 * sigma + floor).all()), (diff / sigma).max()
    assert float(diff.max()) > 0  # the quantisation did change something


def test_int8_decoder_reads_a_quarter_of_the_bytes_and_generates():
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(tie_word_embeddings=True)).eval(), seed=1)
    float_bytes = FastDoge(model).weight_bytes()
    fast = FastDoge(model, weights="int8")
    assert fast.weight_bytes() < 0.3 * float_bytes
    ids = torch.randint(3, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    assert generate(fast, ids, max_new_tokens=12, eos_token_id=None).shape == (1, 20)
    with pytest.raises(ValueError, match="weights='int4': choose one of"):
        FastDoge(model, weights="int4")


def test_int8_quality_measures_the_model_it_is_given():
    """The float32 perplexity is the teaching model's own loss; the int8 one differs but stays close."""
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(tie_word_embeddings=True)).eval(), seed=1)
    rows = torch.randint(3, 97, (6, 20), generator=torch.Generator().manual_seed(4))
    ids = torch.randint(3, 97, (1, 6), generator=torch.Generator().manual_seed(5))
    quality = int8_quality(model, rows, ids, new_tokens=16, batch_size=4)
    with torch.no_grad():
        loss = model(rows, labels=rows).loss
    assert math.isclose(quality["perplexity_float32"], math.exp(float(loss)), rel_tol=1e-5)
    assert 0 < quality["max_logits_diff"] < 0.1
    assert abs(quality["perplexity_int8"] / quality["perplexity_float32"] - 1) < 0.05
    assert 0 <= quality["greedy_agreement"] <= 16
    with pytest.raises(ValueError, match="pass the model in float32"):
        int8_quality(model.to(torch.bfloat16), rows, ids)


@torch.no_grad()
def test_compiled_int8_step_equals_eager():
    """The compiled step runs the same kernels; only the float32 rounding of fused elementwise operations may
    differ (~1e-7 relative), which can flip the bfloat16 rounding of a few matrix-product inputs by one ulp
    (2^-8 of that element): the logits then move by a small fraction of 2^-8 of their size."""
    torch.manual_seed(0)
    model = randomize_(DogeForCausalLM(tiny_config(num_hidden_layers=1)).eval(), seed=1)
    ids = torch.randint(3, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    eager = FastDoge(model, weights="int8").make_stepper(1, 20)
    compiled = FastDoge(model, weights="int8", compile=True).make_stepper(1, 20)
    positions = torch.arange(8)[None]
    a, b = eager.prefill(ids, None, positions), compiled.prefill(ids, None, positions)
    for step in range(6):
        token, position = a.argmax(-1), torch.tensor([8 + step])
        a, b = eager.step(token, None, position), compiled.step(token, None, position)
        assert float((a - b).abs().max()) <= BF16_UNIT_ROUNDOFF * float(a.abs().max())
        assert torch.equal(a.argmax(-1), b.argmax(-1))
