"""IDEFICS's processor: interleaved samples of text and images -> input_ids, attention_mask, pixel_values
and image_attention_mask, equal to Transformers' IdeficsProcessor's.

    processor = IdeficsProcessor.from_pretrained(folder)
    inputs = processor(text=[["User:", photo, "Describe it.", "<end_of_utterance>", "\\nAssistant:"]])
    tokens = model.generate(**inputs, max_new_tokens=20)

A sample is a list of strings (text) and PIL images, in reading order. Its text starts with BOS; each image
becomes one `<image>` token wrapped in `<fake_token_around_image>`, and an image right after another
shares the fake token between them:

    ["User:", cat, "and", dog, bird, "?"]

    input_ids             <s> User: <fake> <image> <fake> and <fake> <image> <fake> <image> <fake>  ?
    image_attention_mask   -   -     -      cat     cat   cat  cat    dog     dog    bird    bird  bird

(<fake> is `<fake_token_around_image>`.) The model's cross-attention lets each token read the latest image
at or before it (image_attention_mask (B, T, N), one-hot on that image; `idefics_image_attention_mask`):
none before the first image (-), and none after a `</s>` that ends the image's document. pixel_values is
(B, N, 3, H, W): sample b's images in order, then all-zero images up to N = max(1, most images in a
sample). With no image in the whole batch, image_attention_mask is an all-False bool (B, T, 1), as
Transformers gives it. Each text loses its spaces at both ends ("a cat " -> "a cat"), as in Transformers.

Options, as Transformers' call takes them:
- add_end_of_utterance_token: put `<end_of_utterance>` between two texts that follow each other in a
  sample (never after the last). None means "where the tokenizer was trained with it", which Transformers
  5.23 never finds (it looks for the token in a list its tokenizers no longer fill), so None is off. The
  instruct checkpoints' prompts write `<end_of_utterance>` themselves ("User: ...<end_of_utterance>",
  "\nAssistant:"), or pass True.
- add_eos_token: end every sample with `</s>`.
- the text is tokenized without the tokenizer's own special tokens, padded to the longest sample on the
  tokenizer's side (Llama's: left, for generation); padding, padding_side, truncation, max_length as
  Tokenizer takes them. Where truncation cuts `<image>` tokens, the images they stood for become zeros.

Other forms of `text`, as Transformers takes them: one sample as a flat list (so a list of strings is one
sample, not a batch); a string alone is a sample of that one text (Transformers 5.23 reads a string alone
as a sample of characters, each stripped of spaces; pass it [string]). With `images` beside `text` (a
string or a list of strings, one per sample): a lone image per sample goes before its text, a list of
images after it.

minivlm downloads nothing: a URL in a sample (which Transformers fetches) is refused, and so are
`<image>` and `<fake_token_around_image>` written in the text (the processor writes them, one per image).
Transformers 5.23's IdeficsProcessor has no chat template of its own; apply_chat_template renders the
folder's, where it has one.
"""
from __future__ import annotations

import os
from urllib.parse import urlparse

import torch
from PIL import Image

from .base import Processor
from .images import IdeficsImageProcessor, idefics_image_attention_mask, open_image

IMAGE, FAKE, END_OF_UTTERANCE = "<image>", "<fake_token_around_image>", "<end_of_utterance>"


class IdeficsProcessor(Processor):
    image_processor_class = IdeficsImageProcessor
    settings = {}   # Transformers' processor_config.json holds only the image settings

    def __init__(self, tokenizer, image_processor=None, **settings):
        super().__init__(tokenizer, image_processor or IdeficsImageProcessor(), **settings)
        for token in (IMAGE, FAKE):
            if tokenizer.backend.token_to_id(token) is None:
                raise ValueError(f"IdeficsProcessor: the tokenizer has no {token} token; IDEFICS's tokenizer "
                                 f"holds {IMAGE} and {FAKE} (added tokens after the base vocabulary)")
        if tokenizer.bos_token is None:
            raise ValueError("IdeficsProcessor: the tokenizer has no bos_token; every IDEFICS sample starts "
                             "with it")
        image_token = tokenizer.model_specific_tokens.get("image_token", IMAGE)   # the tokenizer's name wins
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __call__(self, text=None, images=None, *, add_end_of_utterance_token=None, add_eos_token: bool = False,
                 padding="longest", return_tensors="pt", **tokenizer_kwargs) -> dict:
        """text: a batch of samples (lists of strings and PIL images), or one sample (see the module
        docstring for the other forms); images: only with a text of plain strings. Returns int64 input_ids
        and attention_mask (B, T), float32 pixel_values (B, N, 3, H, W) and image_attention_mask (B, T, N).
        tokenizer_kwargs: padding_side, truncation, max_length."""
        if return_tensors != "pt":
            raise ValueError(f"IdeficsProcessor: return_tensors must be 'pt' (the outputs are torch tensors), "
                             f"got {return_tensors!r}")
        if add_end_of_utterance_token is None:
            add_end_of_utterance_token = False   # Transformers 5.23's "trained with it" (see the docstring)
        for name, value, allowed in (("add_end_of_utterance_token", add_end_of_utterance_token, "a bool or None"),
                                     ("add_eos_token", add_eos_token, "a bool")):
            if not isinstance(value, bool):
                raise TypeError(f"IdeficsProcessor: {name} must be {allowed}, got {value!r}")
        if add_end_of_utterance_token and self.tokenizer.backend.token_to_id(END_OF_UTTERANCE) is None:
            raise ValueError(f"IdeficsProcessor: add_end_of_utterance_token=True, but the tokenizer has no "
                             f"{END_OF_UTTERANCE} token (only the instruct checkpoints' tokenizers hold it)")
        if add_eos_token and self.tokenizer.eos_token is None:
            raise ValueError("IdeficsProcessor: add_eos_token=True, but the tokenizer has no eos_token")

        samples = self._samples(text, images)
        texts, sample_images = zip(*[self._layout(b, s, add_end_of_utterance_token, add_eos_token)
                                     for b, s in enumerate(samples)])
        encoded = self._tokenize(list(texts), padding, None, add_special_tokens=False, **tokenizer_kwargs)
        rows = encoded["input_ids"]
        if len({len(row) for row in rows}) > 1:
            raise ValueError(f"IdeficsProcessor: the samples have different lengths {sorted({len(r) for r in rows})}; "
                             f"padding=False needs samples of one length (use padding='longest')")
        input_ids = torch.tensor(rows, dtype=torch.long)
        attention_mask = torch.tensor(encoded["attention_mask"], dtype=torch.long)

        pixel_values = self.image_processor(list(sample_images))["pixel_values"]    # (B, N, 3, H, W)
        for b, row in enumerate(rows):
            pixel_values[b, row.count(self.image_token_id):] = 0    # images whose <image> was truncated away
        if any(sample_images):
            image_attention_mask = idefics_image_attention_mask(
                input_ids, image_token_id=self.image_token_id, eos_token_id=self.tokenizer.eos_token_id,
                num_images=pixel_values.shape[1])
        else:
            image_attention_mask = torch.zeros(*input_ids.shape, 1, dtype=torch.bool)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values,
                "image_attention_mask": image_attention_mask}

    def _samples(self, text, images) -> list:
        """The call's text (and images) -> a list of samples, each a non-empty list of strings and images."""
        if text is None:
            raise TypeError("IdeficsProcessor: text is required: a batch of samples (lists of strings and PIL "
                            "images), one sample, or strings with images=")
        if images is not None:
            return self._samples_from_images(text, images)
        if isinstance(text, str):
            return [[text]]
        if not isinstance(text, (list, tuple)) or not text:
            raise TypeError(f"IdeficsProcessor: text must be a non-empty list of samples (each a list of strings "
                            f"and PIL images), one such sample, or a string; got {text!r:.80}")
        if not any(isinstance(item, (list, tuple)) for item in text):
            return [list(text)]                                  # one sample, given flat
        for b, sample in enumerate(text):
            if not isinstance(sample, (list, tuple)):
                raise TypeError(f"IdeficsProcessor: text[{b}] must be a sample (a list of strings and PIL "
                                f"images) like the other samples of the batch, got {type(sample).__name__}")
            if not sample:
                raise ValueError(f"IdeficsProcessor: text[{b}] is an empty sample; a sample holds at least "
                                 f"one string or image")
        return [list(sample) for sample in text]

    def _samples_from_images(self, text, images) -> list:
        """text: strings (one per sample) beside images: one image or a list per sample, placed as
        Transformers places them: a lone image before its text, a list of images after it."""
        texts = [text] if isinstance(text, str) else text
        if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
            raise ValueError(f"IdeficsProcessor: with images= given, text must be a string or a list of strings "
                             f"(one per sample), got {text!r:.80}; the images go either in the samples of "
                             f"text or in images=, not both")
        texts = [_check_text(t, f"text[{b}]" if isinstance(text, (list, tuple)) else "text")
                 for b, t in enumerate(texts)]
        images = list(images) if isinstance(images, (list, tuple)) else [images]
        if len(texts) != len(images):
            raise ValueError(f"IdeficsProcessor: {len(texts)} text(s) and {len(images)} image entries; give one "
                             f"entry per text (an image, or a list of that text's images)")
        nested = [isinstance(entry, (list, tuple)) for entry in images]
        if any(nested) and not all(nested):
            raise TypeError("IdeficsProcessor: images must be all images (one per text) or all lists (the "
                            "images of each text), not a mix")
        if not all(nested):
            return [[_image(entry, f"images[{b}]"), t] for b, (t, entry) in enumerate(zip(texts, images))]
        return [[t, *(_image(x, f"images[{b}][{i}]") for i, x in enumerate(entry))]
                for b, (t, entry) in enumerate(zip(texts, images))]

    def _layout(self, b: int, sample: list, end_of_utterance: bool, eos: bool):
        """One sample -> (its text with the image tokens, its images)."""
        full, pictures, last = self.tokenizer.bos_token, [], None
        for i, item in enumerate(sample):
            where = f"text[{b}][{i}]"
            if isinstance(item, (Image.Image, os.PathLike)):
                full += IMAGE + FAKE if last == "image" else FAKE + IMAGE + FAKE   # neighbours share a <fake>
                pictures.append(item)
                last = "image"
            elif isinstance(item, str):
                item = _check_text(item.strip(" "), where)
                if end_of_utterance and last == "text":
                    full += END_OF_UTTERANCE
                full += item
                last = "text"
            else:
                raise TypeError(f"IdeficsProcessor: {where} must be a string or a PIL image, got "
                                f"{type(item).__name__}")
        if eos:
            full += self.tokenizer.eos_token
        return full, pictures


def _check_text(text: str, where: str) -> str:
    """A text of a sample: no URL (minivlm fetches no image) and no image tokens (the processor writes them)."""
    if _is_url(text.strip(" ")):
        raise ValueError(f"IdeficsProcessor: {where} is a URL ({text!r}); minivlm downloads nothing: open the "
                         f"image and give the PIL image instead")
    for token in (IMAGE, FAKE):
        if token in text:
            raise ValueError(f"IdeficsProcessor: {where} holds {token}; give the PIL images instead (in the "
                             f"sample where they go), and the processor writes the image tokens")
    return text


def _image(image, where: str):
    """An entry of images=: a PIL image, or a path opened with PIL."""
    image = open_image(image, where, "IdeficsProcessor")
    if not isinstance(image, Image.Image):
        raise TypeError(f"IdeficsProcessor: {where} must be a PIL image or a path, got {type(image).__name__}")
    return image


def _is_url(text: str) -> bool:
    """What Transformers fetches as an image: one word with a scheme and a host (http://..., https://...)."""
    if " " in text:
        return False
    parts = urlparse(text)
    return bool(parts.scheme and parts.netloc)


__all__ = ["IdeficsProcessor"]
