"""Checkpoint folders under bad input (issue 12): saves that cannot be half done, unreadable files named,
sizes checked before memory is taken, paths that cannot escape, and a parity CLI that says so in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import huggingface_hub
import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

from doge_from_scratch import DogeForCausalLM, parity
from doge_from_scratch.checkpoint import CheckpointError
from doge_from_scratch.testing import randomize_, tiny_config

REPO = Path(__file__).resolve().parents[1]


def saved(folder: Path, seed: int, shard: int | None = None, **fields) -> DogeForCausalLM:
    """A randomised tiny model saved into ``folder`` (in shards of at most ``shard`` bytes)."""
    model = randomize_(DogeForCausalLM(tiny_config(**fields)).eval(), seed)
    model.save_pretrained(folder, max_shard_size=shard)
    return model


def same_tensors(model: torch.nn.Module, other: torch.nn.Module) -> bool:
    """Bit-for-bit: a load must hand back exactly the stored bytes (no arithmetic happens in between)."""
    theirs = other.state_dict()
    return all(torch.equal(value, theirs[key]) for key, value in model.state_dict().items())


# ------------------------------------------------------------------------------- saving as one unit
# A child process saves a new model over the folder and dies (os._exit: no finally, no cleanup) at a
# chosen point, exactly like a kill. The patched names cover both the old layout (checkpoint.save_file,
# checkpoint._atomic_write_text) and the new one (atomic.save_file, checkpoint.atomic_write_text).
KILL_SCRIPT = textwrap.dedent("""
    import os, sys
    import doge_from_scratch.atomic as atomic_module
    import doge_from_scratch.checkpoint as checkpoint
    from doge_from_scratch import DogeForCausalLM
    from doge_from_scratch.testing import randomize_, tiny_config

    folder, kill_at = sys.argv[1], sys.argv[2]
    calls = []

    def wrap(module, name, when):
        real = getattr(module, name, None)
        if real is None:
            return
        def dying(*args, **kwargs):
            real(*args, **kwargs)
            calls.append(args)
            if when(args):
                os._exit(9)
        setattr(module, name, dying)

    for module in (checkpoint, atomic_module):
        wrap(module, "save_file", lambda args: kill_at == "second shard" and len(calls) == 2)
    for name in ("atomic_write_text", "_atomic_write_text"):
        wrap(checkpoint, name, lambda args: kill_at == "config.json" and str(args[0]).endswith("config.json"))
    model = randomize_(DogeForCausalLM(tiny_config(rms_norm_eps=1e-5)).eval(), 2)
    model.save_pretrained(folder, max_shard_size=40_000)
    print("save finished without being killed")
""")


@pytest.mark.parametrize("kill_at", ["second shard", "config.json"])
def test_a_save_killed_midway_leaves_the_old_checkpoint_whole(tmp_path, kill_at):
    folder = tmp_path / "ckpt"
    old = saved(folder, seed=1, shard=40_000)
    assert len(list(folder.glob("model-*-of-*.safetensors"))) > 2, "the old checkpoint should be sharded"
    (folder / "tokenizer.json").write_text("{}")
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(folder), kill_at], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 9, result.stdout + result.stderr
    loaded = DogeForCausalLM.from_pretrained(folder)
    assert loaded.config.rms_norm_eps == 1e-6, "the new config was written over the old checkpoint"
    assert same_tensors(old, loaded), "the folder holds a mix of old and new tensors"

    new = saved(folder, seed=3)  # unsharded now: every old shard and every leftover must go
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"], "a temporary folder was left behind"
    assert same_tensors(new, DogeForCausalLM.from_pretrained(folder))


def test_stale_shards_and_temp_files_are_cleaned_and_other_files_kept(tmp_path):
    saved(tmp_path, seed=1, shard=40_000)
    (tmp_path / ".model.safetensors.k2j3h4.tmp").write_bytes(b"half a file")  # left by a killed writer
    (tmp_path / "README.md").write_text("my notes")
    (tmp_path / "extras").mkdir()
    (tmp_path / "extras" / "eval.json").write_text("[1]")
    saved(tmp_path, seed=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md", "config.json", "extras", "model.safetensors"]
    assert (tmp_path / "README.md").read_text() == "my notes"
    assert (tmp_path / "extras" / "eval.json").read_text() == "[1]"


def test_the_two_rename_fallback_swaps_and_says_where_an_interrupted_save_left_the_data(tmp_path, monkeypatch):
    """Where the OS cannot exchange two folders atomically the swap takes two renames; a kill between them
    leaves the old checkpoint under <name>.previous, and loading the missing folder says so."""
    import doge_from_scratch.atomic as atomic_module

    monkeypatch.setattr(atomic_module, "_exchange", lambda a, b: False)
    folder = tmp_path / "ckpt"
    saved(folder, seed=1)
    new = saved(folder, seed=2)
    assert same_tensors(new, DogeForCausalLM.from_pretrained(folder))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]
    folder.rename(tmp_path / "ckpt.previous")  # the state between the two renames
    with pytest.raises(CheckpointError, match=r"no such folder: .*ckpt.*interrupted.*ckpt\.previous"):
        DogeForCausalLM.from_pretrained(folder)


def test_an_index_beside_a_single_file_is_ambiguous(tmp_path):
    saved(tmp_path, seed=1, shard=40_000)
    save_file({"x": torch.zeros(1)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors\.index\.json.*model\.safetensors\b"):
        DogeForCausalLM.from_pretrained(tmp_path)


# ----------------------------------------------------------------------------- tie_word_embeddings absent
@torch.no_grad()
def test_a_config_without_tie_word_embeddings_and_no_lm_head_loads_tied(tmp_path):
    saved(tmp_path, seed=4, tie_word_embeddings=True)
    fields = json.loads((tmp_path / "config.json").read_text())
    del fields["tie_word_embeddings"]
    (tmp_path / "config.json").write_text(json.dumps(fields))
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    ours = DogeForCausalLM.from_pretrained(tmp_path)
    assert ours.config.tie_word_embeddings and ours.lm_head.weight is ours.model.embed_tokens.weight
    theirs = transformers.AutoModelForCausalLM.from_pretrained(  # the reference, told how it was used
        tmp_path, dtype=torch.float32, attn_implementation="eager", tie_word_embeddings=True).eval()
    ids = torch.randint(0, 97, (2, 9), generator=torch.Generator().manual_seed(0))
    # the same float32 formula on the same weights (tests/test_checkpoint.py's round-trip bound)
    assert (ours(ids).logits - theirs(ids).logits).abs().max() <= 1e-5


# ------------------------------------------------------------------------------------- unreadable files
def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-100])


DAMAGE = {
    "truncated model.safetensors": ("model.safetensors", truncate),
    "truncated shard": ("model-00002-of-", truncate),
    "index not JSON": ("model.safetensors.index.json", lambda p: p.write_text('{"weight_map": {')),
    "config.json holds []": ("config.json", lambda p: p.write_text("[]")),
    "config.json not UTF-8": ("config.json",
                              lambda p: p.write_bytes(p.read_bytes().replace(b'"silu"', b'"s\xefl\xfc"'))),
}


@pytest.mark.parametrize("name", list(DAMAGE))
def test_unreadable_files_are_named_by_the_loader_and_by_the_cli(tmp_path, name, capsys):
    prefix, damage = DAMAGE[name]
    saved(tmp_path, seed=1, shard=40_000 if "shard" in name or "index" in name else None)
    damaged = next(p for p in sorted(tmp_path.iterdir()) if p.name.startswith(prefix))
    damage(damaged)
    with pytest.raises(CheckpointError, match=damaged.name):
        DogeForCausalLM.from_pretrained(tmp_path)
    assert parity.main([str(tmp_path), "--dtypes", "float32", "--seq-len", "4", "--new-tokens", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and damaged.name in err[0] and "Traceback" not in err[0], err


# ------------------------------------------------------------------------ sizes before memory is taken
def test_config_sizes_are_checked_against_the_headers_before_any_allocation(tmp_path, monkeypatch):
    """config.json says vocab_size 50M beside 97-row weights: the model would take 12.8 GB per table."""
    saved(tmp_path, seed=1)
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "vocab_size": 50_000_000}))
    real_init = torch.nn.Embedding.__init__

    def guarded(self, num_embeddings, *args, **kwargs):
        if num_embeddings > 10**6 and torch.empty(()).device.type != "meta":
            raise AssertionError(f"a real {num_embeddings}-row embedding was allocated before any check")
        real_init(self, num_embeddings, *args, **kwargs)

    monkeypatch.setattr(torch.nn.Embedding, "__init__", guarded)
    with pytest.raises(CheckpointError, match=r"mis-shaped model\.embed_tokens\.weight: checkpoint \(97, 64\), "
                                              r"model \(50000000, 64\)"):
        DogeForCausalLM.from_pretrained(tmp_path)


def test_the_layer_count_is_checked_before_any_layer_is_built(tmp_path, monkeypatch):
    """num_hidden_layers=100000 beside 2 layers of weights: minutes of construction, even on the meta device."""
    from doge_from_scratch import model as model_module

    saved(tmp_path, seed=1)
    fields = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**fields, "num_hidden_layers": 100_000}))
    real_init, built = model_module.DogeDecoderLayer.__init__, []

    def counted(self, *args, **kwargs):
        built.append(1)
        if len(built) > 100:
            raise AssertionError("layers were built before the layer count was checked")
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(model_module.DogeDecoderLayer, "__init__", counted)
    with pytest.raises(CheckpointError, match=r"config\.json: num_hidden_layers=100000, but the weights hold "
                                              r"layers 0\.\.1"):
        DogeForCausalLM.from_pretrained(tmp_path)


# -------------------------------------------------------------------------------------------- paths
def test_a_shard_outside_the_folder_is_refused(tmp_path):
    folder = tmp_path / "ckpt"
    saved(folder, seed=1, shard=40_000)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    first = index["weight_map"]["model.embed_tokens.weight"]
    (folder / first).rename(tmp_path / "x.safetensors")  # a file beside the folder: readable, but not ours
    index["weight_map"] = {k: "../x.safetensors" if v == first else v for k, v in index["weight_map"].items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"outside its folder.*\.\./x\.safetensors"):
        DogeForCausalLM.from_pretrained(folder)


@pytest.mark.parametrize("spelling", ["./nothere", "runs/nothere", "ABSOLUTE/a/b", "~/surely-not-a-doge-folder"])
def test_a_local_looking_path_that_does_not_exist_is_no_such_folder(tmp_path, monkeypatch, spelling):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()

    def no_hub(*args, **kwargs):
        raise AssertionError(f"a Hub lookup was attempted for {args}")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", no_hub)
    name = spelling.replace("ABSOLUTE", str(tmp_path))
    with pytest.raises(CheckpointError, match=rf"no such folder: {name}$"):
        DogeForCausalLM.from_pretrained(name)


# ----------------------------------------------------------------------------------- parity arguments
@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("tiny")
    randomize_(DogeForCausalLM(tiny_config(num_hidden_layers=1)), 0).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("args,named", [
    (["--backend", "fastest"], "--backend"),
    (["--seq-len", "0"], "--seq-len"),
    (["--seq-len", "ten"], "--seq-len"),
    (["--new-tokens", "-3"], "--new-tokens"),
    (["--device", "gpu-please"], "--device"),
])
def test_parity_cli_refuses_bad_arguments_in_one_line(tiny_folder, args, named, capsys):
    assert parity.main([str(tiny_folder), "--dtypes", "float32", "--new-tokens", "2", *args]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and named in err[0] and not captured.out, captured
