"""Kosmos-2's processor: prompts, images and boxes -> input_ids, attention_mask, image_embeds_position_mask
and pixel_values, equal to Transformers' Kosmos2Processor's.

    processor = Kosmos2Processor.from_pretrained(folder)
    inputs = processor(text="<grounding>An image of", images=photo, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=30)
    caption, entities = processor.post_process_generation(processor.decode(tokens[0], skip_special_tokens=True))

Kosmos-2 reads one image per prompt. The resampler turns it into num_image_tokens vectors (the model
config's latent_query_num, 64 for the checkpoints), which the decoder reads in place of as many token
embeddings right after BOS, between `<image>` and `</image>`:

    "<grounding>An image of"  ->  <s> <image> [num_image_tokens positions] </image> <grounding> An image of
    image_embeds_position_mask     0    0     1 ... 1                          0         0     0 ...

The prompt (stripped) gets "<image> <image> x num_image_tokens </image> " in front, the tokenizer's BOS
string before that, and is tokenized as one text; then the positions of the placeholder `<image>`s are
given the ids first_image_token_id, first_image_token_id + 1, ... (default: the id after `<unk>`), as
Transformers writes them (the model replaces those embeddings anyway). Without images the prompt is
tokenized alone (BOS, no placeholders, no image_embeds_position_mask).

Boxes. Each `<phrase>...</phrase>` of a prompt may be given boxes (`bboxes`, one list per prompt, one entry
per phrase in order): a box is a tuple (x0, y0, x1, y1) of fractions of the image's width and height, or a
tuple (first, last) of patch indices; an entry is None (no box), one box, or a list of boxes. They are
written right after the phrase, as the cells of the image's grid (sqrt(num_patch_index_tokens) cells a side,
numbered row by row) holding the box's top-left and bottom-right corners:

    "<phrase>a cat</phrase> sleeps", [(0.0, 0.5, 0.5, 1.0)]
        ->  <phrase>a cat</phrase><object> <patch_index_0512> <patch_index_1007> </object> sleeps
    several boxes:  <object> <patch_index_A> <patch_index_B> </delimiter_of_multi_objects/> ... </object>

The tag tokens and the patch tokens are added to the tokenizer (as plain added tokens, which decode keeps)
where the folder's tokenizer lacks them. Padding: a batch with images is always padded to its longest row
(or max_length with padding="max_length"), on the tokenizer's padding_side, and a single prompt with an
image never is, as Transformers does; a batch without images is padded as the tokenizer pads.
`post_process_generation` turns generated text back into a caption and its boxes (minivlm.grounding).
"""
from __future__ import annotations

import math
import numbers
import re

import torch

from .. import grounding
from .base import Processor, check_texts
from .images import CLIPImageProcessor

IMAGE_START, IMAGE_END = "<image>", "</image>"
PHRASE = re.compile(r"<phrase>.+?</phrase>")     # a phrase: the fewest (one or more) characters, no newline
# The tokens Kosmos-2 adds to its tokenizer, in this order, then <patch_index_0000>, <patch_index_0001>, ...
TAG_TOKENS = ("</doc>", IMAGE_START, IMAGE_END, "</chunk>", "</line>", "<phrase>", "</phrase>", "<object>",
              "</object>", grounding.MULTI_OBJECT_DELIMITER, "<grounding>")


def patch_token(index: int) -> str:
    return f"<patch_index_{index:04d}>"


class Kosmos2Processor(Processor):
    image_processor_class = CLIPImageProcessor
    settings = {"num_patch_index_tokens": 1024}     # the grid's cells: 32 x 32 for the checkpoints

    def __init__(self, tokenizer, image_processor=None, **settings):
        super().__init__(tokenizer, image_processor, **settings)
        n = self.num_patch_index_tokens
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"Kosmos2Processor: num_patch_index_tokens must be a positive int (the image "
                             f"grid's cell count, processor_config.json's), got {n!r}")
        self.num_patches_per_side = math.isqrt(n)
        from tokenizers import AddedToken

        # Added as Transformers adds them (tokens already there keep their ids).
        tokenizer.backend.add_tokens([AddedToken(t, lstrip=True, rstrip=False, normalized=False, special=False)
                                      for t in TAG_TOKENS + tuple(patch_token(i) for i in range(n))])

    # -- the call -------------------------------------------------------------------------------------

    def __call__(self, text=None, images=None, bboxes=None, *, num_image_tokens: int = 64,
                 first_image_token_id=None, add_eos_token: bool = False, add_special_tokens: bool = True,
                 padding=False, truncation: bool = False, max_length=None, return_tensors=None) -> dict:
        """text: a prompt or a list of them; images: a PIL image or a list, one per prompt (or None);
        bboxes: per prompt a list with one entry per `<phrase>` (see the module docstring), a list of those
        for a list of prompts; num_image_tokens: the model's latent_query_num; first_image_token_id: the id
        of the first image position (default the id after <unk>); add_eos_token: let the tokenizer add its
        special tokens (BOS and EOS) instead of writing BOS alone. Returns input_ids and attention_mask
        (where text is given), image_embeds_position_mask (text and images) and pixel_values (images):
        lists (one prompt: one row) or, with return_tensors="pt", (B, T) int64 tensors."""
        name = type(self).__name__
        if text is None and images is None:
            raise ValueError(f"{name}: give text, images or both")
        texts = check_texts(self, text, allow_none=True)
        single = isinstance(text, str)
        if isinstance(num_image_tokens, bool) or not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise ValueError(f"{name}: num_image_tokens must be a positive int (the model's latent_query_num), "
                             f"got {num_image_tokens!r}")
        if first_image_token_id is not None and (isinstance(first_image_token_id, bool) or
                                                 not isinstance(first_image_token_id, int) or first_image_token_id < 0):
            raise ValueError(f"{name}: first_image_token_id must be None or a non-negative int, got "
                             f"{first_image_token_id!r}")
        for option, value in (("add_eos_token", add_eos_token), ("add_special_tokens", add_special_tokens),
                              ("truncation", truncation)):
            if not isinstance(value, bool):
                raise TypeError(f"{name}: {option} must be a bool, got {value!r:.80}")
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"{name}: padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError(f"{name}: padding='max_length' needs max_length")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"{name}: return_tensors must be None or 'pt', got {return_tensors!r}")

        out = {}
        if images is not None:
            if self.image_processor is None:
                raise ValueError(f"{name}: images were given and the processor has no image processor")
            images = list(images) if isinstance(images, (list, tuple)) else [images]
            if texts is not None and len(images) != len(texts):
                raise ValueError(f"{name}: {len(texts)} prompt(s) and {len(images)} image(s) were given; "
                                 f"Kosmos-2 reads one image per prompt")
            out.update(self.image_processor(images))
        if texts is None:
            if bboxes is not None:
                raise ValueError(f"{name}: bboxes belong to the phrases of a text; no text was given")
            return out

        per_text = self._check_bboxes(bboxes, texts, single)
        prefix = ""
        if images is not None:
            prefix = " ".join([IMAGE_START] * (num_image_tokens + 1) + [IMAGE_END]) + " "
        expanded = [self._insert_boxes(prefix + t.strip(), boxes, i)
                    for i, (t, boxes) in enumerate(zip(texts, per_text))]
        if add_special_tokens and not add_eos_token:    # BOS written as text; the tokenizer adds nothing
            if self.tokenizer.bos_token is None:
                raise ValueError(f"{name}: the tokenizer has no bos_token to start the prompt with")
            expanded = [self.tokenizer.bos_token + t for t in expanded]
        tokenize = dict(add_special_tokens=add_special_tokens and add_eos_token, truncation=truncation,
                        max_length=max_length)

        encoded = self.tokenizer(expanded, **tokenize)
        rows, masks = encoded["input_ids"], encoded["attention_mask"]
        longest = max(len(row) for row in rows)
        if max_length is not None and not truncation and longest > max_length:
            # (Transformers cuts such a prompt in some paths and not in others; minivlm asks.)
            raise ValueError(f"{name}: a prompt is {longest} tokens long, more than max_length={max_length}; "
                             f"pass truncation=True to cut it, or a larger max_length")
        if images is None:
            return {**out, **self.tokenizer(expanded[0] if single else expanded, padding=padding,
                                            return_tensors=return_tensors, **tokenize)}
        first = first_image_token_id
        if first is None:
            if self.tokenizer.unk_token_id is None:
                raise ValueError(f"{name}: the tokenizer has no unk_token, whose next id the image positions "
                                 f"take by default; pass first_image_token_id")
            first = self.tokenizer.unk_token_id + 1
        start = 1 + int(add_special_tokens)               # the first image position: after <s> (if any), <image>
        end = start + num_image_tokens                    # where </image> stands
        image_ids = list(range(first, first + num_image_tokens))
        positions = []
        for i, row in enumerate(rows):
            if len(row) <= end:
                raise ValueError(f"{name}: prompt {i} is {len(row)} tokens long after truncation, which cuts into "
                                 f"its {num_image_tokens} image tokens (they end at position {end}); raise "
                                 f"max_length")
            row[start:end] = image_ids
            positions.append([0] * start + [1] * num_image_tokens + [0] * (len(row) - end))
        if not single:    # a batch with images: padded to its longest row, or to max_length
            length = longest
            if padding == "max_length":
                length = max(length, max_length)
            rows = [self._pad(row, length, self.tokenizer.pad_token_id) for row in rows]
            masks = [self._pad(row, length, 0) for row in masks]
            positions = [self._pad(row, length, 0) for row in positions]
        result = {"input_ids": rows, "attention_mask": masks, "image_embeds_position_mask": positions}
        if return_tensors == "pt":
            result = {k: torch.tensor(v, dtype=torch.long) for k, v in result.items()}
        elif single:
            result = {k: v[0] for k, v in result.items()}
        return {**out, **result}

    def _pad(self, row: list, length: int, value) -> list:
        if len(row) < length and value is None:
            raise ValueError(f"{type(self).__name__}: the prompts have different lengths and the tokenizer "
                             f"has no pad token to pad them with")
        fill = [value] * (length - len(row))
        return fill + row if self.tokenizer.padding_side == "left" else row + fill

    # -- boxes --------------------------------------------------------------------------------------------

    def _check_bboxes(self, bboxes, texts: list, single: bool) -> list:
        """bboxes -> one entry per text (None or a list of phrase entries), each entry checked."""
        name = type(self).__name__
        if bboxes is None:
            return [None] * len(texts)
        if single:
            per_text = [bboxes]
        elif not isinstance(bboxes, list):
            raise TypeError(f"{name}: bboxes must be a list with one entry per prompt (None or a list of "
                            f"boxes per phrase), got {type(bboxes).__name__}")
        elif len(bboxes) != len(texts):
            raise ValueError(f"{name}: {len(texts)} prompt(s) and {len(bboxes)} bboxes entries were given; "
                             f"give one per prompt (None for a prompt without boxes)")
        else:
            per_text = bboxes
        for i, boxes in enumerate(per_text):
            where = "bboxes" if single else f"bboxes[{i}]"
            if boxes is None:
                continue
            if not isinstance(boxes, list):
                raise TypeError(f"{name}: {where} must be None or a list with one entry per <phrase> of the "
                                f"prompt, got {boxes!r:.80}")
            for j, entry in enumerate(boxes):
                if entry is None:
                    continue
                for k, box in enumerate(entry if isinstance(entry, list) else [entry]):
                    self._check_box(box, f"{where}[{j}]" + (f"[{k}]" if isinstance(entry, list) else ""))
        return per_text

    def _check_box(self, box, where: str):
        name = type(self).__name__
        expected = ("a tuple (x0, y0, x1, y1) of fractions of the image size, or (first, last) patch indices "
                    "(a list holds several boxes of one phrase)")
        if not isinstance(box, tuple) or len(box) not in (2, 4):
            raise ValueError(f"{name}: {where} must be {expected}, got {box!r:.80}")
        if len(box) == 2:
            n = self.num_patch_index_tokens
            if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n for v in box):
                raise ValueError(f"{name}: {where} = {box!r} as patch indices must be two ints in [0, {n})")
            return
        if not all(isinstance(v, numbers.Real) and not isinstance(v, bool) for v in box):
            raise ValueError(f"{name}: {where} must be {expected}, got {box!r:.80}")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"{name}: {where} = {box!r} must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                             f"(the corners as fractions of the image's width and height)")

    def _insert_boxes(self, text: str, boxes, index: int) -> str:
        """`<object> ... </object>` after each phrase that has boxes."""
        if not boxes:
            return text
        phrases = list(PHRASE.finditer(text))
        if len(phrases) != len(boxes):
            raise ValueError(f"{type(self).__name__}: prompt {index} holds {len(phrases)} <phrase>...</phrase> "
                             f"pair(s) and its bboxes list has {len(boxes)} entries; give one entry per phrase "
                             f"(None for a phrase without a box)")
        pieces, done = [], 0
        for phrase, entry in zip(phrases, boxes):
            pieces.append(text[done:phrase.end()])
            done = phrase.end()
            cells = [self._cells(box) for box in (entry if isinstance(entry, list) else [entry] if entry else [])]
            if cells:
                joined = f" {grounding.MULTI_OBJECT_DELIMITER} ".join(f"{patch_token(a)} {patch_token(b)}"
                                                                        for a, b in cells)
                pieces.append(f"<object> {joined} </object>")
        return "".join(pieces) + text[done:]

    def _cells(self, box) -> tuple[int, int]:
        if len(box) == 2:
            return box
        return grounding.box_to_patch_indices(box, self.num_patches_per_side)

    # -- generated text -------------------------------------------------------------------------------------

    def post_process_generation(self, text: str, cleanup_and_extract: bool = True):
        """Decoded output -> (caption, [Entity(phrase, span, boxes)]) on this processor's grid, or with
        cleanup_and_extract=False the text after the last `</image>` (minivlm.grounding)."""
        return grounding.post_process_generation(text, cleanup_and_extract, self.num_patches_per_side)

    def post_process_image_text_to_text(self, rows, skip_special_tokens: bool = True) -> list[str]:
        """Generated rows (B, T) -> the text of each after the last `</image>`, tags kept."""
        return [self.post_process_generation(t, cleanup_and_extract=False)
                for t in self.batch_decode(rows, skip_special_tokens=skip_special_tokens)]


__all__ = ["Kosmos2Processor"]
