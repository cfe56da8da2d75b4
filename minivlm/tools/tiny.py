"""Tiny model configurations: one function per model family, each returning the config.json dict of a
random-weight model small enough to build, save, load and run in a fraction of a second on a CPU.

A dict is what both libraries read, so one dict gives the same model in each:

    from minivlm.models.llava_next import LlavaNextConfig
    config = LlavaNextConfig.from_dict(tiny.llava_next())                # minivlm
    hf_config = transformers.AutoConfig.for_model(**tiny.llava_next())   # Transformers' LlavaNextConfig

Each dict is in the form of Transformers' `to_dict()`: nested dicts for the sub-models, `model_type` at
every level; it names the sizes and token ids, and leaves every other field to the defaults both
libraries share (the tests check that minivlm's defaults are Transformers'). The vision towers see 16 px
images in 4 px patches (16 patches, 17 tokens with the class token); the language models have width 64
(AltCLIP's text tower 32) and a 128-token vocabulary (97 for the Llama/Mistral decoder on its own).

The parity tests (tests/_<model>.py), `minivlm demo`, `minivlm bench model NAME --quick` and
tutorials/02_parity_with_transformers.py take their configs from here. The tests' tolerances were
measured on these sizes, and some of their assertions (greedy tokens that must differ, top-2 margins)
on the random weights drawn for them: a change of size here is a change to all of those.

Nothing here imports Transformers or torch.
"""

# The image and patch size of every vision tower here.
IMAGE_SIZE, PATCH_SIZE = 16, 4


def _vision(model_type, **fields):
    """A vision tower's config: width 32, 2 layers of 4 heads, MLP 64; `fields` adds or replaces fields."""
    return dict(dict(model_type=model_type, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                     num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE), **fields)


def llava_next(text="mistral", sliding_window=16, feature_layer=-2, strategy="default", tie=False) -> dict:
    """LLaVA-NeXT: a 3-layer CLIP tower (16 features per crop), a 2-layer decoder of width 64; text "mistral"
    (GQA: 2 key/value heads, a sliding window of `sliding_window` tokens, None for none) or "llama" (MHA).
    The pinpoints include a 1x1 grid (a single crop) and grids of up to 3 crops per side, so unpadding cuts
    rows or columns. feature_layer and strategy: vision_feature_layer, vision_feature_select_strategy;
    tie: the LM head shares the token embedding. Token ids: 0 pad, 1 bos, 2 eos, 127 the image placeholder."""
    if text not in ("mistral", "llama"):
        raise ValueError(f"llava_next: text must be 'mistral' or 'llama', got {text!r}")
    decoder = dict(model_type=text, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, vocab_size=128, max_position_embeddings=512, pad_token_id=0,
                   bos_token_id=1, eos_token_id=2)
    if text == "llama":
        decoder.update(num_key_value_heads=4)
    else:
        decoder.update(num_key_value_heads=2, sliding_window=sliding_window)
    return dict(model_type="llava_next", vision_config=_vision("clip_vision_model", num_hidden_layers=3,
                                                               projection_dim=16),
                text_config=decoder, image_token_index=127, tie_word_embeddings=tie,
                image_grid_pinpoints=[[16, 16], [16, 32], [32, 16], [32, 32], [16, 48], [48, 16], [48, 48]],
                vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy)


def blip2(text="opt", cross_attention_frequency=2, tie=None) -> dict:
    """BLIP-2: a 2-layer EVA tower, a 2-layer Q-Former of width 32 with 4 queries and cross-attention every
    `cross_attention_frequency`-th layer, and a language model of width 64: text "opt" (decoder only) or
    "t5" (Flan-T5's layout: gated GELU, 8 relative-position buckets). tie: the LM head shares the token
    embedding; None keeps each family's own (OPT tied, Flan-T5 untied). Token ids: 127 the image
    placeholder; OPT 1 pad, 2 bos and eos (OPT's own); T5 0 pad (and decoder start), 1 eos."""
    if text == "opt":
        lm = dict(model_type="opt", hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=128, word_embed_proj_dim=64, max_position_embeddings=128, pad_token_id=1,
                  bos_token_id=2, eos_token_id=2, tie_word_embeddings=True if tie is None else tie)
    elif text == "t5":
        lm = dict(model_type="t5", d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, vocab_size=128,
                  feed_forward_proj="gated-gelu", tie_word_embeddings=bool(tie),
                  relative_attention_num_buckets=8, relative_attention_max_distance=16, pad_token_id=0,
                  eos_token_id=1, decoder_start_token_id=0)
    else:
        raise ValueError(f"blip2: text must be 'opt' or 't5', got {text!r}")
    qformer = dict(model_type="blip_2_qformer", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                   num_attention_heads=4, cross_attention_frequency=cross_attention_frequency,
                   encoder_hidden_size=32)
    return dict(model_type="blip-2", vision_config=_vision("blip_2_vision_model"), qformer_config=qformer,
                text_config=lm, num_query_tokens=4, image_token_index=127)


def kosmos2(tie=True) -> dict:
    """Kosmos-2: a 2-layer CLIP tower, 4 latent queries, a 2-layer sub-LN decoder of width 64 (64 positions).
    tie: the LM head shares the token embedding. Token ids: 0 <s>, 1 pad, 2 </s> (Kosmos-2's own); the
    tests' and the demo's prompts put <image> at 126, </image> at 127 and the image positions at 100..103."""
    text = dict(model_type="kosmos_2_text_model", embed_dim=64, layers=2, attention_heads=4, ffn_dim=128,
                vocab_size=128, max_position_embeddings=64, pad_token_id=1, bos_token_id=0, eos_token_id=2)
    d = dict(model_type="kosmos-2", vision_config=_vision("kosmos_2_vision_model"), text_config=text,
             latent_query_num=4)
    if not tie:
        text["tie_word_embeddings"] = d["tie_word_embeddings"] = False
    return d


def idefics(use_resampler=True, qk_layer_norms=True, alpha_type="vector", qk_perceiver=True, tie=False,
            additional_vocab_size=2) -> dict:
    """IDEFICS: a 2-layer vision tower (17 tokens per image), a Perceiver resampler of 4 latents (depth 1),
    a 4-layer Llama decoder of width 64 with a gated cross-attention block before layers 0 and 2, a
    128-token vocabulary and `additional_vocab_size` more ids after it (128 <fake_token_around_image>,
    129 <image>, where idefics-9b's tokenizer puts them after its base vocabulary). alpha_initializer
    "ones": the gates start open. Token ids: 0 pad, 1 bos, 2 eos."""
    vision = dict(model_type="idefics_vision", embed_dim=32, image_size=IMAGE_SIZE, patch_size=PATCH_SIZE,
                  num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
    perceiver = dict(model_type="idefics_perciever", resampler_n_latents=4, resampler_depth=1,
                     resampler_n_heads=2, resampler_head_dim=8, qk_layer_norms_perceiver=qk_perceiver)
    return dict(model_type="idefics", vocab_size=128, additional_vocab_size=additional_vocab_size,
                hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                cross_layer_interval=2, use_resampler=use_resampler, qk_layer_norms=qk_layer_norms,
                alpha_type=alpha_type, alpha_initializer="ones", tie_word_embeddings=tie, pad_token_id=0,
                bos_token_id=1, eos_token_id=2, vision_config=vision, perceiver_config=perceiver)


def altclip() -> dict:
    """AltCLIP: a 2-layer CLIP tower; a 2-layer XLM-R of width 32 (MLP 64, 64 positions) with project_dim 24,
    unlike its width, so that a swapped projection cannot pass; a shared embedding width of 16. Token ids
    are XLM-R's: 0 <s>, 1 <pad>, 2 </s>."""
    text = dict(model_type="altclip_text_model", hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                intermediate_size=64, vocab_size=128, max_position_embeddings=64, project_dim=24, pad_token_id=1,
                bos_token_id=0, eos_token_id=2)
    return dict(model_type="altclip", text_config=text, vision_config=_vision("altclip_vision_model"),
                projection_dim=16)


# -- the language models on their own -------------------------------------------------------------------

def llama(model_type="llama", **fields) -> dict:
    """A Llama (model_type "llama") or Mistral ("mistral") decoder: width 64, 2 layers of 4 heads, MLP 96, a
    97-token vocabulary, 256 positions; `fields` adds or replaces config fields (num_key_value_heads,
    sliding_window, rope_parameters, tie_word_embeddings, token ids, ...)."""
    if model_type not in ("llama", "mistral"):
        raise ValueError(f"llama: model_type must be 'llama' or 'mistral', got {model_type!r}")
    return dict(dict(model_type=model_type, vocab_size=97, hidden_size=64, intermediate_size=96,
                     num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=256), **fields)


def opt(**fields) -> dict:
    """An OPT decoder: width 64, 2 layers of 4 heads, FFN 128, a 128-token vocabulary, 128 positions; `fields`
    adds or replaces config fields (do_layer_norm_before, word_embed_proj_dim, enable_bias, ...)."""
    return dict(dict(model_type="opt", vocab_size=128, hidden_size=64, num_hidden_layers=2, ffn_dim=128,
                     num_attention_heads=4, max_position_embeddings=128), **fields)


def t5(feed_forward_proj="gated-gelu", tie=False) -> dict:
    """A T5 encoder-decoder: d_model 64, 4 heads of 16, d_ff 128, 2 + 2 blocks, a 128-token vocabulary, 32
    relative-position buckets up to distance 20 (so ~40-token sequences use the log-spaced buckets).
    Flan-T5's layout is feed_forward_proj "gated-gelu", tie False; T5 v1.0's "relu", True."""
    return dict(model_type="t5", vocab_size=128, d_model=64, d_kv=16, num_heads=4, d_ff=128, num_layers=2,
                relative_attention_num_buckets=32, relative_attention_max_distance=20,
                feed_forward_proj=feed_forward_proj, tie_word_embeddings=tie, decoder_start_token_id=0)


# Every function above, by name.
FAMILIES = {"llava_next": llava_next, "blip2": blip2, "kosmos2": kosmos2, "idefics": idefics, "altclip": altclip,
            "llama": llama, "opt": opt, "t5": t5}
