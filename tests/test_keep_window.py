"""Classic (generation A) checkpoints past their keep window, against the formula their own code computes.

The classic Hub configs say ``keep_window_size`` 2048 and ``dynamic_mask_ratio`` 0.0. Their code
(SmallDoges/small-doge ``modeling_doge.py``, ``prepare_dynamic_mask``, March-April 2025) does, per batch
row and attention head, with S keys and bias b = exp(A * softplus(dt_proj(v))) [B, heads, S]:

    if S > keep_window_size and 0 < ratio <= 1:
        k = int((S - keep_window_size) * ratio)
        if k > 0: b[b < kthvalue(b, k)] = dtype minimum        (ranked over all S keys, before the causal mask)
    mask = b[:, :, None, :] + causal                              (causal: 0 where allowed, dtype minimum elsewhere)

so ratio 0 masks nothing but the causal mask. The reference below writes that out in float64 from
the checkpoint's tensors, with its own KV cache (a decoding step ranks the biases of the keys it has,
so a cached run is not the last row of a full forward once ratio > 0), and the tests compare our
forward pass, both KV caches, the fast decoder and greedy generation with it.

Tolerance (float32 error analysis): the reference is also evaluated in float32. Its distance to the
float64 evaluation is the rounding error of this very computation in float32; ours may be at most
``ERROR_MULTIPLE`` times that (a different, equally good summation order), plus ``FLOOR_ULPS`` units in
the last place of the largest logit (for entries the float32 reference happens to get exactly).
"""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from doge_from_scratch import DogeForCausalLM, parity, references
from doge_from_scratch.fast_decode import FastDoge
from doge_from_scratch.generation import ModelStepper, generate
from doge_from_scratch.testing import tiny_config

WINDOW = 8
SEQ = 24  # three keep windows: 16 keys past the window at the end
PROMPT = 5  # cached runs start inside the window and cross it while decoding
BATCH = 2
ERROR_MULTIPLE = 4.0
FLOOR_ULPS = 8.0
F32_EPS = torch.finfo(torch.float32).eps


def config():
    return tiny_config(keep_window_size=WINDOW, max_position_embeddings=64, num_hidden_layers=2)


def classic_folder(path, ratio: float):
    """A classic folder (generation A names, classic config.json) with the given dynamic_mask_ratio."""
    references.write_stand_in(path, config(), generation="A", seed=1)
    fields = json.loads((path / "config.json").read_text())
    fields["dynamic_mask_ratio"] = ratio
    (path / "config.json").write_text(json.dumps(fields))
    return path


@pytest.fixture(scope="module", params=[0.0, 0.5], ids=["ratio0", "ratio0.5"])
def folder(request, tmp_path_factory):
    return classic_folder(tmp_path_factory.mktemp(f"classic_{request.param}"), request.param)


# ------------------------------------------------------------------------ the independent reference
class ClassicReference:
    """The classic Doge with a KV cache, from the folder's raw tensors, in ``dtype`` (float64 or float32).

    ``run(ids)`` appends ids [B, T] after what was run before and returns their logits [B, T, V].
    """

    def __init__(self, folder, dtype: torch.dtype) -> None:
        fields = json.loads((folder / "config.json").read_text())
        self.w = {k: v.to(dtype) for k, v in load_file(str(folder / "model.safetensors")).items()}
        self.heads, self.kv = fields["num_attention_heads"], fields["num_key_value_heads"]
        self.d = fields["hidden_size"] // self.heads
        self.layers, self.eps = fields["num_hidden_layers"], fields["rms_norm_eps"]
        self.window, self.ratio = fields["keep_window_size"], fields["dynamic_mask_ratio"]
        self.theta, self.max_positions = fields["rope_theta"], fields["max_position_embeddings"]
        self.dtype = dtype
        self.neg = torch.finfo(dtype).min
        self.cache: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.threshold_gaps: list[float] = []  # gap around each k-th smallest bias (see key_bias)

    def rms(self, x, weight):
        return weight * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)

    def rotate(self, x, positions):  # x: [B, n, T, d]; pairs (i, i + d/2) turned by position * theta^(-2i/d)
        # the classic rope_scaling is dynamic NTK, which changes nothing below max_position_embeddings
        assert int(positions.max()) < self.max_positions
        d = self.d
        freq = self.theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
        angle = (positions.double()[:, None] * freq).to(self.dtype)  # [T, d/2]
        x1, x2 = x[..., : d // 2], x[..., d // 2:]
        return torch.cat((x1 * angle.cos() - x2 * angle.sin(), x2 * angle.cos() + x1 * angle.sin()), -1)

    def key_bias(self, bias):
        """[B, heads, S]: the ratio rule, ranked by a full sort (not ``kthvalue``, which ours uses)."""
        s = bias.shape[-1]
        if not (s > self.window and 0.0 < self.ratio <= 1.0):
            return bias
        k = int((s - self.window) * self.ratio)
        if k <= 0:
            return bias
        ranked = bias.sort(dim=-1).values
        threshold = ranked[..., k - 1:k]
        # well-posedness: a float32 run must drop the same keys, so no other bias may sit within
        # rounding of the threshold. Rounding moves a bias by about eps32 times the spread of
        # A * softplus(dt) over the row, so the gap is measured in units of that spread.
        others = torch.cat((ranked[..., :k - 1], ranked[..., k:]), dim=-1)
        spread = ranked[..., -1:] - ranked[..., :1]
        self.threshold_gaps.append(float(((others - threshold).abs() / spread).min()))
        return bias.masked_fill(bias < threshold, self.neg)

    def run(self, ids: torch.Tensor) -> torch.Tensor:
        w, heads, kv, d = self.w, self.heads, self.kv, self.d
        b, t = ids.shape
        start = self.cache[0][0].shape[-2] if self.cache else 0
        s = start + t
        positions = torch.arange(start, s)
        future = torch.arange(s)[None, :] > positions[:, None]  # [T, S]
        causal = torch.zeros(t, s, dtype=self.dtype).masked_fill(future, self.neg)
        x = w["model.word_embed.weight"][ids]
        for i in range(self.layers):
            p = f"model.layers.{i}."
            h = self.rms(x, w[p + "pre_layernorm.weight"])
            q = (h @ w[p + "self_attn.q_proj.weight"].T).view(b, t, heads, d).transpose(1, 2)
            k = (h @ w[p + "self_attn.k_proj.weight"].T).view(b, t, kv, d).transpose(1, 2)
            v = (h @ w[p + "self_attn.v_proj.weight"].T).view(b, t, kv, d).transpose(1, 2)
            q, k = self.rotate(q, positions), self.rotate(k, positions)
            if len(self.cache) > i:
                k = torch.cat((self.cache[i][0], k), dim=-2)
                v = torch.cat((self.cache[i][1], v), dim=-2)
                self.cache[i] = (k, v)
            else:
                self.cache.append((k, v))
            dt = v.transpose(1, 2).reshape(b, s, kv * d) @ w[p + "self_attn.dt_proj.weight"].T  # [B, S, heads]
            bias = torch.exp(w[p + "self_attn.A"] * F.softplus(dt)).transpose(1, 2)  # [B, heads, S]
            mask = self.key_bias(bias)[:, :, None, :] + causal
            k = k.repeat_interleave(heads // kv, dim=1)
            v = v.repeat_interleave(heads // kv, dim=1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(d) + mask
            attn = torch.softmax(scores, dim=-1) @ v  # [B, heads, T, d]
            x = w[p + "pre_residual.weight"] * x + attn.transpose(1, 2).reshape(b, t, heads * d) @ \
                w[p + "self_attn.o_proj.weight"].T
            h = self.rms(x, w[p + "post_layernorm.weight"])
            mlp = (F.silu(h @ w[p + "feed_forward.gate_proj.weight"].T) * (h @ w[p + "feed_forward.up_proj.weight"].T)
                   ) @ w[p + "feed_forward.down_proj.weight"].T
            x = w[p + "post_residual.weight"] * x + mlp
        head = w.get("lm_head.weight", w["model.word_embed.weight"])
        return self.rms(x, w["model.final_layernorm.weight"]) @ head.T


def reference_logits(folder, ids: torch.Tensor, prompt: int | None, dtype: torch.dtype):
    """Teacher-forced logits [B, T, V]: one forward (prompt None) or the prompt then one token per step."""
    ref = ClassicReference(folder, dtype)
    if prompt is None:
        return ref.run(ids), ref
    steps = [ref.run(ids[:, :prompt])] + [ref.run(ids[:, t:t + 1]) for t in range(prompt, ids.shape[1])]
    return torch.cat(steps, dim=1), ref


def assert_float32_close(name: str, ours: torch.Tensor, folder, ids, prompt: int | None, record_diff,
                         rows: slice = slice(None)) -> None:
    """ours: float32 logits [B, len(rows), V] for the reference's teacher-forced rows ``rows``."""
    exact, ref64 = reference_logits(folder, ids, prompt, torch.float64)
    ref32, _ = reference_logits(folder, ids, prompt, torch.float32)
    if ref64.threshold_gaps:
        assert min(ref64.threshold_gaps) > 1e-4, "a bias ties the k-th smallest within float32 rounding"
    exact, ref32 = exact[:, rows], ref32[:, rows]
    ours_error = (ours.double() - exact).abs().max().item()
    ref_error = (ref32.double() - exact).abs().max().item()
    bound = ERROR_MULTIPLE * ref_error + FLOOR_ULPS * F32_EPS * exact.abs().max().item()
    record_diff(f"{name} vs float64 classic formula (float32 formula {ref_error:.1e}, max|logit| "
                f"{exact.abs().max().item():.2f})", ours_error, bound)
    assert ours_error <= bound, f"{name}: {ours_error:.3e} from float64, float32 formula {ref_error:.3e}"


def ids_for(vocab: int) -> torch.Tensor:
    """[BATCH, SEQ] ids, no token twice in a row: in layer 0 a repeated token repeats its bias exactly,
    and a tie at the threshold would leave the kept key to each implementation's rounding."""
    generator = torch.Generator().manual_seed(3)
    return torch.stack([torch.randperm(vocab, generator=generator)[:SEQ] for _ in range(BATCH)])


def ratio_of(folder) -> float:
    return json.loads((folder / "config.json").read_text())["dynamic_mask_ratio"]


# ------------------------------------------------------------------------------------------- tests
def test_forward_pass_past_the_keep_window(folder, record_diff):
    model = DogeForCausalLM.from_pretrained(folder)
    assert model.config.attention_variant == "classic"
    assert model.model.layers[0].self_attn.dynamic_mask_ratio == ratio_of(folder)
    ids = ids_for(model.config.vocab_size)
    for backend in ("auto", "materialised", "chunked"):
        model.set_attention_backend(backend)
        with torch.no_grad():
            logits = model(ids).logits
        assert_float32_close(f"classic ratio {ratio_of(folder)} forward [{backend}]", logits, folder, ids, None,
                             record_diff)


@pytest.mark.parametrize("decoder", ["static cache", "dynamic cache", "FastDoge"])
def test_cached_decoding_past_the_keep_window(folder, decoder, record_diff):
    model = DogeForCausalLM.from_pretrained(folder)
    ids = ids_for(model.config.vocab_size)
    if decoder == "FastDoge":
        stepper = FastDoge(model).make_stepper(BATCH, SEQ)
    else:
        stepper = ModelStepper(model, BATCH, SEQ, cache=decoder.split()[0])
    positions = torch.arange(SEQ)[None].expand(BATCH, -1)
    with torch.no_grad():
        # the steppers return the last position's logits: the prompt's, then one per new token
        logits = [stepper.prefill(ids[:, :PROMPT], None, positions[:, :PROMPT])]
        logits += [stepper.step(ids[:, t], None, positions[:, t]) for t in range(PROMPT, SEQ)]
    name = f"classic ratio {ratio_of(folder)} {decoder}"
    # row t of the stepper's output is the logits after token PROMPT - 1 + t
    assert_float32_close(name, torch.stack(logits, dim=1), folder, ids, PROMPT, record_diff,
                         rows=slice(PROMPT - 1, SEQ))


def test_greedy_generation_past_the_keep_window(folder):
    model = DogeForCausalLM.from_pretrained(folder)
    prompt = ids_for(model.config.vocab_size)[:, :PROMPT]
    ref = ClassicReference(folder, torch.float64)
    logits, tokens = ref.run(prompt)[:, -1], []
    for _ in range(SEQ - PROMPT):
        top2 = logits.topk(2, dim=-1).values
        assert float((top2[:, 0] - top2[:, 1]).min()) > 1e-4, "a greedy choice the float32 run could flip"
        tokens.append(logits.argmax(-1))
        logits = ref.run(tokens[-1][:, None])[:, -1]
    expected = torch.cat((prompt, torch.stack(tokens, dim=1)), dim=1)
    for decoder in (model, FastDoge(model)):
        got = generate(decoder, prompt, max_new_tokens=SEQ - PROMPT, do_sample=False)
        assert torch.equal(got, expected), type(decoder).__name__


def test_cached_decoding_is_not_a_full_forward_when_the_ratio_drops_keys(folder):
    """With ratio > 0 the code ranks the keys each call has, so a decoding step (fewer keys, fewer
    dropped) is not the last row of a full forward pass; with ratio 0 it is, to rounding."""
    model = DogeForCausalLM.from_pretrained(folder)
    ids = ids_for(model.config.vocab_size)
    stepper = ModelStepper(model, BATCH, SEQ, cache="dynamic")
    positions = torch.arange(SEQ)[None].expand(BATCH, -1)
    with torch.no_grad():
        full = model(ids).logits[:, PROMPT:]
        stepper.prefill(ids[:, :PROMPT], None, positions[:, :PROMPT])
        cached = torch.stack([stepper.step(ids[:, t], None, positions[:, t]) for t in range(PROMPT, SEQ)], 1)
    assert ((full - cached).abs().max().item() > 1e-3) == (ratio_of(folder) > 0)


def test_parity_tool_past_the_keep_window(tmp_path, record_diff):
    """The parity tool's classic reference (transformers converted to the classic formula) agrees past
    the window when the ratio is 0 (the published configs): classic code has no keep-window top-k for
    transformers to apply. With a ratio > 0 transformers cannot compute the ratio rule, so that reference
    holds only within the window; the tests above check the ratio rule against the independent formula."""
    folder = classic_folder(tmp_path, 0.0)
    report = parity.run_parity(str(folder), dtypes=("float32",), seq_len=SEQ, new_tokens=8)
    f32 = report.results[0]
    record_diff(f"parity tool, classic ratio 0, {SEQ} + 8 tokens past a window of {WINDOW}", f32.max_abs_diff,
                parity.FLOAT32_RTOL * f32.max_abs_logit)
    assert report.ok and f32.greedy_agree == 8, report.divergence
