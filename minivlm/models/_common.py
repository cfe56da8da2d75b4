"""Small pieces every model file shares: the output record, activations by their config names, the
causal-LM loss. Each is a few lines; they live here so that no model file copies another's."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class ModelOutput:
    """What a model's forward returns: logits always, the loss when labels were given, and whatever
    intermediate tensors the model documents (None when not asked for)."""
    logits: torch.Tensor
    loss: Optional[torch.Tensor] = None
    hidden_states: Optional[tuple] = None
    image_hidden_states: Optional[torch.Tensor] = None


def quick_gelu(x):
    """x * sigmoid(1.702 x): the sigmoid approximation of GELU that OpenAI's CLIP was trained with."""
    return x * torch.sigmoid(1.702 * x)


def gelu_tanh(x):
    """The tanh approximation of GELU (GPT-2's "gelu_new", PyTorch's approximate="tanh")."""
    return F.gelu(x, approximate="tanh")


# Activation functions under the names configs give them (Transformers' `hidden_act` strings).
ACTIVATIONS = {
    "gelu": F.gelu,                 # exact, with erf
    "quick_gelu": quick_gelu,
    "gelu_new": gelu_tanh,
    "gelu_pytorch_tanh": gelu_tanh,
    "silu": F.silu,
    "swish": F.silu,
    "relu": F.relu,
}


def activation(name: str):
    """The activation function a config names; a clear error for one minivlm does not implement."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation: unsupported hidden_act {name!r}; "
                         f"expected one of {sorted(ACTIVATIONS)}") from None


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Next-token cross-entropy: the logits at position t predict labels[t + 1]; labels equal to
    ignore_index (-100) are left out of the mean. Computed in float32 whatever the logits' dtype."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:-1])} (batch, sequence), "
                         f"got {tuple(labels.shape)}")
    shift_logits = logits[:, :-1].float()                 # (B, T-1, V)
    shift_labels = labels[:, 1:].to(logits.device)        # (B, T-1)
    return F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
                           ignore_index=ignore_index)


class RMSNorm(nn.Module):
    """weight * x / sqrt(mean(x^2) + eps): a scale-only norm (no mean subtraction, no bias), with the casts
    of Transformers' T5LayerNorm and IdeficsRMSNorm: the mean square in float32 whatever x's dtype (float64
    included), the product in x's dtype (promoted), rounded to the weight's dtype only for a 16-bit weight.
    (LlamaRMSNorm in llama.py rounds in another order: it normalises a float32 copy of x.)"""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return self.weight * x
