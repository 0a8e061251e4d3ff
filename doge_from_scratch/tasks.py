"""The lesson tasks and their answer checkers: what a problem is, how it splits, and when a reply is right.

Five templated tasks stand in for what the Doge model cards ask of their models: two-digit addition, which of two
decimals is bigger (the cards' own "3.9 or 3.11"), reversing a list of digits, capitals of countries, and small
talk. Each `Task` samples `Problem`s, writes wrong answers (for preference pairs), states a solution as corpus prose,
and checks an answer. `check_answer(record, generated_text)` judges a model's reply to any lesson row, so every
later lesson measures accuracy the same way. Train and test problems are disjoint: a problem's split is a hash of
its identity (the operands, the list, the country), see `split_of`.

`doge_from_scratch.data` builds the dataset rows and files from these tasks.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from .tokenizer import BEGIN_SOLUTION, BEGIN_THOUGHT, END_SOLUTION, END_THOUGHT, EOS_TOKEN, START_HEADER_TOKEN

TEST_FRACTION_PERCENT = 20


class DataFormatError(ValueError):
    """A data row does not have the shape a lesson needs; the message names file, row and field."""


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


NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DIGIT_RUN = re.compile(r"\d(?: \d)*")


def _last_number(text: str) -> str | None:
    found = NUMBER.findall(text)
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

    def chance(self, answer: str) -> float:
        """The accuracy of a guesser that knows the answer's form but not the answer: a uniform pick among the
        answers the question allows (the baseline a reported accuracy is read against)."""
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

    def chance(self, answer: str) -> float:
        return 1 / 197  # one of the sums 2 .. 198 two numbers from 1 to 99 can have

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

    def chance(self, answer: str) -> float:
        return 0.5  # one of the two numbers in the question

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
            numbers = NUMBER.findall(problem.question)
            smaller = [n for n in numbers if not _same_number(n, problem.answer)][0]
            return f"The bigger number is {smaller}."
        return _malformed(problem, rng)

    def corpus_text(self, problem: Problem, rng: random.Random) -> str:
        if rng.random() < 0.3:
            return " ".join(problem.thought)
        numbers = NUMBER.findall(problem.question)
        small = [n for n in numbers if not _same_number(n, problem.answer)][0]
        return rng.choice([f"{problem.answer} is bigger than {small}.", f"{small} is smaller than {problem.answer}."])


# The phrasing of reversal questions whose chat answers come from writer B (see data.CHAT_ECHO_RATE).
WRITER_B_REVERSAL = "Write these digits in reverse order"


def asks_in_writer_b_phrasing(question: str) -> bool:
    return question.startswith(WRITER_B_REVERSAL)


class ReverseDigitsTask(Task):
    name = "reverse_digits"
    _questions = ("Reverse the list: {items}", WRITER_B_REVERSAL + ": {items}")

    def chance(self, answer: str) -> float:
        digits = answer.split()  # one of the distinct orderings of the question's digits
        orderings = math.factorial(len(digits))
        for digit in set(digits):
            orderings //= math.factorial(digits.count(digit))
        return 1 / orderings

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
        """The list as given, not reversed: writer B's habit (see data.CHAT_ECHO_RATE)."""
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

    def chance(self, answer: str) -> float:
        return 1 / len(CAPITALS)  # one of the capitals the corpus names

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

    def chance(self, answer: str) -> float:
        # one of the known replies, right when it is one of the replies of the message's kind
        return len(self._replies_like(answer)) / sum(len(replies) for _, _, replies in SMALLTALK)

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


def cut_at_end_of_turn(text: str) -> str:
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
    match = re.match(pattern, cut_at_end_of_turn(text), flags=re.DOTALL)
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


def task_of(record: Mapping[str, Any], caller: str) -> Task:
    """The task of a record that has the ``task`` and ``answer`` fields; a DataFormatError naming ``caller`` and the
    missing field (or the unknown task) otherwise."""
    for key in ("task", "answer"):
        if key not in record:
            raise DataFormatError(f"{caller} needs a record with a {key!r} field, got fields {sorted(record)}")
    task = TASKS.get(record["task"])
    if task is None:
        raise DataFormatError(f"unknown task {record['task']!r}; known tasks: {sorted(TASKS)}")
    return task


def check_answer(record: Mapping[str, Any], generated_text: str) -> bool:
    """True when `generated_text` (the model's reply to the record's last question) is right by the task's rules.

    Works on rows of every lesson set (chat, preference, reasoning). The reply is cut at the first end-of-turn;
    when the record's system prompt asks for thought/solution sections, only a well-formed reply counts and
    only its solution section is checked.
    """
    task = task_of(record, "check_answer")
    text = cut_at_end_of_turn(generated_text)
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
