"""The XLM-RoBERTa text encoder: a bidirectional post-LN BERT over SentencePiece tokens.

Papers: Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers for Language
Understanding" (the post-LN encoder layer); Liu et al. 2019, "RoBERTa: A Robustly Optimized BERT
Pretraining Approach" (positions numbered from the padding id, fairseq's convention); Conneau et al. 2020,
"Unsupervised Cross-lingual Representation Learning at Scale" (XLM-R: the same network, a 250k multilingual
vocabulary). Reference implementation: Transformers' `models/xlm_roberta/modeling_xlm_roberta.py`
and the copy of it inside `models/altclip/modeling_altclip.py` (AltRobertaModel), whose parameter names
this module mirrors (embeddings.*, encoder.layer.N.attention.self.query, ...).

    input_ids (B, T) --word + token type + position embeddings, LayerNorm--> (B, T, E)
    num_hidden_layers post-LN layers:
        a = LayerNorm(x + dense(attention(x)))        # every token sees every real (unpadded) token
        x = LayerNorm(a + dense(gelu(dense(a))))
    last_hidden_state (B, T, E)

Shape letters (docs/notation.md): B texts, T tokens, E the hidden width, H heads of width D = E / H, F the
MLP's middle width, V the vocabulary.

Positions are fairseq's: a real token's position is its rank among the row's real tokens plus
pad_token_id, i.e. cumsum(is_real) * is_real + pad, where is_real = (input_ids != pad_token_id). With
pad = 1 the first real token reads row 2 of the table and every pad reads row 1, whichever side the padding
is on. As in Transformers, the pads are found from input_ids, and attention_mask only hides keys.

This is an architecture of its own, not CLIP's text tower: CLIP's is pre-LN and causal with the EOS token
as the summary; BERT/RoBERTa is post-LN and bidirectional, numbers positions from the pad id and adds a
token-type embedding. AltCLIP (altclip.py) uses it without BERT's tanh pooler, which is therefore not
implemented here.

What differs from Transformers (same numbers, less machinery): attention is minivlm.ops.attention with a
boolean key mask (Transformers builds an additive or boolean 4-D mask with create_bidirectional_mask);
dropout, the decoder/cross-attention variants and the relative position types are not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .. import ops
from .._checks import check_token_ids
from .base import Model
from ._common import activation
from ._config import divides, in_vocab, known_fields, positive_ints, positive_numbers, to_transformers_dict

# The settings of Transformers' XLMRobertaConfig that minivlm does not use, at their defaults.
TRANSFORMERS_DEFAULTS = dict(add_cross_attention=False, attention_probs_dropout_prob=0.1, bos_token_id=0,
                             classifier_dropout=None, eos_token_id=2, hidden_dropout_prob=0.1, initializer_range=0.02,
                             is_decoder=False, tie_word_embeddings=True, use_cache=True)


@dataclass
class XLMRobertaConfig:
    """An XLM-R encoder's settings; defaults are Transformers' XLMRobertaConfig."""
    vocab_size: int = 30522               # V, rows of the word embedding table
    hidden_size: int = 768                # E, the width of every token vector
    num_hidden_layers: int = 12           # encoder layers
    num_attention_heads: int = 12         # H; head width D = E / H
    intermediate_size: int = 3072         # F, the middle width of each layer's MLP
    hidden_act: str = "gelu"              # MLP activation (exact, erf-based GELU)
    max_position_embeddings: int = 512    # rows of the position table; the last usable position is this - 1
    type_vocab_size: int = 2              # rows of the token-type table (segment A/B); every token here is type 0
    layer_norm_eps: float = 1e-12         # epsilon of every LayerNorm
    pad_token_id: int = 1                 # the padding id; positions are numbered from pad_token_id + 1
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a config dict; unknown keys are ignored, missing ones get the defaults above."""
        return _read_config(cls, d)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes (model_type "xlm-roberta"); from_dict reads it back."""
        return to_transformers_dict(self, "xlm-roberta", TRANSFORMERS_DEFAULTS)

    def validate(self):
        _validate_config(self)

    @property
    def max_length(self) -> int:
        """The longest sequence the position table can number: positions run up to T + pad_token_id."""
        return self.max_position_embeddings - self.pad_token_id - 1


def position_ids_from_input_ids(input_ids: torch.Tensor, pad_token_id: int) -> torch.Tensor:
    """fairseq/RoBERTa positions: real tokens count up from pad_token_id + 1, pads get pad_token_id."""
    is_real = (input_ids != pad_token_id).long()          # (B, T)
    return torch.cumsum(is_real, dim=1) * is_real + pad_token_id


class XLMRobertaEmbeddings(nn.Module):
    """LayerNorm(word + token type + position); names as in the checkpoints (LayerNorm capitalised)."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        E = config.hidden_size
        self.pad_token_id = config.pad_token_id
        self.word_embeddings = nn.Embedding(config.vocab_size, E)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, E)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, E)
        self.LayerNorm = nn.LayerNorm(E, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        positions = position_ids_from_input_ids(input_ids, self.pad_token_id)   # (B, T)
        x = self.word_embeddings(input_ids)                                      # (B, T, E)
        if token_type_ids is None:   # every token is segment 0: add that one row
            x = x + self.token_type_embeddings.weight[0]
        else:
            x = x + self.token_type_embeddings(token_type_ids)
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class XLMRobertaSelfAttention(nn.Module):
    """The q/k/v projections of BERT's attention (the output projection lives in XLMRobertaSelfOutput)."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        E = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = E // self.num_heads
        self.query = nn.Linear(E, E)
        self.key = nn.Linear(E, E)
        self.value = nn.Linear(E, E)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.query(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        k = self.key(x).view(B, T, H, D).transpose(1, 2)          # (B, H, T, D)
        v = self.value(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        # softmax(q k^T / sqrt(D) over the real keys) v; the naive math is minivlm.reference.attention.
        y = ops.attention(q, k, v, key_mask)                      # (B, H, T, D)
        return y.transpose(1, 2).reshape(B, T, E)                 # (B, T, E)


class XLMRobertaSelfOutput(nn.Module):
    """Output projection, then the post-LN residual: LayerNorm(x + dense(y))."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, y: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(y))


class XLMRobertaAttention(nn.Module):
    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.self = XLMRobertaSelfAttention(config)      # sic: the checkpoints' name
        self.output = XLMRobertaSelfOutput(config)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        return self.output(self.self(x, key_mask), x)


class XLMRobertaIntermediate(nn.Module):
    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))                   # (B, T, F)


class XLMRobertaOutput(nn.Module):
    """The MLP's down projection and the second post-LN residual."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, h: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(h))  # (B, T, E)


class XLMRobertaLayer(nn.Module):
    """Post-LN layer: a = LN(x + attn(x)), then LN(a + mlp(a))."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.attention = XLMRobertaAttention(config)
        self.intermediate = XLMRobertaIntermediate(config)
        self.output = XLMRobertaOutput(config)

    def forward(self, x: torch.Tensor, key_mask: Optional[torch.Tensor]) -> torch.Tensor:
        a = self.attention(x, key_mask)
        return self.output(self.intermediate(a), a)


class XLMRobertaEncoder(nn.Module):
    """Only a holder of the layers, so that parameter names read encoder.layer.N.* as in checkpoints."""

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        self.layer = nn.ModuleList(XLMRobertaLayer(config) for _ in range(config.num_hidden_layers))


class XLMRobertaModel(Model):
    """Embeddings and encoder, no pooler: forward returns the last hidden state (B, T, E)."""
    config_class = XLMRobertaConfig

    def __init__(self, config: XLMRobertaConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = XLMRobertaEmbeddings(config)
        self.encoder = XLMRobertaEncoder(config)

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """input_ids (B, T) int; attention_mask (B, T) with 1 (or True) at real tokens and 0 at pads, or
        None: every token is attended to, pads included (Transformers does the same without a mask).
        token_type_ids (B, T) or None (all 0). Returns last_hidden_state (B, T, E)."""
        _check_inputs(self.config, input_ids, attention_mask, token_type_ids)
        x = self.embeddings(input_ids, token_type_ids)                 # (B, T, E)
        # Keys are hidden where the mask is 0; queries are not (a pad's own output is never read).
        key_mask = None if attention_mask is None else attention_mask.bool()[:, None, None, :]  # (B, 1, 1, T)
        for layer in self.encoder.layer:
            x = layer(x, key_mask)                                     # (B, T, E)
        return x


# -- reading and checking the config, checking the inputs ----------------------------------------------

def _read_config(cls, d: dict) -> XLMRobertaConfig:
    """The fields of cls in the config dict d; only absolute position embeddings (the only type
    Transformers keeps)."""
    kwargs = known_fields(cls, d)
    if d.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError(f"{cls.__name__}: position_embedding_type must be 'absolute' (the only type "
                         f"Transformers keeps), got {d['position_embedding_type']!r}")
    config = cls(**kwargs)
    config.validate()
    return config


def _validate_config(c: XLMRobertaConfig):
    positive_ints(c, "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                  "intermediate_size", "max_position_embeddings", "type_vocab_size")
    divides(c, "num_attention_heads", "hidden_size")
    in_vocab(c, "pad_token_id")          # it numbers the positions
    if c.max_position_embeddings <= c.pad_token_id + 1:
        raise ValueError(f"{type(c).__name__}: max_position_embeddings ({c.max_position_embeddings}) must exceed "
                         f"pad_token_id + 1 ({c.pad_token_id + 1}), the first real token's position")
    positive_numbers(c, "layer_norm_eps")
    activation(c.hidden_act)   # raises ValueError naming hidden_act if unsupported


def _check_inputs(c: XLMRobertaConfig, input_ids, attention_mask, token_type_ids):
    """ValueError/TypeError naming the argument for anything XLMRobertaModel.forward cannot take. Three
    device syncs, once per forward: the id range, the mask's 0/1 values and the token types' range."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point() \
            or input_ids.dtype == torch.bool or input_ids.is_complex():
        raise TypeError(f"input_ids: expected an integer (batch, sequence) tensor, got {_describe(input_ids)}")
    B, T = input_ids.shape
    if B == 0 or T == 0:
        raise ValueError(f"input_ids: expected a non-empty (batch, sequence), got shape {(B, T)}")
    if T > c.max_length:
        raise ValueError(f"input_ids: sequence length {T} exceeds the {c.max_length} tokens the position "
                         f"table numbers (max_position_embeddings {c.max_position_embeddings} - "
                         f"pad_token_id {c.pad_token_id} - 1)")
    check_token_ids("input_ids", input_ids, c.vocab_size)
    for name, t in (("attention_mask", attention_mask), ("token_type_ids", token_type_ids)):
        if t is not None and (not isinstance(t, torch.Tensor) or t.is_floating_point() or t.is_complex()):
            raise TypeError(f"{name}: expected an integer or bool tensor of shape {(B, T)}, got {_describe(t)}")
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name}: expected shape {(B, T)} (that of input_ids), got {tuple(t.shape)}")
    if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
        raise ValueError("attention_mask: expected only 0 (pad) and 1 (real token)")
    check_token_ids("token_type_ids", token_type_ids, c.type_vocab_size, vocab="type_vocab_size")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return f"a {type(x).__name__}"
