"""Lesson 00 checks: one BPE merge, the chat template as text, the assistant-only mask."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from ..sft import render_chat
from ..tokenizer import load_tokenizer
from ._core import Case, CheckResult, exact, run_cases

CHATS = {
    "a system + user + assistant chat": [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Capital of France?"},
        {"role": "assistant", "content": "Paris."}],
    "a two-turn chat": [
        {"role": "user", "content": "Hi!"}, {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "2 + 2?"}, {"role": "assistant", "content": "4"}],
    "a chat that only asks": [{"role": "user", "content": "Name a colour."}],
}


@lru_cache(maxsize=1)
def _tokenizer():
    return load_tokenizer()


def check_merge(merge: Callable[[list[str], tuple[str, str]], list[str]]) -> CheckResult:
    """``merge(symbols, pair) -> symbols``: every occurrence of ``pair``, read left to right without
    overlapping, becomes one symbol. The expected answers are written out by hand."""
    cases = [
        (["l", "o", "w", "e", "r"], ("l", "o"), ["lo", "w", "e", "r"]),
        (["a", "b", "a", "b"], ("a", "b"), ["ab", "ab"]),
        (["a", "a", "a"], ("a", "a"), ["aa", "a"]),
        (["a", "a", "a", "a"], ("a", "a"), ["aa", "aa"]),
        (["x", "y", "z"], ("y", "z"), ["x", "yz"]),
        (["x", "y", "z"], ("z", "x"), ["x", "y", "z"]),
        (["Ġ", "t", "h", "e", "Ġ", "t", "h"], ("t", "h"), ["Ġ", "th", "e", "Ġ", "th"]),
    ]
    return run_cases("check_merge", merge,
                     [Case(f"symbols={s} pair={p}", (s, p), exact(want)) for s, p, want in cases],
                     hint="after merging a pair, skip both of its symbols; a symbol belongs to one merge at most")


def check_chat_template(render: Callable[..., str]) -> CheckResult:
    """``render(messages, add_generation_prompt=False) -> str`` equal to the tokenizer's chat template text."""
    tok = _tokenizer()
    cases = []
    for name, chat in CHATS.items():
        for gen in (False, True):
            want = tok.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
            cases.append(Case(f"{name} with add_generation_prompt={gen}", (chat,), exact(want),
                              {"add_generation_prompt": gen}))
    return run_cases("check_chat_template", render, cases,
                     hint="<|begin_of_text|> once, then per turn <|start_header_id|>role<|end_header_id|>\\n"
                          "content<|end_of_text|>\\n\\n")


def check_assistant_mask(fn: Callable) -> CheckResult:
    """``fn(tokenizer, messages) -> (ids, mask)``: the chat's token ids and 1 on exactly the tokens the
    assistant wrote (its text and the <|end_of_text|> closing its turn), as ``sft.render_chat``."""
    tok = _tokenizer()
    cases = [Case(name, (tok, chat), exact(tuple(render_chat(tok, chat)))) for name, chat in CHATS.items()]
    return run_cases("check_assistant_mask", lambda t, m: tuple(fn(t, m)), cases,
                     hint="the header tokens are not trained; the end-of-turn token after the answer is")
