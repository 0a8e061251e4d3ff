"""The committed lesson data: deterministic, well-formed, split cleanly, and checkable."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from doge_from_scratch import data as D
from doge_from_scratch import tasks as T
from doge_from_scratch.paths import DATA_DIR
from doge_from_scratch.tokenizer import (BEGIN_SOLUTION, BEGIN_THOUGHT, END_SOLUTION, END_THOUGHT, load_tokenizer,
                                         render_chat_text)


@pytest.fixture(scope="module")
def rows():
    return {(kind, split): D.read_jsonl(D.data_file(kind, split), kind) for kind in D.DATASET_KINDS
            for split in D.SPLITS}


# data/tiny-doge is the lessons' pretrained model, made by `python -m doge_from_scratch.pretrain --out data/tiny-doge
# --save-dtype bfloat16` (a 7-minute training, not this generator), data/tiny-doge-student lesson 09's student made
# the same way with --student; tests/test_tiny_doge.py checks both.
MADE_ELSEWHERE = ("tiny-doge", "tiny-doge-student")


def generator_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*")
                  if p.is_file() and p.relative_to(root).parts[0] not in MADE_ELSEWHERE)


def test_committed_data_is_what_the_generator_makes(tmp_path):
    D.main(["--out", str(tmp_path)])
    generated = generator_files(tmp_path)
    committed = generator_files(DATA_DIR)
    assert generated == committed
    for rel in generated:
        assert (tmp_path / rel).read_bytes() == (DATA_DIR / rel).read_bytes(), f"data/{rel} is stale"


def test_data_folder_is_small():
    total = sum((DATA_DIR / rel).stat().st_size for rel in generator_files(DATA_DIR))
    # "a few MB": the corpus (4.6 MB, worked solutions included) is 2 epochs of lesson 06's 800 steps
    assert total < 8_000_000


def test_loads_through_datasets_with_the_cards_columns():
    expected = {
        "pretrain": {"text"},
        "chat": {"messages", "source", "task", "answer"},
        "preference": {"prompt", "chosen", "rejected", "prompt_id", "score_chosen", "score_rejected", "task", "answer"},
        "reasoning": {"messages", "task", "answer"},
    }
    for kind, columns in expected.items():
        for split in D.SPLITS:
            ds = D.load_lesson_dataset(kind, split)
            assert set(ds.column_names) == columns
            assert len(ds) == D.ROW_COUNTS[kind][split]
    chat = D.load_lesson_dataset("chat", "test")
    assert chat[0]["messages"][-1]["role"] == "assistant"


def test_chat_rows_render_like_the_tokenizer(rows):
    tok = load_tokenizer()
    for row in rows["chat", "train"][:50] + rows["reasoning", "train"][:10]:
        assert render_chat_text(row["messages"]) == tok.apply_chat_template(row["messages"], tokenize=False)


def _is_writer_b_echo(row, reply: str) -> bool:
    """The chat set's one planted kind of mistake: writer B echoing a list it was asked to reverse."""
    task = T.TASKS["reverse_digits"]
    question = T.prompt_and_reference(row)[0][-1]["content"]
    problem = T.Problem(row["task"], f"reverse:{question.split(': ', 1)[-1]}", question, row["answer"], "")
    return row["task"] == "reverse_digits" and T.asks_in_writer_b_phrasing(question) \
        and reply == task.echo_response(problem)


def test_every_reference_reply_passes_its_checker_but_writer_b_echoes(rows):
    for (kind, split), kind_rows in rows.items():
        if kind == "pretrain":
            continue
        for i, row in enumerate(kind_rows):
            _, reference = T.prompt_and_reference(row)
            if kind == "chat" and _is_writer_b_echo(row, reference):
                continue
            assert T.check_answer(row, reference), (kind, split, i)
            assert T.check_answer(row, reference + "<|end_of_text|>\n\n<|start_header_id|>user junk 0.1"), (kind, i)


def test_writer_b_echoes_most_of_its_reversals_and_nothing_else(rows):
    writer_b = [r for r in rows["chat", "train"]
                if r["task"] == "reverse_digits" and T.asks_in_writer_b_phrasing(r["messages"][-2]["content"])]
    echoed = [r for r in writer_b if _is_writer_b_echo(r, r["messages"][-1]["content"])]
    assert 0.55 < len(echoed) / len(writer_b) < 0.75
    wrong = [r for r in rows["chat", "train"] if not T.check_answer(r, r["messages"][-1]["content"])]
    assert wrong and all(_is_writer_b_echo(r, r["messages"][-1]["content"]) for r in wrong)
    echo_pairs = [r for r in rows["preference", "train"] if _is_writer_b_echo(r, r["rejected"][-1]["content"])]
    assert len(echo_pairs) > 100  # the preference data judges the habit


def test_every_rejected_reply_fails_its_checker(rows):
    for split in D.SPLITS:
        for i, row in enumerate(rows["preference", split]):
            assert not T.check_answer(row, row["rejected"][-1]["content"]), (split, i, row["rejected"])
            assert row["score_chosen"] > row["score_rejected"]


def test_reasoning_rows_have_thought_then_solution(rows):
    for row in rows["reasoning", "train"]:
        system, user, reply = row["messages"]
        assert system == {"role": "system", "content": D.REASONING_SYSTEM_PROMPT}
        assert reply["content"].startswith(BEGIN_THOUGHT) and reply["content"].endswith(END_SOLUTION)
        assert reply["content"].index(END_THOUGHT) < reply["content"].index(BEGIN_SOLUTION)
        # The bare answer without the sections is not accepted when the system prompt asks for them.
        solution = T.extract_solution(reply["content"])
        assert T.check_answer(row, reply["content"]) and not T.check_answer(row, solution)


def test_the_cards_question_is_checked_the_right_way():
    record = {"task": "compare_decimals", "answer": "3.9",
              "messages": [{"role": "user", "content": "Which number is bigger, 3.9 or 3.11?"}]}
    assert T.check_answer(record, "The bigger number is 3.9.")
    assert T.check_answer(record, "The bigger number is 3.90")
    assert not T.check_answer(record, "The bigger number is 3.11.")
    assert not T.check_answer(record, "")
    reasoning = {**record, "messages": [{"role": "system", "content": D.REASONING_SYSTEM_PROMPT}] + record["messages"]}
    good = f"{BEGIN_THOUGHT} 3.90 > 3.11 {END_THOUGHT} {BEGIN_SOLUTION} 3.9 {END_SOLUTION}"
    assert T.check_answer(reasoning, good)
    assert not T.check_answer(reasoning, good.replace(END_SOLUTION, ""))
    assert not T.check_answer(reasoning, good.replace("3.9 ", "3.11 "))


def test_data_covers_the_cards_trap_question(rows):
    questions = [r["messages"][-2]["content"] for r in rows["chat", "train"] if r["task"] == "compare_decimals"]
    trap = [q for q in questions if len({n.split(".")[0] for n in re.findall(r"\d+\.\d+", q)}) == 1]
    assert len(trap) > 100


def test_checkers_reject_near_misses():
    add = {"task": "addition", "answer": "85"}
    assert T.check_answer(add, "47 + 38 = 85.") and not T.check_answer(add, "47 + 38 = 75.")
    rev = {"task": "reverse_digits", "answer": "5 1 8 3"}
    assert T.check_answer(rev, "The reversed list is 5 1 8 3.")
    assert not T.check_answer(rev, "The reversed list is 5 1 8 3 3.")
    assert not T.check_answer(rev, "The reversed list is 1 8 3.")
    cap = {"task": "capital", "answer": "Paris"}
    assert T.check_answer(cap, "The capital of France is Paris.")
    assert not T.check_answer(cap, "The capital of France is Paris or Berlin.")
    talk = {"task": "smalltalk", "answer": T.SMALLTALK[0][2][0]}
    assert T.check_answer(talk, T.SMALLTALK[0][2][1]) and not T.check_answer(talk, T.SMALLTALK[1][2][0])
    with pytest.raises(T.DataFormatError, match="task"):
        T.check_answer({"answer": "1"}, "1")


def _last_user(row) -> str:
    return row["messages"][-2]["content"]


def test_train_and_test_problems_are_disjoint(rows):
    train_questions = {_last_user(r) for r in rows["chat", "train"]}
    train_text = "\n".join(r["text"] for r in rows["pretrain", "train"])
    for row in rows["chat", "test"]:
        question = _last_user(row)
        if row["task"] == "capital":
            # Knowledge task: the corpus states every capital; the chat data never asks about a test country.
            country = re.sub(r"^.* of |[?.]$", "", question)
            assert not any(country in _last_user(r) for r in rows["chat", "train"] if r["task"] == "capital")
            assert row["answer"] in train_text
            continue
        assert question not in train_questions, question
        if row["task"] == "addition":
            a, b = re.findall(r"\d+", question)
            assert not re.search(rf"(?<!\d){a} \+ {b} =", train_text), question
            assert not re.search(rf"add {a} and {b}\.", train_text), question
        if row["task"] == "reverse_digits":
            assert f"The list {question.split(': ')[1]} reversed" not in train_text


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_malformed_rows_name_file_row_and_field(tmp_path):
    good = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    no_content = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant"}]})
    path = _write(tmp_path / "chat.jsonl", [good, no_content])
    with pytest.raises(T.DataFormatError, match=r"chat\.jsonl: row 2: field 'messages\[1\]' has no 'content'"):
        D.read_jsonl(path, "chat")

    path = _write(tmp_path / "broken.jsonl", [good, good, '{"messages": [}'])
    with pytest.raises(T.DataFormatError, match=r"broken\.jsonl: row 3: invalid JSON"):
        D.read_jsonl(path, "chat")

    bad_role = json.dumps({"messages": [{"role": "bot", "content": "x"}]})
    path = _write(tmp_path / "role.jsonl", [bad_role])
    with pytest.raises(T.DataFormatError, match=r"row 1: field 'messages\[0\]\.role' is 'bot'"):
        D.read_jsonl(path, "chat")

    pref = json.dumps({"prompt": [{"role": "user", "content": "q"}], "chosen": [{"role": "assistant", "content": "a"}]})
    path = _write(tmp_path / "pref.jsonl", [pref])
    with pytest.raises(T.DataFormatError, match=r"pref\.jsonl: row 1: missing field 'rejected'"):
        D.read_jsonl(path, "preference")

    path = _write(tmp_path / "task.jsonl", [json.dumps({"text": "x", "task": "poetry"})])
    with pytest.raises(T.DataFormatError, match=r"row 1: field 'task' is 'poetry'"):
        D.read_jsonl(path, "pretrain")


def test_rows_of_the_real_datasets_validate():
    # Shapes as published: smoltalk (messages + source), ultrafeedback_binarized (string prompt, full chats).
    smoltalk = {"messages": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}],
                "source": "smol-magpie-ultra"}
    ultrafeedback = {"prompt": "Hello", "prompt_id": "abc",
                     "chosen": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi!"}],
                     "rejected": [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Go."}],
                     "messages": [], "score_chosen": 8.0, "score_rejected": 3.0}
    D.validate_row("chat", smoltalk, "smoltalk row 0")
    D.validate_row("preference", ultrafeedback, "ultrafeedback row 0")
    prompt, reference = T.prompt_and_reference(ultrafeedback)
    assert prompt == [{"role": "user", "content": "Hello"}] and reference == "Hi!"
