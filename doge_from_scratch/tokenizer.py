"""A small byte-level BPE tokenizer with Doge's special tokens and chat format.

The real SmallDoge/Doge-tokenizer has a 32768-token vocabulary trained on web text. We cannot download it here,
so the project trains its own on the text it ships (data/), keeping everything the lessons depend on the same:

- ids 0, 1, 2 are `<|begin_of_text|>` (bos), `<|end_of_text|>` (eos) and `<|finetune_right_pad_id|>` (pad);
- turns render Llama-3 style: `<|start_header_id|>{role}<|end_header_id|>\\n{content}<|end_of_text|>\\n\\n`
  after one leading `<|begin_of_text|>`; the generation prompt is `<|start_header_id|>assistant<|end_header_id|>\\n`;
- `<|begin_of_thought|>`, `<|end_of_thought|>`, `<|begin_of_solution|>`, `<|end_of_solution|>` are single tokens.

Our template also wraps each assistant turn's content (and its closing eos, which the model must learn to emit)
in `{% generation %}` markers, so `apply_chat_template(..., return_assistant_tokens_mask=True)` and TRL's
`assistant_only_loss` work. Code that only uses `apply_chat_template` and the special-token attributes works
unchanged with the real tokenizer.

A chat template renders text, and tokenizing that text turns every `<|end_of_text|>` or `<|start_header_id|>` in
it into the control token, including one a user typed into a message: the message could close its turn and
open a forged system turn. `DogeTokenizer.apply_chat_template` (what `load_tokenizer` returns) encodes control
tokens that come from the messages as plain text; only the template's own become control tokens. Chats without
such text are tokenized exactly as before.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import BatchEncoding, PreTrainedTokenizerFast
from transformers.utils.chat_template_utils import render_jinja_template

from .paths import TOKENIZER_DIR

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|finetune_right_pad_id|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
BEGIN_THOUGHT = "<|begin_of_thought|>"
END_THOUGHT = "<|end_of_thought|>"
BEGIN_SOLUTION = "<|begin_of_solution|>"
END_SOLUTION = "<|end_of_solution|>"

# Control tokens: dropped by decode(skip_special_tokens=True).
SPECIAL_TOKENS = [BOS_TOKEN, EOS_TOKEN, PAD_TOKEN, START_HEADER_TOKEN, END_HEADER_TOKEN]
# Reasoning tags are atomic tokens too, but NOT "special": a decoded answer keeps them, so a checker can still
# see whether the thought/solution structure is there after skip_special_tokens=True.
REASONING_TAGS = [BEGIN_THOUGHT, END_THOUGHT, BEGIN_SOLUTION, END_SOLUTION]

CHAT_ROLES = ("system", "user", "assistant")
# What closes a turn after its eos: a blank line, text (not a token), so BPE never merges it into the content.
TURN_SEPARATOR = "\n\n"


def turn_header(role: str) -> str:
    """The text that opens a turn of ``role``: ``<|start_header_id|>{role}<|end_header_id|>`` and a line break."""
    return f"{START_HEADER_TOKEN}{role}{END_HEADER_TOKEN}\n"


# What a prompt ends with when the model is to write the next (assistant) turn.
GENERATION_PROMPT = turn_header("assistant")


def chat_turns(messages: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, str]]:
    """Doge's chat format, turn by turn: a conversation -> [(role, header text, content)].

    The one statement of the format in Python: rendered text is ``BOS_TOKEN`` then, per turn,
    ``header + content + EOS_TOKEN + TURN_SEPARATOR`` (``render_chat_text``); ``sft.render_chat`` encodes the same
    pieces one by one to mark the assistant's tokens; ``DOGE_CHAT_TEMPLATE`` is checked against it when a
    tokenizer is built. Raises ValueError naming the message whose role or content is wrong.
    """
    turns = []
    for i, message in enumerate(messages):
        role, content = message.get("role"), message.get("content")
        if role not in CHAT_ROLES:
            raise ValueError(f"message {i}: unknown role {role!r} (system, user or assistant)")
        if not isinstance(content, str):
            raise ValueError(f"message {i}: content must be a string, got {type(content).__name__}")
        turns.append((role, turn_header(role), content))
    return turns


def render_chat_text(messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = False) -> str:
    """A conversation as text in Doge's chat format (what ``apply_chat_template(..., tokenize=False)`` returns)."""
    text = BOS_TOKEN + "".join(header + content + EOS_TOKEN + TURN_SEPARATOR
                               for _, header, content in chat_turns(messages))
    return text + GENERATION_PROMPT if add_generation_prompt else text


def _jinja_text(text: str) -> str:
    """``text`` as a single-quoted Jinja string literal (line breaks written as escapes)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'").replace("\n", "\\n") + "'"


# The same format as a Jinja chat template, for transformers' apply_chat_template and TRL. Whitespace control
# (`{%-`, `{{-`) keeps the template's own line breaks out of the text; `{% generation %}` marks what the assistant
# wrote for return_assistant_tokens_mask.
DOGE_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('Doge chat format: unknown role ' ~ message['role'] ~ ' in message ' ~ loop.index0) }}"
    "{%- endif %}"
    "{%- if message['content'] is not string %}"
    "{{- raise_exception('Doge chat format: content of message ' ~ loop.index0 ~ ' must be a string') }}"
    "{%- endif %}"
    f"{{{{- {_jinja_text(START_HEADER_TOKEN)} + message['role'] + {_jinja_text(END_HEADER_TOKEN + chr(10))} }}}}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    f"{{{{- {_jinja_text(TURN_SEPARATOR)} }}}}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    f"{{{{- {_jinja_text(GENERATION_PROMPT)} }}}}"
    "{%- endif %}"
)


def build_pre_tokenizer() -> pre_tokenizers.PreTokenizer:
    """Split every digit into its own piece before byte-level BPE.

    One token per digit makes arithmetic a per-position pattern that a model of a few million parameters can
    learn; merged multi-digit tokens would force it to memorise a table per token.
    """
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int = 2048, min_frequency: int = 2
) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on `texts` and wrap it with Doge's special tokens and chat template.

    Special tokens come first in the vocabulary, so bos/eos/pad get ids 0/1/2 as in SmallDoge/Doge-tokenizer.
    """
    n_reserved = len(SPECIAL_TOKENS) + len(REASONING_TAGS) + 256
    if vocab_size <= n_reserved:
        raise ValueError(f"vocab_size={vocab_size} must exceed the {n_reserved} reserved tokens (specials + 256 bytes)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = build_pre_tokenizer()
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(REASONING_TAGS),
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    # Added after training as non-special tokens: they take the last ids, are never split, and survive
    # decode(skip_special_tokens=True) (a token trained as special would be dropped there).
    tok.add_tokens([AddedToken(tag, special=False, normalized=False) for tag in REASONING_TAGS])
    return wrap_tokenizer(tok)


# Private-use characters around a control token that came from a message: the rendered text then tells
# the template's control tokens from the user's.
_FROM_MESSAGE_OPEN, _FROM_MESSAGE_CLOSE = "\uf8f0", "\uf8f1"


def _mark_control_tokens(value: Any, pattern: re.Pattern) -> tuple[Any, int]:
    """Wrap every control token in the strings of ``value`` (messages: dicts and lists, recursively, values
    only) in the private markers. -> (marked copy, number of tokens marked)"""
    if isinstance(value, str):
        clean = value.replace(_FROM_MESSAGE_OPEN, "").replace(_FROM_MESSAGE_CLOSE, "")
        return pattern.subn(lambda m: _FROM_MESSAGE_OPEN + m.group(0) + _FROM_MESSAGE_CLOSE, clean)
    if isinstance(value, dict):
        pairs = {key: _mark_control_tokens(item, pattern) for key, item in value.items()}
        return {key: marked for key, (marked, _) in pairs.items()}, sum(n for _, n in pairs.values())
    if isinstance(value, (list, tuple)):
        pairs = [_mark_control_tokens(item, pattern) for item in value]
        return [marked for marked, _ in pairs], sum(n for _, n in pairs)
    return value, 0


class DogeTokenizer(PreTrainedTokenizerFast):
    """The fast tokenizer with a chat template that cannot be steered by control tokens inside messages.

    Saved folders name the plain ``TokenizersBackend`` class, so any transformers install loads them (without
    this protection); ``load_tokenizer`` brings it back.
    """

    def control_tokens(self) -> list[str]:
        """Added tokens a message may not produce: the special ones and any in ``chat_control_tokens``."""
        extra = set(self.chat_control_tokens or ())
        return [t.content for t in self.added_tokens_decoder.values() if t.special or t.content in extra]

    def apply_chat_template(self, conversation, tools=None, documents=None, chat_template=None,
                            add_generation_prompt: bool = False, continue_final_message: bool | str = False,
                            tokenize: bool = True, sanitize_control_tokens: bool = True, padding=False,
                            truncation: bool = False, max_length: int | None = None, return_tensors=None,
                            return_dict: bool = True, return_assistant_tokens_mask: bool = False,
                            tokenizer_kwargs: dict[str, Any] | None = None, **kwargs):
        """transformers' ``apply_chat_template``, except that with ``tokenize=True`` control tokens written inside
        messages are encoded as text (``sanitize_control_tokens=False`` restores transformers' behaviour).

        ``tokenize=False`` returns the same text as transformers: a string cannot say which control tokens are
        whose, so tokenize it with this method, not by calling the tokenizer on the text.
        """
        common = dict(tools=tools, documents=documents, chat_template=chat_template,
                      add_generation_prompt=add_generation_prompt, continue_final_message=continue_final_message)
        pattern = re.compile("|".join(map(re.escape, sorted(self.control_tokens(), key=len, reverse=True))))
        batched = isinstance(conversation, (list, tuple)) and bool(conversation) and isinstance(
            conversation[0], (list, tuple))
        marked, n_marked = _mark_control_tokens(conversation if batched else [conversation], pattern)
        if not tokenize or not sanitize_control_tokens or n_marked == 0 or not pattern.pattern:
            return super().apply_chat_template(
                conversation, **common, tokenize=tokenize, padding=padding, truncation=truncation,
                max_length=max_length, return_tensors=return_tensors, return_dict=return_dict,
                return_assistant_tokens_mask=return_assistant_tokens_mask, tokenizer_kwargs=tokenizer_kwargs,
                **kwargs)
        if return_assistant_tokens_mask and not return_dict:
            raise ValueError("`return_assistant_tokens_mask=True` requires `return_dict=True` and `tokenize=True`")
        chats = [[{k: v for k, v in m.items() if v is not None} for m in chat] for chat in marked]
        rendered, spans = render_jinja_template(
            conversations=chats, return_assistant_tokens_mask=return_assistant_tokens_mask,
            **dict(common, chat_template=self.get_chat_template(chat_template, tools)),
            **{**self.special_tokens_map, **kwargs})
        encoded = [self._encode_marked(text, pattern) for text in rendered]
        ids = [row_ids[:max_length] if truncation and max_length else row_ids for row_ids, _ in encoded]
        if not return_dict:
            return ids if batched else ids[0]
        masks = [self._assistant_mask(offsets, text, row_spans)[:len(row_ids)]
                 for (_, offsets), text, row_spans, row_ids in zip(encoded, rendered, spans or [[]] * len(ids), ids)]
        out = self.pad({"input_ids": ids if batched else ids[0]}, padding=padding, max_length=max_length,
                       return_tensors=None)
        if return_assistant_tokens_mask:
            width = len(out["input_ids"][0]) if batched else len(out["input_ids"])
            left = self.padding_side == "left"
            masks = [[0] * (width - len(m)) + m if left else m + [0] * (width - len(m)) for m in masks]
            out["assistant_masks"] = masks if batched else masks[0]
        return BatchEncoding(dict(out), tensor_type=return_tensors)

    def _encode_marked(self, text: str, pattern: re.Pattern) -> tuple[list[int], list[tuple[int, int]]]:
        """Rendered text with message control tokens marked -> (ids, character spans in the unmarked text).

        The text is cut at the template's control tokens, as the tokenizer itself cuts at added tokens, and
        each piece in between is encoded with special tokens off; a chat without marked tokens gets exactly
        the ids of plain tokenization.
        """
        ids: list[int] = []
        offsets: list[tuple[int, int]] = []
        piece, start, position = [], 0, 0  # position: index in the unmarked text

        def flush() -> None:
            if piece:
                enc = self("".join(piece), add_special_tokens=False, split_special_tokens=True,
                           return_offsets_mapping=True)
                ids.extend(enc["input_ids"])
                offsets.extend((start + a, start + b) for a, b in enc["offset_mapping"])

        marked = re.compile(f"{_FROM_MESSAGE_OPEN}({pattern.pattern}){_FROM_MESSAGE_CLOSE}|({pattern.pattern})")
        cursor = 0
        for match in marked.finditer(text):
            plain = text[cursor:match.start()]
            piece.append(plain)
            position += len(plain)
            if match.group(1) is not None:  # a message's: text
                piece.append(match.group(1))
                position += len(match.group(1))
            else:  # the template's: a control token
                flush()
                ids.append(self.convert_tokens_to_ids(match.group(2)))
                offsets.append((position, position + len(match.group(2))))
                position += len(match.group(2))
                piece, start = [], position
            cursor = match.end()
        piece.append(text[cursor:])
        flush()
        return ids, offsets

    @staticmethod
    def _assistant_mask(offsets: list[tuple[int, int]], text: str, spans: list[tuple[int, int]]) -> list[int]:
        """1 for each token overlapping a ``{% generation %}`` span (given in the marked text's characters)."""
        markers = [i for i, ch in enumerate(text) if ch in (_FROM_MESSAGE_OPEN, _FROM_MESSAGE_CLOSE)]

        def unmarked(index: int) -> int:
            return index - sum(1 for m in markers if m < index)

        plain_spans = [(unmarked(a), unmarked(b)) for a, b in spans]
        return [int(any(a < e and b > s for s, e in plain_spans)) for a, b in offsets]

    def save_pretrained(self, save_directory, *args, **kwargs):
        """transformers' save, naming the plain backend class in tokenizer_config.json (see the class docstring)."""
        files = super().save_pretrained(save_directory, *args, **kwargs)
        for name in files:
            if str(name).endswith("tokenizer_config.json"):
                path = Path(name)
                text = path.read_text(encoding="utf-8")
                ours = f'"tokenizer_class": "{type(self).__name__}"'
                path.write_text(text.replace(ours, f'"tokenizer_class": "{PreTrainedTokenizerFast.__name__}"'),
                                encoding="utf-8")
        return files


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 2048) -> DogeTokenizer:
    """Turn a raw `tokenizers.Tokenizer` into a transformers tokenizer with Doge's specials and chat template."""
    fast = DogeTokenizer(
        tokenizer_object=tok,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        additional_special_tokens=[START_HEADER_TOKEN, END_HEADER_TOKEN],
        model_max_length=model_max_length,
        padding_side="right",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = DOGE_CHAT_TEMPLATE
    check_doge_tokenizer(fast)
    return fast


# One turn of each role: enough to tell a template that renders any piece of the format differently.
_FORMAT_PROBE = [{"role": r, "content": f"a {r} turn"} for r in CHAT_ROLES]


def check_doge_tokenizer(tokenizer: PreTrainedTokenizerFast) -> None:
    """Raise ValueError naming the problem if `tokenizer` lacks something the lessons rely on."""
    expected = {"bos_token": (BOS_TOKEN, 0), "eos_token": (EOS_TOKEN, 1), "pad_token": (PAD_TOKEN, 2)}
    for attr, (text, token_id) in expected.items():
        if getattr(tokenizer, attr) != text:
            raise ValueError(f"tokenizer.{attr} is {getattr(tokenizer, attr)!r}, expected {text!r}")
        if tokenizer.convert_tokens_to_ids(text) != token_id:
            raise ValueError(f"{text} has id {tokenizer.convert_tokens_to_ids(text)}, expected {token_id}")
    for tag in [START_HEADER_TOKEN, END_HEADER_TOKEN] + REASONING_TAGS:
        ids = tokenizer.encode(tag, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{tag} should be a single token, got ids {ids}")
    if not tokenizer.chat_template:
        raise ValueError("tokenizer has no chat_template")
    rendered = tokenizer.apply_chat_template(_FORMAT_PROBE, tokenize=False, add_generation_prompt=True)
    if rendered != render_chat_text(_FORMAT_PROBE, add_generation_prompt=True):
        raise ValueError(f"the tokenizer's chat_template renders {rendered!r}, not Doge's chat format "
                         f"{render_chat_text(_FORMAT_PROBE, add_generation_prompt=True)!r}")


def load_tokenizer(path: str | Path = TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    """Load the project's tokenizer (or any Doge tokenizer folder, e.g. a download of SmallDoge/Doge-tokenizer)."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {path}; regenerate the project's data with `python -m doge_from_scratch.data`"
        )
    return DogeTokenizer.from_pretrained(str(path))
