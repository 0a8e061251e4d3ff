"""Key/value caches for decoding (lesson 05).

Generating token t+1 needs the keys and values of tokens 0..t, but only token t is new. A cache keeps
the keys (after k_norm and RoPE) and the values (as projected) of every token seen so far, so each
decoding step projects one token instead of the whole sequence: per-token cost goes from O(t) full
layer passes to one.

What Doge adds: the dynamic-mask bias b_s = exp(A * softplus(dt_proj(v_s))) depends on the value of
key s alone. The attention layer recomputes it from *all* cached values at every step, exactly as the
reference does, so the cache stores nothing but keys and values. (``fast_decode`` keeps its keys and values
in a ``StaticKVCache`` too, and caches the bias beside it, since recomputing it is O(S) work per step for a
number that never changes.) What the cache must
not hold is a mask: past ``keep_window_size`` the keys a query may use are chosen by ranking the biases
of all S keys (the native top-k, or the classic ``dynamic_mask_ratio`` rule), and that choice changes
as keys arrive, so every step rebuilds it from the full bias row.

Two caches with the same ``update`` / ``get_seq_length`` interface (see ``attention.KVCacheLike``):

- ``KVCache``: grows by concatenation. Simple, but every step copies the whole cache once.
- ``StaticKVCache``: one buffer per layer allocated up front for ``max_length`` positions; a step writes
  its slice in place and attention reads a view of the filled part. No copies, no allocations.
"""

from __future__ import annotations

import torch


class KVCache:
    """Per-layer lists of keys/values, each [B, n_kv, S, d], grown by concatenation."""

    def __init__(self) -> None:
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's key/value [B, n_kv, T, d] for a layer; return all of them [B, n_kv, S, d]."""
        if layer_idx == len(self.keys):
            self.keys.append(key)
            self.values.append(value)
        elif layer_idx < len(self.keys):
            self.keys[layer_idx] = torch.cat((self.keys[layer_idx], key), dim=-2)
            self.values[layer_idx] = torch.cat((self.values[layer_idx], value), dim=-2)
        else:
            raise IndexError(f"layer {layer_idx} updated before layer {len(self.keys)}")
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.keys[layer_idx].shape[-2] if layer_idx < len(self.keys) else 0

    def expand_batch(self, batch_size: int) -> KVCache:
        """This one-row cache [1, n_kv, S, d] seen by ``batch_size`` rows (views, no copies): a prefix every row
        shares, computed once. Under autograd the rows' gradients sum back into the one prefix."""
        if any(k.shape[0] != 1 for k in self.keys):
            raise ValueError(f"expand_batch needs a cache of one row; this one holds {self.keys[0].shape[0]}")
        out = KVCache()
        out.keys = [k.expand(batch_size, -1, -1, -1) for k in self.keys]
        out.values = [v.expand(batch_size, -1, -1, -1) for v in self.values]
        return out

    def __len__(self) -> int:
        return len(self.keys)


def shared_prefix_length(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor) -> int:
    """How many leading tokens all rows' prompts share. prompt_ids, prompt_mask: [b, P], left padded.

    At most the shortest prompt's length - 1, so that every row keeps a prompt token of its own (the one whose
    logits predict the first completion token). 0 for a single row or a mask that is not left padding.
    """
    b, width = prompt_ids.shape
    lengths = prompt_mask.sum(-1)
    shortest = int(lengths.min()) if b else 0
    if b < 2 or shortest < 2:
        return 0
    starts = width - lengths
    columns = torch.arange(width, device=prompt_ids.device)
    if not torch.equal(prompt_mask.bool(), columns[None, :] >= starts[:, None]):
        return 0
    heads = prompt_ids.gather(1, starts[:, None] + columns[None, :shortest - 1])
    return int((heads == heads[:1]).all(0).long().cumprod(0).sum())


def split_shared_prefix(prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, shared: int
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Left-padded prompts [b, P] whose first ``shared`` real tokens are the same in every row
    (``shared_prefix_length``) -> (that prefix [1, shared]; each row's rest [b, R], its last R columns, still left
    padded; the rest's mask [b, R])."""
    start = prompt_ids.shape[1] - int(prompt_mask[0].sum())
    rest = prompt_mask.sum(-1) - shared
    width = int(rest.max())
    columns = torch.arange(width, device=prompt_ids.device)
    rest_mask = (columns[None, :] >= (width - rest)[:, None]).to(prompt_mask.dtype)
    return prompt_ids[:1, start:start + shared], prompt_ids[:, -width:], rest_mask


class StaticKVCache:
    """Preallocated keys/values: per layer one [B, n_kv, max_length, d] buffer each, filled left to right.

    ``update`` copies the new [B, n_kv, T, d] slice into place and returns views [B, n_kv, S, d] of the
    filled part, so attention sees exactly what ``KVCache`` would give it.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, head_dim: int, max_length: int,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> None:
        if max_length < 1:
            raise ValueError(f"StaticKVCache.max_length={max_length}: must be >= 1")
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        self.keys = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.lengths = [0] * num_layers
        self.max_length = max_length

    @classmethod
    def for_model(cls, config, batch_size: int, max_length: int, dtype: torch.dtype = torch.float32,
                  device: str | torch.device = "cpu") -> StaticKVCache:
        """A cache shaped for a ``DogeConfig``: num_hidden_layers x [batch, n_kv, max_length, head_dim]."""
        return cls(config.num_hidden_layers, batch_size, config.num_key_value_heads, config.head_dim,
                   max_length, dtype, device)

    def update(self, key: torch.Tensor, value: torch.Tensor, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Write key/value [B, n_kv, T, d] after the filled part; return the filled views [B, n_kv, S, d]."""
        if not 0 <= layer_idx < len(self.keys):
            raise IndexError(f"layer_idx={layer_idx} out of range for a cache of {len(self.keys)} layers")
        start, t = self.lengths[layer_idx], key.shape[-2]
        if start + t > self.max_length:
            raise ValueError(f"StaticKVCache is full: layer {layer_idx} holds {start} of {self.max_length} "
                             f"positions and cannot take {t} more; allocate a larger max_length")
        buf_k, buf_v = self.keys[layer_idx], self.values[layer_idx]
        if key.shape[:2] != buf_k.shape[:2] or key.shape[-1] != buf_k.shape[-1]:
            raise ValueError(f"key has shape {tuple(key.shape)}, the cache holds {tuple(buf_k.shape)} "
                             f"[batch, n_kv, max_length, head_dim]")
        buf_k[:, :, start:start + t] = key
        buf_v[:, :, start:start + t] = value
        self.lengths[layer_idx] = start + t
        return buf_k[:, :, :start + t], buf_v[:, :, :start + t]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.lengths[layer_idx]

    def mark_filled(self, length: int) -> None:
        """Every layer now holds ``length`` positions: for a writer that fills the buffers in place itself
        (the fast decoder's per-token step writes all layers' slot ``length - 1`` with ``index_copy_``)."""
        if not 0 <= length <= self.max_length:
            raise ValueError(f"StaticKVCache holds {self.max_length} positions; cannot mark {length} filled")
        self.lengths = [length] * len(self.lengths)

    def __len__(self) -> int:
        return len(self.keys)
