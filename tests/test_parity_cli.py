"""``python -m doge_from_scratch.parity`` on checkpoint folders the tests make (no network).

- a native checkpoint written by transformers' own ``save_pretrained`` (reference: transformers),
- a classic generation-A checkpoint (reference: transformers computing the classic formula),
- a sharded checkpoint (transformers' sharding),
- corrupted copies (one tensor of layer 1 perturbed): the debugger must name layer 1 and the part,
- a Hub id with the network off: one clear line, no traceback.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from doge_from_scratch import parity, references
from doge_from_scratch.testing import failed_checks, float32_error_check, randomize_, reference_model, tiny_config

REPO = Path(__file__).resolve().parents[1]
LAYERS = 3
CORRUPT_LAYER = 1


def config():
    return tiny_config(num_hidden_layers=LAYERS)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    torch.manual_seed(0)
    ref = randomize_(reference_model(config()), 0)
    ref.save_pretrained(root / "native")
    ref.save_pretrained(root / "sharded", max_shard_size="40KB")
    references.write_stand_in(root / "classic", config(), generation="A", seed=1)
    return root


def run_cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "doge_from_scratch.parity", *args], cwd=REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def float32(report: parity.ParityReport) -> parity.DtypeResult:
    return next(r for r in report.results if r.dtype == "float32")


def test_native_checkpoint_saved_by_transformers(folders, record_diff):
    report = parity.run_parity(str(folders / "native"), seq_len=24, new_tokens=8)
    assert report.generation == "C" and report.variant == "native"
    assert report.reference.startswith("transformers")
    assert report.device == ("cuda" if torch.cuda.is_available() else "cpu")
    f32 = float32(report)
    record_diff("parity CLI native float32 logits", f32.max_abs_diff, 1e-4 * f32.max_abs_logit)
    assert report.ok and f32.greedy_agree == 8 and f32.argmax_agree == f32.positions
    bf16 = next(r for r in report.results if r.dtype == "bfloat16")
    record_diff("parity CLI native bfloat16 logits", bf16.max_abs_diff, 0.05 * bf16.max_abs_logit)
    assert bf16.max_abs_diff <= 0.05 * bf16.max_abs_logit  # bfloat16 keeps ~3 significant digits
    # and our bfloat16 run strays from float32 no more than (twice) the reference's does
    assert bf16.ours_vs_float32 <= 2 * bf16.reference_vs_float32
    assert report.divergence is None


def test_classic_checkpoint(folders, record_diff):
    report = parity.run_parity(str(folders / "classic"), dtypes=("float32",), seq_len=24, new_tokens=8,
                               trust_remote_code=True)
    assert report.generation == "A" and report.variant == "classic"
    assert "classic formula" in report.reference
    # the stand-in names remote code in auto_map but ships none: the attempt fails and is reported
    assert any("remote code did not run" in note for note in report.notes)
    f32 = float32(report)
    record_diff("parity CLI classic float32 logits", f32.max_abs_diff, 1e-4 * f32.max_abs_logit)
    assert report.ok and f32.greedy_agree == 8


def test_classic_without_trust_remote_code_says_so(folders):
    report = parity.run_parity(str(folders / "classic"), dtypes=("float32",), seq_len=8, new_tokens=2)
    assert any("--trust-remote-code" in note for note in report.notes)


def test_expanded_kv_heads_are_the_classic_attention():
    """The conversion the classic reference rests on: GQA keys/values/bias == expanded MHA ones.

    The expanded weights are exact copies of rows, so the products differ only by rounding: x @ W_wide^T is
    a product of another shape, which the BLAS may block (and so round) differently. Both are judged by their
    distance to the float64 product (``testing.float32_error_check``), not by bit equality.
    """
    n_h, n_kv, d, hidden = 4, 2, 8, 16
    g = torch.Generator().manual_seed(0)
    tensors = {"l.self_attn.k_proj.weight": torch.randn(n_kv * d, hidden, generator=g),
               "l.self_attn.v_proj.weight": torch.randn(n_kv * d, hidden, generator=g),
               "l.self_attn.dt_proj.weight": torch.randn(n_h, n_kv * d, generator=g)}
    wide = references.expand_kv_heads(tensors, n_h, n_kv, d)
    w_v, w_v_wide = tensors["l.self_attn.v_proj.weight"], wide["l.self_attn.v_proj.weight"]
    assert torch.equal(w_v_wide.view(n_h, d, hidden), w_v.view(n_kv, d, hidden).repeat_interleave(n_h // n_kv, 0))
    x = torch.randn(5, hidden, generator=g)
    v = (x @ w_v.T).view(5, n_kv, d)
    v_wide = (x @ w_v_wide.T).view(5, n_h, d)
    v_exact = (x.double() @ w_v.double().T).view(5, n_kv, d)
    check = float32_error_check("expanded v", v_wide, v.repeat_interleave(n_h // n_kv, dim=1),
                                v_exact.repeat_interleave(n_h // n_kv, dim=1))  # head h reads KV head h // g
    assert check["ok"], failed_checks([check])
    dt = v.reshape(5, -1) @ tensors["l.self_attn.dt_proj.weight"].T
    dt_wide = v_wide.reshape(5, -1) @ wide["l.self_attn.dt_proj.weight"].T
    dt_exact = v_exact.reshape(5, -1) @ tensors["l.self_attn.dt_proj.weight"].double().T
    check = float32_error_check("expanded dt", dt_wide, dt, dt_exact)
    assert check["ok"], failed_checks([check])


def test_sharded_checkpoint(folders):
    folder = folders / "sharded"
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) > 1, "the fixture should be sharded"
    report = parity.run_parity(str(folder), dtypes=("float32",), seq_len=16, new_tokens=4)
    assert report.ok


def corrupt_copy(source: Path, target: Path, key: str, scale: float = 0.05) -> Path:
    shutil.copytree(source, target)
    weights = target / "model.safetensors"
    tensors = load_file(str(weights))
    assert key in tensors, sorted(tensors)
    noise = torch.randn(tensors[key].shape, generator=torch.Generator().manual_seed(7))
    tensors[key] = tensors[key] + scale * noise
    save_file(tensors, str(weights), metadata={"format": "pt"})
    return target


@pytest.mark.parametrize("key,part,scale", [
    ("mlp.down_proj.weight", "mlp.down_proj", 0.05),
    ("self_attn.k_norm.weight", "self_attn.k_norm", 0.05),
    # A is not a module of its own: the attention block is named and A listed. The bias acts through
    # exp(A * softplus(.)), so A needs a bigger push than a weight to move the logits past float32 noise.
    ("self_attn.A", "self_attn", 1.0),
    ("post_attention_residual", "(the layer itself)", 0.05),
])
def test_debugger_names_the_corrupted_layer(folders, tmp_path, key, part, scale, capsys):
    corrupt = corrupt_copy(folders / "native", tmp_path / "corrupt", f"model.layers.{CORRUPT_LAYER}.{key}", scale)
    code = parity.main([str(corrupt), "--against", str(folders / "native"), "--dtypes", "float32",
                        "--seq-len", "24", "--new-tokens", "4", "--json"])
    out = capsys.readouterr().out
    assert code == 1, out
    report = json.loads(out.strip().splitlines()[-1])
    assert report["ok"] is False
    assert report["divergence_layer"] == CORRUPT_LAYER, report["divergence"]
    assert report["divergence_module"] == part, report["divergence"]
    if key in ("self_attn.A", "post_attention_residual"):
        assert f"model.layers.{CORRUPT_LAYER}.{key}" in report["divergence"]
    # every layer before the corrupted one agrees exactly: the same weights and the same code
    before = [row for row in report["layers"] if row[0] == f"model.layers.{CORRUPT_LAYER - 1}"]
    assert before and before[0][1] == 0.0


def test_debugger_on_a_corrupted_classic_checkpoint(folders, tmp_path):
    corrupt = corrupt_copy(folders / "classic", tmp_path / "corrupt",
                           f"model.layers.{CORRUPT_LAYER}.feed_forward.up_proj.weight")
    report = parity.run_parity(str(corrupt), against=str(folders / "classic"), dtypes=("float32",),
                               seq_len=16, new_tokens=4)
    assert not report.ok
    assert (report.divergence_layer, report.divergence_module) == (CORRUPT_LAYER, "mlp.up_proj")


def test_cli_passes_on_a_native_folder(folders):
    result = run_cli(str(folders / "native"), "--dtypes", "float32", "--seq-len", "16", "--new-tokens", "4",
                     "--json")
    assert result.returncode == 0, result.stderr
    assert "reference  transformers" in result.stdout
    assert json.loads(result.stdout.strip().splitlines()[-1])["ok"] is True


def test_hub_id_offline_fails_with_one_line(tmp_path):
    result = run_cli("SmallDoge/Doge-20M", env={"HF_HOME": str(tmp_path / "empty-hf-home")})
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "SmallDoge/Doge-20M" in lines[0] and "HF_HUB_OFFLINE" in lines[0], lines


def test_missing_folder_fails_with_one_line(tmp_path, capsys):
    assert parity.main([str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]


def test_device_prefers_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert parity.pick_device("auto").type == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert parity.pick_device("auto").type == "cpu"
    with pytest.raises(parity.CheckpointError, match="CUDA"):
        parity.pick_device("cuda")
