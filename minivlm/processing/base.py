"""What every minivlm processor shares: a tokenizer, an image processor, the processor's own settings and a
chat template, read from one checkpoint folder.

    processor = LlavaNextProcessor.from_pretrained(folder)
    inputs = processor(text=prompts, images=images, padding=True, return_tensors="pt")
    tokens = model.generate(**inputs, max_new_tokens=20)
    print(processor.batch_decode(tokens, skip_special_tokens=True))

A model's processor (one file each: llava_next.py, blip2.py, kosmos2.py, idefics.py, altclip.py) subclasses
`Processor`, names its `image_processor_class` and the settings it reads from processor_config.json with
their defaults (`settings`), and writes `__call__`: where the image placeholders go in the text, then the
tokenizer and the image processor.

Where the pieces come from in a folder (as Transformers' processors read them):
- the tokenizer: tokenizer.json and tokenizer_config.json (minivlm.processing.Tokenizer);
- the image settings: processor_config.json's "image_processor" object, else preprocessor_config.json;
- the processor's settings (num_query_tokens, image_seq_length, patch_size, ...): processor_config.json's
  top level, for the keys the processor reads; the rest are the processor's defaults;
- the chat template: chat_template.jinja, chat_template.json, else the tokenizer's (tokenizer_config.json).
"""
from __future__ import annotations

from typing import ClassVar, Optional

from .chat_template import pick_chat_template, render_chat_template
from .images import ImageProcessor, _read_json_object
from .tokenizer import SPECIAL_TOKEN_NAMES, Tokenizer, _check_folder


class Processor:
    """Text and images -> a model's inputs (see the module docstring)."""
    image_processor_class: ClassVar[type] = ImageProcessor
    settings: ClassVar[dict] = {}      # processor_config.json keys the processor reads -> their defaults

    def __init__(self, tokenizer: Tokenizer, image_processor: Optional[ImageProcessor] = None, *,
                 chat_template=None, **settings):
        unknown = set(settings) - set(self.settings)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown settings {sorted(unknown)}; it reads "
                            f"{sorted(self.settings)}")
        self.tokenizer = tokenizer
        self.image_processor = image_processor
        self.chat_template = chat_template if chat_template is not None else tokenizer.chat_template
        for name, default in self.settings.items():
            setattr(self, name, settings.get(name, default))

    @classmethod
    def from_pretrained(cls, path) -> "Processor":
        """The processor of a local checkpoint folder (nothing is downloaded)."""
        folder = _check_folder(path, f"{cls.__name__}.from_pretrained")
        tokenizer = Tokenizer.from_pretrained(folder)
        image_processor = None
        if cls.image_processor_class is not None:
            image_processor = cls.image_processor_class.from_pretrained(folder)
        config = {}
        if (folder / "processor_config.json").is_file():
            config = _read_json_object(folder / "processor_config.json", f"{cls.__name__}.from_pretrained")
        settings = {k: config[k] for k in cls.settings if config.get(k) is not None}
        return cls(tokenizer, image_processor, **settings)   # the chat template: the tokenizer's (the same files)

    def save_pretrained(self, path) -> list:
        """Write the folder Transformers' processor save_pretrained writes: the tokenizer's files
        (tokenizer.json, tokenizer_config.json), processor_config.json (the processor's settings at the top,
        the image settings nested under "image_processor") and the chat template (chat_template.jinja).
        Both libraries' from_pretrained read it back to the same processor. Returns the paths written."""
        import json

        from .tokenizer import _output_folder

        folder = _output_folder(path, f"{type(self).__name__}.save_pretrained")
        tokenizer = self.tokenizer
        template, tokenizer.chat_template = tokenizer.chat_template, self.chat_template
        try:
            written = tokenizer.save_pretrained(folder)
        finally:
            tokenizer.chat_template = template
        config = {name: getattr(self, name) for name in self.settings if getattr(self, name) is not None}
        if self.image_processor is not None:
            config["image_processor"] = self.image_processor.to_dict()
        config["processor_class"] = type(self).__name__
        with open(folder / "processor_config.json", "w", encoding="utf-8") as f:
            json.dump(dict(sorted(config.items())), f, indent=2, ensure_ascii=False)
            f.write("\n")
        return written + [folder / "processor_config.json"]

    # -- text ---------------------------------------------------------------------------------------

    def apply_chat_template(self, conversation, *, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, chat_template=None, tools=None,
                            documents=None, **variables):
        """Render a conversation (a list of {"role", "content"} messages; content a string or a list of
        parts such as {"type": "image"} and {"type": "text", "text": ...}) with the checkpoint's template,
        or a list of conversations to a list of strings. The processor's call then turns the string and the
        images into inputs."""
        template = pick_chat_template(self.chat_template if chat_template is None else chat_template, tools=tools)
        tok = self.tokenizer
        special = {name: getattr(tok, name) for name in SPECIAL_TOKEN_NAMES}
        names = {**special, **variables}
        batch = isinstance(conversation, (list, tuple)) and conversation and \
            isinstance(conversation[0], (list, tuple))
        rendered = [render_chat_template(template, c, add_generation_prompt=add_generation_prompt,
                                         continue_final_message=continue_final_message, tools=tools,
                                         documents=documents, **names)
                    for c in (conversation if batch else [conversation])]
        return rendered if batch else rendered[0]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens=skip_special_tokens)

    def _tokenize(self, texts: list, padding, return_tensors, **kwargs) -> dict:
        """The tokenizer on the expanded texts; padding, truncation and max_length as Tokenizer takes them."""
        return self.tokenizer(texts, padding=padding, return_tensors=return_tensors, **kwargs)

    def __repr__(self):
        return f"{type(self).__name__}({self.tokenizer!r}, {type(self.image_processor).__name__})"


def check_texts(processor, text, *, allow_none: bool = False) -> Optional[list]:
    """text: a string or a non-empty list of strings -> a list (None where allowed)."""
    if text is None and allow_none:
        return None
    if isinstance(text, str):
        return [text]
    if not isinstance(text, (list, tuple)) or not text or not all(isinstance(t, str) for t in text):
        raise TypeError(f"{type(processor).__name__}: text must be a string or a non-empty list of strings, "
                        f"got {text!r:.80}")
    return list(text)


def check_placeholders(processor, texts: list, placeholder: str, n_images: int):
    """Each image has one placeholder in the text, in order over the batch; the counts must agree."""
    found = sum(t.count(placeholder) for t in texts)
    if found != n_images:
        raise ValueError(f"{type(processor).__name__}: the text holds {found} {placeholder} placeholder(s) "
                         f"and {n_images} image(s) were given; each image needs one {placeholder} in the "
                         f"text, in order")


def flat_images(images) -> list:
    """One image, a list of images, or a list of lists (one per prompt) -> one flat list."""
    if images is None:
        return []
    if not isinstance(images, (list, tuple)):
        return [images]
    out = []
    for item in images:
        out.extend(item if isinstance(item, (list, tuple)) else [item])
    return out


__all__ = ["Processor", "check_texts", "check_placeholders", "flat_images"]
