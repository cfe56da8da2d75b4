"""AltCLIP: CLIP's image tower with its text tower swapped for a multilingual XLM-R, scored contrastively.

Papers: Chen et al. 2022, "AltCLIP: Altering the Language Encoder in CLIP for Extended Language
Capabilities"; Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP: the vision tower, imported from clip.py, and the contrastive head); Conneau et al. 2020 (XLM-R: the
text tower, imported from xlm_roberta.py). Reference implementation: Transformers'
`models/altclip/modeling_altclip.py` (AltCLIPModel), whose outputs the tests match and whose parameter
names this module mirrors (vision_model.*, text_model.roberta.*, text_model.pre_LN, text_model.transformation,
visual_projection, text_projection, logit_scale).

Shape letters (docs/notation.md): the two towers run on two batches, B_t texts and B_v images (B, with
the suffixes of E_t and E_v), and only the contrastive scoring pairs them: its logits are (B_t, B_v). E_t and
E_v are the towers' widths, E_proj (projection_dim) the width of the shared image-text space; C, R are the
image's channels and side, T the tokens of a text.

The data flow (BAAI/AltCLIP: ViT-L/14 at 224 px, XLM-R large, E_v=1024, E_t=1024, project_dim=768,
E_proj=768):

    image: pixel_values (B_v, C, R, R) --CLIP ViT--> pooled = post_layernorm(class token)  (B_v, E_v)
           image_embeds = visual_projection(pooled)                 (no bias)              (B_v, E_proj)
    text:  input_ids (B_t, T) --XLM-R--> last hidden state                                  (B_t, T, E_t)
           pre_LN, then transformation (E_t -> project_dim, with bias), on every token     (B_t, T, project_dim)
           token 0 (<s>; no tanh pooler) --text_projection (no bias)--> text_embeds      (B_t, E_proj)
    both embeddings L2-normalised;
    logits_per_text = exp(logit_scale) * text_embeds @ image_embeds^T                       (B_t, B_v)
    logits_per_image = logits_per_text^T                                                    (B_v, B_t)
    loss = (CE(logits_per_text, diag) + CE(logits_per_image, diag)) / 2                     (B_t == B_v pairs)

Zero-shot classification ranks B_t candidate labels ("a photo of a {}") for each image by the softmax of
logits_per_image over the labels (`zero_shot`); `tokenize_labels` turns label strings into input_ids with a
checkpoint's tokenizer.json. Images come from minivlm.processing.CLIPImageProcessor (224 px crop, OpenAI
CLIP mean and std for BAAI/AltCLIP).

Checkpoint key spellings (all load): Transformers holds both towers' layers under `encoder.layers.N` in
memory but its save_pretrained writes `encoder.layer.N` for both (conversion_mapping reverses its load-time
rename `layer.` -> `layers.`); the hub's BAAI/AltCLIP files have RoBERTa's `text_model.roberta.encoder.layer.N`
and CLIP's `vision_model.encoder.layers.N`. This module uses each tower's own checkpoint name (clip.py's
`layers`, xlm_roberta.py's `layer`) and renames the other spelling.

What differs from Transformers (same numbers, less machinery): attention is minivlm.ops.attention; the text
tower and projections return tensors instead of ModelOutputs (get_*_features give the (B, E_proj) tensor that
Transformers wraps as `pooler_output`); no dropout, no interpolate_pos_encoding, no token_type_ids or
position_ids arguments (every token is type 0, positions come from input_ids as RoBERTa numbers them).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from .._checks import rejects_unknown_kwargs
from .base import Model
from ._config import known_fields, positive_ints, to_transformers_dict

# The settings of Transformers' AltCLIP configs that minivlm does not use, at their defaults.
TEXT_DEFAULTS = dict(attention_probs_dropout_prob=0, bos_token_id=0, eos_token_id=2, hidden_dropout_prob=0.1,
                     initializer_factor=0.02, initializer_range=0.02)
TRANSFORMERS_DEFAULTS = dict(initializer_factor=1.0)
from .clip import CLIPVisionConfig, CLIPVisionModel, CLIPVisionOutput
from .xlm_roberta import XLMRobertaConfig, XLMRobertaModel


@dataclass
class AltCLIPTextConfig(XLMRobertaConfig):
    """AltCLIP's text tower ("text_config"): an XLM-R encoder plus the projection to project_dim. Defaults
    are Transformers' AltCLIPTextConfig (XLM-R large), not XLMRobertaConfig's."""
    vocab_size: int = 250002              # XLM-R's SentencePiece vocabulary
    hidden_size: int = 1024
    num_hidden_layers: int = 24
    num_attention_heads: int = 16
    intermediate_size: int = 4096
    hidden_act: str = "gelu"
    max_position_embeddings: int = 514    # 512 tokens + the pad row + fairseq's unused row 0
    type_vocab_size: int = 1              # a single token type
    layer_norm_eps: float = 1e-5          # of every LayerNorm, pre_LN included (not BERT's 1e-12)
    pad_token_id: int = 1
    project_dim: int = 768                # width of `transformation`, the text vector before text_projection

    def validate(self):
        super().validate()
        positive_ints(self, "project_dim")

    def to_dict(self) -> dict:
        """The text_config dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "altclip_text_model", TEXT_DEFAULTS)


@dataclass
class AltCLIPConfig:
    """An AltCLIP config.json (model_type "altclip"); omitted fields get Transformers' defaults (the
    vision defaults, ViT-B/32 at 224 px, are also CLIPVisionConfig's)."""
    text_config: AltCLIPTextConfig = field(default_factory=AltCLIPTextConfig)
    vision_config: CLIPVisionConfig = field(default_factory=CLIPVisionConfig)
    projection_dim: int = 768              # E_proj, the shared image-text embedding width
    logit_scale_init_value: float = 2.6592  # log(1 / 0.07), the initial temperature; a checkpoint's logit_scale wins
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "AltCLIPConfig":
        """Read a config.json dict (with the older files' text_config_dict / vision_config_dict: see
        _read_config)."""
        return _read_config(cls, d)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "altclip", TRANSFORMERS_DEFAULTS,
                                    vision_config=self.vision_config.to_dict("altclip_vision_model"))

    def validate(self):
        _validate_config(self)


@dataclass
class AltCLIPTextOutput:
    """last_hidden_state (B_t, T, project_dim): transformation(pre_LN(XLM-R output)) at every token;
    pooler_output (B_t, project_dim): its token 0."""
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


@dataclass
class AltCLIPOutput:
    """What AltCLIPModel.forward returns. logits_per_image (B_v, B_t) and logits_per_text (B_t, B_v): scaled
    cosine similarities; text_embeds (B_t, E_proj) and image_embeds (B_v, E_proj): L2-normalised; loss: the
    symmetric contrastive loss when return_loss; text_model_output / vision_model_output: the towers' outputs
    before projection."""
    logits_per_image: torch.Tensor
    logits_per_text: torch.Tensor
    text_embeds: torch.Tensor
    image_embeds: torch.Tensor
    loss: Optional[torch.Tensor] = None
    text_model_output: Optional[AltCLIPTextOutput] = None
    vision_model_output: Optional[CLIPVisionOutput] = None


class AltCLIPTextModel(nn.Module):
    """XLM-R, then pre_LN and `transformation` on every token; the summary is token 0 (<s>)."""

    def __init__(self, config: AltCLIPTextConfig):
        super().__init__()
        self.roberta = XLMRobertaModel(config)
        self.pre_LN = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)   # sic: the checkpoints' name
        self.transformation = nn.Linear(config.hidden_size, config.project_dim)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> AltCLIPTextOutput:
        x = self.roberta(input_ids, attention_mask)            # (B_t, T, E_t)
        x = self.transformation(self.pre_LN(x))                # (B_t, T, project_dim)
        return AltCLIPTextOutput(last_hidden_state=x, pooler_output=x[:, 0])


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    """x / ||x|| along the last dimension (Transformers writes the norm as sqrt(sum x^2); so does this)."""
    return x / x.pow(2).sum(dim=-1, keepdim=True).sqrt()


def contrastive_loss(logits_per_text: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric loss: pair i is the right answer for row i, both ways (texts->images, images->texts)."""
    target = torch.arange(logits_per_text.shape[0], device=logits_per_text.device)
    return (F.cross_entropy(logits_per_text, target) + F.cross_entropy(logits_per_text.t(), target)) / 2


class AltCLIPModel(Model):
    config_class = AltCLIPConfig
    # One spelling per tower in the model (see the module docstring); the other is renamed to it.
    checkpoint_renames = [
        (r"^(vision_model\.encoder\.)layer\.(\d+)\.", r"\1layers.\2."),          # Transformers' save_pretrained
        (r"^(text_model\.roberta\.encoder\.)layers\.(\d+)\.", r"\1layer.\2."),   # Transformers' in-memory state dict
    ]
    # Transformers' save_pretrained spells the vision layers `layer` (the inverse of the first rename).
    save_renames = [(r"^(vision_model\.encoder\.)layers\.(\d+)\.", r"\1layer.\2.")]
    # RoBERTa's all-zero token-type buffer, which some Transformers versions saved; not a weight.
    checkpoint_ignore = [r"(^|\.)embeddings\.token_type_ids$"]

    def __init__(self, config: AltCLIPConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.text_model = AltCLIPTextModel(config.text_config)
        self.vision_model = CLIPVisionModel(config.vision_config)
        self.visual_projection = nn.Linear(config.vision_config.hidden_size, config.projection_dim, bias=False)
        self.text_projection = nn.Linear(config.text_config.project_dim, config.projection_dim, bias=False)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))

    def get_text_features(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None
                          ) -> torch.Tensor:
        """The projected (not normalised) text embeddings (B_t, E_proj) of input_ids (B_t, T); attention_mask
        (B_t, T) is 1 at real tokens, 0 at pads (None: every token is attended to, as in Transformers)."""
        return self.text_projection(self.text_model(input_ids, attention_mask).pooler_output)

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """The projected (not normalised) image embeddings (B_v, E_proj) of pixel_values (B_v, C, R, R)."""
        return self.visual_projection(self.vision_model(pixel_values).pooler_output)

    @rejects_unknown_kwargs
    def forward(self, input_ids: torch.Tensor, pixel_values: torch.Tensor,
                attention_mask: Optional[torch.Tensor] = None, return_loss: bool = False) -> AltCLIPOutput:
        """Score B_t texts against B_v images. input_ids (B_t, T), pixel_values (B_v, C, R, R), attention_mask
        (B_t, T) or None. return_loss needs B_t == B_v (text i belongs with image i)."""
        _check_inputs(input_ids, pixel_values, return_loss)
        vision = self.vision_model(pixel_values)
        text = self.text_model(input_ids, attention_mask)
        image_embeds = l2_normalize(self.visual_projection(vision.pooler_output))   # (B_v, E_proj)
        text_embeds = l2_normalize(self.text_projection(text.pooler_output))        # (B_t, E_proj)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()  # (B_t, B_v)
        logits_per_image = logits_per_text.t()                                      # (B_v, B_t)
        return AltCLIPOutput(logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                             text_embeds=text_embeds, image_embeds=image_embeds,
                             loss=contrastive_loss(logits_per_text) if return_loss else None,
                             text_model_output=text, vision_model_output=vision)

    @torch.no_grad()
    def zero_shot(self, pixel_values: torch.Tensor, label_ids: torch.Tensor,
                  label_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Zero-shot classification: the probability of each of B_t candidate labels for each of B_v images,
        (B_v, B_t), rows summing to 1; rank with .argsort(dim=-1, descending=True). label_ids/label_mask are
        the tokenized prompts (tokenize_labels), pixel_values (B_v, C, R, R) the processed images."""
        return self(label_ids, pixel_values, attention_mask=label_mask).logits_per_image.softmax(dim=-1)


def tokenize_labels(tokenizer, labels, template: str = "a photo of a {}", *, pad_id: Optional[int] = None,
                    max_length: Optional[int] = None):
    """Tokenize candidate labels, each put into `template` first, with the checkpoint's tokenizer and its
    special tokens (<s> ... </s> for XLM-R): a thin use of minivlm.processing.Tokenizer.

    tokenizer: a minivlm.processing.Tokenizer, a checkpoint folder, or the path of its tokenizer.json.
    Returns (input_ids, attention_mask), both int64 (B_t, T), right-padded to the longest prompt with pad_id
    (default: the tokenizer's pad token, else the id of "<pad>"). max_length
    truncates longer prompts (the special tokens kept).
    """
    from ..processing.tokenizer import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        path = tokenizer
        if not isinstance(path, (str, os.PathLike)) or not os.path.exists(path):
            raise FileNotFoundError(f"tokenize_labels: tokenizer must be a Tokenizer, a checkpoint folder or the "
                                    f"path of a tokenizer.json file, got {path!r}")
        tokenizer = Tokenizer.from_pretrained(path if os.path.isdir(path) else os.path.dirname(os.fspath(path)) or ".")
    if isinstance(labels, str):
        labels = [labels]
    if not isinstance(labels, (list, tuple)) or not labels or not all(isinstance(s, str) for s in labels):
        raise TypeError(f"tokenize_labels: labels must be a non-empty list of strings, got {labels!r}")
    if not isinstance(template, str) or "{}" not in template:
        raise ValueError(f"tokenize_labels: template must be a string with one '{{}}' for the label, "
                         f"got {template!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1):
        raise ValueError(f"tokenize_labels: max_length must be a positive int or None, got {max_length!r}")
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token is not None else tokenizer.backend.token_to_id("<pad>")
        if pad_id is None:
            raise ValueError("tokenize_labels: the tokenizer has no pad token and no '<pad>'; pass pad_id")
    rows = tokenizer([template.format(s) for s in labels], truncation=max_length is not None,
                     max_length=max_length)["input_ids"]
    T = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        attention_mask[i, :len(r)] = 1
    return input_ids, attention_mask


# -- reading and checking the config, checking the inputs ----------------------------------------------

def _read_config(cls, d: dict) -> AltCLIPConfig:
    """The config of a config.json dict. Older files (BAAI/AltCLIP's) may also carry `text_config_dict` and
    `vision_config_dict`; as in Transformers, their values override those of text_config / vision_config."""
    top = known_fields(cls, d, aliases=("text_config_dict", "vision_config_dict"))
    subs = {}
    for name in ("text_config", "vision_config"):
        sub, override = d.get(name) or {}, d.get(f"{name}_dict") or {}
        for value, key in ((sub, name), (override, f"{name}_dict")):
            if not isinstance(value, dict):
                raise ValueError(f"AltCLIPConfig: {key} must be a dict, got {type(value).__name__}")
        subs[name] = {**sub, **override}
    config = cls(text_config=AltCLIPTextConfig.from_dict(subs["text_config"]),
                 vision_config=CLIPVisionConfig.from_dict(subs["vision_config"]),
                 **{k: v for k, v in top.items() if k not in subs})
    config.validate()
    return config


def _validate_config(c: AltCLIPConfig):
    c.text_config.validate()
    c.vision_config.validate()
    positive_ints(c, "projection_dim")
    s = c.logit_scale_init_value
    if isinstance(s, bool) or not isinstance(s, (int, float)):
        raise ValueError(f"AltCLIPConfig: logit_scale_init_value must be a number, got {s!r}")


def _check_inputs(input_ids, pixel_values, return_loss):
    """return_loss is a bool, and with it the two batches pair up; the towers check their own inputs."""
    if not isinstance(return_loss, bool):
        raise TypeError(f"return_loss: expected a bool, got {type(return_loss).__name__}")
    if return_loss and isinstance(input_ids, torch.Tensor) and isinstance(pixel_values, torch.Tensor) \
            and input_ids.shape[:1] != pixel_values.shape[:1]:
        raise ValueError(f"return_loss: the contrastive loss pairs text i with image i, so input_ids and "
                         f"pixel_values need the same batch size; got {input_ids.shape[0]} texts and "
                         f"{pixel_values.shape[0]} images")


__all__ = ["AltCLIPConfig", "AltCLIPTextConfig", "AltCLIPModel", "AltCLIPOutput", "tokenize_labels",
           "contrastive_loss", "l2_normalize"]
