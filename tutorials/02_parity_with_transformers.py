# %% [markdown]
# # Tutorial 2: check a minivlm model against Transformers, the way the parity tests do
#
# Run it:  `python tutorials/02_parity_with_transformers.py`
# (needs the Transformers version docs/parity.md names: `pip install '.[test]'`)
#
# Nothing is downloaded: a tiny LLaVA-NeXT with random weights is built by Transformers from the config the
# parity tests use (`minivlm.tools.tiny.llava_next()`: a config.json dict, which Transformers and minivlm
# both read) and saved with `save_pretrained`, exactly as a hub folder is laid out (config.json +
# model.safetensors). Then:
#
# 1. `minivlm.from_pretrained` loads the folder (every key checked, nothing left at random init);
# 2. both libraries run the same left-padded batch; the logits at real (non-pad) positions agree to
#    float32 rounding, measured relative to the largest logit;
# 3. greedy generation in float64 gives the same tokens in both;
# 4. decoding token by token through minivlm's KV cache gives the logits of one full forward.
#
# Swap in your own local checkpoint folder for `folder` to run the same checks on real weights.

# %%
import shutil
import tempfile

import torch
from transformers import AutoConfig, LlavaNextForConditionalGeneration

import minivlm
from minivlm.models.llava_next import image_feature_count, num_crops
from minivlm.tools import tiny

torch.manual_seed(0)
# A Mistral-style decoder (GQA, a sliding window of 16 tokens) behind a 3-layer CLIP tower of 16 px crops.
tiny_config = tiny.llava_next(text="mistral", sliding_window=16)
IMAGE_TOKEN, PAD, BOS = (tiny_config["image_token_index"], tiny_config["text_config"]["pad_token_id"],
                         tiny_config["text_config"]["bos_token_id"])
CROP = tiny_config["vision_config"]["image_size"]
config = AutoConfig.for_model(**tiny_config)                  # Transformers' LlavaNextConfig
hf = LlavaNextForConditionalGeneration(config).eval()

# %% [markdown]
# ## 1. Load the folder Transformers wrote

# %%
folder = tempfile.mkdtemp(prefix="minivlm-tutorial-")      # removed at the end
hf.save_pretrained(folder)
model = minivlm.from_pretrained(folder)                       # float32, eval mode
model64 = minivlm.from_pretrained(folder, dtype=torch.float64)

# %% [markdown]
# ## 2. The same batch through both, logits compared
#
# A batch of two images of different shapes; each prompt holds one image token per image feature, and
# the shorter prompt is left-padded (pads masked out).

# %%
sizes = [(20, 40), (16, 16)]
rows = []
for h, w in sizes:
    n = image_feature_count((h, w), model.config)             # how many image tokens this image needs
    rows.append([BOS] + [IMAGE_TOKEN] * n + torch.randint(3, IMAGE_TOKEN, (10,)).tolist())
T = max(len(r) for r in rows)
ids = torch.tensor([[PAD] * (T - len(r)) + r for r in rows])
mask = (torch.arange(T)[None] >= torch.tensor([T - len(r) for r in rows])[:, None]).long()
Nc = max(num_crops(s, config.image_grid_pinpoints, CROP) for s in sizes)
pixel_values, image_sizes = torch.randn(2, Nc, 3, CROP, CROP), torch.tensor(sizes)
inputs = dict(pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask)

# Logits at the real positions, relative to the largest logit.
with torch.no_grad():
    ours = model(ids, **inputs).logits
    theirs = hf(input_ids=ids, **inputs).logits
real = mask.bool()
rel = ((ours - theirs)[real].abs().max() / theirs[real].abs().max()).item()
print(f"logits: max |minivlm - Transformers| = {rel:.1e} of the largest logit")
assert rel < 1e-5, rel          # float32 rounding in another summation order: ~1e-7 to 1e-6

# %% [markdown]
# ## 3. Greedy generation in float64
#
# The logits agree to ~1e-15, far below any gap between the best and second-best token, so the tokens
# must be identical.

# %%
hf64 = hf.double()
with torch.no_grad():
    theirs_tokens = hf64.generate(input_ids=ids, pixel_values=pixel_values.double(), image_sizes=image_sizes,
                                  attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=PAD)
ours_tokens = model64.generate(ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask,
                               max_new_tokens=10)
print("greedy tokens, minivlm:     ", ours_tokens[:, T:].tolist())
print("greedy tokens, Transformers:", theirs_tokens[:, T:].tolist())
assert torch.equal(ours_tokens, theirs_tokens)

# %% [markdown]
# ## 4. The KV cache
#
# The prompt in one call, then one token per call, against one full forward. The 5 tokens after the
# prompt are drawn from the text ids: a forward reads every image placeholder id in its input_ids as an
# image token, and a random model may well generate that id.

# %%
full_ids = torch.cat([ids, torch.randint(3, IMAGE_TOKEN, (2, 5))], 1)
full_mask = torch.cat([mask, torch.ones(2, 5, dtype=torch.long)], 1)
positions = (full_mask.cumsum(-1) - 1).clamp(min=0)
with torch.no_grad():
    full = model(full_ids, pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=full_mask).logits
    cache = model.new_cache(2, T + 5)
    steps = [model(full_ids[:, :T], pixel_values=pixel_values, image_sizes=image_sizes, attention_mask=mask,
                   position_ids=positions[:, :T], cache=cache).logits]
    for t in range(T, T + 5):
        steps.append(model(full_ids[:, t:t + 1], attention_mask=full_mask[:, :t + 1],
                           position_ids=positions[:, t:t + 1], cache=cache).logits)
cached = torch.cat(steps, 1)
err = ((cached - full)[full_mask.bool()].abs().max() / full.abs().max()).item()
print(f"KV cache: token-by-token logits vs one full forward: {err:.1e} of the largest logit")
assert err < 1e-5, err
shutil.rmtree(folder)
print("minivlm matches Transformers on this checkpoint")
