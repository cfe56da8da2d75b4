# %% [markdown]
# # Tutorial 3: find a bug with `minivlm parity`, the way you would when porting a model
#
# Run it:  `python tutorials/03_debugging_parity.py`
# (needs Transformers: `pip install '.[parity]'`)
#
# A port that gives wrong numbers rarely crashes: it generates fluent nonsense. The way to find the bug is
# to compare the port with a trusted implementation stage by stage and look at the first stage that
# differs. `minivlm parity` does that with forward hooks: it runs Transformers, then minivlm, on the same
# weights and inputs, and prints one row per stage (every vision layer, the projector, every decoder layer,
# the logits, then greedy tokens). Here we plant two classic porting bugs in a tiny random LLaVA-NeXT and
# watch the report find them:
#
# 1. the query/key rows of one decoder layer in the wrong rotary layout (rotate_half pairs channel i with
#    i + D/2, the interleaved layout pairs 2i with 2i + 1): a big error, found in float32;
# 2. a LayerNorm epsilon off by 10x in one vision layer: a tiny error, which float32 may hide and
#    float64 shows at once. That is why parity checks run in float64 when they can.
#
# From the shell the same report is `minivlm parity DIR` (or `minivlm parity llava_next` for a tiny random
# checkpoint built on the spot).

# %%
import shutil
import tempfile

import torch

from minivlm.tools import parity
from minivlm.tools.checkpoints import tiny_checkpoint
from minivlm.tools.parity import bugs
from minivlm.tools.parity.stages import Stage

tmp = tempfile.mkdtemp(prefix="minivlm-tutorial-")           # removed at the end
folder = tiny_checkpoint("llava_next", f"{tmp}/tiny-llava")   # written by Transformers, as a hub folder is

# %% [markdown]
# ## 0. A correct port: every stage agrees

# %%
report = parity.check(folder)
print(parity.format_report(report))
assert report.passed

# %% [markdown]
# ## 1. The rotary layout
#
# The two layouts rotate different pairs of channels. On a head of D = 4 channels [x0, x1, x2, x3]:
# rotate_half pairs (x0, x2) and (x1, x3); interleaved pairs (x0, x1) and (x2, x3). A checkpoint
# converted for one layout and read by code of the other turns the wrong pairs. We plant it in decoder
# layer 1 only, by reordering that layer's q_proj and k_proj rows.

# %%
planted = bugs.at("language_model.model.layers.1.self_attn", bugs.interleaved_rope)
report = parity.check(folder, modify_ours=planted)
print(parity.format_report(report))
assert report.first_failure == "decoder layer 1"      # layer 0, the vision tower, the projector: fine

# %% [markdown]
# Narrow it down: the same check on the pieces of that layer. The first piece that differs is q_proj,
# whose weights are what we permuted; the norm before it still agrees.

# %%
layer = "language_model.model.layers.1", "model.language_model.layers.1"
pieces = [Stage(f"layer 1 {name}", f"{layer[0]}.{name}", f"{layer[1]}.{name}")
          for name in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                       "self_attn", "post_attention_layernorm", "mlp")]
report = parity.check(folder, modify_ours=planted, stage_list=pieces, new_tokens=0)
print(parity.format_report(report))
assert report.first_failure == "layer 1 self_attn.q_proj"
assert next(r for r in report.rows if r.stage == "layer 1 self_attn.v_proj").passed   # v is not rotated

# %% [markdown]
# ## 2. A LayerNorm epsilon off by 10x

# %%
eps_bug = bugs.at("vision_tower.encoder.layers.1.layer_norm1", bugs.norm_eps, factor=10.0)
in64 = parity.check(folder, modify_ours=eps_bug, dtype="float64", new_tokens=0)
print(parity.format_report(in64))
assert in64.first_failure == "vision layer 1"
row = next(r for r in in64.rows if r.stage == "vision layer 1")
# The change is small (eps 1e-5 -> 1e-4 against a variance of order 1) but float64 rounding is 1e-16:
# nothing else could move a float64 stage by this much.
print(f"float64: the epsilon bug moves vision layer 1 by {row.max_rel:.1e} of its scale "
      f"(tolerance {row.tolerance:.0e})")
in32 = parity.check(folder, modify_ours=eps_bug, dtype="float32", new_tokens=0)
row32 = next(r for r in in32.rows if r.stage == "vision layer 1")
print(f"float32: {row32.max_rel:.1e} against a tolerance of {row32.tolerance:.1e}: "
      f"{'caught' if not row32.passed else 'hidden by the float32 tolerance'}")
assert abs(row32.max_rel - row.max_rel) < 0.5 * row.max_rel    # the same error, seen through float32 noise

shutil.rmtree(tmp)
print("Both planted bugs were found at the stage where they were planted.")
assert torch.get_default_dtype() == torch.float32            # parity restored the default dtype
