"""A minimal growing key/value cache (lesson 05 builds the fast, preallocated one).

Keys are stored after RoPE and k_norm, values as projected, so a decoding step only computes its own
token's projections. The dynamic bias is recomputed from the cached values, as the reference does.
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

    def __len__(self) -> int:
        return len(self.keys)
