"""`minivlm demo`: a tour in a few seconds, one stage at a time.

It opens with the tiny VLM that ships with minivlm (`stage_tiny_vlm`): a new picture, the caption the
trained model writes and two answers. Then each stage runs one piece of minivlm on a small random
example. Every stage compares its numbers with the naive math of `minivlm.reference` and prints one
line: the largest absolute difference, whether it is within the stage's tolerance, and how long the
compiled and the reference version take.

A stage is a function that takes no argument and returns a `StageResult`; `STAGES` lists them in the
order they run, so adding a stage (a model, say) is one function and one line in that list.
"""

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from minivlm import ops, reference
from minivlm._extension import load_extension
from minivlm.tools import tiny


@dataclass
class StageResult:
    """What a stage reports: a one-line description, its accuracy and its timing."""

    name: str
    detail: str
    max_abs_diff: float
    tolerance: float
    ms: float                      # minivlm
    reference_ms: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def median_ms(fn: Callable, reps: int = 5) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def max_abs_diff(a, b) -> float:
    """max |a - b| over a tensor or over matching tuples of tensors."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b))


def time_model(forward):
    """Median ms of forward() on the compiled kernels and on the reference math (use_reference), no grad."""
    with torch.no_grad():
        ms = median_ms(forward, reps=3)
        with ops.use_reference():
            return ms, median_ms(forward, reps=3)


def left_padding(B: int, L: int) -> torch.Tensor:
    """(B, L) bool: sequence b has 3 * b padding tokens on the left (True = real token)."""
    return torch.arange(L)[None, :] >= 3 * torch.arange(B)[:, None]


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------

def stage_attention() -> StageResult:
    """Grouped-query causal attention (8 query heads share 2 key/value heads) over a left-padded batch.

    The padding mask comes from ops.causal_mask; the forward output and the gradients of q, k and v are
    compared with the reference.
    """
    B, H, Hkv, L, D = 2, 8, 2, 128, 64
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, H, L, D, generator=gen, requires_grad=True)
    k = torch.randn(B, Hkv, L, D, generator=gen, requires_grad=True)
    v = torch.randn(B, Hkv, L, D, generator=gen, requires_grad=True)
    mask = ops.causal_mask(left_padding(B, L), L)                    # (B, 1, L, L), 0 or finfo.min

    def run(fn, *inputs):
        out = fn(*inputs, is_causal=True)
        return out, torch.autograd.grad(out.square().sum(), inputs[:3])

    out, grads = run(ops.attention, q, k, v, mask)
    # The reference runs in float64: the exact answer to compare the float32 kernel with. (In float32 the
    # reference itself strays by up to 1e-4 here when the machine is busy: MKL then picks another matmul
    # path, ~10x less accurate, and a 1e-4 tolerance against it would fail now and then.)
    exact = [t.detach().double().requires_grad_() for t in (q, k, v)]
    ref_out, ref_grads = run(reference.attention, *exact, mask.double())
    with torch.no_grad():
        ms = median_ms(lambda: ops.attention(q, k, v, mask, is_causal=True))
        ref_ms = median_ms(lambda: reference.attention(q, k, v, mask, is_causal=True))
    out_diff, grad_diff = max_abs_diff(out, ref_out), max_abs_diff(grads, ref_grads)
    return StageResult(
        "attention", f"GQA {H}q/{Hkv}kv heads, causal + padding mask, B{B} T{L} D{D} "
                     f"(max|diff| forward {out_diff:.1e}, gradients {grad_diff:.1e})",
        max(out_diff, grad_diff), 1e-4, ms, ref_ms)


def stage_rope() -> StageResult:
    """Rotary position embedding of a (B, H, L, D) tensor with Llama's cos/sin tables."""
    B, H, L, D = 2, 8, 256, 64
    x = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(1))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    angles = torch.outer(torch.arange(L, dtype=torch.float32), inv_freq).repeat(1, 2)   # (L, D)
    cos, sin = angles.cos(), angles.sin()
    diff = max_abs_diff(ops.rope(x, cos, sin), reference.rope(x, cos, sin))
    return StageResult("rope", f"B{B} H{H} L{L} D{D}", diff, 1e-5,
                       median_ms(lambda: ops.rope(x, cos, sin)), median_ms(lambda: reference.rope(x, cos, sin)))


def stage_causal_mask() -> StageResult:
    """The additive causal + padding mask, plain and with a sliding window; it must match exactly."""
    B, q_len, S, window = 4, 96, 128, 32
    padding = left_padding(B, S)
    diff = max(max_abs_diff(ops.causal_mask(padding, q_len), reference.causal_mask(padding, q_len)),
               max_abs_diff(ops.causal_mask(padding, q_len, window=window),
                            reference.causal_mask(padding, q_len, window=window)))
    return StageResult("causal_mask", f"B{B} q_len{q_len} S{S}, plain and window {window}", diff, 0.0,
                       median_ms(lambda: ops.causal_mask(padding, q_len)),
                       median_ms(lambda: reference.causal_mask(padding, q_len)))


def draw_picture():
    """A 40 x 120 (height x width) picture drawn here (nothing to download): sky, sun, a house on grass."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (120, 40), (135, 190, 235))                  # (width, height): sky
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 30, 119, 39], fill=(70, 160, 60))                  # grass
    draw.ellipse([95, 4, 107, 16], fill=(250, 210, 40))                   # sun
    draw.rectangle([20, 18, 44, 34], fill=(200, 60, 50))                  # house
    draw.polygon([(17, 19), (32, 7), (47, 19)], fill=(120, 60, 40))       # roof
    return image


def tiny_llava_next():
    """A LLaVA-NeXT of tiny proportions with random weights (minivlm.tools.tiny.llava_next), and its image
    processor: 16 px crops in 4 px patches (16 features per crop), a Mistral-style decoder with GQA and a
    sliding window."""
    from minivlm.models.llava_next import LlavaNextConfig, LlavaNextForConditionalGeneration
    from minivlm.processing import LlavaNextImageProcessor

    config = LlavaNextConfig.from_dict(tiny.llava_next())
    torch.manual_seed(0)
    model = LlavaNextForConditionalGeneration(config).eval()
    crop = config.vision_config.image_size
    processor = LlavaNextImageProcessor(image_grid_pinpoints=config.image_grid_pinpoints,
                                        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop})
    return model, processor


def stage_llava_next() -> StageResult:
    """A tiny random-weight LLaVA-NeXT on a drawn picture, stage by stage with the shapes; its logits on
    the compiled kernels against the same model on the reference math; a few greedy tokens."""
    from minivlm.models.llava_next import anyres_grid_shape, image_feature_count, num_crops, unpad_bounds

    model, processor = tiny_llava_next()
    cfg = model.config
    image = draw_picture()
    inputs = processor(image)                                           # pixel_values, image_sizes
    pv, sizes = inputs["pixel_values"], inputs["image_sizes"]
    size = tuple(sizes[0].tolist())
    Nc = num_crops(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    n_image = image_feature_count(size, cfg)
    prompt = torch.tensor([[1, 17, 42, 99] + [cfg.image_token_index] * n_image + [23, 64, 5]])
    with torch.no_grad():
        hidden = model.vision_tower(pv[0, :Nc], output_hidden_states=True).hidden_states
        features = model.image_features(pv, sizes)[0]
        out = model(prompt, **inputs)
        with ops.use_reference():
            ref = model(prompt, **inputs)
    tokens = model.generate(prompt, **inputs, max_new_tokens=6, eos_token_id=[])
    rows, cols = anyres_grid_shape(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
    side = cfg.vision_config.image_size // cfg.vision_config.patch_size        # patches per crop side
    top, bottom, left, right = unpad_bounds(rows * side, cols * side, size)
    detail = "\n".join([
        f"tiny random weights; picture {size[0]}x{size[1]} (h x w), a {rows}x{cols} grid of crops",
        f"  pixel_values {tuple(pv.shape)}: base image + {Nc - 1} crops; image_sizes {sizes.tolist()}",
        f"  vision tower hidden_states[-2] {tuple(hidden[-2].shape)} -> drop CLS -> projector "
        f"({Nc}, {side * side}, {cfg.text_config.hidden_size})",
        f"  packed image features {tuple(features.shape)}: base {side * side} + the {rows * side}x{cols * side} "
        f"crop grid unpadded to {bottom - top}x{right - left}, a newline after each row: "
        f"{bottom - top}x{right - left + 1}",
        f"  merged sequence: input_ids {tuple(prompt.shape)} with {n_image} image tokens -> "
        f"embeddings {(1, prompt.shape[1], cfg.text_config.hidden_size)}",
        f"  logits {tuple(out.logits.shape)}; greedy tokens {tokens[0, prompt.shape[1]:].tolist()}",
    ])
    ms, ref_ms = time_model(lambda: model(prompt, **inputs))
    # float32 end to end on the kernels vs the reference math: the same operations in another order,
    # ~1e-6 of the logits; 1e-4 absolute is a wide margin for logits of order 1.
    return StageResult("llava_next", detail, max_abs_diff(out.logits, ref.logits), 1e-4, ms, ref_ms)


def tiny_blip2():
    """A BLIP-2 of tiny proportions with random weights (minivlm.tools.tiny.blip2), and its image processor:
    16 px images in 4 px patches (16 + the class token), a 2-layer Q-Former with 4 queries, a 2-layer OPT of
    width 64 (lm_head untied); token 127 is the image placeholder, 2 OPT's BOS."""
    from minivlm.models.blip2 import Blip2Config, Blip2ForConditionalGeneration
    from minivlm.processing import BlipImageProcessor

    # Untied: with random weights a tied head mostly reads back the token's own embedding, so greedy
    # decoding would just repeat the last token.
    config = Blip2Config.from_dict(tiny.blip2("opt", tie=False))
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():   # the queries start at zero (checkpoints fill them): equal queries say little
        model.query_tokens.normal_()
    side = config.vision_config.image_size
    return model, BlipImageProcessor(size={"height": side, "width": side})


def stage_blip2() -> StageResult:
    """A tiny random-weight BLIP-2 (EVA tower, Q-Former, OPT) on a drawn picture, stage by stage with the
    shapes; its logits on the compiled kernels against the same model on the reference math; a caption of
    a few greedy tokens."""

    model, processor = tiny_blip2()
    cfg = model.config
    pv = processor(draw_picture())["pixel_values"]                      # (1, 3, S, S)
    Q, bos = cfg.num_query_tokens, cfg.text_config.bos_token_id
    prompt = torch.tensor([[cfg.image_token_index] * Q + [bos, 17, 42, 99]])   # image tokens, BOS, prompt
    with torch.no_grad():
        out = model(prompt, pixel_values=pv)
        with ops.use_reference():
            ref = model(prompt, pixel_values=pv)
    caption = model.generate(pixel_values=pv, max_new_tokens=6, eos_token_id=[])    # (1, Q + 1 + 6)
    vc, C = cfg.vision_config, cfg.text_config.hidden_size
    detail = "\n".join([
        f"tiny random weights; picture 40x120 (h x w) resized to {vc.image_size}x{vc.image_size}",
        f"  pixel_values {tuple(pv.shape)}",
        f"  vision tower (EVA, {vc.num_hidden_layers} layers) last_hidden_state "
        f"{tuple(out.vision_outputs.last_hidden_state.shape)}: {vc.num_patches} patches + CLS",
        f"  Q-Former ({cfg.qformer_config.num_hidden_layers} layers, {Q} learned queries) output "
        f"{tuple(out.qformer_output.shape)} -> language_projection {tuple(out.language_model_inputs.shape)}",
        f"  merged sequence: input_ids {tuple(prompt.shape)} = {Q} image tokens + BOS + 3 prompt tokens -> "
        f"embeddings {(1, prompt.shape[1], C)}",
        f"  logits {tuple(out.logits.shape)}; caption generate(pixel_values=...) {tuple(caption.shape)}: "
        f"new tokens {caption[0, Q + 1:].tolist()}",
    ])
    ms, ref_ms = time_model(lambda: model(prompt, pixel_values=pv))
    # float32 end to end on the kernels vs the reference math: the same operations in another order.
    # Measured 4.8e-7 on logits up to ~2 (a few float32 ulps); 1e-4 absolute leaves a 200x margin.
    return StageResult("blip2", detail, max_abs_diff(out.logits, ref.logits), 1e-4, ms, ref_ms)


# Token ids of the tiny IDEFICS: LLaMA's 0/1/2 for pad, <s>, </s>; the two additional ids after the base
# vocabulary, as idefics-9b's tokenizer puts them: <fake_token_around_image> and <image>.
IDEFICS_VOCAB = tiny.idefics()["vocab_size"]
IDEFICS_FAKE, IDEFICS_IMAGE = IDEFICS_VOCAB, IDEFICS_VOCAB + 1


def tiny_idefics():
    """An IDEFICS of tiny proportions with random weights (minivlm.tools.tiny.idefics): 16 px images in 4 px
    patches (17 tokens each), a Perceiver resampler of 4 latents, a 4-layer Llama decoder of width 64 with a
    gated cross-attention block before layers 0 and 2, the gates' alphas set to 1 (tanh(1) = 0.76: the
    images count)."""
    from minivlm.models.idefics import IdeficsConfig, IdeficsForVisionText2Text
    from minivlm.processing import IdeficsImageProcessor

    config = IdeficsConfig.from_dict(tiny.idefics())
    torch.manual_seed(0)
    model = IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                p.fill_(1.0)              # checkpoints hold trained gates; a fresh model's may start at 0
    return model, IdeficsImageProcessor(image_size=config.vision_config.image_size)


def stage_idefics() -> StageResult:
    """A tiny random-weight IDEFICS on two pictures interleaved with text: the image attention mask that
    lets each token see the latest image before it, the resampled image states, logits on the kernels
    against the reference math, a few greedy tokens."""
    from minivlm.processing import idefics_image_attention_mask

    model, processor = tiny_idefics()
    picture = draw_picture()
    images = [[picture, picture.transpose(0)]]                          # one sample, two images (2nd mirrored)
    pv = processor(images)["pixel_values"]                              # (1, 2, 3, S, S)
    img = [IDEFICS_FAKE, IDEFICS_IMAGE, IDEFICS_FAKE]                   # how the processor writes an image
    ids = torch.tensor([[1, 17, 42] + img + [23, 64, 5] + img + [77, 88]])   # text, image, text, image, text
    image_mask = idefics_image_attention_mask(ids, image_token_id=IDEFICS_IMAGE, eos_token_id=2, num_images=2)
    inputs = dict(pixel_values=pv, image_attention_mask=image_mask)
    with torch.no_grad():
        out = model(ids, **inputs)
        with ops.use_reference():
            ref = model(ids, **inputs)
    tokens = model.generate(ids, **inputs, max_new_tokens=6, eos_token_id=[])
    cfg = model.config
    sees = ["-" if not row.any() else str(int(row.argmax())) for row in image_mask[0]]
    detail = "\n".join([
        "tiny random weights; two pictures (the drawing and its mirror image) interleaved with text",
        f"  pixel_values {tuple(pv.shape)} -> vision tower (no post-LayerNorm) -> resampler "
        f"({cfg.perceiver_config.resampler_n_latents} latents) -> image states {tuple(out.image_hidden_states.shape)}",
        f"  input_ids {tuple(ids.shape)}: <s> text <fake><image><fake> text <fake><image><fake> text; "
        f"ids {IDEFICS_FAKE}, {IDEFICS_IMAGE} lie beyond the base vocabulary ({IDEFICS_VOCAB}): decoupled embedding",
        f"  image_attention_mask {tuple(image_mask.shape)}: the image each token sees {' '.join(sees)} "
        f"(- = none: the gate zeroes its cross-attention)",
        f"  gated cross-attention before layers {list(range(0, cfg.num_hidden_layers, cfg.cross_layer_interval))}; "
        f"logits {tuple(out.logits.shape)} (base + additional vocabulary)",
        f"  greedy tokens (images encoded once, kept in the cache) {tokens[0, ids.shape[1]:].tolist()}",
    ])
    ms, ref_ms = time_model(lambda: model(ids, **inputs))
    # float32 end to end on the kernels vs the reference math: the same operations in another order, a few
    # float32 ulps of logits of order 1 (measured below 1e-6); 1e-4 absolute leaves a 100x margin.
    return StageResult("idefics", detail, max_abs_diff(out.logits, ref.logits), 1e-4, ms, ref_ms)


# Token ids of the tiny Kosmos-2 (Kosmos-2's own 0/1/2 for <s>, pad, </s>; the rest chosen here).
KOSMOS2_BOS, KOSMOS2_BOI, KOSMOS2_EOI, KOSMOS2_GROUNDING, KOSMOS2_FIRST_IMAGE_ID = 0, 126, 127, 125, 100

# What a trained Kosmos-2 might write for the drawn picture: a fixed string in its grounding format, with
# patch indices chosen by hand on the 32 x 32 grid over the (squashed) picture: the house with its roof
# (cells 164 = row 5, col 4 to 876 = row 27, col 12), the grass (768 to 1023) and the sun (121 to 444).
KOSMOS2_GROUNDED_EXAMPLE = (
    "<grounding> A drawing of<phrase> a house</phrase><object><patch_index_0164><patch_index_0876></object>"
    " on<phrase> green grass</phrase><object><patch_index_0768><patch_index_1023></object> under"
    "<phrase> the sun</phrase><object><patch_index_0121><patch_index_0444></object>.")


def tiny_kosmos2():
    """A Kosmos-2 of tiny proportions with random weights (minivlm.tools.tiny.kosmos2), and its image
    processor: 16 px images in 4 px patches (16 + the class token), 4 latent queries, a 2-layer sub-LN
    decoder of width 64 (lm_head untied)."""
    from minivlm.models.kosmos2 import Kosmos2Config, Kosmos2ForConditionalGeneration
    from minivlm.processing import CLIPImageProcessor

    # Untied: the random embeddings times sqrt(64) dominate the residual stream, so a tied head would
    # mostly read back the last token and greedy decoding repeat it.
    config = Kosmos2Config.from_dict(tiny.kosmos2(tie=False))
    torch.manual_seed(0)
    model = Kosmos2ForConditionalGeneration(config).eval()
    # Kosmos-2's checkpoint settings (microsoft/kosmos-2-patch14-224: squash to 224 x 224, crop 224) scaled
    # to the tiny tower's size: the whole picture, aspect ratio not kept, as the grounding grid assumes.
    side = config.vision_config.image_size
    processor = CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side},
                                   use_square_size=True)
    return model, processor


def stage_kosmos2() -> StageResult:
    """A tiny random-weight Kosmos-2 (CLIP tower, latent-query projection, sub-LN decoder) on a drawn picture,
    stage by stage with the shapes; its logits on the compiled kernels against the same model on the
    reference math; a few greedy tokens; then the grounding step on a fixed example string, with the boxes
    drawn on the picture and saved to a PNG in the temporary directory."""
    import tempfile
    from pathlib import Path

    from PIL import Image

    from minivlm.grounding import draw_boxes, post_process_generation

    model, processor = tiny_kosmos2()
    cfg = model.config
    picture = draw_picture()
    pv = processor(picture)["pixel_values"]                             # (1, 3, S, S)
    Q, E = cfg.latent_query_num, cfg.text_config.embed_dim
    # Kosmos2Processor's layout: <s> <image> Q image positions (consecutive ids, overwritten by the image
    # embeddings) </image> <grounding> text; the mask marks the Q positions.
    image_ids = list(range(KOSMOS2_FIRST_IMAGE_ID, KOSMOS2_FIRST_IMAGE_ID + Q))
    prompt = torch.tensor([[KOSMOS2_BOS, KOSMOS2_BOI] + image_ids + [KOSMOS2_EOI, KOSMOS2_GROUNDING, 17, 42, 99]])
    position_mask = torch.zeros_like(prompt)
    position_mask[:, 2:2 + Q] = 1
    inputs = dict(pixel_values=pv, image_embeds_position_mask=position_mask)
    with torch.no_grad():
        out = model(prompt, **inputs)
        with ops.use_reference():
            ref = model(prompt, **inputs)
    tokens = model.generate(prompt, **inputs, max_new_tokens=6, eos_token_id=[])

    caption, entities = post_process_generation(KOSMOS2_GROUNDED_EXAMPLE)
    W, H = picture.size
    scale = 4                                    # draw on a 4x enlargement, so that the labels are legible
    boxed = draw_boxes(picture.resize((scale * W, scale * H), Image.Resampling.NEAREST), entities)
    png = Path(tempfile.gettempdir()) / "minivlm-demo-kosmos2.png"
    boxed.save(png)

    vc = cfg.vision_config
    detail = "\n".join([
        f"tiny random weights; picture {H}x{W} (h x w) squashed to {vc.image_size}x{vc.image_size}",
        f"  pixel_values {tuple(pv.shape)}",
        f"  vision tower (CLIP, {vc.num_hidden_layers} layers) last_hidden_state "
        f"{tuple(out.vision_model_output.last_hidden_state.shape)}: {(vc.image_size // vc.patch_size) ** 2} "
        f"patches + CLS -> post_layernorm (every token) + L2 normalise",
        f"  image_to_text_projection: dense {vc.hidden_size}->{E}, {Q} latent queries attend to "
        f"{out.vision_model_output.last_hidden_state.shape[1]} + {Q} keys -> image embeds "
        f"{tuple(out.image_hidden_states.shape)}",
        f"  prompt {tuple(prompt.shape)} = <s> <image> {Q} image positions </image> <grounding> + 3 tokens; "
        f"image_embeds_position_mask {position_mask[0].tolist()}",
        f"  logits {tuple(out.logits.shape)}; greedy tokens {tokens[0, prompt.shape[1]:].tolist()}",
        "  grounding, on a fixed example string (a random model writes no <phrase>/<object> tokens; "
        "patch indices chosen by hand):",
        f"    caption {caption!r}",
        *(f"    entity {e.phrase!r} span {e.span} boxes {[tuple(round(v, 4) for v in b) for b in e.boxes]}"
          for e in entities),
        f"    boxes drawn on the picture (x{scale}): {png}",
    ])
    ms, ref_ms = time_model(lambda: model(prompt, **inputs))
    # float32 end to end on the kernels vs the reference math: the same operations in another order.
    # Measured 7.2e-7 on logits up to ~1.9 (6e-8 on the image embeds); each float32 run is ~6.5e-7 from a
    # float64 one, i.e. float32 rounding. 1e-4 absolute leaves a margin of over 100x.
    diff = max_abs_diff((out.logits, out.image_hidden_states), (ref.logits, ref.image_hidden_states))
    return StageResult("kosmos2", detail, diff, 1e-4, ms, ref_ms)


# The tiny AltCLIP's word-level vocabulary, XLM-R's special tokens first (0 <s>, 1 <pad>, 2 </s>).
ALTCLIP_WORDS = ["<s>", "<pad>", "</s>", "<unk>", "a", "photo", "of", "house", "cat", "sun", "over", "grass",
                 "boat"]
ALTCLIP_LABELS = ["house", "cat", "sun over grass", "boat"]


def tiny_altclip():
    """An AltCLIP of tiny proportions with random weights (minivlm.tools.tiny.altclip), and its image
    processor: 16 px images in 4 px patches (16 + the class token), a 2-layer CLIP tower of width 32; a
    2-layer XLM-R of width 32 (vocabulary 128, project_dim 24); a shared embedding width E_proj = 16."""
    from minivlm.models.altclip import AltCLIPConfig, AltCLIPModel
    from minivlm.processing import CLIPImageProcessor

    config = AltCLIPConfig.from_dict(tiny.altclip())
    torch.manual_seed(0)
    model = AltCLIPModel(config).eval()
    side = config.vision_config.image_size
    # BAAI/AltCLIP's CLIP preprocessing (shortest edge, centre crop, OpenAI mean/std) scaled to the tiny size.
    return model, CLIPImageProcessor(size={"shortest_edge": side}, crop_size={"height": side, "width": side})


def write_tiny_tokenizer(path):
    """A word-level tokenizer.json (the `tokenizers` library) with XLM-R's template <s> $A </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(ALTCLIP_WORDS)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A </s>",
                                                             special_tokens=[("<s>", 0), ("</s>", 2)])
    tokenizer.save(str(path))
    return path


def stage_altclip() -> StageResult:
    """A tiny random-weight AltCLIP (CLIP vision tower, XLM-R text tower, contrastive head): the drawn
    picture and two variants against a few labels tokenized with a tiny tokenizer.json, with the shapes and
    the zero-shot probabilities; logits_per_image on the compiled kernels against the reference math."""
    import tempfile
    from pathlib import Path

    from PIL import ImageOps

    from minivlm.models.altclip import tokenize_labels

    model, processor = tiny_altclip()
    cfg = model.config
    picture = draw_picture()
    images = {"picture": picture, "mirrored": ImageOps.mirror(picture), "inverted": ImageOps.invert(picture)}
    pv = processor(list(images.values()))["pixel_values"]                   # (N, 3, S, S)
    with tempfile.TemporaryDirectory() as tmp:
        ids, mask = tokenize_labels(write_tiny_tokenizer(Path(tmp) / "tokenizer.json"), ALTCLIP_LABELS)
    with torch.no_grad():
        out = model(ids, pv, attention_mask=mask)
        with ops.use_reference():
            ref = model(ids, pv, attention_mask=mask)
    probs = model.zero_shot(pv, ids, mask)                                  # (B_v, B_t), rows sum to 1
    vc, tc = cfg.vision_config, cfg.text_config
    B_v, B_t, E_proj = pv.shape[0], ids.shape[0], cfg.projection_dim
    detail = "\n".join([
        f"tiny random weights (the ranking below is meaningless); picture 40x120 (h x w), mirrored, "
        f"colour-inverted; shortest edge -> {vc.image_size}, centre crop {vc.image_size}x{vc.image_size}",
        f"  pixel_values {tuple(pv.shape)} --CLIP tower ({vc.num_hidden_layers} layers, "
        f"{(vc.image_size // vc.patch_size) ** 2} patches + CLS), post_layernorm(CLS) "
        f"{tuple(out.vision_model_output.pooler_output.shape)} --visual_projection, L2--> image_embeds "
        f"{tuple(out.image_embeds.shape)}",
        f"  labels {ALTCLIP_LABELS} in 'a photo of a {{}}' -> input_ids {tuple(ids.shape)}, attention_mask "
        f"{tuple(mask.shape)} (row lengths {mask.sum(1).tolist()}; pad {tc.pad_token_id} on the right)",
        f"  XLM-R ({tc.num_hidden_layers} post-LN layers) -> pre_LN -> transformation "
        f"{tuple(out.text_model_output.last_hidden_state.shape)} -> token 0 --text_projection, L2--> "
        f"text_embeds {tuple(out.text_embeds.shape)}",
        f"  logits_per_image {tuple(out.logits_per_image.shape)} = exp(logit_scale = "
        f"{model.logit_scale.item():.4f}) x cosine; logits_per_text {tuple(out.logits_per_text.shape)}",
        *(f"  zero-shot {name:<8} " + ", ".join(f"{ALTCLIP_LABELS[j]!r} {probs[i, j]:.3f}"
                                                 for j in probs[i].argsort(descending=True).tolist())
          for i, name in enumerate(images)),
    ])
    assert out.image_embeds.shape == (B_v, E_proj) and out.text_embeds.shape == (B_t, E_proj)
    ms, ref_ms = time_model(lambda: model(ids, pv, attention_mask=mask))
    # float32 end to end on the kernels vs the reference math: the same operations in another order. A
    # logit is exp(logit_scale) ~ 14.3 times a cosine of unit vectors, so its rounding error is ~14.3 times
    # that of the normalised embeddings (~1e-7 in float32): ~1.4e-6 whatever the cosine's size (here < 1).
    # Measured 1.4e-6, and each float32 run is 1.2e-6 to 1.7e-6 from a float64 one: float32 rounding.
    # 1e-4 absolute leaves a margin of 70x; bugs are far above it (measured on these logits: pads left
    # visible moves them by 1.2, positions off by one by 4.7).
    return StageResult("altclip", detail, max_abs_diff(out.logits_per_image, ref.logits_per_image), 1e-4,
                       ms, ref_ms)


# --------------------------------------------------------------------------------------------------
# The opening: the trained tiny VLM that ships with minivlm
# --------------------------------------------------------------------------------------------------

#: One letter per colour for the picture drawn in text; "." is the background.
COLOUR_LETTERS = {"red": "r", "green": "g", "blue": "b", "yellow": "y", "purple": "p", "orange": "o"}


def picture_as_text(image, columns: int = 32) -> list:
    """A picture as lines of letters (r, g, b, y, p, o for the six colours, "." for the background): each
    character is the nearest base colour of its cell's mean, or background where the cell is light grey.
    Characters are about twice as tall as wide, so a cell is two pixels of height per pixel of width."""
    import numpy as np

    from minivlm.tinyvlm import data

    rows = max(1, round(columns * image.height / image.width / 2))
    cells = np.asarray(image.convert("RGB").resize((columns, rows), resample=2), dtype=float)    # bilinear
    names = list(data.COLOURS)
    bases = np.array([data.COLOURS[n] for n in names], dtype=float)
    lines = []
    for row in cells:
        line = ""
        for pixel in row:
            if pixel.min() > 200 and pixel.max() - pixel.min() < 30:       # near-white, near-grey
                line += "."
                continue
            line += COLOUR_LETTERS[names[int(((bases - pixel) ** 2).sum(1).argmin())]]
        lines.append(line)
    return lines


def stage_tiny_vlm(seed: Optional[int] = None) -> StageResult:
    """The tiny VLM trained from scratch that ships with minivlm: a new picture of coloured shapes (seed:
    None draws one), the caption the model writes and its answers to two questions, each with the true
    answer; the caption prompt's logits on the compiled kernels against the reference math."""
    import random

    from minivlm.loading import from_pretrained
    from minivlm.processing import load_processor
    from minivlm.tinyvlm import data, shipped_folder
    from minivlm.tinyvlm.model import MAX_NEW_TOKENS, answer, prompt_text

    seed = random.SystemRandom().randrange(data.SPLIT_SIZE) if seed is None else seed
    folder = shipped_folder()
    model, processor = from_pretrained(folder, progress=False), load_processor(folder)
    example = data.make_example(data.SPLIT_OFFSETS["heldout"] + seed)        # never a training picture
    rng = random.Random(seed)
    picked = rng.sample(example.questions, 2)
    asked = [data.CAPTION_QUESTION] + [q.question for q in picked]
    truths = [example.caption] + [q.answer for q in picked]
    replies = answer(model, processor, [example.image] * 3, asked, max_new_tokens=MAX_NEW_TOKENS)
    width, height = example.image.size
    lines = [f"trained from scratch on this kind of CPU, shipped with minivlm ({sum(p.numel() for p in model.parameters()) / 1e6:.2f}M "
             f"parameters; docs/tiny_vlm.md); a new held-out picture, seed {seed}, {width}x{height} px:"]
    lines += [f"    {line}" for line in picture_as_text(example.image)]
    for question, reply, truth in zip(asked, replies, truths):
        verdict = "right" if reply == truth else f"wrong: it is {truth!r}"
        lines.append(f"  {question:<28} -> {reply}   ({verdict})")
    inputs = processor(text=prompt_text(processor, data.CAPTION_QUESTION), images=example.image, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
        with ops.use_reference():
            ref = model(**inputs).logits
    ms, ref_ms = time_model(lambda: model(**inputs))
    # float32, kernels against the reference math: the same sums in another order. The trained model's
    # logits reach about 19 in size, float32 rounding is ~1e-7 relative per operation, and 2 vision + 3
    # decoder layers compound it to ~1e-5 absolute (measured: at most 2.1e-5 over 30 held-out pictures);
    # 1e-4 leaves a margin of about 5x.
    return StageResult("tiny-vlm", "\n".join(lines), max_abs_diff(logits, ref), 1e-4, ms, ref_ms)


#: The demo's stages, in order. Add a stage by writing a function that returns a StageResult and
#: listing it here.
STAGES = [
    stage_attention,
    stage_rope,
    stage_causal_mask,
    stage_llava_next,
    stage_blip2,
    stage_kosmos2,
    stage_idefics,
    stage_altclip,
]


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

def format_result(r: StageResult) -> str:
    verdict = "ok" if r.ok else f"MISMATCH (tolerance {r.tolerance:g})"
    timing = f"{r.ms:.3f} ms" + ("" if r.reference_ms is None else f" (reference {r.reference_ms:.3f} ms)")
    return f"{r.name:<12} {r.detail}\n{'':<12} max|minivlm - reference| = {r.max_abs_diff:.2e} {verdict}; {timing}"


def run(threads: Optional[int] = None, stages=None, seed: Optional[int] = None) -> int:
    """Run the stages and print a line for each; returns 0 if every stage matched its reference, else 1.
    The opening stage, the shipped tiny VLM, draws a new picture each run (seed: the picture's seed)."""
    load_extension("minivlm demo")   # it compares the kernels with the reference: both must be there
    if threads is not None:
        torch.set_num_threads(threads)
    print(f"minivlm demo: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"kernels compiled for {torch.ops.minivlm.cpu_isa()}")
    failed = 0
    for stage in [lambda: stage_tiny_vlm(seed)] + STAGES if stages is None else stages:
        result = stage()
        print(format_result(result))
        sys.stdout.flush()
        failed += not result.ok
    print("all stages match the reference" if not failed else f"{failed} stage(s) differ from the reference")
    return 1 if failed else 0
