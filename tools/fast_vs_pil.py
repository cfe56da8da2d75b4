"""How far Transformers' torchvision ("fast") image processors are from its PIL ones, which minivlm's
image processors (minivlm/processing/images.py) equal value for value (tests/test_processing.py).

Since Transformers 5, `LlavaNextImageProcessor`, `BlipImageProcessor`, `CLIPImageProcessor` and
`IdeficsImageProcessor` are the torchvision classes, and AutoImageProcessor / AutoProcessor pick them
whenever torchvision is installed; the PIL classes are `...ImageProcessorPil` (or `backend="pil"`).
For each processor minivlm matches, with its checkpoints' settings, this script builds both classes with
the same settings, runs them on the same images (random noise and smooth synthetic pictures: gradients
with circles drawn by PIL; several sizes, RGB, RGBA and L), and reports per processor and kind of image:

- whether the shapes (and for LLaVA-NeXT the crop counts and image_sizes) agree;
- max and mean |fast - PIL| of pixel_values, in normalized units (what the model reads) and in 0-255
  pixel units (the normalized difference times image_std * 255, channel by channel);
- the fraction of values that differ at all (by more than 0.5 pixel units: the differences come out as
  whole grey levels, 1/255 of the [0, 1] range, plus float32 rounding) and by more than one grey level
  (> 1.5 pixel units), and the image with the largest difference;
- the median time of one call per image over the set (of --repeats runs, the two classes' runs
  alternating), for each class, on the CPU. On a shared machine these times follow its load: read them
  as a guide, and rerun.

It also saves a folder with each PIL class and reports the image_processor_type written there and the
class AutoImageProcessor reads it back as (by default, and with backend="pil").

With --logits it also feeds the PIL and fast LLaVA-NeXT pixel values of a few images to a small random
Transformers LLaVA-NeXT (minivlm.tools.tiny's config, with the real 336 px crops in 14 px patches and the
real pinpoints, so that it reads these very pixel values) and reports how much the logits move.

Needs torchvision, which minivlm's own environment does not have; use a separate venv:

    python3.11 -m venv ~/venv-tv
    ~/venv-tv/bin/pip install torch==2.14.1 torchvision==0.29.1 transformers==5.23.0 pillow numpy
    ~/venv-tv/bin/python tools/fast_vs_pil.py [--repeats 5] [--threads 1] [--logits] [--json out.json]

Run it from the repository root. It prints Markdown tables. Nothing is downloaded. Of minivlm it reads
only minivlm/tools/tiny.py (plain Python, for --logits' config), loaded as a file, not through the
minivlm package: minivlm's compiled extension is built against minivlm's own torch and need not load
under this one. Transformers' model itself counts the image tokens each image needs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, ImageDraw

import transformers

try:
    import torchvision
except ImportError:
    sys.exit("fast_vs_pil.py needs torchvision: run it in the venv its docstring describes")

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]
BICUBIC = 3
PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# name -> (Transformers class name, settings: those of the checkpoints minivlm targets)
PROCESSORS = {
    "LLaVA-NeXT (llava-v1.6, 336 crops)": ("LlavaNextImageProcessor", dict(
        size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=PINPOINTS,
        resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD)),
    "BLIP-2 (Blip, 224)": ("BlipImageProcessor", dict(
        size={"height": 224, "width": 224}, resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD)),
    "Kosmos-2 (CLIP, 224 use_square_size)": ("CLIPImageProcessor", dict(
        size={"shortest_edge": 224}, use_square_size=True, crop_size={"height": 224, "width": 224},
        resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD)),
    "AltCLIP (CLIP, edge 224, crop 224)": ("CLIPImageProcessor", dict(
        size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224}, do_center_crop=True,
        resample=BICUBIC, image_mean=CLIP_MEAN, image_std=CLIP_STD)),
    "IDEFICS (224)": ("IdeficsImageProcessor", dict(
        image_size=224, image_mean=CLIP_MEAN, image_std=CLIP_STD)),
}

SIZES = [(640, 480), (1024, 768), (333, 500), (37, 1000), (224, 224), (1, 1)]   # (width, height)
EXTRA_MODES = [((640, 480), "RGBA"), ((500, 333), "L")]
THRESHOLDS_PX = [0.5, 1.5, 4.5]   # px; the differences are whole grey levels (plus float32 rounding)


def noise_image(width, height, mode, seed):
    """Uniform random pixels (alpha too), converted to `mode`: the worst case for any resampler."""
    rgba = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    return image if mode == "RGBA" else image.convert(mode)


def smooth_image(width, height, mode, seed):
    """A colour gradient with a few filled circles drawn on it (sharp edges, flat insides); RGBA gets a
    radial alpha gradient."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    u, v = x / max(width - 1, 1), y / max(height - 1, 1)
    rgb = np.stack([255 * u, 255 * v, 255 * (1 - (u + v) / 2)], axis=-1).round().astype(np.uint8)
    image = Image.fromarray(rgb, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(6):
        cx, cy = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.05, 0.3) * max(min(width, height), 8)
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
    if mode == "RGBA":
        d = np.sqrt((u - 0.5) ** 2 + (v - 0.5) ** 2) / np.sqrt(0.5)
        alpha = Image.fromarray((255 * (1 - d)).round().astype(np.uint8), "L")
        image.putalpha(alpha)
        return image
    return image if mode == "RGB" else image.convert(mode)


def image_set(kind):
    make = noise_image if kind == "noise" else smooth_image
    items = [((w, h), "RGB") for w, h in SIZES] + EXTRA_MODES
    return [(f"{w}x{h} {mode}", make(w, h, mode, seed=i)) for i, ((w, h), mode) in enumerate(items)]


def run(processor, image):
    """pixel_values (and image_sizes, where given) of one image, as a dict of tensors."""
    out = processor(image, return_tensors="pt")
    if isinstance(out, torch.Tensor):             # IdeficsImageProcessor returns the tensor itself
        return {"pixel_values": out}
    return {k: v for k, v in out.items() if isinstance(v, torch.Tensor)}


def compare(pil_out, fast_out, std):
    """Shapes agree? and the differences of pixel_values, normalized and in 0-255 units."""
    a, b = pil_out["pixel_values"], fast_out["pixel_values"]
    shapes = a.shape == b.shape
    sizes = all(torch.equal(pil_out[k], fast_out[k]) for k in ("image_sizes",) if k in pil_out) \
        and set(pil_out) == set(fast_out)
    if not shapes:
        return {"shapes_agree": False, "sizes_agree": sizes, "pil_shape": list(a.shape),
                "fast_shape": list(b.shape)}
    diff = (b.double() - a.double()).abs()
    scale = torch.tensor(std, dtype=torch.float64).view(3, 1, 1) * 255   # channel axis is -3 everywhere
    px = diff * scale
    return {"shapes_agree": True, "sizes_agree": sizes, "shape": list(a.shape), "n": diff.numel(),
            "max_norm": diff.max().item(), "sum_norm": diff.sum().item(),
            "max_px": px.max().item(), "sum_px": px.sum().item(),
            "over_px": {str(t): int((px > t).sum()) for t in THRESHOLDS_PX}}


def median_ms_per_image(processors, images, repeats):
    """Median ms per image of one call per image, for each processor; their runs alternate, so that a load
    from other processes falls on both alike."""
    times = [[] for _ in processors]
    for _ in range(repeats):
        for processor, t in zip(processors, times):
            start = time.perf_counter()
            for image in images:
                run(processor, image)
            t.append((time.perf_counter() - start) / len(images) * 1e3)
    return [statistics.median(t) for t in times]


def measure(repeats):
    results = []
    for name, (class_name, settings) in PROCESSORS.items():
        pil = getattr(transformers, class_name + "Pil")(**settings)
        fast = getattr(transformers, class_name)(**settings)
        assert "Torchvision" in type(fast).__mro__[1].__name__, type(fast).__mro__
        std = settings["image_std"]
        for kind in ("smooth", "noise"):
            images = image_set(kind)
            per_image, errors = [], []
            for label, image in images:
                try:
                    p = run(pil, image)
                except Exception as e:   # noqa: BLE001 - reported, not hidden
                    errors.append(f"{label}: PIL {type(e).__name__}: {e}")
                    continue
                try:
                    f = run(fast, image)
                except Exception as e:   # noqa: BLE001
                    errors.append(f"{label}: fast {type(e).__name__}: {e}")
                    continue
                per_image.append({"image": label, **compare(p, f, std)})
            ok = [r for r in per_image if r["shapes_agree"]]
            n = sum(r["n"] for r in ok)
            row = {"processor": name, "pil_class": type(pil).__name__, "fast_class": type(fast).__name__,
                   "settings": settings, "images": kind, "count": len(images), "errors": errors,
                   "shapes_agree": len(ok) == len(per_image) and not errors,
                   "sizes_agree": all(r["sizes_agree"] for r in per_image),
                   "values": n,
                   "max_norm": max(r["max_norm"] for r in ok), "mean_norm": sum(r["sum_norm"] for r in ok) / n,
                   "max_px": max(r["max_px"] for r in ok), "mean_px": sum(r["sum_px"] for r in ok) / n,
                   "frac_over_px": {str(t): sum(r["over_px"][str(t)] for r in ok) / n for t in THRESHOLDS_PX},
                   "worst_image": max(ok, key=lambda r: r["max_px"])["image"],
                   "per_image": per_image}
            plain = [im for _, im in images]
            run(pil, plain[0]), run(fast, plain[0])   # warm-up
            row["pil_ms"], row["fast_ms"] = median_ms_per_image([pil, fast], plain, repeats)
            results.append(row)
            print(f"  {name} / {kind}: max {row['max_px']:.2f} px, PIL {row['pil_ms']:.1f} ms, "
                  f"fast {row['fast_ms']:.1f} ms", file=sys.stderr)
    return results


def load_tiny():
    """minivlm/tools/tiny.py of this checkout, loaded as a file. It is plain Python (no torch, no
    Transformers); importing it as minivlm.tools.tiny would run minivlm/__init__.py, which, with torch
    already imported, loads minivlm.ops and the compiled extension, built against minivlm's own torch."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "minivlm" / "tools" / "tiny.py"
    spec = importlib.util.spec_from_file_location("minivlm_tiny", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_token_count(model, pixel_values, image_sizes):
    """How many image tokens input_ids must hold for the images: the length of the features Transformers'
    LLaVA-NeXT packs for them (per image: base crop, unpadded crop grid, one newline per row)."""
    config = model.config
    with torch.no_grad():
        features = model.model.get_image_features(
            pixel_values, image_sizes, vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy).pooler_output
    return sum(f.shape[0] for f in features)   # one (tokens, hidden) tensor per image


def logits_effect(seed=0):
    """Logits of a small random LLaVA-NeXT (Transformers) on PIL against fast pixel values."""
    tiny = load_tiny()
    d = tiny.llava_next(text="llama")
    d["vision_config"].update(image_size=336, patch_size=14)       # the real crops: 24 x 24 patches
    d["image_grid_pinpoints"] = PINPOINTS
    d["text_config"]["max_position_embeddings"] = 8192
    config = transformers.AutoConfig.for_model(**d)
    torch.manual_seed(seed)
    model = transformers.LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():   # as tests/_llava.py's hf_model: larger than the default init
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    settings = PROCESSORS["LLaVA-NeXT (llava-v1.6, 336 crops)"][1]
    pil = transformers.LlavaNextImageProcessorPil(**settings)
    fast = transformers.LlavaNextImageProcessor(**settings)
    cases = [("smooth 640x480", smooth_image(640, 480, "RGB", 0)),
             ("smooth 333x500", smooth_image(333, 500, "RGB", 2)),
             ("noise 640x480", noise_image(640, 480, "RGB", 0))]
    rows = []
    for label, image in cases:
        inputs = {"pil": run(pil, image), "fast": run(fast, image)}
        count = image_token_count(model, **inputs["pil"])   # the same for "fast": its image_sizes are equal
        g = torch.Generator().manual_seed(seed)
        text = torch.randint(3, d["image_token_index"], (8,), generator=g).tolist()
        ids = torch.tensor([[1] + text[:3] + [d["image_token_index"]] * count + text[3:]])
        out = {}
        for which in ("pil", "fast"):
            with torch.no_grad():
                out[which] = model(input_ids=ids, pixel_values=inputs[which]["pixel_values"],
                                   image_sizes=inputs[which]["image_sizes"]).logits[0].double()
        text_pos = torch.tensor([i for i, t in enumerate(ids[0].tolist()) if t != d["image_token_index"]])
        delta = (out["fast"] - out["pil"]).abs()
        scale = out["pil"].abs().max().item()
        rows.append({"image": label, "tokens": ids.shape[1],
                     "max_rel": delta.max().item() / scale,
                     "max_rel_text": delta[text_pos].max().item() / scale,
                     "argmax_changed": float((out["fast"].argmax(-1) != out["pil"].argmax(-1)).double().mean())})
    return rows


def auto_classes():
    """For each PIL class: the image_processor_type its save_pretrained writes, and the classes
    AutoImageProcessor loads from that folder, by default and with backend="pil"."""
    auto = {}
    for class_name in sorted({c for c, _ in PROCESSORS.values()}):
        pil_name = class_name + "Pil"
        with tempfile.TemporaryDirectory() as folder:
            getattr(transformers, pil_name)().save_pretrained(folder)
            saved = json.loads((Path(folder) / "preprocessor_config.json").read_text())
            auto[pil_name] = {"saved_as": saved.get("image_processor_type"),
                              "default": type(transformers.AutoImageProcessor.from_pretrained(folder)).__name__,
                              "backend=pil": type(transformers.AutoImageProcessor.from_pretrained(
                                  folder, backend="pil")).__name__}
    return auto


def markdown(results):
    lines = ["| processor | images | shapes agree | max \\|diff\\| px (image) | mean \\|diff\\| px | > 0.5 px "
             "| > 1.5 px | max \\|diff\\| normalized | mean \\|diff\\| normalized | PIL ms/image | fast ms/image |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in results:
        agree = "yes" if r["shapes_agree"] and r["sizes_agree"] else "**no**"
        lines.append(f"| {r['processor']} | {r['images']} | {agree} | {r['max_px']:.0f} ({r['worst_image']}) "
                     f"| {r['mean_px']:.3f} | {100 * r['frac_over_px']['0.5']:.2f}% "
                     f"| {100 * r['frac_over_px']['1.5']:.2f}% | {r['max_norm']:.3f} | {r['mean_norm']:.4f} "
                     f"| {r['pil_ms']:.1f} | {r['fast_ms']:.1f} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timing runs per processor (median)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch.set_num_threads (default 1, as PIL: with several, the torchvision times grow "
                             "several-fold whenever other processes load the cores); 0 keeps torch's default")
    parser.add_argument("--logits", action="store_true", help="also the effect on a small LLaVA-NeXT's logits")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = {"transformers": transformers.__version__, "torch": torch.__version__,
           "torchvision": torchvision.__version__, "pillow": PIL.__version__, "numpy": np.__version__,
           "torch_threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_average": os.getloadavg()}
    print(f"# {env}", file=sys.stderr)
    auto = auto_classes()
    results = measure(args.repeats)
    report = {"environment": env, "auto_image_processor": auto, "results": results,
              "images": {"sizes_wxh_rgb": SIZES, "extra": EXTRA_MODES, "kinds": ["smooth", "noise"]},
              "thresholds_px": THRESHOLDS_PX}
    print("A folder saved by each PIL class, read back by AutoImageProcessor: " + ", ".join(
        f"{k} (saved as {v['saved_as']}) -> {v['default']} (backend='pil': {v['backend=pil']})"
        for k, v in auto.items()))
    print()
    print(markdown(results))
    for r in results:
        for e in r["errors"]:
            print(f"- {r['processor']} / {r['images']}: {e}")
    if args.logits:
        report["logits"] = logits_effect()
        print()
        print("| image | tokens | max \\|Δlogits\\| / max \\|logits\\| | at text positions "
              "| argmax changed (all positions) |")
        print("| --- | ---: | ---: | ---: | ---: |")
        for r in report["logits"]:
            print(f"| {r['image']} | {r['tokens']} | {r['max_rel']:.2e} | {r['max_rel_text']:.2e} "
                  f"| {100 * r['argmax_changed']:.1f}% |")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
