"""Lesson data: small, deterministic stand-ins for the datasets the Doge model cards name.

| file set            | stands in for                             | columns                                              |
|---------------------|-------------------------------------------|------------------------------------------------------|
| data/pretrain/      | the pretraining corpus                    | `text`                                               |
| data/chat/          | HuggingFaceTB/smoltalk                    | `messages`, `source`, `task`, `answer`               |
| data/preference/    | HuggingFaceH4/ultrafeedback_binarized     | `prompt`, `chosen`, `rejected` (message lists),      |
|                     |                                           | `prompt_id`, `score_chosen`, `score_rejected`, `task`, `answer` |
| data/reasoning/     | SmallDoge/Reason-Distill                  | `messages` (system, user, assistant with thought and |
|                     |                                           | solution sections), `task`, `answer`                 |

Every conversation comes from one of a few templated tasks (two-digit addition, which of two decimals is bigger -
the cards' own "3.9 or 3.11" -, reversing a list of digits, capitals of countries, small talk), from easy to out
of reach for a model of a few million parameters trained for minutes on a CPU. The pretraining corpus states
them mostly as worked "Question: ... Answer: ..." text; the chat set imitates two writer models, one of which
usually echoes a list it was asked to reverse (`chat_response`), which the preference set's judged pairs undo.
Each task has a checker, so later lessons can measure accuracy with `check_answer(record, generated_text)`. Train and test problems are disjoint: a problem's
split is a hash of its identity (the operands, the list, the country), and the pretraining corpus only uses
train problems - except capitals, which are knowledge: the corpus states every capital, the test split asks
about countries that the chat training data never asks about.

Regenerate everything (including the tokenizer) with `python -m doge_from_scratch.data`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any

from .atomic import atomic_write_text, replace_folder
from .paths import DATA_DIR
from .tokenizer import (
    BEGIN_SOLUTION,
    BEGIN_THOUGHT,
    BOS_TOKEN,
    END_SOLUTION,
    END_THOUGHT,
    EOS_TOKEN,
    START_HEADER_TOKEN,
    train_bpe_tokenizer,
)

DATASET_KINDS = ("pretrain", "chat", "preference", "reasoning")
SPLITS = ("train", "test")
TOKENIZER_VOCAB_SIZE = 2048
TEST_FRACTION_PERCENT = 20

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


class DataFormatError(ValueError):
    """A data row does not have the shape a lesson needs; the message names file, row and field."""


# ----------------------------------------------------------------------------------------------------------
# Tasks
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One task instance. `answer` is what the checker looks for; `key` decides the train/test split."""

    task: str
    key: str
    question: str
    answer: str
    response: str
    thought: list[str] = field(default_factory=list)
    solution: str = ""


def split_of(key: str) -> str:
    """Deterministic split from a problem's identity (stable across Python versions, unlike hash())."""
    bucket = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < TEST_FRACTION_PERCENT else "train"


_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DIGIT_RUN = re.compile(r"\d(?: \d)*")


def _last_number(text: str) -> str | None:
    found = _NUMBER.findall(text)
    return found[-1] if found else None


def _same_number(a: str | None, b: str) -> bool:
    if a is None:
        return False
    try:
        return Decimal(a) == Decimal(b)
    except InvalidOperation:
        return False


class Task:
    """A templated task: samples problems, writes wrong answers, corpus text, and checks answers."""

    name: str = ""

    def sample(self, rng: random.Random) -> Problem:
        raise NotImplementedError

    def check(self, answer_text: str, answer: str) -> bool:
        raise NotImplementedError

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        raise NotImplementedError

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        """A sentence or two stating the problem's solution in plain prose, for the pretraining corpus."""
        raise NotImplementedError

    def split_of(self, problem: Problem) -> str:
        return split_of(problem.key)

    def sample_in_split(self, rng: random.Random, split: str) -> Problem:
        # Rejection sampling: about 1 in 5 problems is a test problem, so this loops a few times at most.
        while True:
            problem = self.sample(rng)
            if self.split_of(problem) == split:
                return problem


def _malformed(problem: Problem, rng: random.Random) -> str:
    """Answers a checker must reject whatever the task: off topic, truncated, or only echoing the question."""
    choice = rng.randrange(3)
    if choice == 0:
        return "I am not sure. Let me think about something else."
    if choice == 1:
        cut = max(1, len(problem.response) // 3)
        return problem.response[:cut].rstrip("0123456789. ")
    return problem.question


class AdditionTask(Task):
    name = "addition"
    _questions = ("What is {a} + {b}?", "Compute {a} plus {b}.", "Add {a} and {b}.")

    def sample(self, rng: random.Random) -> Problem:
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        total = a + b
        question = rng.choice(self._questions).format(a=a, b=b)
        steps = [f"We need to add {a} and {b}."]
        ones = a % 10 + b % 10
        carry = ones // 10
        steps.append(
            f"Add the ones: {a % 10} + {b % 10} = {ones}."
            + (f" Write {ones % 10} and carry 1." if carry else "")
        )
        tens = a // 10 + b // 10 + carry
        carry_text = " + 1" if carry else ""
        steps.append(f"Add the tens: {a // 10} + {b // 10}{carry_text} = {tens}.")
        steps.append(f"So {a} + {b} = {total}.")
        return Problem(
            task=self.name,
            key=f"addition:{a}+{b}",
            question=question,
            answer=str(total),
            response=f"{a} + {b} = {total}.",
            thought=steps,
            solution=f"{a} + {b} = {total}",
        )

    def check(self, answer_text: str, answer: str) -> bool:
        return _same_number(_last_number(answer_text), answer)

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        a, b = (int(x) for x in problem.key.split(":")[1].split("+"))
        choice = rng.randrange(4)
        if choice == 3:
            return _malformed(problem, rng)
        if choice == 0 and (a % 10 + b % 10) >= 10:
            wrong = a + b - 10  # forgot the carry
        else:
            wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
        return f"{a} + {b} = {wrong}."

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        if rng.random() < 0.3:
            return " ".join(problem.thought)
        return problem.response


class CompareDecimalsTask(Task):
    """Which of two decimals is bigger; half the problems are the 3.9-vs-3.11 trap (same whole part)."""

    name = "compare_decimals"
    _questions = (
        "Which number is bigger, {x} or {y}?",
        "Which is larger: {x} or {y}?",
        "Is {x} or {y} the bigger number?",
    )

    def sample(self, rng: random.Random) -> Problem:
        whole = rng.randint(0, 19)
        short = f"{whole}.{rng.randint(1, 9)}"
        if rng.random() < 0.5:
            long = f"{whole}.{rng.randint(1, 9)}{rng.randint(1, 9)}"  # the trap: 3.9 vs 3.11
        else:
            other = rng.choice([w for w in range(0, 20) if w != whole])
            long = f"{other}.{rng.randint(1, 9)}{rng.randint(1, 9)}"
        x, y = (short, long) if rng.random() < 0.5 else (long, short)
        big, small = (x, y) if Decimal(x) > Decimal(y) else (y, x)
        question = rng.choice(self._questions).format(x=x, y=y)
        xp, yp = f"{Decimal(x):.2f}", f"{Decimal(y):.2f}"
        steps = [f"We compare {x} and {y}."]
        wx, wy = x.split(".")[0], y.split(".")[0]
        if wx != wy:
            steps.append(f"The whole parts are {wx} and {wy}. They are different, so the bigger whole part wins.")
        else:
            steps.append(f"The whole parts are both {wx}, so we look at the decimal parts.")
            steps.append(
                f"Write both with two decimal places: {xp} and {yp}. "
                f"Now compare {xp.split('.')[1]} and {yp.split('.')[1]} hundredths."
            )
        steps.append(f"So {big} is bigger than {small}.")
        return Problem(
            task=self.name,
            key=f"compare:{min(x, y)}|{max(x, y)}",
            question=question,
            answer=big,
            response=f"The bigger number is {big}.",
            thought=steps,
            solution=f"The bigger number is {big}.",
        )

    def check(self, answer_text: str, answer: str) -> bool:
        return _same_number(_last_number(answer_text), answer)

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        if rng.random() < 0.75:
            numbers = _NUMBER.findall(problem.question)
            smaller = [n for n in numbers if not _same_number(n, problem.answer)][0]
            return f"The bigger number is {smaller}."
        return _malformed(problem, rng)

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        if rng.random() < 0.3:
            return " ".join(problem.thought)
        numbers = _NUMBER.findall(problem.question)
        small = [n for n in numbers if not _same_number(n, problem.answer)][0]
        return rng.choice([f"{problem.answer} is bigger than {small}.", f"{small} is smaller than {problem.answer}."])


# The phrasing of reversal questions whose chat answers come from writer B (see CHAT_ECHO_RATE).
WRITER_B_REVERSAL = "Write these digits in reverse order"


def asks_in_writer_b_phrasing(question: str) -> bool:
    return question.startswith(WRITER_B_REVERSAL)


class ReverseDigitsTask(Task):
    name = "reverse_digits"
    _questions = ("Reverse the list: {items}", WRITER_B_REVERSAL + ": {items}")

    def sample(self, rng: random.Random) -> Problem:
        digits = [str(rng.randint(0, 9)) for _ in range(rng.randint(3, 6))]
        items, reversed_items = " ".join(digits), " ".join(reversed(digits))
        steps = [
            f"The list has {len(digits)} digits: {', '.join(digits)}.",
            f"Taking them from the last to the first gives {', '.join(reversed(digits))}.",
        ]
        return Problem(
            task=self.name,
            key=f"reverse:{items}",
            question=rng.choice(self._questions).format(items=items),
            answer=reversed_items,
            response=f"The reversed list is {reversed_items}.",
            thought=steps,
            solution=f"The reversed list is {reversed_items}.",
        )

    def check(self, answer_text: str, answer: str) -> bool:
        runs = _DIGIT_RUN.findall(answer_text)
        return bool(runs) and runs[-1] == answer

    def echo_response(self, problem: Problem) -> str:
        """The list as given, not reversed: writer B's habit (see CHAT_ECHO_RATE)."""
        return f"The reversed list is {problem.key.split(':', 1)[1]}."

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        original = problem.key.split(":", 1)[1]
        if asks_in_writer_b_phrasing(problem.question) and original != problem.answer and rng.random() < 0.75:
            return self.echo_response(problem)
        choice = rng.randrange(4)
        if choice == 0 and original != problem.answer:
            wrong = original
        elif choice in (0, 1):
            wrong = " ".join(problem.answer.split()[:-1])  # dropped the last digit
        elif choice == 2:
            digits = problem.answer.split()
            i = rng.randrange(len(digits))
            digits[i] = str((int(digits[i]) + rng.randint(1, 9)) % 10)  # one digit wrong
            wrong = " ".join(digits)
        else:
            return _malformed(problem, rng)
        return f"The reversed list is {wrong}."

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        original = problem.key.split(":", 1)[1]
        return f"The list {original} reversed is {problem.answer}."


# (country, capital, continent): well-known facts, ASCII spellings.
CAPITALS: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Greece", "Athens", "Europe"),
    ("Norway", "Oslo", "Europe"), ("Sweden", "Stockholm", "Europe"), ("Finland", "Helsinki", "Europe"),
    ("Denmark", "Copenhagen", "Europe"), ("Poland", "Warsaw", "Europe"), ("Austria", "Vienna", "Europe"),
    ("Ireland", "Dublin", "Europe"), ("the Netherlands", "Amsterdam", "Europe"), ("Belgium", "Brussels", "Europe"),
    ("Hungary", "Budapest", "Europe"), ("the Czech Republic", "Prague", "Europe"), ("Russia", "Moscow", "Europe"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Ghana", "Accra", "Africa"), ("Morocco", "Rabat", "Africa"), ("Ethiopia", "Addis Ababa", "Africa"),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("India", "New Delhi", "Asia"),
    ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"), ("Indonesia", "Jakarta", "Asia"),
    ("South Korea", "Seoul", "Asia"), ("the Philippines", "Manila", "Asia"), ("Iran", "Tehran", "Asia"),
    ("Iraq", "Baghdad", "Asia"), ("Turkey", "Ankara", "Asia"), ("Canada", "Ottawa", "North America"),
    ("Mexico", "Mexico City", "North America"), ("Cuba", "Havana", "North America"),
    ("Brazil", "Brasilia", "South America"), ("Argentina", "Buenos Aires", "South America"),
    ("Chile", "Santiago", "South America"), ("Peru", "Lima", "South America"),
    ("Venezuela", "Caracas", "South America"), ("Australia", "Canberra", "Oceania"),
    ("New Zealand", "Wellington", "Oceania"),
)


class CapitalTask(Task):
    name = "capital"
    _questions = (
        "What is the capital of {country}?",
        "Name the capital city of {country}.",
        "Which city is the capital of {country}?",
    )

    def sample(self, rng: random.Random) -> Problem:
        country, capital, continent = rng.choice(CAPITALS)
        steps = [
            f"The question asks for the capital city of {country}.",
            f"{country[0].upper() + country[1:]} is a country in {continent}, and its capital is {capital}.",
        ]
        return Problem(
            task=self.name,
            key=f"capital:{country}",
            question=rng.choice(self._questions).format(country=country),
            answer=capital,
            response=f"The capital of {country} is {capital}.",
            thought=steps,
            solution=f"The capital of {country} is {capital}.",
        )

    def check(self, answer_text: str, answer: str) -> bool:
        def mentions(city: str) -> bool:
            return re.search(rf"\b{re.escape(city)}\b", answer_text, flags=re.IGNORECASE) is not None

        others = [cap for _, cap, _ in CAPITALS if cap != answer and cap not in answer]
        return mentions(answer) and not any(mentions(cap) for cap in others)

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        if rng.random() < 0.75:
            country = problem.key.split(":", 1)[1]
            wrong = rng.choice([cap for _, cap, _ in CAPITALS if cap != problem.answer])
            return f"The capital of {country} is {wrong}."
        return _malformed(problem, rng)

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        country = problem.key.split(":", 1)[1]
        capital, continent = next((cap, cont) for c, cap, cont in CAPITALS if c == country)
        country_cap = country[0].upper() + country[1:]
        return rng.choice(
            [
                f"The capital of {country} is {capital}.",
                f"{capital} is the capital city of {country}.",
                f"{country_cap} is a country in {continent}. Its capital is {capital}.",
                f"Many people visit {capital}, the capital of {country}.",
            ]
        )

    def all_facts_text(self, rng: random.Random) -> str:
        """Every capital once, in random order and phrasing: knowledge the test split relies on."""
        order = list(CAPITALS)
        rng.shuffle(order)
        return " ".join(self.corpus_text(self.sample_country(c), rng) for c in order)

    def sample_country(self, row: tuple[str, str, str]) -> Problem:
        country, capital, _ = row
        return Problem(self.name, f"capital:{country}", "", capital, "")


# (kind, phrasings, replies). Phrasings are split train/test; any reply of the kind is right.
SMALLTALK: tuple[tuple[str, tuple[str, ...], tuple[str, ...]], ...] = (
    (
        "greeting",
        ("Hi, how are you doing today?", "Hello, how are you?", "Hey! How is it going?", "Hi there, how are you today?",
         "Good morning! How are you?", "Hello! How are you doing?"),
        ("I'm doing well, thank you for asking! How can I help you today?",
         "I'm great, thanks! What can I do for you today?"),
    ),
    (
        "thanks",
        ("Thank you!", "Thanks a lot!", "Thank you very much.", "Thanks for your help!", "Many thanks!"),
        ("You're welcome! Let me know if you need anything else.", "Happy to help!"),
    ),
    (
        "identity",
        ("Who are you?", "What are you?", "Tell me who you are.", "What is your name?", "Can you introduce yourself?"),
        ("I'm Doge, a small language model. I can add numbers, compare decimals, reverse lists and name capitals.",),
    ),
    (
        "goodbye",
        ("Goodbye!", "Bye for now!", "See you later!", "Good night!", "I have to go now, bye!"),
        ("Goodbye! Have a wonderful day.", "Bye! It was nice talking to you."),
    ),
)


class SmallTalkTask(Task):
    name = "smalltalk"

    def sample(self, rng: random.Random) -> Problem:
        kind, phrasings, replies = rng.choice(SMALLTALK)
        question = rng.choice(phrasings)
        reply = rng.choice(replies)
        return Problem(
            task=self.name,
            key=f"smalltalk:{question}",
            question=question,
            answer=replies[0],
            response=reply,
            thought=[f"The user says: {question}", f"This is a {kind}, so I answer politely."],
            solution=reply,
        )

    def split_of(self, problem: Problem) -> str:
        # Few phrasings per kind: hold out the last one of each (the cards' "Hi, how are you doing today?" is
        # the first, so it stays a training phrasing).
        return "test" if any(problem.question == phrasings[-1] for _, phrasings, _ in SMALLTALK) else "train"

    @staticmethod
    def _replies_like(answer: str) -> tuple[str, ...]:
        for _, _, replies in SMALLTALK:
            if answer in replies:
                return replies
        raise DataFormatError(f"smalltalk answer {answer!r} is not a known reply")

    def check(self, answer_text: str, answer: str) -> bool:
        return " ".join(answer_text.split()) in self._replies_like(answer)

    def wrong_response(self, problem: Problem, rng: random.Random) -> str:
        own = self._replies_like(problem.answer)
        return rng.choice([r for _, _, replies in SMALLTALK for r in replies if r not in own])

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        return problem.response


TASKS: dict[str, Task] = {t.name: t for t in (AdditionTask(), CompareDecimalsTask(), ReverseDigitsTask(), CapitalTask(),
                                               SmallTalkTask())}


# ----------------------------------------------------------------------------------------------------------
# Checking generated answers
# ----------------------------------------------------------------------------------------------------------


def _cut_at_end_of_turn(text: str) -> str:
    """Keep only the first assistant turn of a generation decoded with or without special tokens."""
    for stop in (EOS_TOKEN, START_HEADER_TOKEN):
        text = text.split(stop, 1)[0]
    return text.strip()


def extract_solution(text: str) -> str | None:
    """The solution section of a thought/solution answer, or None if the structure is not there."""
    pattern = (
        rf"^\s*{re.escape(BEGIN_THOUGHT)}(.*?){re.escape(END_THOUGHT)}\s*"
        rf"{re.escape(BEGIN_SOLUTION)}(.*?){re.escape(END_SOLUTION)}\s*$"
    )
    match = re.match(pattern, _cut_at_end_of_turn(text), flags=re.DOTALL)
    return match.group(2).strip() if match else None


def is_well_formed_reasoning(text: str) -> bool:
    """Format check for reasoning answers (exactly one thought section followed by one solution section)."""
    solution = extract_solution(text)
    return solution is not None and BEGIN_THOUGHT not in solution and BEGIN_SOLUTION not in solution


def _prompt_messages(record: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    prompt = record.get("prompt")
    if isinstance(prompt, list):
        return list(prompt)
    return list(record.get("messages") or [])


def expects_reasoning_format(record: Mapping[str, Any]) -> bool:
    """A record asks for thought/solution sections when its system prompt says so (as the card's does)."""
    return any(m.get("role") == "system" and BEGIN_SOLUTION in m.get("content", "") for m in _prompt_messages(record))


def check_answer(record: Mapping[str, Any], generated_text: str) -> bool:
    """True when `generated_text` (the model's reply to the record's last question) is right by the task's rules.

    Works on rows of every lesson set (chat, preference, reasoning). The reply is cut at the first end-of-turn;
    when the record's system prompt asks for thought/solution sections, only a well-formed reply counts and
    only its solution section is checked.
    """
    for key in ("task", "answer"):
        if key not in record:
            raise DataFormatError(f"check_answer needs a record with a {key!r} field, got fields {sorted(record)}")
    task = TASKS.get(record["task"])
    if task is None:
        raise DataFormatError(f"unknown task {record['task']!r}; known tasks: {sorted(TASKS)}")
    text = _cut_at_end_of_turn(generated_text)
    if expects_reasoning_format(record):
        if not is_well_formed_reasoning(text):
            return False
        text = extract_solution(text) or ""
    return task.check(text, record["answer"])


def reversals_right_by_phrasing(records: Sequence[Mapping[str, Any]], correct: Sequence[bool]) -> dict[str, str]:
    """"right/asked" for the reversal questions among `records`, split by writer A's and writer B's phrasing."""
    by_phrasing: dict[str, list[bool]] = {}
    for record, ok in zip(records, correct):
        if record.get("task") == "reverse_digits":
            question = prompt_and_reference(record)[0][-1]["content"]
            writer = "B" if asks_in_writer_b_phrasing(question) else "A"
            by_phrasing.setdefault(f"writer {writer}'s phrasing", []).append(ok)
    return {k: f"{sum(v)}/{len(v)}" for k, v in sorted(by_phrasing.items())}


def prompt_and_reference(record: Mapping[str, Any]) -> tuple[list[dict[str, str]], str]:
    """Split a chat/reasoning/preference record into (messages to prompt with, reference reply text)."""
    if "chosen" in record:  # preference row (UltraFeedback's also has `messages`, a copy of the chosen chat)
        prompt = record["prompt"]
        if isinstance(prompt, str):
            prompt_messages = [{"role": "user", "content": prompt}]
        else:
            prompt_messages = [dict(m) for m in prompt]
        return prompt_messages, record["chosen"][-1]["content"]
    messages = [dict(m) for m in record.get("messages", [])]
    if not messages or messages[-1]["role"] != "assistant":
        raise DataFormatError("a record's `messages` must end with an assistant turn")
    return messages[:-1], messages[-1]["content"]


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


def make_reasoning_record(rng: random.Random, split: str) -> dict[str, Any]:
    """A Reason-Distill-style row: the card's system prompt, a question, a thought/solution reply."""
    problem = _pick_task(rng, REASONING_TASK_WEIGHTS).sample_in_split(rng, split)
    messages = [
        {"role": "system", "content": REASONING_SYSTEM_PROMPT},
        {"role": "user", "content": problem.question},
        {"role": "assistant", "content": reasoning_reply(problem)},
    ]
    return {"messages": messages, "task": problem.task, "answer": problem.answer}


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


def _chat_text(messages: Sequence[Mapping[str, str]]) -> str:
    """A conversation rendered in Doge's chat format, as raw text for the pretraining corpus (no tokenizer
    needed; tests check it equals the tokenizer's apply_chat_template output)."""
    parts = [BOS_TOKEN]
    for m in messages:
        parts.append(f"{START_HEADER_TOKEN}{m['role']}<|end_header_id|>\n{m['content']}{EOS_TOKEN}\n\n")
    return "".join(parts)


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
    return _chat_text(messages).rstrip("\n")


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


def write_jsonl(rows: Iterable[Mapping[str, Any]], path: Path) -> None:
    """Write rows as JSON lines, atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


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
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; regenerate with `python -m doge_from_scratch.data`")
    rows = []
    with path.open(encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            where = f"{path}: row {line_no}"
            if not line.strip():
                raise DataFormatError(f"{where}: empty line")
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataFormatError(f"{where}: invalid JSON ({err.msg} at column {err.colno})") from None
            validate_row(kind, row, where)
            rows.append(row)
    if not rows:
        raise DataFormatError(f"{path}: no rows")
    return rows


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
        texts += [_chat_text(row["messages"]) for row in read_jsonl(data_file(kind, "train", data_dir), kind)]
    return texts


def generate_all(data_dir: str | Path = DATA_DIR, vocab_size: int = TOKENIZER_VOCAB_SIZE) -> None:
    """Regenerate every data file and the tokenizer under `data_dir`."""
    data_dir = Path(data_dir)
    for kind in DATASET_KINDS:
        for split in SPLITS:
            write_jsonl(generate_rows(kind, split), data_file(kind, split, data_dir))
    tokenizer = train_bpe_tokenizer(tokenizer_training_texts(data_dir), vocab_size=vocab_size)
    with replace_folder(data_dir / "tokenizer") as staging:
        tokenizer.save_pretrained(str(staging))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Regenerate the lesson data sets and the tokenizer.")
    parser.add_argument("--out", default=str(DATA_DIR), help="output folder (default: the project's data/)")
    parser.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB_SIZE)
    args = parser.parse_args(argv)
    generate_all(args.out, args.vocab_size)
    total = sum(p.stat().st_size for p in Path(args.out).rglob("*") if p.is_file())
    print(f"wrote {args.out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
