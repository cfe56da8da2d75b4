"""minivlm/models/cache.py: the caches advance themselves, once per forward, on the last layer's write.

Whole models are tested against recomputation in each model's test file (test_llama.py, test_t5.py, ...);
here the cache alone, with hand-made keys and values.
"""
import pytest
import torch

from minivlm.models.cache import CrossAttentionCache, ImageCache, KVCache, cached_tokens


def kv(T, fill):
    """Keys and values (B=2, Hkv=3, T, D=4), all `fill` (values: -fill)."""
    k = torch.full((2, 3, T, 4), float(fill))
    return k, -k


def test_last_layer_write_advances_length():
    cache = KVCache(3, 2, 3, 10, 4, dtype=torch.float32)
    for step, T in enumerate([4, 1, 2]):
        past = cache.length
        for layer in range(3):
            assert cache.length == past          # every layer writes at the same place
            k, v = cache.update(layer, *kv(T, step + 1))
            assert k.shape == v.shape == (2, 3, past + T, 4)
            assert bool((k[:, :, past:] == step + 1).all()) and bool((v[:, :, past:] == -(step + 1)).all())
        assert cache.length == past + T
    assert cache.length == 7
    # The earlier steps' keys are still in place behind the new ones.
    assert bool(cache.keys[2][:, :, :4].eq(1).all()) and bool(cache.keys[2][:, :, 4:5].eq(2).all())


def test_cached_tokens_checks_before_anything_is_stored():
    cache = KVCache(2, 2, 3, 6, 4, dtype=torch.float32)
    assert cached_tokens(None, 2, 5, torch.float32) == 0
    assert cached_tokens(cache, 2, 6, torch.float32, torch.ones(2, 6)) == 0
    for layer in range(2):
        cache.update(layer, *kv(5, 1))
    assert cached_tokens(cache, 2, 1, torch.float32) == 5
    with pytest.raises(ValueError, match="max_length=6"):
        cached_tokens(cache, 2, 2, torch.float32)
    with pytest.raises(ValueError, match="batch size 2"):
        cached_tokens(cache, 3, 1, torch.float32)
    with pytest.raises(ValueError, match="float64"):
        cached_tokens(cache, 2, 1, torch.float64)
    with pytest.raises(ValueError, match=r"attention_mask must be \(batch, cached \+ new tokens\) = \(2, 6\)"):
        cached_tokens(cache, 2, 1, torch.float32, torch.ones(2, 1), "test")
    assert cache.length == 5


def test_cross_attention_slots():
    t5 = CrossAttentionCache(3, 2, 3, 10, 4, dtype=torch.float32)
    assert t5.cross == [None] * 3                # one per decoder layer
    idefics = ImageCache(4, 2, 3, 10, 4, dtype=torch.float32, num_cross_layers=2)
    assert idefics.cross == [None] * 2 and idefics.image_states is None and idefics.image_mask is None
    assert isinstance(idefics, KVCache) and idefics.num_layers == 4
