"""Reward functions for GRPO (lesson 10): is the answer right, and is the reply in the thought/solution format?

Both follow TRL's reward-function protocol, so the same functions plug into our ``grpo`` loop and into
``trl.GRPOTrainer``: called with keyword arguments ``prompts`` (one message list per completion),
``completions`` (a string, or TRL's ``[{"role": "assistant", "content": ...}]`` for chat prompts) and every
other dataset column as a list (``task``, ``answer``), they return one float per completion.

A reward is what the policy optimises, so every loophole in it gets found. The checks are strict where a
checker written for evaluation was lenient:

- format: exactly one ``<|begin_of_thought|>``, ``<|end_of_thought|>``, ``<|begin_of_solution|>`` and
  ``<|end_of_solution|>``, in that order, nothing but whitespace around them, and neither section empty.
  (``tasks.is_well_formed_reasoning`` alone accepts a thought section holding a second thought section, and empty
  sections.)
- accuracy: the task's own checker (``tasks.check_answer``, which already demands the format and reads only the
  solution), and for the two-option decimal comparison a solution that names both options scores 0: "3.9 3.11"
  would otherwise be right whenever the checker's last-number rule happens to land on the answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from typing import Any

from .tasks import NUMBER as _NUMBER
from .tasks import check_answer, extract_solution, is_well_formed_reasoning
from .tasks import cut_at_end_of_turn
from .tokenizer import BEGIN_SOLUTION, BEGIN_THOUGHT, END_SOLUTION, END_THOUGHT

TAGS = (BEGIN_THOUGHT, END_THOUGHT, BEGIN_SOLUTION, END_SOLUTION)


def completion_text(completion: str | Sequence[Mapping[str, str]]) -> str:
    """The assistant text of one completion, given as a string or as TRL's list of one assistant message."""
    if isinstance(completion, str):
        return completion
    if not completion or "content" not in completion[-1]:
        raise ValueError(f"a completion must be a string or a list of messages with 'content', got {completion!r}")
    return completion[-1]["content"]


def is_strictly_formatted(text: str) -> bool:
    """Exactly one thought section then one solution section, both non-empty, nothing outside them."""
    text = cut_at_end_of_turn(text)
    if any(text.count(tag) != 1 for tag in TAGS) or not is_well_formed_reasoning(text):
        return False
    thought = text.split(BEGIN_THOUGHT, 1)[1].split(END_THOUGHT, 1)[0]
    return bool(thought.strip()) and bool((extract_solution(text) or "").strip())


def _numbers(text: str) -> set[Decimal]:
    found = set()
    for n in _NUMBER.findall(text):
        try:
            found.add(Decimal(n))
        except InvalidOperation:
            pass
    return found


def names_several_options(task: str, question: str, solution: str) -> bool:
    """True when a two-option answer hedges: the solution names more than one of the question's numbers."""
    if task != "compare_decimals":
        return False
    return len(_numbers(question) & _numbers(solution)) > 1


def _question(prompt: Sequence[Mapping[str, str]] | str) -> str:
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m.get("role") == "user"]
    return users[-1] if users else ""


def is_correct(prompt: Sequence[Mapping[str, str]] | str, text: str, task: str, answer: str) -> bool:
    """The task's checker on a reply to ``prompt`` (format required when the prompt's system message asks for it),
    strict format, and no hedging between options."""
    messages = prompt if not isinstance(prompt, str) else [{"role": "user", "content": prompt}]
    record: dict[str, Any] = {"task": task, "answer": answer, "prompt": messages}
    if not check_answer(record, text):
        return False
    solution = extract_solution(text)
    if solution is not None and not is_strictly_formatted(text):
        return False
    return not names_several_options(task, _question(prompt), solution if solution is not None else text)


def accuracy_reward(prompts: Sequence, completions: Sequence, task: Sequence[str], answer: Sequence[str],
                    **_: Any) -> list[float]:
    """1.0 for a right answer (``is_correct``), else 0.0; one value per completion."""
    if not len(prompts) == len(completions) == len(task) == len(answer):
        raise ValueError(f"accuracy_reward: {len(prompts)} prompts, {len(completions)} completions, {len(task)} "
                         f"tasks and {len(answer)} answers; they must be the same length")
    return [float(is_correct(p, completion_text(c), t, a)) for p, c, t, a in zip(prompts, completions, task, answer)]


def format_reward(completions: Sequence, **_: Any) -> list[float]:
    """1.0 for a strictly formatted thought/solution reply (``is_strictly_formatted``), else 0.0."""
    return [float(is_strictly_formatted(completion_text(c))) for c in completions]


REWARD_FUNCS = (accuracy_reward, format_reward)


def strip_tags(text: str) -> str:
    """The reply without its section tags (for printing completions compactly)."""
    return re.sub("|".join(map(re.escape, TAGS)), "", text)
