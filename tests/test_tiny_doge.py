"""The trained tiny Doges shipped in data/: data/tiny-doge (lessons 02 and 05 read it instead of random weights;
lessons 07 on start from it) and data/tiny-doge-student (lesson 09's student before distillation).

data/tiny-doge is the pretraining recipe's full run (lesson 06 runs the same recipe shortened), saved in bfloat16
by ``python -m doge_from_scratch.pretrain --out data/tiny-doge --save-dtype bfloat16``; data/tiny-doge-student the
same recipe on the smaller model (``--student --out data/tiny-doge-student``).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.paths import TOKENIZER_DIR
from doge_from_scratch.generation import continue_text
from doge_from_scratch.pretrain import (STUDENT_MODEL, TINY_DOGE_DIR, TINY_DOGE_STUDENT_DIR, PretrainSettings,
                                        student_settings, tiny_doge_config)
from doge_from_scratch.tokenizer import load_tokenizer



SHIPPED = [(TINY_DOGE_DIR, PretrainSettings, ""), (TINY_DOGE_STUDENT_DIR, student_settings, "--student ")]


@pytest.mark.parametrize("folder,settings,flag", SHIPPED, ids=["tiny-doge", "tiny-doge-student"])
def test_shipped_files_are_small_safetensors_of_the_lesson_recipe(folder: Path, settings, flag: str) -> None:
    weights = folder / "model.safetensors"
    assert weights.is_file(), f"{weights} missing: run python -m doge_from_scratch.pretrain {flag}--out " \
                              f"data/{folder.name} --save-dtype bfloat16"
    total = sum(p.stat().st_size for p in folder.iterdir())
    assert total <= 5 * 2**20, f"{folder}: {total / 2**20:.1f} MiB, more than the 5 MiB a clone should carry"
    with safe_open(str(weights), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    summary = json.loads((folder / "pretrain_summary.json").read_text())
    assert summary["pretrain_settings"] == json.loads(json.dumps(settings().to_json())), \
        f"{folder} was not trained with {settings.__name__}()"
    assert (folder / "tokenizer.json").read_bytes() == (TOKENIZER_DIR / "tokenizer.json").read_bytes()


def test_the_student_differs_from_the_lesson_recipe_only_in_its_model_and_is_a_third_of_its_size() -> None:
    """Lesson 09's teacher is lesson 07's chat model (tiny_doge_config); issue 13 asks for a teacher with at least
    3x the student's parameters."""
    lesson, student = PretrainSettings().to_json(), student_settings().to_json()
    assert {k for k in lesson if lesson[k] != student[k]} == {"model_overrides"}
    vocab = len(load_tokenizer())
    with torch.device("meta"):
        teacher = DogeForCausalLM(tiny_doge_config(vocab))
        small = DogeForCausalLM(tiny_doge_config(vocab, **STUDENT_MODEL))
    ratio = sum(p.numel() for p in teacher.parameters()) / sum(p.numel() for p in small.parameters())
    assert ratio >= 3, ratio
    shipped = DogeForCausalLM.from_pretrained(TINY_DOGE_STUDENT_DIR)
    for field, value in STUDENT_MODEL.items():
        assert getattr(shipped.config, field) == value, field
    torch.manual_seed(0)
    text = continue_text(shipped, load_tokenizer(), "The capital of Sweden is", max_new_tokens=3)
    assert text.startswith("The capital of Sweden is Stockholm"), text


def test_loads_as_float32_lesson_model_that_learnt_the_corpus() -> None:
    torch.manual_seed(0)
    model = DogeForCausalLM.from_pretrained(TINY_DOGE_DIR)
    tokenizer = load_tokenizer()
    expected = tiny_doge_config(len(tokenizer))
    for field in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads"):
        assert getattr(model.config, field) == getattr(expected, field), field
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    # The corpus states this fact hundreds of times (data/pretrain); random weights would not continue with it.
    text = continue_text(model, tokenizer, "The capital of Sweden is", max_new_tokens=3)
    assert text.startswith("The capital of Sweden is Stockholm"), text
