# %% [markdown]
# # Tutorial 4: train a vision-language model on a CPU
#
# Run it:  `python tutorials/04_train_a_vlm.py`  (about a minute; the pictures it draws are written to a
# folder it prints, or to `$MINIVLM_TUTORIAL_OUT`)
#
# A vision-language model is made in three steps: a vision tower turns a picture into vectors, a
# projector maps them into the language model's embedding space, and the language model reads them as if
# they were words. LLaVA trains it in two stages: first on captions (the projector learns to translate),
# then on instructions (questions and answers). minivlm ships such a model at toy size, trained from
# scratch on this kind of CPU: minivlm's own LLaVA-NeXT with a 2-layer CLIP tower and a 3-layer Llama
# decoder, 0.44M parameters, on pictures of coloured shapes drawn on the fly.
#
# This tutorial walks through it: the data, the model, one training step traced through minivlm's
# kernels, a short training run, then the shipped model: where its answer looks in the picture, and what
# its projector learned. The whole recipe is `minivlm train tiny-vlm --out DIR` (docs/tiny_vlm.md).

# %%
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import minivlm  # noqa: E402
from minivlm import train  # noqa: E402
from minivlm.processing import load_processor  # noqa: E402
from minivlm.tinyvlm import data, shipped_folder  # noqa: E402
from minivlm.tinyvlm.model import answer, encode_batch, new_model, new_processor, prompt_text  # noqa: E402

OUT = Path(os.environ.get("MINIVLM_TUTORIAL_OUT") or tempfile.mkdtemp(prefix="minivlm-tutorial-"))
OUT.mkdir(parents=True, exist_ok=True)
torch.set_num_threads(min(2, torch.get_num_threads()))
print(f"pictures go to {OUT}")

# %% [markdown]
# ## 1. The data
#
# Every example comes from a seed: a picture of one to three shapes, its caption, and questions whose
# answer is unique. Nothing is downloaded, and no picture is ever in two splits (train, validation and
# held-out seeds start at 0, 10^8 and 2 * 10^8).

# %%
examples = [data.make_example(seed) for seed in range(6)]
for e in examples[:3]:
    print(f"{e.image.size}: {e.caption}")
    for q in e.questions[:3]:
        print(f"    {q.kind:7} {q.question} -> {q.answer}")

fig, axes = plt.subplots(1, 6, figsize=(12, 2.6))
for ax, e in zip(axes, examples):
    ax.imshow(np.asarray(e.image))
    ax.set_title(e.caption.replace(" and ", "\nand ").replace(", ", ",\n"), fontsize=6)
    ax.axis("off")
fig.tight_layout()
fig.savefig(OUT / "data.png", dpi=120)
plt.close(fig)

# %% [markdown]
# ## 2. The model
#
# `new_model()` is `LlavaNextForConditionalGeneration` built from a small config. The processor cuts each
# picture into two 32 x 32 crops (the whole picture squashed, and the one tile of its single grid
# pinpoint, letterboxed); the CLIP tower sees 16 patches of 8 x 8 pixels per crop.

# %%
model, processor = new_model(seed=0), new_processor()
parts = train.model_parts(model)
sizes = {part: sum(model.get_parameter(n).numel() for n in names) for part, names in parts.items()}
print({part: f"{n / 1e3:.0f}K" for part, n in sizes.items()}, f"total {sum(sizes.values()) / 1e6:.2f}M")

example = examples[0]
inputs = processor(text=prompt_text(processor, data.CAPTION_QUESTION), images=example.image, return_tensors="pt")
n_image = int((inputs["input_ids"] == model.config.image_token_index).sum())
print(f"prompt {inputs['input_ids'].shape[1]} tokens, {n_image} of them image features; "
      f"pixel_values {tuple(inputs['pixel_values'].shape)}")

# %% [markdown]
# ## 3. One training step, traced through the kernels
#
# A batch is (picture, question, answer) rows: the prompt, then the answer and `</s>`, labelled only on
# the answer. The loss is the cross-entropy of each answer token given everything before it. The
# profiler shows the step calling minivlm's custom ops: rotary embedding and attention forward, then
# their backward kernels, from the same autograd graph any PyTorch model builds.

# %%
batch = encode_batch(processor, [(e.image, data.CAPTION_QUESTION, e.caption) for e in examples])
print(f"input_ids {tuple(batch.inputs['input_ids'].shape)}, {batch.n_tokens} labelled tokens")
model.train()
with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
    inputs = {k: v for k, v in batch.inputs.items() if k != "attention_mask"}
    loss = train.answer_loss(model(**inputs).logits, batch.labels)
    loss.backward()
calls = {}
for event in prof.events():
    if event.name.startswith("minivlm::"):
        calls[event.name] = calls.get(event.name, 0) + 1
for name, count in sorted(calls.items()):
    print(f"  {name:<28} {count:3d} calls")
print(f"loss {loss.item():.3f} (log of the vocabulary, {np.log(len(data.vocabulary())):.3f}, before any training)")
# 2 vision layers + 3 decoder layers of attention; rope on q and on k in each decoder layer
assert calls["minivlm::attention"] == 5 and calls["minivlm::attention_backward"] == 5
assert calls["minivlm::rope"] == 6 and calls["minivlm::rope_backward"] == 6
model.zero_grad()

# %% [markdown]
# ## 4. A short training run
#
# `train.train_stage` is the whole loop: batch, forward, loss, backward, clip the gradient norm to 1,
# set the learning rate (linear warmup, then a cosine), AdamW step. 150 steps of the caption stage take
# about half a minute; the model learns the caption's grammar and the colours first (they are the mean of
# a few pixels), the kinds of shape much later (that takes the vision tower learning edges).

# %%
stage = train.Stage("captions", steps=150, batch_size=16, lr=2e-3, warmup=20, examples=train.caption_rows())
log = train.train_stage(model, processor, stage, train.TrainSettings(), progress=False)
losses = [r["loss"] for r in log]
print(f"loss {losses[0]:.2f} -> {np.mean(losses[-10:]):.2f} in {log[-1]['seconds']:.0f} s")
assert np.mean(losses[-10:]) < 0.5 * losses[0]
test = data.make_example(data.SPLIT_OFFSETS["validation"] + 1)
print(f"truth:         {test.caption}\nafter 150 steps: {answer(model, processor, [test.image], [data.CAPTION_QUESTION])[0]}")

# %% [markdown]
# ## 5. The trained model: where does the answer look?
#
# The shipped model went through the whole recipe (docs/tiny_vlm.md). We ask it about a new picture and
# record the decoder's attention from the last prompt position (where the answer's first word is
# predicted) to the image features: the base crop's 4 x 4 grid and the tile's grid with its newline
# column. minivlm's kernel does not return the weights (it never forms them: online softmax), so we wrap
# `minivlm.ops.attention` to compute them on the side with the plain formula of `minivlm.reference`.

# %%
folder = shipped_folder()
trained, trained_processor = minivlm.from_pretrained(folder, progress=False), load_processor(folder)
picture = data.make_example(data.SPLIT_OFFSETS["heldout"] + 11, n_shapes=2, size=96)
question = next(q for q in picture.questions if q.kind == "colour").question
reply = answer(trained, trained_processor, [picture.image], [question])[0]
print(f"{picture.caption}\n{question} -> {reply}")

recorded = []
kernel = minivlm.ops.attention


def recording_attention(q, k, v, attn_mask=None, *, is_causal=False, scale=None, window=None):
    if is_causal:                      # the decoder's self-attention (the vision tower's is not causal)
        scores = (q @ k.repeat_interleave(q.shape[1] // k.shape[1], dim=1).transpose(-1, -2)) * q.shape[-1] ** -0.5
        T = q.shape[-2]
        scores = scores.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
        recorded.append(scores.softmax(-1)[0, :, -1])      # (H, T): the last position's weights
    return kernel(q, k, v, attn_mask, is_causal=is_causal, scale=scale, window=window)


inputs = trained_processor(text=prompt_text(trained_processor, question), images=picture.image, return_tensors="pt")
minivlm.ops.attention = recording_attention
try:
    with torch.no_grad():
        trained(**inputs)
finally:
    minivlm.ops.attention = kernel
image_positions = (inputs["input_ids"][0] == trained.config.image_token_index).nonzero().flatten()
weights = torch.stack(recorded)[:, :, image_positions].mean(1)      # (layers, image features), heads averaged
base = weights[:, :16].reshape(-1, 4, 4)                           # the squashed picture's 4 x 4 patches

fig, axes = plt.subplots(1, 1 + len(recorded), figsize=(2.2 * (1 + len(recorded)), 2.4))
axes[0].imshow(np.asarray(picture.image))
axes[0].set_title(f"{question}\n-> {reply}", fontsize=7)
for layer, ax in enumerate(axes[1:]):
    ax.imshow(base[layer].numpy(), cmap="magma")
    ax.set_title(f"decoder layer {layer}", fontsize=7)
for ax in axes:
    ax.axis("off")
fig.tight_layout()
fig.savefig(OUT / "attention.png", dpi=120)
plt.close(fig)
print(f"attention of the answer position on the base crop's patches, per layer: {OUT / 'attention.png'}")
share = weights.sum(1)
print("share of attention on the image, per layer:", [f"{s:.2f}" for s in share.tolist()])

# %% [markdown]
# ## 6. What the projector learned
#
# The projector maps each patch's vision feature into the decoder's embedding space. Label each projected
# feature by what lies under its patch: the background, or a shape of one of the six colours. In the
# projected space the background patches sit apart from the shapes', and the shapes' patches group by
# colour (warm colours apart from cool ones in the first two directions): the decoder reads the colour
# words from where a patch lands.

# %%
features, colours = [], []
for seed in range(80):
    e = data.make_example(data.SPLIT_OFFSETS["heldout"] + 1000 + seed, n_shapes=1, size=64)
    pv = trained_processor.image_processor(e.image)["pixel_values"]                 # (1, 2, 3, 32, 32)
    with torch.no_grad():
        hidden = trained.vision_tower(pv[0, :1], output_hidden_states=True).hidden_states[-1][0, 1:]
        projected = trained.multi_modal_projector(hidden)                           # (16, E)
    pixels = np.asarray(e.image.resize((32, 32)), dtype=float).reshape(4, 8, 4, 8, 3).mean((1, 3)).reshape(16, 3)
    background = np.asarray(e.scene.background, dtype=float)
    covered = np.abs(pixels - background).max(1) > 60           # patches mostly covered by the shape
    for f, c in zip(projected, covered):
        features.append(f.numpy())
        colours.append(e.scene.shapes[0].colour if c else "background")
features, colours = np.stack(features), np.array(colours)


def principal(x, k=2):
    centred = x - x.mean(0)
    return centred @ np.linalg.svd(centred, full_matrices=False)[2][:k].T


palette = {name: np.array(rgb) / 255 for name, rgb in data.COLOURS.items()} | {"background": (0.75, 0.75, 0.75)}
shape = colours != "background"
fig, axes = plt.subplots(1, 2, figsize=(9, 4))
for ax, sel, title in [(axes[0], np.ones(len(colours), bool), "all patches"),
                       (axes[1], shape, "the shapes' patches only")]:
    xy = principal(features[sel])
    for name, rgb in palette.items():
        mine = colours[sel] == name
        if mine.any():
            ax.scatter(xy[mine, 0], xy[mine, 1], s=8, color=rgb, label=name)
    ax.set_title(f"projected patch features: {title}", fontsize=8)
axes[1].legend(fontsize=6)
fig.tight_layout()
fig.savefig(OUT / "projector.png", dpi=120)
plt.close(fig)


def nearest_centre_agreement(x, labels):
    """How often the nearest class centre (in the full projected space) is the patch's own class."""
    names = sorted(set(labels))
    centres = np.stack([x[labels == n].mean(0) for n in names])
    nearest = np.array(names)[((x[:, None] - centres[None]) ** 2).sum(-1).argmin(1)]
    return (nearest == labels).mean()


background_vs_shape = nearest_centre_agreement(features, np.where(shape, "shape", "background"))
by_colour = nearest_centre_agreement(features[shape], colours[shape])
print(f"{len(features)} patches, {shape.sum()} on a shape: the nearest centre tells background from shape "
      f"for {background_vs_shape:.0%}, and names the shape's colour for {by_colour:.0%} (chance {1 / 6:.0%})")
assert background_vs_shape > 0.9 and by_colour > 0.6
print(f"figures: {', '.join(sorted(p.name for p in OUT.glob('*.png')))} in {OUT}")
