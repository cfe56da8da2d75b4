"""The stage map of each architecture: the modules whose outputs `minivlm parity` compares, in the order
the forward pass runs them, each named on both sides (minivlm's module path, Transformers' module path).

A stage is the output of one module (its first tensor, see `compare.first_tensor`), caught with a
forward hook; nothing in the models changes. `stages(config)` reads a config.json dict and returns the
list for its model_type, with one stage per layer of every tower. The towers are shared: the LLaVA-NeXT
map is the CLIP vision map under `vision_tower`, the Llama map under `language_model.model`, and so on.

Adding a model (docs/adding_a_model.md) means adding its list here: the module names are those of
`model.named_modules()` on each side.
"""
from __future__ import annotations

from typing import NamedTuple


class Stage(NamedTuple):
    name: str      # what the row says, e.g. "vision layer 3"
    ours: str      # the module's path in the minivlm model
    theirs: str    # the module's path in the Transformers model
    text: bool = True   # its rows are the prompt's positions (compared where the attention mask is 1);
                        # False for the image side (the tower, the projector, the queries)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def vision_tower(config: dict, ours: str, theirs: str, *, pre_norm: bool = True, post_norm: bool = True,
                 layers: int | None = None, label: str = "vision") -> list:
    """A ViT (CLIP's, EVA's, IDEFICS's): the patch + position embeddings, the pre-LayerNorm (CLIP only),
    the first `layers` encoder layers (default all), the post-LayerNorm. `config`: the vision config dict."""
    s = [Stage(f"{label} embeddings", _join(ours, "embeddings"), _join(theirs, "embeddings"), False)]
    if pre_norm:
        s.append(Stage(f"{label} pre-norm", _join(ours, "pre_layrnorm"), _join(theirs, "pre_layrnorm"), False))
    for i in range(config["num_hidden_layers"] if layers is None else layers):
        s.append(Stage(f"{label} layer {i}", _join(ours, f"encoder.layers.{i}"), _join(theirs, f"encoder.layers.{i}"),
                       False))
    if post_norm:
        s.append(Stage(f"{label} post-norm", _join(ours, "post_layernorm"), _join(theirs, "post_layernorm"), False))
    return s


def llama_decoder(config: dict, ours: str, theirs: str, cross: dict | None = None) -> list:
    """A Llama/Mistral decoder: token embedding, every layer, the final RMSNorm (the LM head's output is
    the model's logits, compared as an output). cross: {layer index: (our path, their path)} of gated
    cross-attention blocks run before that layer (IDEFICS)."""
    s = [Stage("token embedding", _join(ours, "embed_tokens"), _join(theirs, "embed_tokens"))]
    for i in range(config["num_hidden_layers"]):
        if cross and i in cross:
            s.append(Stage(f"gated cross-attention before layer {i}", *cross[i]))
        s.append(Stage(f"decoder layer {i}", _join(ours, f"layers.{i}"), _join(theirs, f"layers.{i}")))
    return s + [Stage("final norm", _join(ours, "norm"), _join(theirs, "norm"))]


def opt_decoder(config: dict, prefix: str) -> list:
    """An OPT decoder under `prefix` (the same path on both sides): embeddings, layers, final LayerNorm
    (where the layers normalise first; OPT-350m's post-norm layers have none)."""
    d = _join(prefix, "model.decoder")
    s = [Stage("token embedding", f"{d}.embed_tokens", f"{d}.embed_tokens"),
         Stage("position embedding", f"{d}.embed_positions", f"{d}.embed_positions")]
    s += [Stage(f"decoder layer {i}", f"{d}.layers.{i}", f"{d}.layers.{i}") for i in range(config["num_hidden_layers"])]
    if config.get("do_layer_norm_before", True):
        s.append(Stage("final norm", f"{d}.final_layer_norm", f"{d}.final_layer_norm"))
    return s


def t5(config: dict, prefix: str) -> list:
    """A T5 encoder-decoder under `prefix` (the same path on both sides): every encoder block, the
    encoder's final norm, every decoder block, the decoder's final norm."""
    p = lambda name: _join(prefix, name)   # noqa: E731
    n_enc = config["num_layers"]
    n_dec = config.get("num_decoder_layers") or n_enc
    s = [Stage("token embedding", p("encoder.embed_tokens"), p("encoder.embed_tokens"))]
    s += [Stage(f"encoder block {i}", p(f"encoder.block.{i}"), p(f"encoder.block.{i}")) for i in range(n_enc)]
    s.append(Stage("encoder final norm", p("encoder.final_layer_norm"), p("encoder.final_layer_norm")))
    s += [Stage(f"decoder block {i}", p(f"decoder.block.{i}"), p(f"decoder.block.{i}")) for i in range(n_dec)]
    return s + [Stage("decoder final norm", p("decoder.final_layer_norm"), p("decoder.final_layer_norm"))]


def _language_model(text: dict, prefix: str) -> list:
    if text["model_type"] == "opt":
        return opt_decoder(text, prefix)
    if text["model_type"] == "t5":
        return t5(text, prefix)
    raise ValueError(f"parity: no stage map for a {text['model_type']!r} language model here")


def llava_next(c: dict) -> list:
    """LLaVA-NeXT reads the tower's hidden state(s) vision_feature_layer (hidden state 0: the embeddings
    after the pre-norm, k: layer k-1's output); the layers after the last one read, and the post-norm,
    do not reach the output (Transformers runs them, minivlm stops), so they are not stages."""
    v, t = c["vision_config"], c["text_config"]
    n = v["num_hidden_layers"]
    wanted = c.get("vision_feature_layer", -2)
    wanted = [wanted] if isinstance(wanted, int) else wanted
    used = max(k if k >= 0 else n + 1 + k for k in wanted)
    return (vision_tower(v, "vision_tower", "model.vision_tower", post_norm=False, layers=used)
            + [Stage("projector", "multi_modal_projector", "model.multi_modal_projector", False)]
            + llama_decoder(t, "language_model.model", "model.language_model"))


def blip2(c: dict) -> list:
    q = c["qformer_config"]
    s = vision_tower(c["vision_config"], "vision_model", "vision_model", pre_norm=False)
    s.append(Stage("Q-Former query norm", "qformer.layernorm", "qformer.layernorm", False))
    s += [Stage(f"Q-Former layer {i}", f"qformer.encoder.layer.{i}", f"qformer.encoder.layer.{i}", False)
          for i in range(q["num_hidden_layers"])]
    s.append(Stage("language projection", "language_projection", "language_projection", False))
    return s + _language_model(c["text_config"], "language_model")


def kosmos2(c: dict) -> list:
    t = c["text_config"]
    s = vision_tower(c["vision_config"], "vision_model.model", "vision_model.model")
    s.append(Stage("latent queries (image-to-text projection)", "image_to_text_projection", "image_to_text_projection",
                   False))
    s.append(Stage("token embedding", "text_model.model.embed_tokens", "text_model.model.embed_tokens"))
    s += [Stage(f"decoder layer {i}", f"text_model.model.layers.{i}", f"text_model.model.layers.{i}")
          for i in range(t["layers"])]
    return s + [Stage("final norm", "text_model.model.layer_norm", "text_model.model.layer_norm")]


def idefics(c: dict) -> list:
    s = vision_tower(c["vision_config"], "model.vision_model", "model.vision_model")
    if c.get("use_resampler", False):
        depth = c.get("perceiver_config", {}).get("resampler_depth", 6)
        for i in range(depth):
            s += [Stage(f"resampler block {i} attention", f"model.perceiver_resampler.blocks.{i}.0",
                        f"model.perceiver_resampler.blocks.{i}.0", False),
                  Stage(f"resampler block {i} MLP", f"model.perceiver_resampler.blocks.{i}.1",
                        f"model.perceiver_resampler.blocks.{i}.1", False)]
        s.append(Stage("resampler norm (the latents)", "model.perceiver_resampler.layer_norm",
                       "model.perceiver_resampler.layer_norm", False))
    interval = c.get("cross_layer_interval", 1)
    cross = {j * interval: (f"model.gated_cross_attn_layers.{j}",) * 2
             for j in range(c["num_hidden_layers"] // interval)}
    return s + llama_decoder(c, "model", "model", cross=cross)


def altclip(c: dict) -> list:
    t = c["text_config"]
    s = vision_tower(c["vision_config"], "vision_model", "vision_model")
    s.append(Stage("visual projection", "visual_projection", "visual_projection", False))
    s.append(Stage("text embeddings", "text_model.roberta.embeddings", "text_model.roberta.embeddings"))
    s += [Stage(f"text layer {i}", f"text_model.roberta.encoder.layer.{i}", f"text_model.roberta.encoder.layers.{i}")
          for i in range(t["num_hidden_layers"])]
    return s + [Stage("text pre-LN", "text_model.pre_LN", "text_model.pre_LN"),
                Stage("text transformation", "text_model.transformation", "text_model.transformation"),
                Stage("text projection", "text_projection", "text_projection")]


def clip_vision(c: dict) -> list:
    return vision_tower(c, "", "")


def llama(c: dict) -> list:
    return llama_decoder(c, "model", "model")


#: model_type -> the function that lists its stages from its config.json dict
STAGE_MAPS = {"llava_next": llava_next, "blip-2": blip2, "kosmos-2": kosmos2, "idefics": idefics,
              "altclip": altclip, "clip_vision_model": clip_vision, "llama": llama, "mistral": llama,
              "opt": lambda c: opt_decoder(c, ""), "t5": lambda c: t5(c, "")}


def stages(config: dict) -> list:
    """The stages of the model a config.json dict describes."""
    model_type = config.get("model_type")
    if model_type not in STAGE_MAPS:
        raise ValueError(f"parity: config.json has model_type {model_type!r}; minivlm parity knows "
                         f"{', '.join(STAGE_MAPS)}")
    return STAGE_MAPS[model_type](config)
