"""`bench recipes`: parsing variants, the per-task rows, and a tiny end-to-end run's table and JSON line."""

from __future__ import annotations

import json
import math

import pytest

from doge_from_scratch.bench import recipes


def test_parse_variant_and_its_errors():
    assert recipes.parse_variant('long={"steps": 1400}') == ("long", {"steps": 1400})
    assert recipes.parse_variant("lesson=") == ("lesson", {})
    with pytest.raises(ValueError, match="NAME=JSON"):
        recipes.parse_variant('{"steps": 1400}')
    with pytest.raises(ValueError, match="not JSON"):
        recipes.parse_variant("long={steps: 1400}")
    with pytest.raises(ValueError, match=r"\['stepz'\] are not PretrainSettings fields"):
        recipes.parse_variant('long={"stepz": 1400}')


def test_task_rows_count_intervals_and_chance():
    records = ([{"task": "compare_decimals", "answer": "3.9", "messages": []}] * 4
               + [{"task": "reverse_digits", "answer": "1 2 3", "messages": []}] * 2)
    rows = {r["task"]: r for r in recipes.task_rows(records, [True, True, True, False, False, True])}
    assert (rows["compare_decimals"]["right"], rows["compare_decimals"]["n"]) == (3, 4)
    assert rows["all"]["right"] == 4 and rows["all"]["n"] == 6
    # Wilson interval for 3/4 at z = 1.96, written out here from the formula
    z, p, n = 1.959964, 0.75, 4
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    assert rows["compare_decimals"]["low"] == pytest.approx(centre - half, abs=1e-9)
    assert rows["compare_decimals"]["high"] == pytest.approx(centre + half, abs=1e-9)
    assert rows["compare_decimals"]["chance"] == 0.5  # one of the two numbers
    assert rows["compare_decimals"]["clear_of_chance"] is False  # 3/4 of 4 does not clear 50%


def test_tiny_run_prints_a_table_and_a_json_line(capsys):
    variant = ('tiny={"steps": 2, "seq_len": 64, "rows_per_micro_batch": 2, "eval_every": 2, '
               '"checkpoint_every": 2, "max_train_docs": 40, "max_val_docs": 4, '
               '"model_overrides": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, '
               '"num_attention_heads": 2, "num_key_value_heads": 1}}')
    assert recipes.main(["--variant", variant, "--max-sft-examples", "8", "--max-eval", "6", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    summary = json.loads(lines[-1])
    assert summary["bench"] == "recipes" and summary["results"][0]["variant"] == "tiny"
    tasks = summary["results"][0]["tasks"]
    assert tasks[-1]["task"] == "all" and tasks[-1]["n"] == 6
    assert any(line.startswith("| tiny |") and "| all |" in line for line in lines)
