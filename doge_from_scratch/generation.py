"""Text generation (lesson 05): the decode loop, logits processing, sampling and streamers.

``generate`` runs any Doge decoder token by token:

1. prefill: one forward pass over the prompt fills the KV cache and gives the next-token logits;
2. pick a token from the last logits (greedy argmax, or a sample from the processed distribution);
3. feed that single token back (one cheap step thanks to the cache) and repeat until every row has
   produced one of the eos ids or ``max_new_tokens`` tokens.

The processing chain is the one the model cards rely on (transformers' ``generate`` semantics):
repetition penalty (always), then for sampling temperature -> top-k -> top-p -> min-p, then softmax and a
multinomial draw. Every other transformers ``GenerationConfig`` setting is either harmless here (it changes
how the tokens are produced or reported, never which) or refused with an error naming it
(``GENERATION_CONFIG_FIELDS``). Seeding ``torch.manual_seed`` before a call reproduces transformers' sample exactly;
``seed=`` uses a private generator so sampling reproduces without touching the global RNG.

Batched prompts are left padded: row b's real tokens end at the last column, so every row's next
token is written in the same column. Positions count real tokens only (``cumsum(mask) - 1``).
"""

from __future__ import annotations

import dataclasses
import os
import queue
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import torch

from .cache import KVCache, StaticKVCache
from .fast_decode import FastDoge, fast_decoder_for, why_not_fast
from .model import check_token_ids


# --------------------------------------------------------------------------------------------------
# settings
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GenerationConfig:
    """The generation settings we honour, with transformers' defaults.

    top_k defaults to 50 as in transformers (a card that sets only temperature and top_p still gets
    top-k 50). eos/pad ids default to the model config's.
    """

    max_new_tokens: int = 20
    do_sample: bool = False
    temperature: float = 1.0
    top_k: int | None = 50
    top_p: float = 1.0
    min_p: float | None = None
    repetition_penalty: float = 1.0
    eos_token_id: int | list[int] | None = None
    pad_token_id: int | None = None
    use_cache: bool = True
    seed: int | None = None

    def validate(self) -> None:
        def fail(field: str, why: str) -> None:
            raise ValueError(f"GenerationConfig.{field}={getattr(self, field)!r}: {why}")

        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            fail("max_new_tokens", "must be an integer >= 1")
        if self.do_sample and not self.temperature > 0:
            fail("temperature", "must be > 0 when sampling")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 0):
            fail("top_k", "must be None, 0 (off) or a positive integer")
        if not 0.0 <= self.top_p <= 1.0:
            fail("top_p", "must be in [0, 1]")
        if self.min_p is not None and not 0.0 <= self.min_p <= 1.0:
            fail("min_p", "must be None (off) or in [0, 1]")
        if not self.repetition_penalty > 0:
            fail("repetition_penalty", "must be > 0 (1.0 = off)")

    @property
    def eos_ids(self) -> list[int]:
        if self.eos_token_id is None:
            return []
        return [int(self.eos_token_id)] if isinstance(self.eos_token_id, int) else [int(i) for i in self.eos_token_id]


# Every field of transformers 5.23's GenerationConfig (and the few generate() arguments that select a
# decoding mode), by what this generate does with it. "implemented": a field of our GenerationConfig.
# "harmless": changes how or how fast tokens are produced, or what would be reported, never which tokens
# (beam-search and assisted-decoding knobs count here because the modes they tune are refused).
# Refused: any value but the neutral ones listed (None always means unset).
_IMPLEMENTED = ("max_new_tokens", "do_sample", "temperature", "top_k", "top_p", "min_p", "repetition_penalty",
                "eos_token_id", "pad_token_id", "use_cache")
_HARMLESS = ("transformers_version", "bos_token_id", "decoder_start_token_id", "output_attentions",
             "output_hidden_states", "output_scores", "output_logits", "cache_implementation", "cache_config",
             "max_cache_len", "compile_config", "disable_compile", "prefill_chunk_size",
             "continuous_batching_config", "low_memory", "early_stopping", "length_penalty",
             # a log-softmax after the processors: the same argmax and the same sampling distribution
             "renormalize_logits",
             "is_assistant", "num_assistant_tokens", "num_assistant_tokens_schedule", "assistant_confidence_threshold",
             "max_matching_ngram_size", "assistant_lookbehind", "target_lookbehind")
_REFUSED: dict[str, tuple] = {
    "num_beams": (1,), "num_beam_groups": (1,), "diversity_penalty": (0.0,), "num_return_sequences": (1,),
    "penalty_alpha": (0.0,), "dola_layers": (), "top_h": (), "typical_p": (1.0,), "epsilon_cutoff": (0.0,),
    "eta_cutoff": (0.0,), "encoder_repetition_penalty": (1.0,), "no_repeat_ngram_size": (0,),
    "encoder_no_repeat_ngram_size": (0,), "bad_words_ids": (), "force_words_ids": (), "constraints": (),
    "sequence_bias": (), "suppress_tokens": (), "begin_suppress_tokens": (), "forced_bos_token_id": (),
    "forced_eos_token_id": (), "min_length": (0,), "min_new_tokens": (0,), "max_time": (),
    "stop_strings": (), "guidance_scale": (1.0,), "exponential_decay_length_penalty": (),
    "remove_invalid_values": (False,), "token_healing": (False,), "watermarking_config": (),
    "prompt_lookup_num_tokens": (), "assistant_early_exit": (), "assistant_ensemble_weight": (),
    "speculation_type": (), "use_mtp": (False,), "return_dict_in_generate": (False,),
    # generate() arguments of transformers that are not config fields
    "assistant_model": (), "logits_processor": (), "stopping_criteria": (), "prefix_allowed_tokens_fn": (),
    "negative_prompt_ids": (), "negative_prompt_attention_mask": (),
}
GENERATION_CONFIG_FIELDS: dict[str, str] = {
    **dict.fromkeys(_IMPLEMENTED, "implemented"), **dict.fromkeys(_HARMLESS, "harmless"),
    **dict.fromkeys(_REFUSED, "refused"), "max_length": "harmless when max_new_tokens is set, else refused",
}


def _is_neutral(name: str, value: Any) -> bool:
    if value is None or isinstance(value, (list, tuple, dict, set, str)) and not value:
        return True
    return value in _REFUSED[name]


def _transformers_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Our fields from transformers-style ``settings``: harmless ones dropped, refused ones raise.

    Names that are neither ours nor transformers' are kept, so the caller can report them as unknown.
    """
    if settings.get("max_new_tokens") is None and settings.get("max_length") is not None:
        raise NotImplementedError(f"max_length={settings['max_length']!r} is not supported by this generate; "
                                  "set max_new_tokens instead")
    ours = {}
    for name, value in settings.items():
        if name in _HARMLESS or name == "max_length":
            continue
        if name in _REFUSED:
            if not _is_neutral(name, value):
                raise NotImplementedError(f"{name}={value!r} is not supported by this generate (it would change "
                                          f"the output); leave it unset (see GENERATION_CONFIG_FIELDS)")
            continue
        ours[name] = value
    return ours


def resolve_config(model_config, generation_config=None, **overrides) -> GenerationConfig:
    """Our ``GenerationConfig`` from ours, a transformers ``GenerationConfig``, a dict, or None, plus overrides.

    Fields a transformers config leaves unset (None) take transformers' defaults; a setting that would
    change the output but is not implemented here raises instead of being ignored silently, and so does a
    set attribute of a transformers config that this module does not know.
    """
    fields = {f.name for f in dataclasses.fields(GenerationConfig)}
    given: dict[str, Any] = {}
    if isinstance(generation_config, GenerationConfig):
        given = dataclasses.asdict(generation_config)
    elif isinstance(generation_config, dict):
        given = _transformers_settings(generation_config)
    elif generation_config is not None:  # a transformers.GenerationConfig (or anything with its attributes)
        public = {k: v for k, v in vars(generation_config).items() if not k.startswith("_")}
        strangers = sorted(k for k, v in public.items()
                           if k not in GENERATION_CONFIG_FIELDS and k not in fields and v is not None)
        if strangers:
            raise NotImplementedError(f"generation_config sets {strangers}, which this generate does not know; "
                                      "remove them (see GENERATION_CONFIG_FIELDS)")
        # transformers leaves unset fields at None and fills in its defaults (ours) later
        given = {k: v for k, v in _transformers_settings(public).items() if v is not None}
    overrides = _transformers_settings(overrides)
    unknown = sorted((set(given) | set(overrides)) - fields)
    if unknown:
        raise TypeError(f"unknown generation settings {unknown}; known: {sorted(fields)}")
    merged = {**given, **overrides}
    config = GenerationConfig(**merged)
    if config.eos_token_id is None:
        config.eos_token_id = getattr(model_config, "eos_token_id", None)
    if config.pad_token_id is None:
        config.pad_token_id = getattr(model_config, "pad_token_id", None)
        if config.pad_token_id is None and config.eos_ids:
            config.pad_token_id = config.eos_ids[0]
    config.validate()
    return config


# --------------------------------------------------------------------------------------------------
# logits processing and token choice
# --------------------------------------------------------------------------------------------------
def apply_repetition_penalty(scores: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL-style penalty on every token already in the sequence: positive logits / p, negative * p.

    scores: [B, V] float; seen: bool [B, V]. Dividing a positive logit and multiplying a negative one
    both make the token less likely for p > 1.
    """
    if penalty == 1.0:
        return scores
    penalised = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen, penalised, scores)


def top_k_filter(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the k largest scores of each row (ties with the k-th kept), set the rest to -inf. [B, V] -> [B, V]"""
    k = min(k, scores.shape[-1])
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, float("-inf"))


def top_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Nucleus filter: keep the most likely tokens whose probabilities add up to p (at least one).

    Sorting ascending, a token is dropped when the total probability of it and everything less likely
    is still <= 1 - p, i.e. the kept ones already cover p without it. [B, V] -> [B, V]
    """
    if p >= 1.0:
        return scores
    ascending, order = torch.sort(scores, dim=-1)
    tail_mass = ascending.softmax(dim=-1).cumsum(dim=-1)
    drop_sorted = tail_mass <= 1.0 - p
    drop_sorted[..., -1] = False
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return scores.masked_fill(drop, float("-inf"))


def min_p_filter(scores: torch.Tensor, p: float) -> torch.Tensor:
    """Drop every token less likely than p times the most likely one (which always stays). [B, V] -> [B, V]

    Unlike top-p, the cut follows the model's confidence: a peaked distribution keeps few tokens, a flat
    one many.
    """
    probs = scores.softmax(dim=-1)
    return scores.masked_fill(probs < p * probs.amax(dim=-1, keepdim=True), float("-inf"))


def process_logits(logits: torch.Tensor, seen: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """Repetition penalty, then (sampling only) temperature, top-k, top-p and min-p. [B, V] float32 -> [B, V]"""
    scores = apply_repetition_penalty(logits, seen, config.repetition_penalty)
    if config.do_sample:
        if config.temperature != 1.0:
            scores = scores / config.temperature
        if config.top_k:
            scores = top_k_filter(scores, config.top_k)
        scores = top_p_filter(scores, config.top_p)
        if config.min_p is not None:
            scores = min_p_filter(scores, config.min_p)
    return scores


def choose_tokens(scores: torch.Tensor, do_sample: bool, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, V] processed scores -> [B] token ids (argmax, or one multinomial draw per row)."""
    if not do_sample:
        return scores.argmax(dim=-1)
    probs = torch.softmax(scores, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


# --------------------------------------------------------------------------------------------------
# streamers
# --------------------------------------------------------------------------------------------------
class Streamer(Protocol):
    """What ``generate`` calls (transformers' streamer protocol, so its TextStreamer works too)."""

    def put(self, value: torch.Tensor) -> None: ...

    def end(self) -> None: ...


class TextStreamer:
    """Decode tokens as they arrive and hand out text in readable pieces.

    generate calls ``put`` with the prompt [1, T] once, then with each new token [1]. Text goes out up to
    the last space or newline (a word may still grow by another token) and never ends in a half
    multi-byte character (decoded as U+FFFD). ``on_text(text, final)`` receives the pieces; by default
    they are printed, like transformers' TextStreamer.
    """

    def __init__(self, tokenizer, skip_prompt: bool = False,
                 on_text: Callable[[str, bool], None] | None = None, **decode_kwargs) -> None:
        self.tokenizer = tokenizer
        self.skip_prompt = skip_prompt
        self.decode_kwargs = decode_kwargs
        self.on_text = on_text or (lambda text, final: print(text, end="" if not final else "\n", flush=True))
        self.tokens: list[int] = []
        self.printed = 0
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if value.dim() > 1 and value.shape[0] > 1 or value.dim() == 1 and value.shape[0] > 1 and self.seen_prompt:
            raise ValueError("TextStreamer follows a single sequence; use batch size 1")
        if not self.seen_prompt:
            self.seen_prompt = True
            if self.skip_prompt:
                return
        self.tokens.extend(int(t) for t in value.reshape(-1))
        text = self.tokenizer.decode(self.tokens, **self.decode_kwargs)
        if text.endswith("\n"):
            piece, self.tokens, self.printed = text[self.printed:], [], 0
        elif text.endswith("\ufffd"):
            return
        else:
            cut = max(text.rfind(" "), text.rfind("\n")) + 1
            piece = text[self.printed:cut] if cut > self.printed else ""
            self.printed = max(self.printed, cut)
        if piece:
            self.on_text(piece, False)

    def end(self) -> None:
        text = self.tokenizer.decode(self.tokens, **self.decode_kwargs) if self.tokens else ""
        self.on_text(text[self.printed:], True)
        self.tokens, self.printed, self.seen_prompt = [], 0, False


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer you iterate over: run ``generate`` in a thread and ``for text in streamer``."""

    def __init__(self, tokenizer, skip_prompt: bool = False, timeout: float | None = None, **decode_kwargs) -> None:
        super().__init__(tokenizer, skip_prompt, on_text=self._enqueue, **decode_kwargs)
        self.queue: queue.Queue = queue.Queue()
        self.timeout = timeout

    def _enqueue(self, text: str, final: bool) -> None:
        if text:
            self.queue.put(text)
        if final:
            self.queue.put(None)

    def __iter__(self) -> Iterator[str]:
        while (text := self.queue.get(timeout=self.timeout)) is not None:
            yield text


class CallbackStreamer:
    """Calls ``fn(token_ids [B])`` for every new token (the prompt is skipped): the rawest streamer."""

    def __init__(self, fn: Callable[[torch.Tensor], None]) -> None:
        self.fn = fn
        self.seen_prompt = False

    def put(self, value: torch.Tensor) -> None:
        if not self.seen_prompt:
            self.seen_prompt = True
            return
        self.fn(value)

    def end(self) -> None:
        self.seen_prompt = False


# --------------------------------------------------------------------------------------------------
# steppers: "prefill the prompt" and "one more token" for a given decoder
# --------------------------------------------------------------------------------------------------
class Stepper(Protocol):
    def prefill(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None,
                position_ids: torch.Tensor) -> torch.Tensor: ...

    def step(self, tokens: torch.Tensor, attention_mask: torch.Tensor | None,
             position_ids: torch.Tensor) -> torch.Tensor: ...


class ModelStepper:
    """Drives a ``DogeForCausalLM`` (the teaching model) with a static or growing KV cache, or no cache.

    Without a cache (``cache="none"``) every step re-runs the whole sequence: the slow baseline the
    lesson measures the cache against.
    """

    def __init__(self, model, batch_size: int, max_length: int, cache: str = "static") -> None:
        if cache not in ("static", "dynamic", "none"):
            raise ValueError(f"cache={cache!r}: choose 'static', 'dynamic' or 'none'")
        self.model = model
        self.mode = cache
        dtype = next(model.parameters()).dtype
        device = next(model.parameters()).device
        if cache == "static":
            self.cache = StaticKVCache.for_model(model.config, batch_size, max_length, dtype, device)
        else:
            self.cache = KVCache() if cache == "dynamic" else None
        self.ids: torch.Tensor | None = None
        self.positions: torch.Tensor | None = None

    def _run(self, ids, attention_mask, position_ids) -> torch.Tensor:
        out = self.model(ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=self.cache, use_cache=self.cache is not None, logits_to_keep=1)
        return out.logits[:, -1].float()

    def prefill(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        self.ids, self.positions = input_ids, position_ids
        return self._run(input_ids, attention_mask, position_ids)

    def step(self, tokens, attention_mask, position_ids) -> torch.Tensor:
        if self.cache is None:  # recompute everything: the no-cache baseline
            self.ids = torch.cat((self.ids, tokens[:, None]), dim=1)
            self.positions = torch.cat((self.positions, position_ids[:, None]), dim=1)
            return self._run(self.ids, attention_mask, self.positions)
        return self._run(tokens[:, None], attention_mask, position_ids[:, None])


def make_stepper(decoder, batch_size: int, max_length: int, cache: str) -> Stepper:
    """A ``FastDoge``'s own ``FastStepper``, or a ``ModelStepper`` driving the teaching model with ``cache``."""
    if isinstance(decoder, FastDoge):
        return decoder.make_stepper(batch_size, max_length)
    return ModelStepper(decoder, batch_size, max_length, cache)


DECODERS = ("auto", "fast", "teaching")


def choose_decoder(model, decoder: str, cache: str | None):
    """What runs the decode loop: the model itself (the teaching path) or its ``FastDoge`` copy.

    "auto" (the default) takes the fast copy when no cache was named and ``fast_decode.why_not_fast`` finds
    nothing against it (eval mode, a plain ``DogeForCausalLM``): same numbers, less overhead. "teaching" runs
    the model's own forward with the named cache (lesson 05's step-by-step build); "fast" insists.
    """
    if decoder not in DECODERS:
        raise ValueError(f"decoder={decoder!r}: choose one of {DECODERS}")
    if isinstance(model, FastDoge) or decoder == "teaching" or decoder == "auto" and cache is not None:
        return model
    reason = why_not_fast(model) or (f"cache={cache!r} names a teaching-model cache" if cache is not None else None)
    if reason is None:
        return fast_decoder_for(model)
    if decoder == "fast":
        raise ValueError(f"decoder='fast' is not available: {reason}")
    return model


# --------------------------------------------------------------------------------------------------
# the loop
# --------------------------------------------------------------------------------------------------
def available_memory_bytes(device: torch.device) -> int | None:
    """Memory a new allocation on ``device`` can take now (CUDA: free device memory; CPU: MemAvailable), or None
    where the platform does not say."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            info = dict(line.split(":", 1) for line in f if ":" in line)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


def kv_cache_bytes(model, batch: int, length: int) -> int:
    """Bytes of the keys and values (and, for ``FastDoge``, the cached bias) of ``length`` positions.

    The fast decoder stores float32 whatever the weights; the teaching model's cache takes the weights' dtype.
    """
    config = model.config
    fast = isinstance(model, FastDoge)
    element = 4 if fast else next(model.parameters()).element_size()
    per_position = 2 * config.num_key_value_heads * config.head_dim + (config.num_attention_heads if fast else 0)
    return config.num_hidden_layers * batch * length * per_position * element


def check_generation_fits(model, batch: int, prompt_len: int, max_new_tokens: int, device: torch.device) -> None:
    """Refuse a ``max_new_tokens`` whose KV cache could never fit in memory, before any of it is allocated.

    The static cache (and the fast decoder's) is allocated up front for prompt + max_new_tokens positions; a
    growing cache would reach the same size if no eos came. Positions past max_position_embeddings are not
    refused: dynamic-NTK rotary embeddings and the keep window are made for longer sequences.
    """
    needed = kv_cache_bytes(model, batch, prompt_len + max_new_tokens)
    available = available_memory_bytes(device)
    if available is not None and needed > available:
        limit = getattr(model.config, "max_position_embeddings", None)
        raise ValueError(
            f"max_new_tokens={max_new_tokens}: a batch of {batch} with {prompt_len} prompt tokens needs a KV cache "
            f"of {needed / 2**30:.1f} GiB for {prompt_len + max_new_tokens} positions, more than the "
            f"{available / 2**30:.1f} GiB of {device.type} memory available; ask for fewer new tokens "
            f"(the model was trained for {limit} positions)")


def left_padding_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, T] 0/1 mask (left padded) -> position ids [B, T]: real tokens count from 0, padding gets 0."""
    real = attention_mask.long()
    if bool(((real[:, 1:] - real[:, :-1]) < 0).any()):
        raise ValueError("attention_mask has padding after a real token: generate needs LEFT padding "
                         "(tokenizer.padding_side = 'left')")
    return (real.cumsum(-1) - 1).clamp(min=0)


@torch.no_grad()
def generate(model, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
             generation_config=None, streamer: Streamer | None = None, cache: str | None = None,
             tokenizer=None, decoder: str = "auto", **settings) -> torch.Tensor:
    """Continue each prompt row; returns [B, T + new] ids (prompt, then new tokens, pad after an eos).

    model: a ``DogeForCausalLM`` or a ``fast_decode.FastDoge``. input_ids: [B, T] (or a tokenizer's
    output holding ``input_ids`` and ``attention_mask``);
    attention_mask: [B, T] with 0 on LEFT padding. generation_config: ours, a transformers
    ``GenerationConfig`` or a dict; ``settings`` override single fields (max_new_tokens=..., seed=...).
    cache: "static" (preallocated), "dynamic" (grown by concatenation) or "none" (recompute all) runs the
    teaching model with that cache; None (the default) lets ``decoder`` choose ("auto": the fast decoder when
    the model is in eval mode, see ``choose_decoder``; "teaching": the model's own forward, static cache).
    ``tokenizer`` is accepted for the model cards' call signature and otherwise unused.
    """
    del tokenizer
    if isinstance(input_ids, Mapping):  # a tokenizer's BatchEncoding, as apply_chat_template returns in transformers 5
        if attention_mask is None:
            attention_mask = input_ids.get("attention_mask")
        input_ids = input_ids["input_ids"]
    config = resolve_config(model.config, generation_config, **settings)
    check_token_ids(input_ids, model.config.vocab_size)  # the fast decoder does not run the model's forward
    if not config.use_cache:
        cache = "none"
    model = choose_decoder(model, decoder, cache)
    cache = cache or "static"
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be [batch, prompt_len] with prompt_len >= 1, got {tuple(input_ids.shape)}")
    batch, prompt_len = input_ids.shape
    if attention_mask is not None and attention_mask.shape != input_ids.shape:
        raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, input_ids {tuple(input_ids.shape)}")
    full_mask = attention_mask if attention_mask is not None else torch.ones_like(input_ids)
    position_ids = left_padding_positions(full_mask)
    padded = not bool(full_mask.all())
    eos = torch.tensor(config.eos_ids, dtype=torch.long, device=input_ids.device)
    if config.eos_ids and config.pad_token_id is None:
        raise ValueError("generation needs a pad_token_id to fill rows that already stopped")
    generator = None
    if config.do_sample and config.seed is not None:
        generator = torch.Generator(device=input_ids.device).manual_seed(config.seed)

    vocab = model.config.vocab_size
    seen = torch.zeros(batch, vocab, dtype=torch.bool, device=input_ids.device)
    if config.repetition_penalty != 1.0:
        rows, cols = full_mask.nonzero(as_tuple=True)
        seen[rows, input_ids[rows, cols]] = True

    check_generation_fits(model, batch, prompt_len, config.max_new_tokens, input_ids.device)
    stepper = make_stepper(model, batch, prompt_len + config.max_new_tokens, cache)
    if streamer is not None:
        streamer.put(input_ids.cpu())
    logits = stepper.prefill(input_ids, full_mask if padded else None, position_ids)
    next_position = position_ids[:, -1] + 1
    unfinished = torch.ones(batch, dtype=torch.bool, device=input_ids.device)
    new_tokens = []
    for step in range(config.max_new_tokens):
        tokens = choose_tokens(process_logits(logits, seen, config), config.do_sample, generator)
        if len(eos):
            tokens = torch.where(unfinished, tokens, config.pad_token_id)
            unfinished &= ~torch.isin(tokens, eos)
        new_tokens.append(tokens)
        if config.repetition_penalty != 1.0:
            seen[torch.arange(batch), tokens] = True
        if streamer is not None:
            streamer.put(tokens.cpu())
        if step == config.max_new_tokens - 1 or not bool(unfinished.any()):
            break
        if padded:
            full_mask = torch.cat((full_mask, full_mask.new_ones(batch, 1)), dim=1)
        logits = stepper.step(tokens, full_mask if padded else None, next_position)
        next_position = next_position + 1
    if streamer is not None:
        streamer.end()
    return torch.cat((input_ids, torch.stack(new_tokens, dim=1)), dim=1)


def continue_text(model, tokenizer, prompt: str, max_new_tokens: int = 60, **settings) -> str:
    """``prompt`` and the model's continuation of it as raw text, the way pretraining saw text: a bos in front,
    no chat template. Greedy unless ``settings`` say otherwise (``do_sample=True, seed=...``); stops at the
    model's eos, which is kept in the text. The model's training mode is restored afterwards."""
    ids = torch.tensor([[tokenizer.bos_token_id] + tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    was_training = model.training
    model.eval()
    try:
        out = generate(model, ids, max_new_tokens=max_new_tokens, **settings)
    finally:
        model.train(was_training)
    return prompt + tokenizer.decode(out[0, ids.shape[1]:].tolist())


def chat_reply(model, tokenizer, messages: Sequence[Mapping[str, str]], max_new_tokens: int = 64,
               skip_special_tokens: bool = False) -> str:
    """The model's greedy next assistant turn for ``messages`` (rendered with the chat template).

    Special tokens are kept by default, so a reply that never closes its turn is visible to a checker.
    """
    return chat_replies(model, tokenizer, [messages], max_new_tokens, 1, skip_special_tokens)[0]


def chat_replies(model, tokenizer, conversations: Sequence[Sequence[Mapping[str, str]]], max_new_tokens: int = 64,
                 batch_size: int = 16, skip_special_tokens: bool = False) -> list[str]:
    """``chat_reply`` for many conversations, ``batch_size`` prompts per left-padded batch (each row is decoded as
    if alone: padding is masked and positions start at each prompt's first token). A reply ends at its eos."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompts = [list(tokenizer.apply_chat_template(list(m), add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)) for m in conversations]
    model.eval()
    replies = []
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        width = max(map(len, chunk))
        ids = torch.full((len(chunk), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, prompt in enumerate(chunk):
            ids[row, width - len(prompt):] = torch.tensor(prompt)
            mask[row, width - len(prompt):] = 1
        out = generate(model, ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
        for row in range(len(chunk)):
            new = out[row, width:].tolist()
            if tokenizer.eos_token_id in new:  # rows that stopped early are padded after their eos
                new = new[:new.index(tokenizer.eos_token_id) + 1]
            replies.append(tokenizer.decode(new, skip_special_tokens=skip_special_tokens))
    return replies
