"""Bugs to plant in one module of a loaded minivlm model, so that `minivlm parity` has something to find
(tests/test_parity.py and tutorials/03_debugging_parity.py use them; a teacher can hand one out):

    from minivlm.tools import parity
    from minivlm.tools.parity import bugs
    report = parity.check("llama", modify_ours=bugs.at("model.layers.1.self_attn", bugs.interleaved_rope))
    report.first_failure            # "decoder layer 1": the first stage whose output the bug reaches

Each bug is a function of one module that changes it in place, as a real porting mistake would.
"""
from __future__ import annotations

import torch
from torch import nn


def at(path: str, bug, **options):
    """A `modify_ours` function: apply `bug(module, **options)` to the module at `path` of the model."""
    def plant(model: nn.Module):
        modules = dict(model.named_modules())
        if path not in modules:
            raise ValueError(f"bugs.at: the model has no module {path!r}")
        bug(modules[path], **options)
    return plant


def norm_eps(norm: nn.Module, factor: float = 10.0):
    """A LayerNorm / RMSNorm epsilon off by `factor` (10x: 1e-5 read as 1e-4). Small: float64 shows it at
    once; in float32 it may hide below the tolerance where the normalised values have a large variance."""
    if not hasattr(norm, "eps"):
        raise TypeError(f"norm_eps: expected a LayerNorm or RMSNorm (a module with .eps), got {type(norm).__name__}")
    norm.eps = norm.eps * factor


def interleaved_rope(attention: nn.Module, q: str = "q_proj", k: str = "k_proj"):
    """The query and key projections' rows in the other rotary layout, within each head: rotate_half
    pairs channel i with i + D/2, the interleaved layout (GPT-J, the original LLaMA) pairs 2i with 2i + 1.
    Loading a checkpoint written for one layout into code of the other is the classic porting bug: the
    rotation then turns the wrong pairs of channels."""
    for name in (q, k):
        proj = getattr(attention, name)
        D = attention.head_dim
        n = proj.weight.shape[0] // D          # heads of this projection (fewer for keys under GQA)
        # new row 2i <- old row i, new row 2i + 1 <- old row i + D/2, in every head
        order = torch.stack([torch.arange(D // 2), torch.arange(D // 2) + D // 2], 1).reshape(-1)
        rows = (torch.arange(n)[:, None] * D + order[None, :]).reshape(-1)
        with torch.no_grad():
            proj.weight.copy_(proj.weight[rows])
            if proj.bias is not None:
                proj.bias.copy_(proj.bias[rows])


def transposed(linear: nn.Linear):
    """A square weight stored transposed (the Conv1D / Linear confusion of GPT-2-style checkpoints)."""
    w = linear.weight
    if w.shape[0] != w.shape[1]:
        raise TypeError(f"transposed: expected a square weight, got {tuple(w.shape)}")
    with torch.no_grad():
        w.copy_(w.t().clone())


def flipped_gate(layer: nn.Module, name: str = "alpha_cross_attn"):
    """A tanh gate of IDEFICS's gated cross-attention with the wrong sign: tanh(-alpha)."""
    with torch.no_grad():
        getattr(layer, name).neg_()
