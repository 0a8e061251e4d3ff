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
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerFast

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

# Jinja chat template. Whitespace control (`{%-`, `{{-`) keeps the template's own line breaks out of the text.
DOGE_CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('Doge chat format: unknown role ' ~ message['role'] ~ ' in message ' ~ loop.index0) }}"
    "{%- endif %}"
    "{%- if message['content'] is not string %}"
    "{{- raise_exception('Doge chat format: content of message ' ~ loop.index0 ~ ' must be a string') }}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n' }}"
    "{%- if message['role'] == 'assistant' %}"
    "{%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}"
    "{%- else %}"
    "{{- message['content'] + eos_token }}"
    "{%- endif %}"
    "{{- '\\n\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n' }}"
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


def wrap_tokenizer(tok: Tokenizer, model_max_length: int = 2048) -> PreTrainedTokenizerFast:
    """Turn a raw `tokenizers.Tokenizer` into a transformers tokenizer with Doge's specials and chat template."""
    fast = PreTrainedTokenizerFast(
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


def load_tokenizer(path: str | Path = TOKENIZER_DIR) -> PreTrainedTokenizerFast:
    """Load the project's tokenizer (or any Doge tokenizer folder, e.g. a download of SmallDoge/Doge-tokenizer)."""
    path = Path(path)
    if not (path / "tokenizer.json").is_file():
        raise FileNotFoundError(
            f"no tokenizer.json in {path}; regenerate the project's data with `python -m doge_from_scratch.data`"
        )
    return AutoTokenizer.from_pretrained(str(path))
