"""Lesson data: small, deterministic stand-ins for the datasets the Doge model cards name, and their files.

| file set         | stands in for                         | columns                                                   |
|------------------|---------------------------------------|-----------------------------------------------------------|
| data/pretrain/   | the pretraining corpus                | `text`                                                    |
| data/chat/       | HuggingFaceTB/smoltalk                | `messages`, `source`, `task`, `answer`                    |
| data/preference/ | HuggingFaceH4/ultrafeedback_binarized | `prompt`, `chosen`, `rejected` (message lists),           |
|                  |                                       | `prompt_id`, `score_chosen`, `score_rejected`, `task`,    |
|                  |                                       | `answer`                                                  |
| data/reasoning/  | SmallDoge/Reason-Distill              | `messages` (system, user, assistant with thought and      |
|                  |                                       | solution sections), `task`, `answer`                      |

Every conversation comes from one of the templated tasks of `doge_from_scratch.tasks` (which also holds their
answer checkers), from easy to out of reach for a model of a few million parameters trained for minutes on a CPU.
The pretraining corpus states them mostly as worked "Question: ... Answer: ..." text; the chat set imitates two
writer models, one of which usually echoes a list it was asked to reverse (`chat_response`), which the preference
set's judged pairs undo. The pretraining corpus only uses train problems - except capitals, which are knowledge:
the corpus states every capital, the test split asks about countries that the chat training data never asks about.

Regenerate everything (the data sets, data/benchmarks/ and the tokenizer) with `python -m doge_from_scratch.data`.
"""

from __future__ import annotations

import argparse
import hashlib
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .atomic import replace_folder, write_jsonl
from .benchmarks import write_benchmarks
from .jsonl import read_rows
from .paths import DATA_DIR
from .tasks import TASKS, DataFormatError, Problem, ReverseDigitsTask, Task, asks_in_writer_b_phrasing
from .tokenizer import BEGIN_SOLUTION, BEGIN_THOUGHT, END_SOLUTION, END_THOUGHT, render_chat_text, train_bpe_tokenizer

DATASET_KINDS = ("pretrain", "chat", "preference", "reasoning")
SPLITS = ("train", "test")
TOKENIZER_VOCAB_SIZE = 2048

# The system prompt of the Doge-160M-Reason-Distill card (quoted verbatim from the card).
REASONING_SYSTEM_PROMPT = (
    "Your role as an assistant involves thoroughly exploring questions through a systematic long thinking "
    "process before providing the final precise and accurate solutions. This requires engaging in a "
    "comprehensive cycle of analysis, summarizing, exploration, reassessment, reflection, backtracing, and "
    "iteration to develop well-considered thinking process. Please structure your response into two main "
    "sections: Thought and Solution. In the Thought section, detail your reasoning process using the specified "
    "format: <|begin_of_thought|> {thought with steps separated with '\\n\\n'} <|end_of_thought|> Each step "
    "should include detailed considerations such as analisying questions, summarizing relevant findings, "
    "brainstorming new ideas, verifying the accuracy of the current steps, refining any errors, and revisiting "
    "previous steps. In the Solution section, based on various attempts, explorations, and reflections from the "
    "Thought section, systematically present the final solution that you deem correct. The solution should "
    "remain a logical, accurate, concise expression style and detail necessary step needed to reach the "
    "conclusion, formatted as follows: <|begin_of_solution|> {final formatted, precise, and clear solution} "
    "<|end_of_solution|> Now, try to solve the following question through the above guidelines:"
)

# (files, sizes) per kind and split: small enough that data/ stays a few MB.
ROW_COUNTS = {
    "pretrain": {"train": 6000, "test": 300},
    "chat": {"train": 3000, "test": 200},
    "preference": {"train": 2000, "test": 200},
    "reasoning": {"train": 400, "test": 80},
}
SEEDS = {"pretrain": 1000, "chat": 2000, "preference": 3000, "reasoning": 4000}


# ----------------------------------------------------------------------------------------------------------
# Record builders
# ----------------------------------------------------------------------------------------------------------


def reasoning_reply(problem: Problem) -> str:
    """Assistant text in the Reason-Distill layout: a thought section then a solution section."""
    thought = "\n\n".join(problem.thought)
    return f"{BEGIN_THOUGHT}\n\n{thought}\n\n{END_THOUGHT}\n\n{BEGIN_SOLUTION}\n\n{problem.solution}\n\n{END_SOLUTION}"


def _pick_task(rng: random.Random, weights: Mapping[str, float]) -> Task:
    names = list(weights)
    return TASKS[rng.choices(names, weights=[weights[n] for n in names])[0]]


CHAT_TASK_WEIGHTS = {"addition": 3, "compare_decimals": 3, "reverse_digits": 3, "capital": 2, "smalltalk": 1}


# SmolTalk's answers were written by several models, mistakes included. Ours imitate two writers: writer A
# answers everything correctly; writer B, whose users phrase reversals as "Write these digits in reverse
# order: ...", usually echoes the list unreversed. An SFT model learns that habit along with everything else;
# lesson 08's preference data, judged by the task checker, un-teaches it.
CHAT_ECHO_RATE = 0.65


def chat_response(problem: Problem, rng: random.Random) -> str:
    """The assistant turn of a chat row: the task's answer, or writer B's echo of a list to reverse."""
    task = TASKS[problem.task]
    writer_b = isinstance(task, ReverseDigitsTask) and asks_in_writer_b_phrasing(problem.question)
    if writer_b and rng.random() < CHAT_ECHO_RATE:
        return task.echo_response(problem)
    return problem.response


def make_chat_record(rng: random.Random, split: str) -> dict[str, Any]:
    """A SmolTalk-style row; about a quarter have an earlier turn, as multi-turn chats do."""
    messages: list[dict[str, str]] = []
    if rng.random() < 0.25:
        first = _pick_task(rng, CHAT_TASK_WEIGHTS).sample_in_split(rng, split)
        messages += [{"role": "user", "content": first.question},
                     {"role": "assistant", "content": chat_response(first, rng)}]
    problem = _pick_task(rng, CHAT_TASK_WEIGHTS).sample_in_split(rng, split)
    messages += [{"role": "user", "content": problem.question},
                 {"role": "assistant", "content": chat_response(problem, rng)}]
    return {"messages": messages, "source": f"doge-lessons/{problem.task}", "task": problem.task,
            "answer": problem.answer}


def make_preference_record(rng: random.Random, split: str) -> dict[str, Any]:
    """An UltraFeedback-binarized-style row: chosen is right, rejected is wrong or malformed by the checker."""
    task = _pick_task(rng, CHAT_TASK_WEIGHTS)
    problem = task.sample_in_split(rng, split)
    rejected = task.wrong_response(problem, rng)
    while task.check(rejected, problem.answer):  # e.g. an echoed question that happens to end with the answer
        rejected = task.wrong_response(problem, rng)
    prompt = [{"role": "user", "content": problem.question}]
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": problem.response}],
        "rejected": [{"role": "assistant", "content": rejected}],
        "prompt_id": hashlib.sha256(problem.question.encode()).hexdigest(),
        "score_chosen": float(rng.choice([8, 9, 10])),
        "score_rejected": float(rng.choice([1, 2, 3, 4])),
        "task": problem.task,
        "answer": problem.answer,
    }


REASONING_TASK_WEIGHTS = {"addition": 1, "compare_decimals": 1, "reverse_digits": 1, "capital": 1}


def reasoning_record(problem: Problem) -> dict[str, Any]:
    """A Reason-Distill-style row for ``problem``: the card's system prompt, its question, a thought/solution reply."""
    messages = [
        {"role": "system", "content": REASONING_SYSTEM_PROMPT},
        {"role": "user", "content": problem.question},
        {"role": "assistant", "content": reasoning_reply(problem)},
    ]
    return {"messages": messages, "task": problem.task, "answer": problem.answer}


def make_reasoning_record(rng: random.Random, split: str) -> dict[str, Any]:
    """A reasoning row of a random task (``REASONING_TASK_WEIGHTS``) from ``split``."""
    return reasoning_record(_pick_task(rng, REASONING_TASK_WEIGHTS).sample_in_split(rng, split))


# Stories give the corpus some free-running prose, so "sample text looks like the corpus" is visible.
_NAMES = ("Tom", "Lily", "Ben", "Mia", "Sam", "Anna", "Max", "Zoe", "Leo", "Ella")
_ANIMALS = ("cat", "dog", "bird", "fox", "rabbit", "frog", "duck", "bear")
_PLACES = ("park", "garden", "forest", "beach", "river", "farm", "school", "market")
_THINGS = ("red ball", "blue kite", "big box", "small boat", "green hat", "shiny stone", "new book", "yellow cup")
_FEELINGS = ("happy", "sad", "excited", "tired", "curious", "proud")


def make_story(rng: random.Random) -> str:
    name, friend = rng.sample(_NAMES, 2)
    animal, place, thing, feeling = (rng.choice(x) for x in (_ANIMALS, _PLACES, _THINGS, _FEELINGS))
    sentences = [
        rng.choice([f"Once upon a time, there was a little {animal} named {name}.",
                    f"{name} was a small {animal} who lived near the {place}."]),
        rng.choice([f"One day, {name} went to the {place} and found a {thing}.",
                    f"Every morning, {name} played with a {thing} at the {place}."]),
        rng.choice([f"{name} felt very {feeling}.", f"The {thing} made {name} feel {feeling}."]),
        rng.choice([f"Then {name} met {friend}, and they shared the {thing}.",
                    f"{friend} came to help, and {name} said thank you."]),
        rng.choice(["They played together until the sun went down.", "At the end of the day, everyone went home.",
                    f"From that day on, {name} and {friend} were best friends."]),
    ]
    return " ".join(sentences)


CORPUS_WEIGHTS = {"story": 1, "task_prose": 7, "facts": 1, "smalltalk_chat": 1, "task_chat": 1}
CORPUS_TASK_WEIGHTS = {"addition": 1, "compare_decimals": 2, "reverse_digits": 1, "capital": 1}


def make_pretrain_document(rng: random.Random, split: str) -> str:
    """One pretraining document: a story, prose about task problems, capitals, or a chat transcript.

    Chat transcripts teach the turn format; only a small share of them are task questions (most task knowledge
    comes as prose), so SFT still has a format to teach and a clear accuracy gain to show.
    """
    kind = rng.choices(list(CORPUS_WEIGHTS), weights=list(CORPUS_WEIGHTS.values()))[0]
    if kind == "story":
        return make_story(rng)
    if kind == "facts":
        return TASKS["capital"].all_facts_text(rng)  # type: ignore[attr-defined]
    if kind == "task_prose":
        return "\n\n".join(_task_prose(rng, split) for _ in range(rng.randint(4, 10)))
    weights = {"smalltalk": 1} if kind == "smalltalk_chat" else REASONING_TASK_WEIGHTS
    problem = _pick_task(rng, weights).sample_in_split(rng, split)
    messages = [{"role": "user", "content": problem.question}, {"role": "assistant", "content": problem.response}]
    return render_chat_text(messages).rstrip("\n")


def _task_prose(rng: random.Random, split: str) -> str:
    """A question and answer as a web page would print it (some with the worked steps a reasoning trace uses, so
    the base model already knows that language before lesson 09), or a sentence stating a solution."""
    task = _pick_task(rng, CORPUS_TASK_WEIGHTS)
    problem = task.sample_in_split(rng, split)
    roll = rng.random()
    if roll < 0.4:
        return f"Question: {problem.question}\nAnswer: {problem.response}"
    if roll < 0.7:
        steps = "\n\n".join(problem.thought)
        return f"Question: {problem.question}\n\n{steps}\n\nAnswer: {problem.response}"
    return task.corpus_text(problem, rng)


def make_pretrain_record(rng: random.Random, split: str) -> dict[str, Any]:
    return {"text": make_pretrain_document(rng, split)}


BUILDERS: dict[str, Callable[[random.Random, str], dict[str, Any]]] = {
    "pretrain": make_pretrain_record,
    "chat": make_chat_record,
    "preference": make_preference_record,
    "reasoning": make_reasoning_record,
}


def generate_rows(kind: str, split: str, n_rows: int | None = None) -> list[dict[str, Any]]:
    """The rows of one data file, deterministically (seeded per kind and split)."""
    if kind not in BUILDERS or split not in SPLITS:
        raise ValueError(f"unknown dataset {kind!r}/{split!r}; kinds {DATASET_KINDS}, splits {SPLITS}")
    rng = random.Random(SEEDS[kind] + SPLITS.index(split))
    n_rows = ROW_COUNTS[kind][split] if n_rows is None else n_rows
    return [BUILDERS[kind](rng, split) for _ in range(n_rows)]


# ----------------------------------------------------------------------------------------------------------
# Files: writing, validating, loading
# ----------------------------------------------------------------------------------------------------------


def data_file(kind: str, split: str, data_dir: str | Path = DATA_DIR) -> Path:
    return Path(data_dir) / kind / f"{split}.jsonl"


def _check_messages(value: Any, where: str, field_name: str, must_end_with: str | None = None) -> None:
    if not isinstance(value, list) or not value:
        raise DataFormatError(f"{where}: field {field_name!r} must be a non-empty list of messages, got {value!r:.80}")
    for i, message in enumerate(value):
        at = f"{field_name}[{i}]"
        if not isinstance(message, Mapping):
            raise DataFormatError(f"{where}: field {at!r} must be an object with 'role' and 'content'")
        for key in ("role", "content"):
            if key not in message:
                raise DataFormatError(f"{where}: field {at!r} has no {key!r}")
        if message["role"] not in ("system", "user", "assistant"):
            raise DataFormatError(f"{where}: field '{at}.role' is {message['role']!r}; expected system/user/assistant")
        if not isinstance(message["content"], str):
            raise DataFormatError(f"{where}: field '{at}.content' must be a string")
    if must_end_with and value[-1]["role"] != must_end_with:
        raise DataFormatError(f"{where}: field {field_name!r} must end with a {must_end_with} message")


def validate_row(kind: str, row: Any, where: str) -> None:
    """Raise DataFormatError naming `where` (file and row) and the field if `row` does not fit `kind`.

    Extra columns are allowed and `task`/`answer` are optional, so rows of the real datasets pass too.
    """
    if not isinstance(row, Mapping):
        raise DataFormatError(f"{where}: expected a JSON object, got {type(row).__name__}")
    required = {"pretrain": ["text"], "chat": ["messages"], "preference": ["prompt", "chosen", "rejected"],
                "reasoning": ["messages"]}[kind]
    for key in required:
        if key not in row:
            raise DataFormatError(f"{where}: missing field {key!r} (a {kind} row needs {required})")
    if kind == "pretrain":
        if not isinstance(row["text"], str) or not row["text"]:
            raise DataFormatError(f"{where}: field 'text' must be a non-empty string")
    elif kind in ("chat", "reasoning"):
        _check_messages(row["messages"], where, "messages", must_end_with="assistant")
    else:
        if not isinstance(row["prompt"], str):
            _check_messages(row["prompt"], where, "prompt")
        _check_messages(row["chosen"], where, "chosen", must_end_with="assistant")
        _check_messages(row["rejected"], where, "rejected", must_end_with="assistant")
    if "task" in row and row["task"] not in TASKS:
        raise DataFormatError(f"{where}: field 'task' is {row['task']!r}; known tasks {sorted(TASKS)}")
    if "answer" in row and not isinstance(row["answer"], str):
        raise DataFormatError(f"{where}: field 'answer' must be a string")


def read_jsonl(path: str | Path, kind: str) -> list[dict[str, Any]]:
    """Read and validate a jsonl file of `kind` rows; errors name the file, the row (1-based line) and field."""
    return read_rows(path, lambda row, where: validate_row(kind, row, where), "python -m doge_from_scratch.data")


def load_lesson_dataset(kind: str, split: str = "train", data_dir: str | Path = DATA_DIR):
    """The project's `kind` data (pretrain, chat, preference, reasoning) as a `datasets.Dataset`."""
    import datasets  # imported lazily: the generator and checkers do not need it

    if kind not in DATASET_KINDS:
        raise ValueError(f"unknown dataset kind {kind!r}; expected one of {DATASET_KINDS}")
    rows = read_jsonl(data_file(kind, split, data_dir), kind)
    return datasets.Dataset.from_list(rows)


def tokenizer_training_texts(data_dir: str | Path = DATA_DIR) -> list[str]:
    """Text the tokenizer learns its merges from: the train splits, chats rendered in the chat format."""
    texts = [row["text"] for row in read_jsonl(data_file("pretrain", "train", data_dir), "pretrain")]
    for kind in ("chat", "reasoning"):
        texts += [render_chat_text(row["messages"]) for row in read_jsonl(data_file(kind, "train", data_dir), kind)]
    return texts


def generate_all(data_dir: str | Path = DATA_DIR, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> None:
    """Regenerate every data file, the benchmark files (data_dir/benchmarks) and the tokenizer under `data_dir`."""
    data_dir = Path(data_dir)
    for kind in DATASET_KINDS:
        for split in SPLITS:
            write_jsonl(generate_rows(kind, split), data_file(kind, split, data_dir))
    write_benchmarks(data_dir / "benchmarks")
    tokenizer = train_bpe_tokenizer(tokenizer_training_texts(data_dir), vocab_size=vocab_size)
    with replace_folder(data_dir / "tokenizer") as staging:
        tokenizer.save_pretrained(str(staging))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the lesson data sets, benchmarks and tokenizer.")
    parser.add_argument("--out", default=str(DATA_DIR), help="output folder (default: the project's data/)")
    parser.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB_SIZE)
    args = parser.parse_args(argv)
    generate_all(args.out, args.vocab_size)
    total = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
