"""The caches every decoder in minivlm generates with: keys and values kept between forward calls.

    cache = model.new_cache(batch_size, max_length)     # empty: cache.length == 0
    model(prompt, cache=cache)                          # prefill: every layer stores T keys/values
    model(next_token, cache=cache)                      # a step: every layer stores one more

`KVCache` holds each self-attention layer's keys and values, preallocated as (B, Hkv, max_length, D).
A forward over T new tokens runs the layers in order and each calls `update(layer, k, v)`: the new keys
and values go to [length, length + T) of that layer, and the attention reads the view [:length + T] (no
copy: the attention kernel reads strides). `length` does not change while the layers run, so every layer
writes at the same place; the write of the LAST layer advances it by T, and the next forward starts after
these tokens. The decoder stacks never touch `length` themselves. A forward that fails before its last
layer stores nothing (`length` is unchanged; what earlier layers wrote lies past it and is overwritten by
the next call).

`CrossAttentionCache` adds, per cross-attention layer, the keys and values of a source that does not change
during generation (T5's encoder states, IDEFICS's image states): computed on the first call, reused after.
`ImageCache` (IDEFICS) also keeps the image states and the last row of the image attention mask.
"""
from __future__ import annotations

from typing import Optional

import torch


class KVCache:
    """Keys and values of every self-attention layer, preallocated as (B, Hkv, max_length, D) per layer;
    `length` tokens are stored. Sliding-window layers keep every key too (the window mask hides old ones)."""

    def __init__(self, num_layers, batch_size, num_kv_heads, max_length, head_dim, *, dtype, device=None):
        shape = (batch_size, num_kv_heads, max_length, head_dim)
        # Uninitialised: only [:length] is ever read, and zero-filling would cost a pass over the whole cache.
        self.keys = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.values = [torch.empty(shape, dtype=dtype, device=device) for _ in range(num_layers)]
        self.num_layers, self.batch_size, self.max_length, self.dtype = num_layers, batch_size, max_length, dtype
        self.length = 0

    def check(self, batch_size: int, new_tokens: int, dtype: torch.dtype):
        if batch_size != self.batch_size:
            raise ValueError(f"cache: built for batch size {self.batch_size}, got a batch of {batch_size}")
        if self.length + new_tokens > self.max_length:
            raise ValueError(f"cache: holds {self.length} of max_length={self.max_length} tokens; "
                             f"{new_tokens} more do not fit (make the cache with a larger max_length)")
        if dtype != self.dtype:
            raise ValueError(f"cache: stores {self.dtype} but the activations are {dtype}")

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        """Store `layer`'s k, v (B, Hkv, T, D) after the cached tokens; return its keys and values so far.
        The last layer's call advances `length` by T: the T tokens are then stored in every layer."""
        end = self.length + k.shape[2]
        self.keys[layer][:, :, self.length:end] = k
        self.values[layer][:, :, self.length:end] = v
        if layer == self.num_layers - 1:
            self.length = end
        return self.keys[layer][:, :, :end], self.values[layer][:, :, :end]   # (B, Hkv, length + T, D)

    def select_rows(self, rows: torch.Tensor):
        """Keep the batch rows `rows` (R,), in that order, R may differ from batch_size: new buffers, e.g.
        each prompt's row repeated once per beam after the prefill. Everything stored per row follows."""
        self.keys = [k.index_select(0, rows) for k in self.keys]
        self.values = [v.index_select(0, rows) for v in self.values]
        self.batch_size = rows.numel()

    def reorder(self, rows: torch.Tensor):
        """Beam search: row i now continues beam rows[i] (rows: (batch_size,), each within its prompt's
        group of beams). Only the stored tokens of the self-attention move, in place."""
        n = self.length
        for cache in (self.keys, self.values):
            for t in cache:
                t[:, :, :n] = t[:, :, :n].index_select(0, rows)


class CrossAttentionCache(KVCache):
    """A KVCache plus each cross-attention layer's keys and values of a fixed source: `cross[i]` is None
    until layer i computes its (k, v), each (B, H, S, D), on the first call. One cache belongs to one
    source (T5: one encoder output)."""

    def __init__(self, *args, num_cross_layers: Optional[int] = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cross = [None] * (self.num_layers if num_cross_layers is None else num_cross_layers)

    def select_rows(self, rows: torch.Tensor):
        super().select_rows(rows)
        self.cross = [None if kv is None else tuple(t.index_select(0, rows) for t in kv) for kv in self.cross]

    # reorder() leaves `cross` alone: the beams of one prompt attend to the same source, so their
    # cross-attention keys and values are equal and moving rows within a group changes nothing.


class ImageCache(CrossAttentionCache):
    """IDEFICS's cache: the decoder's keys and values, each gated layer's image keys and values (`cross`),
    the image states (B, Ni*Q, E_v) and the last row of image_attention_mask (B, 1, Ni), which the tokens
    after the prefill see."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.image_states = None
        self.image_mask = None

    def select_rows(self, rows: torch.Tensor):
        super().select_rows(rows)
        if self.image_states is not None:
            self.image_states = self.image_states.index_select(0, rows)
            self.image_mask = self.image_mask.index_select(0, rows)


def cached_tokens(cache: Optional[KVCache], batch_size: int, new_tokens: int, dtype: torch.dtype,
                  attention_mask=None, who: str = "model") -> int:
    """How many tokens `cache` already holds (0 without a cache), after checking that `new_tokens` more
    fit and that an attention_mask covers the cached and the new tokens: (batch, cached + new)."""
    past = 0
    if cache is not None:
        cache.check(batch_size, new_tokens, dtype)
        past = cache.length
    if attention_mask is not None and tuple(attention_mask.shape) != (batch_size, past + new_tokens):
        raise ValueError(f"{who}: attention_mask must be (batch, cached + new tokens) = ({batch_size}, "
                         f"{past + new_tokens}), got {tuple(attention_mask.shape)}")
    return past
