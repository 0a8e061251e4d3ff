"""Small benchmark files in the formats of the real ones, on what the lesson models were taught.

| file (data/benchmarks/)      | format of                    | items                                              |
|------------------------------|------------------------------|----------------------------------------------------|
| arc_test.jsonl               | allenai/ai2_arc              | additions, capitals, reversals; 4 labelled choices |
| piqa_validation.jsonl        | PIQA (goal, sol1, sol2)      | the bigger of two decimals (~half like 3.9, 3.11)  |
| hellaswag_validation.jsonl   | Rowan/hellaswag              | a sentence to finish: a reversed list, a sum       |
| mmlu_test.jsonl, _dev.jsonl  | cais/mmlu                    | three subjects; dev rows are the 5-shot examples   |
| ifeval.jsonl                 | google/IFEval                | a lesson question plus verifiable instructions     |
| qa_test.jsonl                | a short-answer QA set        | a lesson question, its answer for exact match      |

Every scored item is *held out*: its problem (the operands, the list, the decimals, the country) is in the test split
of `doge_from_scratch.data` (`split_of(key) == "test"`), so neither its question nor its answer appears in any
training file under data/. Capitals are knowledge: the pretraining corpus states every capital (data.py says why),
so a capital question is held out as a question, not as a fact. Only 8 countries fall in the test split; MMLU's
geography examples (dev, shown in the prompt, never scored) ask the other way round ("Of which country is Berlin
the capital?"), a question no training file asks, about train-split countries, so no example gives away a scored
answer. Each row keeps the problem key in an extra column, `source_key` (the harness ignores extra columns).

Regenerate byte for byte with `python -m doge_from_scratch.benchmarks` (seeded; tests check the committed files).
"""

from __future__ import annotations

import argparse
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .atomic import write_jsonl
from .jsonl import read_rows
from .paths import DATA_DIR
from .tasks import CAPITALS, TASKS, DataFormatError, Problem, split_of

BENCHMARK_DIR = DATA_DIR / "benchmarks"
SEED = 5000
LETTERS = ("A", "B", "C", "D")
# IFEval's own end phrase (its most common end_checker argument).
END_PHRASE = "Is there anything else I can help with?"


class _HeldOut:
    """Draws test-split problems of a task, each problem at most once across all files (capitals excepted)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def draw(self, task: str) -> Problem:
        while True:
            problem = TASKS[task].sample_in_split(self.rng, "test")
            if problem.key not in self.used:
                self.used.add(problem.key)
                return problem


def _shuffled_with_gold(rng: random.Random, right: str, wrong: Sequence[str]) -> tuple[list[str], int]:
    choices = [right, *wrong]
    rng.shuffle(choices)
    return choices, choices.index(right)


def _wrong_sums(rng: random.Random, a: int, b: int, n: int = 3) -> list[str]:
    """Plausible wrong sums: a forgotten carry, off by one or two, a tens digit off."""
    total = a + b
    forgot_carry = [total - 10] if (a % 10 + b % 10) >= 10 else []
    pool = sorted({total + d for d in (-10, -2, -1, 1, 2, 10)} - {total})
    candidates = forgot_carry + [x for x in rng.sample(pool, len(pool)) if x not in forgot_carry]
    return [str(x) for x in candidates if x > 0][:n]


def _operands(problem: Problem) -> tuple[int, int]:
    a, b = problem.key.split(":")[1].split("+")
    return int(a), int(b)


def _digits(problem: Problem) -> list[str]:
    return problem.key.split(":", 1)[1].split()


def _wrong_reversals(rng: random.Random, problem: Problem, n: int = 3) -> list[str]:
    """The list echoed as given, a digit dropped, a digit changed, two digits swapped: distinct, never right."""
    original, right = _digits(problem), problem.answer.split()
    dropped = right[:-1]
    changed = list(right)
    i = rng.randrange(len(changed))
    changed[i] = str((int(changed[i]) + rng.randint(1, 9)) % 10)
    swapped = list(right)
    j = rng.randrange(len(swapped) - 1)
    swapped[j], swapped[j + 1] = swapped[j + 1], swapped[j]
    out: list[str] = []
    for cand in (original, dropped, changed, swapped):
        text = " ".join(cand)
        if text != problem.answer and text not in out:
            out.append(text)
    while len(out) < n:  # palindromes and repeated digits: change another digit
        cand = list(right)
        k = rng.randrange(len(cand))
        cand[k] = str((int(cand[k]) + rng.randint(1, 9)) % 10)
        text = " ".join(cand)
        if text != problem.answer and text not in out:
            out.append(text)
    return out[:n]


def _test_countries() -> list[tuple[str, str]]:
    return [(c, cap) for c, cap, _ in CAPITALS if split_of(f"capital:{c}") == "test"]


def _train_countries() -> list[tuple[str, str]]:
    return [(c, cap) for c, cap, _ in CAPITALS if split_of(f"capital:{c}") == "train"]


def _other_capitals(rng: random.Random, capital: str, n: int = 3) -> list[str]:
    return rng.sample([cap for _, cap, _ in CAPITALS if cap != capital], n)


def _other_countries(rng: random.Random, country: str, n: int = 3) -> list[str]:
    return rng.sample([c for c, _, _ in CAPITALS if c != country], n)


def _capitalised(country: str) -> str:
    return country[0].upper() + country[1:]


# ------------------------------------------------------------------------------------------------ ARC
def arc_rows(draw: _HeldOut, n_addition: int = 40, n_reversal: int = 32) -> list[dict[str, Any]]:
    rng, rows = draw.rng, []

    def row(key: str, question: str, right: str, wrong: Sequence[str]) -> dict[str, Any]:
        choices, gold = _shuffled_with_gold(rng, right, wrong)
        return {"id": f"doge-arc-{len(rows)}", "question": question,
                "choices": {"text": choices, "label": list(LETTERS[:len(choices)])}, "answerKey": LETTERS[gold],
                "source_key": key}

    for _ in range(n_addition):
        p = draw.draw("addition")
        rows.append(row(p.key, p.question, p.answer, _wrong_sums(rng, *_operands(p))))
    for country, capital in _test_countries():
        rows.append(row(f"capital:{country}", f"What is the capital of {country}?", capital,
                        _other_capitals(rng, capital)))
    for _ in range(n_reversal):
        p = draw.draw("reverse_digits")
        rows.append(row(p.key, p.question, p.answer, _wrong_reversals(rng, p)))
    rng.shuffle(rows)
    for i, r in enumerate(rows):
        r["id"] = f"doge-arc-{i}"
    return rows


# ----------------------------------------------------------------------------------------------- PIQA
def piqa_rows(draw: _HeldOut, n: int = 100) -> list[dict[str, Any]]:
    rows = []
    for _ in range(n):
        p = draw.draw("compare_decimals")
        x, y = p.key.split(":", 1)[1].split("|")
        sols, gold = _shuffled_with_gold(draw.rng, f"The bigger number is {p.answer}.",
                                         [f"The bigger number is {y if p.answer == x else x}."])
        rows.append({"goal": p.question, "sol1": sols[0], "sol2": sols[1], "label": gold, "source_key": p.key})
    return rows


# ------------------------------------------------------------------------------------------ HellaSwag
def hellaswag_rows(draw: _HeldOut, n_reversal: int = 50, n_addition: int = 50) -> list[dict[str, Any]]:
    rng, rows = draw.rng, []

    def row(key: str, activity: str, ctx_a: str, ctx_b: str, right: str, wrong: Sequence[str]) -> dict[str, Any]:
        endings, gold = _shuffled_with_gold(rng, right, wrong)
        return {"ind": 0, "activity_label": activity, "ctx_a": ctx_a, "ctx_b": ctx_b, "ctx": f"{ctx_a} {ctx_b}",
                "endings": endings, "source_id": key, "split": "val", "split_type": "indomain", "label": str(gold),
                "source_key": key}

    for _ in range(n_reversal):
        p = draw.draw("reverse_digits")
        digits = _digits(p)
        ctx_a = f"We take the digits {', '.join(digits)} from the last to the first."
        rows.append(row(p.key, "Reversing a list", ctx_a, "the reversed list is", f"{p.answer}.",
                        [f"{w}." for w in _wrong_reversals(rng, p)]))
    for _ in range(n_addition):
        p = draw.draw("addition")
        a, b = _operands(p)
        rows.append(row(p.key, "Adding numbers", f"We need to add {a} and {b}.", f"so {a} + {b} =",
                        f"{p.answer}.", [f"{w}." for w in _wrong_sums(rng, a, b)]))
    rng.shuffle(rows)
    for i, r in enumerate(rows):
        r["ind"] = i
    return rows


# ----------------------------------------------------------------------------------------------- MMLU
MMLU_SUBJECTS = ("elementary_arithmetic", "list_manipulation", "world_capitals")


def _mmlu_row(rng: random.Random, subject: str, key: str, question: str, right: str,
              wrong: Sequence[str]) -> dict[str, Any]:
    choices, gold = _shuffled_with_gold(rng, right, wrong)
    return {"question": question, "subject": subject, "choices": choices, "answer": gold, "source_key": key}


def _mmlu_arithmetic(draw: _HeldOut) -> dict[str, Any]:
    p = draw.draw("addition")
    a, b = _operands(p)
    return _mmlu_row(draw.rng, "elementary_arithmetic", p.key, f"What is {a} + {b}?", p.answer,
                     _wrong_sums(draw.rng, a, b))


def _mmlu_lists(draw: _HeldOut) -> dict[str, Any]:
    p = draw.draw("reverse_digits")
    return _mmlu_row(draw.rng, "list_manipulation", p.key, f"Which list is {' '.join(_digits(p))} in reverse order?",
                     p.answer, _wrong_reversals(draw.rng, p))


def mmlu_rows(draw: _HeldOut, n_per_subject: int = 30, n_dev: int = 5) -> tuple[list[dict], list[dict]]:
    """(test rows, dev rows); rows grouped by subject as in cais/mmlu."""
    rng = draw.rng
    test: list[dict[str, Any]] = []
    dev: list[dict[str, Any]] = []
    for make in (_mmlu_arithmetic, _mmlu_lists):
        dev += [make(draw) for _ in range(n_dev)]
        test += [make(draw) for _ in range(n_per_subject)]
    for country, capital in _test_countries():
        test.append(_mmlu_row(rng, "world_capitals", f"capital:{country}", f"What is the capital of {country}?",
                              capital, _other_capitals(rng, capital)))
        test.append(_mmlu_row(rng, "world_capitals", f"capital:{country}",
                              f"Of which country is {capital} the capital?", _capitalised(country),
                              [_capitalised(c) for c in _other_countries(rng, country)]))
    for country, capital in rng.sample(_train_countries(), n_dev):
        dev.append(_mmlu_row(rng, "world_capitals", f"capital:{country}", f"Of which country is {capital} the capital?",
                             _capitalised(country), [_capitalised(c) for c in _other_countries(rng, country)]))
    return test, dev


# --------------------------------------------------------------------------------------------- IFEval
def _word_limit(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    n = rng.randint(4, 10)
    # IFEval has only "less than" and "at least"; "at most n" is "less than n + 1".
    return (f"Answer in at most {n} words.", "length_constraints:number_words",
            {"relation": "less than", "num_words": n + 1})


def _end_with(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    return (f'End your answer with the exact phrase "{END_PHRASE}" and nothing after it.', "startend:end_checker",
            {"end_phrase": END_PHRASE})


def _no_commas(rng: random.Random) -> tuple[str, str, dict[str, Any]]:
    return "Do not use any commas in your answer.", "punctuation:no_comma", {}


INSTRUCTION_MAKERS: tuple[Callable[[random.Random], tuple[str, str, dict[str, Any]]], ...] = (
    _word_limit, _end_with, _no_commas)


def ifeval_rows(draw: _HeldOut, n: int = 60) -> list[dict[str, Any]]:
    rng, rows = draw.rng, []
    tasks = ("addition", "compare_decimals", "reverse_digits")
    for i in range(n):
        p = draw.draw(tasks[i % len(tasks)])
        makers = rng.sample(INSTRUCTION_MAKERS, rng.choice([1, 1, 2]))
        made = [m(rng) for m in makers]
        # A new line between question and instructions: a list to reverse ends without a full stop.
        prompt = p.question + "\n" + " ".join(text for text, _, _ in made)
        rows.append({"key": 1000 + i, "prompt": prompt,
                     "instruction_id_list": [iid for _, iid, _ in made], "kwargs": [kw for _, _, kw in made],
                     "source_key": p.key})
    return rows


# ------------------------------------------------------------------------------------------- short QA
def qa_rows(draw: _HeldOut, n: int = 60) -> list[dict[str, Any]]:
    rows = []
    tasks = ("addition", "compare_decimals", "reverse_digits")
    for i in range(n):
        p = draw.draw(tasks[i % len(tasks)])
        rows.append({"question": p.question, "answer": p.answer, "task": p.task, "source_key": p.key})
    for country, capital in _test_countries():
        rows.append({"question": f"What is the capital of {country}?", "answer": capital, "task": "capital",
                     "source_key": f"capital:{country}"})
    return rows


# ----------------------------------------------------------------------------------------------- files
FILES = ("arc_test", "piqa_validation", "hellaswag_validation", "mmlu_test", "mmlu_dev", "ifeval", "qa_test")


def generate_benchmarks(seed: int = SEED) -> dict[str, list[dict[str, Any]]]:
    """Every benchmark file's rows, deterministically (one seeded generator, files made in a fixed order)."""
    draw = _HeldOut(random.Random(seed))
    mmlu_test, mmlu_dev = mmlu_rows(draw)
    return {"arc_test": arc_rows(draw), "piqa_validation": piqa_rows(draw),
            "hellaswag_validation": hellaswag_rows(draw), "mmlu_test": mmlu_test, "mmlu_dev": mmlu_dev,
            "ifeval": ifeval_rows(draw), "qa_test": qa_rows(draw)}


def benchmark_file(name: str, folder: str | Path = BENCHMARK_DIR) -> Path:
    if name not in FILES:
        raise ValueError(f"unknown benchmark file {name!r}; expected one of {FILES}")
    return Path(folder) / f"{name}.jsonl"


def write_benchmarks(folder: str | Path = BENCHMARK_DIR, seed: int = SEED) -> list[Path]:
    paths = []
    for name, rows in generate_benchmarks(seed).items():
        path = benchmark_file(name, folder)
        write_jsonl(rows, path)
        paths.append(path)
    return paths


REQUIRED_FIELDS = {
    "arc_test": ("question", "choices", "answerKey"),
    "piqa_validation": ("goal", "sol1", "sol2", "label"),
    "hellaswag_validation": ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
    "mmlu_test": ("question", "subject", "choices", "answer"),
    "mmlu_dev": ("question", "subject", "choices", "answer"),
    "ifeval": ("key", "prompt", "instruction_id_list", "kwargs"),
    "qa_test": ("question", "answer"),
}


def read_benchmark(name: str, folder: str | Path = BENCHMARK_DIR) -> list[dict[str, Any]]:
    """The rows of one benchmark file; a missing field or bad JSON names the file, the row (1-based) and the key."""
    def check_row(row: Any, where: str) -> None:
        if not isinstance(row, dict):
            raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
        missing = [key for key in REQUIRED_FIELDS[name] if key not in row]
        if missing:
            needs = list(REQUIRED_FIELDS[name])
            raise DataFormatError(f"{where}: missing field(s) {missing} (a {name} row needs {needs})")

    return read_rows(benchmark_file(name, folder), check_row, "python -m doge_from_scratch.benchmarks")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the benchmark files under data/benchmarks/.")
    parser.add_argument("--out", default=str(BENCHMARK_DIR))
    args = parser.parse_args(argv)
    for path in write_benchmarks(args.out):
        print(f"wrote {path} ({len(path.read_text(encoding='utf-8').splitlines())} rows)")


if __name__ == "__main__":
    main()
