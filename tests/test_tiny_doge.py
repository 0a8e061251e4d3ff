"""The trained tiny Doge shipped in data/tiny-doge (lessons 02 and 05 read it instead of random weights; lessons 07
on start from it).

It is the pretraining recipe's full run (lesson 06 runs the same recipe shortened), saved in bfloat16 by
``python -m doge_from_scratch.pretrain --out data/tiny-doge --save-dtype bfloat16``.
"""

from __future__ import annotations

import json

import torch
from safetensors import safe_open

from doge_from_scratch import DogeForCausalLM
from doge_from_scratch.paths import TOKENIZER_DIR
from doge_from_scratch.generation import continue_text
from doge_from_scratch.pretrain import TINY_DOGE_DIR, PretrainSettings, tiny_doge_config
from doge_from_scratch.tokenizer import load_tokenizer

WEIGHTS = TINY_DOGE_DIR / "model.safetensors"


def test_shipped_files_are_small_safetensors_of_the_lesson_recipe() -> None:
    assert WEIGHTS.is_file(), f"{WEIGHTS} missing: run python -m doge_from_scratch.pretrain --out data/tiny-doge " \
                              "--save-dtype bfloat16"
    total = sum(p.stat().st_size for p in TINY_DOGE_DIR.iterdir())
    assert total <= 5 * 2**20, f"{TINY_DOGE_DIR}: {total / 2**20:.1f} MiB, more than the 5 MiB a clone should carry"
    with safe_open(str(WEIGHTS), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    summary = json.loads((TINY_DOGE_DIR / "pretrain_summary.json").read_text())
    assert summary["pretrain_settings"] == json.loads(json.dumps(PretrainSettings().to_json())), \
        "data/tiny-doge was not trained with the default pretraining recipe"
    assert (TINY_DOGE_DIR / "tokenizer.json").read_bytes() == (TOKENIZER_DIR / "tokenizer.json").read_bytes()


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
