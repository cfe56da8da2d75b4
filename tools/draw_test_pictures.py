"""Draw the tiny VLM's hand-made test pictures: minivlm/tinyvlm/pictures/*.png and pictures.json.

    python tools/draw_test_pictures.py

These pictures are made outside the training data's generator, the way a user makes one in a paint
program: matplotlib's vector shapes rasterised by Agg (its own anti-aliasing, not the generator's 4x
supersampling), a pure white background, no noise, the colours of Microsoft Paint's default palette
rather than the generator's shades, shape proportions the generator does not use (a wider triangle,
a square with the shape's own margin), and picture sizes from 150 to 500 pixels (the generator's are 24
to 128), square and not. pictures.json lists, per picture, what it shows, its caption and the questions
asked about it with their answers (the questions and captions follow the data's templates, so the answers
are known). tests/test_tinyvlm_pictures.py scores the shipped model on them.
"""
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import patches  # noqa: E402

from minivlm.tinyvlm import data  # noqa: E402

OUT = Path(__file__).resolve().parent.parent / "minivlm" / "tinyvlm" / "pictures"

#: Microsoft Paint's default palette, the colour a user picks for each name.
PAINT = {"red": "#ed1c24", "green": "#22b14c", "blue": "#3f48cc", "yellow": "#fff200", "purple": "#a349a4",
         "orange": "#ff7f27"}

#: (width, height, [(kind, colour, quadrant, size as a share of the shorter side, (dx, dy) offset in the
#: quadrant as shares of its free room)])
PICTURES = [
    (200, 200, [("circle", "red", "top left", 0.35, (0.4, 0.5))]),
    (300, 240, [("square", "blue", "bottom right", 0.40, (0.5, 0.3))]),
    (160, 220, [("triangle", "green", "top right", 0.38, (0.6, 0.4))]),
    (256, 256, [("circle", "yellow", "bottom left", 0.30, (0.2, 0.7))]),
    (400, 300, [("triangle", "purple", "top left", 0.35, (0.5, 0.5)), ("circle", "orange", "bottom right", 0.33, (0.4, 0.6))]),
    (180, 180, [("square", "green", "top right", 0.32, (0.3, 0.3)), ("triangle", "red", "bottom left", 0.36, (0.7, 0.5))]),
    (320, 320, [("circle", "blue", "top left", 0.30, (0.6, 0.6)), ("square", "yellow", "top right", 0.34, (0.4, 0.5))]),
    (240, 180, [("triangle", "orange", "bottom left", 0.38, (0.5, 0.4)), ("square", "purple", "bottom right", 0.35, (0.5, 0.5))]),
    (150, 200, [("circle", "green", "top left", 0.34, (0.5, 0.3)), ("circle", "purple", "bottom right", 0.30, (0.5, 0.6))]),
    (500, 500, [("square", "red", "top left", 0.30, (0.5, 0.5)), ("triangle", "blue", "top right", 0.32, (0.5, 0.5)),
                ("circle", "orange", "bottom right", 0.30, (0.5, 0.5))]),
    (210, 280, [("circle", "yellow", "top right", 0.32, (0.4, 0.4)), ("square", "green", "bottom left", 0.30, (0.5, 0.5)),
                ("triangle", "red", "bottom right", 0.34, (0.6, 0.5))]),
    (280, 210, [("triangle", "blue", "top left", 0.36, (0.5, 0.6)), ("circle", "red", "bottom left", 0.30, (0.4, 0.5)),
                ("square", "orange", "bottom right", 0.32, (0.5, 0.4))]),
]


def draw(width, height, shapes, path):
    """One picture: each shape inside its quadrant (y grows downwards, as in an image)."""
    dpi = 100
    fig = plt.figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)
    ax.axis("off")
    fig.patch.set_facecolor("white")
    boxes = []
    for kind, colour, quadrant, share, (fx, fy) in shapes:
        side = share * min(width, height)
        q = data.QUADRANTS.index(quadrant)
        left = width / 2 if q % 2 else 0
        top = height / 2 if q >= 2 else 0
        x0 = left + fx * (width / 2 - side)
        y0 = top + fy * (height / 2 - side)
        face = PAINT[colour]
        if kind == "circle":
            patch = patches.Circle((x0 + side / 2, y0 + side / 2), side / 2, color=face, antialiased=True)
        elif kind == "square":
            inset = 0.05 * side
            patch = patches.Rectangle((x0 + inset, y0 + inset), side - 2 * inset, side - 2 * inset, color=face,
                                      antialiased=True)
        else:       # a triangle a little wider than tall, pointing up
            patch = patches.Polygon([(x0, y0 + 0.9 * side), (x0 + side, y0 + 0.9 * side), (x0 + side / 2, y0 + 0.05 * side)],
                                    closed=True, color=face, antialiased=True)
        ax.add_patch(patch)
        boxes.append((x0, y0, x0 + side, y0 + side))
    fig.savefig(path, dpi=dpi, facecolor="white")
    plt.close(fig)
    return boxes


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = []
    for i, (width, height, shapes) in enumerate(PICTURES):
        name = f"drawn_{i + 1:02d}.png"
        boxes = draw(width, height, shapes, OUT / name)
        scene = data.Scene(size=(width, height), background=(255, 255, 255),
                           shapes=[data.Shape(k, c, q, box) for (k, c, q, _, _), box in zip(shapes, boxes)])
        questions = data.questions(scene, np.random.default_rng(i))
        manifest.append({"file": name, "size": [width, height],
                         "shapes": [{"kind": k, "colour": c, "quadrant": q} for k, c, q, _, _ in shapes],
                         "caption": data.caption(scene),
                         "questions": [{"kind": q.kind, "question": q.question, "answer": q.answer} for q in questions]})
    with open(OUT / "pictures.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f, indent=1)
        f.write("\n")
    print(f"wrote {len(manifest)} pictures and pictures.json to {OUT}")


if __name__ == "__main__":
    main()
