"""The project's tokenizer: Doge's special-token ids, chat format and assistant masks."""

from __future__ import annotations

import pytest

from doge_from_scratch import data
from doge_from_scratch.tokenizer import (
    BEGIN_SOLUTION,
    BEGIN_THOUGHT,
    END_SOLUTION,
    END_THOUGHT,
    REASONING_TAGS,
    SPECIAL_TOKENS,
    check_doge_tokenizer,
    load_tokenizer,
    render_chat_text,
    train_bpe_tokenizer,
)

CONVERSATION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "Hi, how are you doing today?"},
    {"role": "assistant", "content": "I'm doing well, thank you for asking!"},
    {"role": "user", "content": "What is 47 + 38?"},
    {"role": "assistant", "content": "47 + 38 = 85."},
]


def doge_format(messages, add_generation_prompt=False) -> str:
    """The turn layout of SmallDoge/Doge-tokenizer, written out by hand from the reference notes."""
    text = "<|begin_of_text|>"
    for m in messages:
        text += f"<|start_header_id|>{m['role']}<|end_header_id|>\n{m['content']}<|end_of_text|>\n\n"
    if add_generation_prompt:
        text += "<|start_header_id|>assistant<|end_header_id|>\n"
    return text


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def test_special_token_ids_match_the_real_doge_tokenizer(tok):
    assert (tok.bos_token, tok.bos_token_id) == ("<|begin_of_text|>", 0)
    assert (tok.eos_token, tok.eos_token_id) == ("<|end_of_text|>", 1)
    assert (tok.pad_token, tok.pad_token_id) == ("<|finetune_right_pad_id|>", 2)
    for token in SPECIAL_TOKENS + REASONING_TAGS:
        ids = tok.encode(f"a{token}b", add_special_tokens=False)
        assert tok.convert_ids_to_tokens(ids).count(token) == 1, token
    assert 1024 <= len(tok) <= data.TOKENIZER_VOCAB_SIZE


def test_plain_encode_adds_nothing_and_round_trips(tok):
    text = "Which number is bigger, 3.9 or 3.11? Ünïcode ✓ and\n\nnew lines."
    ids = tok.encode(text)
    assert ids[0] != tok.bos_token_id and ids[-1] != tok.eos_token_id
    assert tok.decode(ids) == text


def test_digits_are_single_tokens(tok):
    pieces = tok.tokenize("12345 + 678")
    digit_pieces = [p for p in pieces if any(c.isdigit() for c in p)]
    assert digit_pieces == list("12345678")


def test_skip_special_tokens_keeps_reasoning_tags(tok):
    reply = f"{BEGIN_THOUGHT} think {END_THOUGHT} {BEGIN_SOLUTION} 85 {END_SOLUTION}"
    ids = tok.apply_chat_template([{"role": "assistant", "content": reply}], tokenize=True, return_dict=False)
    decoded = tok.decode(ids, skip_special_tokens=True)
    assert "<|start_header_id|>" not in decoded and "<|end_of_text|>" not in decoded
    assert decoded.strip().endswith(reply)


@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_renders_doge_turns(tok, add_generation_prompt):
    rendered = tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert rendered == doge_format(CONVERSATION, add_generation_prompt)
    ids = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=False,
                                  add_generation_prompt=add_generation_prompt)
    assert ids == tok.encode(rendered, add_special_tokens=False)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_assistant_mask_covers_exactly_the_assistant_replies(tok):
    out = tok.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    # Group consecutive masked positions into spans; each must be one assistant reply plus its closing eos.
    spans, current = [], []
    for token_id, m in zip(ids, mask):
        if m:
            current.append(token_id)
        elif current:
            spans.append(current)
            current = []
    if current:
        spans.append(current)
    replies = [m["content"] for m in CONVERSATION if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    for span, reply in zip(spans, replies):
        assert span[-1] == tok.eos_token_id
        assert tok.decode(span[:-1]) == reply
    # Nothing from the system/user turns or the headers is trainable.
    header_id = tok.convert_tokens_to_ids("<|start_header_id|>")
    assert all(not m for token_id, m in zip(ids, mask) if token_id == header_id)
    assert sum(mask) == sum(len(s) for s in spans)


def test_bad_messages_get_clear_errors(tok):
    with pytest.raises(Exception, match="unknown role"):
        tok.apply_chat_template([{"role": "robot", "content": "hi"}], tokenize=False)
    with pytest.raises(Exception, match="must be a string"):
        tok.apply_chat_template([{"role": "user", "content": ["hi"]}], tokenize=False)


def test_the_python_rendering_is_the_template_and_the_reference_layout(tok):
    for prompt in (False, True):
        text = render_chat_text(CONVERSATION, add_generation_prompt=prompt)
        assert text == tok.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=prompt)
        assert text == doge_format(CONVERSATION, add_generation_prompt=prompt)
    with pytest.raises(ValueError, match="message 0: unknown role 'robot'"):
        render_chat_text([{"role": "robot", "content": "hi"}])


def test_a_template_that_renders_another_format_is_refused(tok):
    drifted = train_bpe_tokenizer(["The capital of France is Paris."] * 20, vocab_size=300)
    drifted.chat_template = tok.chat_template.replace("'\\n\\n'", "'\\n'")  # one line break between turns
    assert drifted.chat_template != tok.chat_template
    with pytest.raises(ValueError, match="not Doge's chat format"):
        check_doge_tokenizer(drifted)


def test_training_from_scratch_puts_specials_first():
    texts = ["The capital of France is Paris. 12 + 30 = 42."] * 20
    small = train_bpe_tokenizer(texts, vocab_size=300)
    assert [small.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS[:3]] == [0, 1, 2]
    assert len(small) <= 300
    assert small.apply_chat_template(CONVERSATION, tokenize=False) == doge_format(CONVERSATION)
    with pytest.raises(ValueError, match="vocab_size"):
        train_bpe_tokenizer(texts, vocab_size=100)
