"""A checkpoint's tokenizer: text <-> token ids as Transformers 5.23 gives them, run by the `tokenizers` library.

    tok = Tokenizer.from_pretrained("llava-v1.6-mistral-7b-hf")
    batch = tok(["a photo of", "two cats"], padding=True, return_tensors="pt")   # input_ids, attention_mask
    tok.decode(ids, skip_special_tokens=True)

What a folder holds, and what is read from each file:
- tokenizer.json: the whole pipeline (normalizer, pre-tokenizer, model, post-processor, decoder, added
  tokens), read by `tokenizers`. Required: a folder with only a slow tokenizer (tokenizer.model,
  sentencepiece.bpe.model, vocab.json + merges.txt) is refused with how to convert it.
- tokenizer_config.json: the special tokens (bos, eos, unk, sep, pad, cls, mask, extra special tokens, and
  model-specific ones such as image_token), padding side, clean_up_tokenization_spaces, model_max_length,
  the class the tokenizer was saved as, and possibly the chat template.
- special_tokens_map.json: the special tokens, read only where tokenizer_config.json has no
  added_tokens_decoder (older folders), as Transformers does.

Which pipeline runs. Transformers loads some tokenizer classes by rebuilding the pipeline from the
vocabulary in tokenizer.json with the class's own normalizer, pre-tokenizer and decoder; minivlm does the
same, so the ids agree (the class is picked as AutoTokenizer picks it: `tokenizer_class` in
tokenizer_config.json against the model_type's registered class, see `_tokenizer_class`):

    class                what is rebuilt (everything else comes from tokenizer.json as saved)
    LlamaTokenizer       BPE with byte fallback; no normalizer; Metaspace pre-tokenizer (a "▁" prepended to
                         the first word, or to every word with legacy=True); decoder ▁ -> space, bytes, strip
                         the first space
    GPT2Tokenizer        byte-level BPE (OPT); ByteLevel pre-tokenizer and decoder
    T5Tokenizer          Unigram (unk id 2); the file's Precompiled normalizer only; split on whitespace,
                         "▁" before every word; post-processor "$A </s>"
    XLMRobertaTokenizer  Unigram (unk id 3); the file's Precompiled normalizer only; split on whitespace,
                         "▁" before every word; post-processor "<s> $A </s>"
    anything else        tokenizer.json as it is (LLaVA-NeXT and Kosmos-2 load this way)

Every named and extra special token is an added special token (matched whole before the pipeline runs,
dropped by skip_special_tokens), as in Transformers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence, Union

import torch

SPECIAL_TOKEN_NAMES = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token", "mask_token")

# The tokenizer class Transformers registers for a model_type (where it registers one), and the model types
# whose hub tokenizer_config.json names a class Transformers overrides with the registered one.
_REGISTERED_CLASS = {"llava_next": "TokenizersBackend", "llava": "TokenizersBackend", "mistral": "TokenizersBackend",
                     "kosmos-2": "TokenizersBackend", "idefics": "LlamaTokenizer", "blip-2": "GPT2Tokenizer",
                     "opt": "GPT2Tokenizer", "t5": "T5Tokenizer", "xlm-roberta": "XLMRobertaTokenizer"}
_OVERRIDES_HUB_CLASS = {"llava_next", "llava"}
_GENERIC = {"TokenizersBackend", "PreTrainedTokenizerFast", "PythonBackend", "MistralCommonBackend"}

# A class's defaults for the special tokens it names (where tokenizer_config.json does not set them), and
# the side it pads on.
_CLASS_DEFAULTS = {
    "LlamaTokenizer": dict(unk_token="<unk>", bos_token="<s>", eos_token="</s>"),
    "GPT2Tokenizer": dict(unk_token="<|endoftext|>", bos_token="<|endoftext|>", eos_token="<|endoftext|>"),
    "T5Tokenizer": dict(eos_token="</s>", unk_token="<unk>", pad_token="<pad>"),
    "XLMRobertaTokenizer": dict(bos_token="<s>", eos_token="</s>", sep_token="</s>", cls_token="<s>",
                                unk_token="<unk>", pad_token="<pad>", mask_token="<mask>"),
}
_PADDING_SIDE = {"LlamaTokenizer": "left"}

_SLOW_FILES = {"tokenizer.model": "a SentencePiece model", "sentencepiece.bpe.model": "a SentencePiece model",
               "spiece.model": "a SentencePiece model", "vocab.json": "a byte-level BPE vocabulary (with merges.txt)"}


class Tokenizer:
    """Text -> input_ids and back for one checkpoint (see the module docstring for what is read).

    Attributes: `backend` (the tokenizers.Tokenizer that runs), the special tokens as strings
    (`bos_token`, `eos_token`, `unk_token`, `sep_token`, `pad_token`, `cls_token`, `mask_token`, None where
    unset) and their ids (`bos_token_id`, ...), `extra_special_tokens`, `model_specific_tokens`
    ({"image_token": "<image>", ...}, also readable as attributes), `padding_side`, `model_max_length`,
    `chat_template` (a string, a {name: template} dict, or None), `tokenizer_class` (the class the pipeline
    follows)."""

    def __init__(self, backend, *, special_tokens: dict, extra_special_tokens: Sequence[str] = (),
                 model_specific_tokens: Optional[dict] = None, padding_side: str = "right",
                 truncation_side: str = "right", clean_up_tokenization_spaces: bool = False,
                 model_max_length: Optional[int] = None, chat_template=None,
                 tokenizer_class: str = "TokenizersBackend", saved_config: Optional[dict] = None):
        from tokenizers import AddedToken

        self.backend = backend
        self.tokenizer_class = tokenizer_class
        # tokenizer_config.json as read (what save_pretrained writes back, with the current settings)
        self.saved_config = dict(saved_config or {})
        for name in SPECIAL_TOKEN_NAMES:
            setattr(self, name, special_tokens.get(name))
        self.extra_special_tokens = list(extra_special_tokens)
        self.model_specific_tokens = dict(model_specific_tokens or {})
        if padding_side not in ("left", "right"):
            raise ValueError(f"Tokenizer: padding_side must be 'left' or 'right', got {padding_side!r}")
        if truncation_side not in ("left", "right"):
            raise ValueError(f"Tokenizer: truncation_side must be 'left' or 'right', got {truncation_side!r}")
        self.padding_side, self.truncation_side = padding_side, truncation_side
        self.clean_up_tokenization_spaces = bool(clean_up_tokenization_spaces)
        # Transformers writes a huge number (int(1e30)) for "no limit": keep None for that.
        self.model_max_length = model_max_length if isinstance(model_max_length, int) and \
            model_max_length < 2 ** 31 else None
        self.chat_template = chat_template
        # Every special token is an added special token of the backend (those not added yet are added now).
        added = {t.content for t in backend.get_added_tokens_decoder().values()}
        missing = [t for t in self.all_special_tokens if t not in added]
        if missing:
            backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in missing])
        backend.no_padding()
        backend.no_truncation()

    # -- reading a folder ----------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path) -> "Tokenizer":
        """The tokenizer of a local checkpoint folder (nothing is downloaded)."""
        from tokenizers import Tokenizer as Backend

        folder = _check_folder(path, "Tokenizer.from_pretrained")
        file = folder / "tokenizer.json"
        if not file.is_file():
            raise FileNotFoundError(_no_tokenizer_json(folder))
        try:
            with open(file, encoding="utf-8") as f:
                spec = json.load(f)
            backend = Backend.from_str(json.dumps(spec))
        except Exception as error:   # json or tokenizers' own parse error: say which file
            raise ValueError(f"Tokenizer.from_pretrained: {file} is not a valid tokenizer.json "
                             f"({type(error).__name__}: {error})") from error
        config = _read_json(folder / "tokenizer_config.json")
        model_config = _read_json(folder / "config.json")
        tokenizer_class = _tokenizer_class(config.get("tokenizer_class"), model_config.get("model_type"), spec)

        special, extra, model_specific = _special_tokens(config, folder, tokenizer_class)
        # Padding saved in tokenizer.json gives the pad token and side where tokenizer_config.json does not.
        file_padding = backend.padding or {}
        if file_padding.get("pad_token") and "pad_token" not in config:
            special["pad_token"] = file_padding["pad_token"]
        backend = _class_pipeline(tokenizer_class, spec, backend, config, special)

        from .chat_template import read_chat_template
        return cls(backend, special_tokens=special, extra_special_tokens=extra,
                   model_specific_tokens=model_specific,
                   padding_side=config.get("padding_side") or file_padding.get("direction")
                   or _PADDING_SIDE.get(tokenizer_class, "right"),
                   truncation_side=config.get("truncation_side") or "right",
                   clean_up_tokenization_spaces=config.get("clean_up_tokenization_spaces", False),
                   model_max_length=config.get("model_max_length"),
                   chat_template=read_chat_template(folder), tokenizer_class=tokenizer_class, saved_config=config)

    # -- special tokens -----------------------------------------------------------------------------

    def __getattr__(self, name):
        # image_token, image_token_id, boi_token, ... : the model-specific special tokens and their ids
        tokens = self.__dict__.get("model_specific_tokens", {})
        if name in tokens:
            return tokens[name]
        if name.endswith("_id") and name[:-3] in tokens:
            return self.convert_tokens_to_ids(tokens[name[:-3]])
        if name.endswith("_id") and name[:-3] in SPECIAL_TOKEN_NAMES:
            token = getattr(self, name[:-3])
            return None if token is None else self.convert_tokens_to_ids(token)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    @property
    def all_special_tokens(self) -> list[str]:
        """The named special tokens, then the extra and model-specific ones, each once."""
        tokens = [getattr(self, n) for n in SPECIAL_TOKEN_NAMES] + self.extra_special_tokens + \
            list(self.model_specific_tokens.values())
        return list(dict.fromkeys(t for t in tokens if t is not None))

    @property
    def all_special_ids(self) -> list[int]:
        return [self.convert_tokens_to_ids(t) for t in self.all_special_tokens]

    def __len__(self) -> int:
        """The vocabulary with the added tokens: the number of ids the tokenizer can give."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def get_vocab(self) -> dict[str, int]:
        return self.backend.get_vocab(with_added_tokens=True)

    def convert_tokens_to_ids(self, tokens: Union[str, Sequence[str]]):
        """A token string (or a list of them) -> its id; a token not in the vocabulary gives the unk id
        (None without an unk token), as Transformers."""
        if isinstance(tokens, str):
            found = self.backend.token_to_id(tokens)
            if found is None and self.unk_token is not None:
                found = self.backend.token_to_id(self.unk_token)
            return found
        return [self.convert_tokens_to_ids(t) for t in tokens]

    def convert_ids_to_tokens(self, ids: Union[int, Sequence[int]], skip_special_tokens: bool = False):
        if isinstance(ids, int):
            return self.backend.id_to_token(ids)
        special = set(self.all_special_ids) if skip_special_tokens else set()
        return [self.backend.id_to_token(i) for i in _id_list(ids, "ids") if i not in special]

    # -- encoding -----------------------------------------------------------------------------------

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """One string -> its token ids."""
        return self(text, add_special_tokens=add_special_tokens)["input_ids"]

    def __call__(self, text: Union[str, Sequence[str]], *, add_special_tokens: bool = True,
                 padding: Union[bool, str] = False, truncation: bool = False, max_length: Optional[int] = None,
                 padding_side: Optional[str] = None, return_tensors: Optional[str] = None,
                 return_attention_mask: bool = True) -> dict:
        """Tokenize a string or a list of strings.

        padding: False (rows keep their lengths), True or "longest" (pad to the longest row), or
        "max_length" (pad to max_length); with the pad token, on `padding_side` (default: the tokenizer's).
        truncation: cut the text so that each row, special tokens included, holds at most max_length
        tokens (default model_max_length), on `truncation_side`. return_tensors: None (lists) or "pt" (int64 tensors, which needs rows of
        one length). Returns {"input_ids", "attention_mask"}: for one string, one row (a list, or a (1, T)
        tensor with "pt")."""
        single = isinstance(text, str)
        texts = [text] if single else _check_texts(text)
        if padding not in (False, True, "longest", "max_length", "do_not_pad"):
            raise ValueError(f"Tokenizer: padding must be False, True, 'longest' or 'max_length', got {padding!r}")
        if return_tensors not in (None, "pt"):
            raise ValueError(f"Tokenizer: return_tensors must be None or 'pt' (minivlm returns torch tensors), "
                             f"got {return_tensors!r}")
        side = padding_side or self.padding_side
        if side not in ("left", "right"):
            raise ValueError(f"Tokenizer: padding_side must be 'left' or 'right', got {side!r}")
        if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, int)
                                       or max_length < 1):
            raise ValueError(f"Tokenizer: max_length must be a positive int or None, got {max_length!r}")
        if padding == "max_length" and max_length is None:
            raise ValueError("Tokenizer: padding='max_length' needs max_length")

        if truncation:
            # The text is cut, then the special tokens are added, so that they survive and count (the
            # backend's truncation does both).
            limit = max_length if max_length is not None else self.model_max_length
            if limit is None:
                raise ValueError("Tokenizer: truncation=True needs max_length (the tokenizer sets no model_max_length)")
            self.backend.enable_truncation(limit, direction=self.truncation_side)
        try:
            rows = [e.ids for e in self.backend.encode_batch(texts, add_special_tokens=add_special_tokens)]
        finally:
            self.backend.no_truncation()
        if not truncation and self.model_max_length is not None:
            longest = max(len(r) for r in rows)
            if longest > self.model_max_length:
                raise ValueError(f"Tokenizer: a prompt is {longest} tokens long, more than the model's "
                                 f"{self.model_max_length} positions (model_max_length); shorten it, or pass "
                                 f"truncation=True to cut it")
        masks = [[1] * len(r) for r in rows]
        if padding in (True, "longest", "max_length") and not (single and padding != "max_length"):
            length = max_length if padding == "max_length" else max(len(r) for r in rows)
            if self.pad_token_id is None:
                raise ValueError("Tokenizer: padding needs a pad token, and this tokenizer has none "
                                 "(tokenizer_config.json sets no pad_token)")
            rows, masks = zip(*[_pad(r, m, length, self.pad_token_id, side) for r, m in zip(rows, masks)])
            rows, masks = list(rows), list(masks)
        out = {"input_ids": rows, "attention_mask": masks}
        if return_tensors == "pt":
            if len({len(r) for r in rows}) > 1:
                raise ValueError(f"Tokenizer: the rows have different lengths {sorted({len(r) for r in rows})}; "
                                 f"return_tensors='pt' needs padding=True")
            out = {k: torch.tensor(v, dtype=torch.long) for k, v in out.items()}
        elif single:
            out = {k: v[0] for k, v in out.items()}
        if not return_attention_mask:
            del out["attention_mask"]
        return out

    # -- decoding -----------------------------------------------------------------------------------

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Token ids (a list, or a 1-D tensor) -> text, without the special tokens where asked; spaces
        before punctuation are cleaned up where the tokenizer says so (never for BPE, as Transformers)."""
        text = self.backend.decode(_id_list(ids, "ids"), skip_special_tokens=skip_special_tokens)
        if self.clean_up_tokenization_spaces and type(self.backend.model).__name__ != "BPE":
            for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"),
                                  (" n't", "n't"), (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
                text = text.replace(before, after)
        return text

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        """Rows of token ids (a list of lists, or a 2-D tensor) -> one string per row."""
        if isinstance(rows, torch.Tensor):
            if rows.dim() != 2:
                raise ValueError(f"Tokenizer.batch_decode: rows must be 2-D (B, T), got shape {tuple(rows.shape)}")
            rows = rows.tolist()
        return [self.decode(r, skip_special_tokens=skip_special_tokens) for r in rows]

    # -- chat templates -----------------------------------------------------------------------------

    def apply_chat_template(self, messages, *, add_generation_prompt: bool = False,
                            continue_final_message: bool = False, tokenize: bool = False,
                            chat_template: Optional[str] = None, tools=None, documents=None, **variables):
        """Render a conversation with the checkpoint's chat template (minivlm.processing.chat_template):
        the string, or with tokenize=True its ids (no special tokens added: the template writes them)."""
        from .chat_template import pick_chat_template, render_chat_template

        template = pick_chat_template(self.chat_template if chat_template is None else chat_template,
                                      tools=tools)
        special = {name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES}
        text = render_chat_template(template, messages, add_generation_prompt=add_generation_prompt,
                                    continue_final_message=continue_final_message, tools=tools,
                                    documents=documents, **{**special, **variables})
        return self.encode(text, add_special_tokens=False) if tokenize else text

    # -- saving -------------------------------------------------------------------------------------

    def save_pretrained(self, path) -> list:
        """Write tokenizer.json, tokenizer_config.json and the chat template (chat_template.jinja; named
        templates besides the default in additional_chat_templates/NAME.jinja), as Transformers' tokenizer
        save_pretrained writes them, so that both libraries read the folder back to the same tokenizer.
        Returns the paths written."""
        from .chat_template import write_chat_template

        folder = _output_folder(path, "Tokenizer.save_pretrained")
        written = [folder / "tokenizer.json", folder / "tokenizer_config.json"]
        self.backend.save(str(written[0]))
        config = {k: v for k, v in self.saved_config.items()
                  if k not in ("chat_template", "added_tokens_decoder", "is_local", "local_files_only", "name_or_path")}
        config.update({name: getattr(self, name) for name in SPECIAL_TOKEN_NAMES if getattr(self, name) is not None})
        config.update(self.model_specific_tokens)
        if self.extra_special_tokens:
            config["extra_special_tokens"] = list(self.extra_special_tokens)
        config.pop("additional_special_tokens", None)
        if self.padding_side != _PADDING_SIDE.get(self.tokenizer_class, "right") or "padding_side" in config:
            config["padding_side"] = self.padding_side
        config.update(backend="tokenizers", clean_up_tokenization_spaces=self.clean_up_tokenization_spaces,
                      model_max_length=self.model_max_length if self.model_max_length is not None else int(1e30),
                      tokenizer_class=self.tokenizer_class)   # the class it loads as, as Transformers writes
        with open(written[1], "w", encoding="utf-8") as f:
            json.dump(dict(sorted(config.items())), f, indent=2, ensure_ascii=False)
            f.write("\n")
        if self.chat_template is not None:
            written += write_chat_template(folder, self.chat_template)
        return written

    def __repr__(self):
        return (f"Tokenizer({self.tokenizer_class}, {len(self)} tokens, padding_side={self.padding_side!r}, "
                f"bos={self.bos_token!r}, eos={self.eos_token!r}, pad={self.pad_token!r})")


# --------------------------------------------------------------------------------------------------
# Which class, which special tokens, which pipeline
# --------------------------------------------------------------------------------------------------

def _tokenizer_class(hub_class: Optional[str], model_type: Optional[str], spec: dict) -> str:
    """The class AutoTokenizer loads the folder as ("Fast" dropped): the hub's tokenizer_class, unless the
    model_type registers another (generic for llava_next, mistral and kosmos-2); a LlamaTokenizer whose
    tokenizer.json is byte-level loads as the generic class."""
    hub = hub_class.removesuffix("Fast") if isinstance(hub_class, str) else None
    registered = _REGISTERED_CLASS.get(model_type)
    if hub == "LlamaTokenizer" and model_type not in _OVERRIDES_HUB_CLASS and '"ByteLevel"' in json.dumps(spec):
        return "TokenizersBackend"
    if hub is not None and registered is not None and registered != hub:
        if registered in _GENERIC:
            return "TokenizersBackend"
        return registered if model_type in _OVERRIDES_HUB_CLASS else hub
    if hub is not None:
        return "TokenizersBackend" if hub in _GENERIC else hub
    return registered or "TokenizersBackend"


def _special_tokens(config: dict, folder: Path, tokenizer_class: str):
    """(named special tokens, extra special tokens, model-specific tokens) as strings, from
    tokenizer_config.json (special_tokens_map.json where it has no added_tokens_decoder), over the class's
    defaults."""
    values = dict(config)
    if "added_tokens_decoder" not in config and (folder / "special_tokens_map.json").is_file():
        for key, value in _read_json(folder / "special_tokens_map.json").items():
            if key in ("extra_special_tokens", "additional_special_tokens") and isinstance(value, list):
                values[key] = list(dict.fromkeys(list(values.get(key) or []) + value))
            else:
                values[key] = value
    special = dict(_CLASS_DEFAULTS.get(tokenizer_class, {}))
    for name in SPECIAL_TOKEN_NAMES:
        if name in values:
            special[name] = _token_text(values[name])
    extra = values.get("extra_special_tokens")
    if extra is None:
        extra = values.get("additional_special_tokens")
    model_specific = {k: _token_text(v) for k, v in values.items()
                      if k.endswith("_token") and k not in SPECIAL_TOKEN_NAMES and isinstance(v, (str, dict))
                      and _token_text(v) is not None}
    if isinstance(extra, dict):
        model_specific.update({k: _token_text(v) for k, v in extra.items()})
        extra = []
    extra = [_token_text(t) for t in (extra or [])]
    if tokenizer_class == "T5Tokenizer" and not any("<extra_id_" in t for t in extra):
        extra += [f"<extra_id_{i}>" for i in range(values.get("extra_ids", 100))]
    return special, [t for t in extra if t is not None], model_specific


def _token_text(value) -> Optional[str]:
    """A special token as tokenizer_config.json writes it (a string or an AddedToken dict) -> its text."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


def _class_pipeline(tokenizer_class: str, spec: dict, backend, config: dict, special: dict):
    """The backend Transformers runs for the class: the file's, or one rebuilt from its vocabulary with the
    class's normalizer, pre-tokenizer and decoder (the module docstring's table)."""
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    model = spec.get("model") or {}
    if tokenizer_class == "LlamaTokenizer" and model.get("type") == "BPE":
        backend.model = models.BPE(vocab=model["vocab"], merges=_merges(model), fuse_unk=True, byte_fallback=True,
                                   unk_token=model.get("unk_token"))
        prefix = config.get("add_prefix_space")
        prefix = True if prefix is None else prefix
        scheme = ("first" if not config.get("legacy", False) else "always") if prefix else "never"
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
        steps = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
        backend.decoder = decoders.Sequence(steps + ([decoders.Strip(" ", 1, 0)] if prefix else []))
    elif tokenizer_class == "GPT2Tokenizer" and model.get("type") == "BPE":
        backend.model = models.BPE(vocab=model["vocab"], merges=_merges(model), continuing_subword_prefix="",
                                   end_of_word_suffix="", fuse_unk=False)
        backend.normalizer = None
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space", False)))
        backend.decoder = decoders.ByteLevel()
    elif tokenizer_class in ("T5Tokenizer", "XLMRobertaTokenizer") and model.get("type") == "Unigram":
        t5 = tokenizer_class == "T5Tokenizer"
        backend.model = models.Unigram([tuple(v) for v in model["vocab"]], 2 if t5 else 3, False)
        charsmap = _precompiled_charsmap(spec.get("normalizer"))
        backend.normalizer = None if charsmap is None else normalizers.Precompiled(charsmap)
        prefix = t5 or config.get("add_prefix_space", True)
        scheme = "always" if prefix else "never"
        backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Metaspace(
            replacement="▁", prepend_scheme=scheme, split=True)])
        backend.decoder = decoders.Metaspace(replacement="▁", prepend_scheme=scheme, split=True)
        eos, bos = special.get("eos_token"), special.get("bos_token")
        if t5:
            backend.post_processor = processors.TemplateProcessing(
                single=["$A", eos], pair=["$A", eos, "$B", eos], special_tokens=[(eos, backend.token_to_id(eos))])
        else:
            backend.post_processor = processors.TemplateProcessing(
                single=[bos, "$A", eos], pair=[bos, "$A", eos, eos, "$B", eos],
                special_tokens=[(bos, backend.token_to_id(bos)), (eos, backend.token_to_id(eos))])
    if backend.post_processor is None:   # Transformers then installs a template that adds nothing
        backend.post_processor = processors.TemplateProcessing(single="$A:0", pair="$A:0 $B:1", special_tokens=[])
    backend.encode_special_tokens = bool(config.get("split_special_tokens", False))
    return backend


def _merges(model: dict) -> list[tuple[str, str]]:
    """BPE merges as tokenizer.json writes them ("a b" strings or [a, b] pairs) -> pairs."""
    return [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]


def _precompiled_charsmap(normalizer) -> Optional[bytes]:
    """The SentencePiece character map of a Precompiled normalizer in tokenizer.json (alone or in a Sequence)."""
    import base64

    if not normalizer:
        return None
    parts = normalizer.get("normalizers", []) if normalizer.get("type") == "Sequence" else [normalizer]
    for part in parts:
        if part.get("type") == "Precompiled" and part.get("precompiled_charsmap"):
            return base64.b64decode(part["precompiled_charsmap"])
    return None


# --------------------------------------------------------------------------------------------------
# Helpers and checks
# --------------------------------------------------------------------------------------------------

def _pad(row: list, mask: list, length: int, pad_id: int, side: str):
    n = max(0, length - len(row))
    if side == "left":
        return [pad_id] * n + row, [0] * n + mask
    return row + [pad_id] * n, mask + [0] * n


def _read_json(file: Path) -> dict:
    """A JSON object file, {} where the file is absent; a ValueError naming the file where it does not parse."""
    if not file.is_file():
        return {}
    try:
        with open(file, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as error:
        raise ValueError(f"{file} is not valid JSON: {error}") from error
    if not isinstance(d, dict):
        raise ValueError(f"{file} holds a {type(d).__name__}, expected a JSON object")
    return d


def _check_folder(path, caller: str) -> Path:
    """A local folder; a hub id or a missing path is refused (nothing is downloaded)."""
    folder = Path(path)
    if folder.is_dir():
        return folder
    text = str(path)
    if not folder.exists() and text.count("/") == 1 and not text.startswith((".", "/", "~")):
        raise FileNotFoundError(
            f"{caller}: {text!r} is not a local folder. It looks like a hub id; minivlm downloads nothing: "
            f"get the folder first (e.g. `huggingface-cli download {text} --local-dir {text.split('/')[1]}`) "
            f"and pass its path")
    raise FileNotFoundError(f"{caller}: {text!r} is not a folder; expected a local checkpoint folder")


def _output_folder(path, caller: str) -> Path:
    """The folder to save into, made where missing; a path that is a file is refused."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{caller}: {str(path)!r} is a file; expected a folder to save into")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _no_tokenizer_json(folder: Path) -> str:
    slow = [name for name in _SLOW_FILES if (folder / name).is_file()]
    if slow:
        what = ", ".join(f"{name} ({_SLOW_FILES[name]})" for name in slow)
        return (f"Tokenizer.from_pretrained: {folder} has no tokenizer.json, only a slow tokenizer: {what}. "
                f"minivlm reads tokenizer.json only; convert it once with Transformers: "
                f"`AutoTokenizer.from_pretrained(folder).save_pretrained(folder)` writes tokenizer.json")
    return (f"Tokenizer.from_pretrained: {folder} has no tokenizer (expected tokenizer.json, with "
            f"tokenizer_config.json beside it)")


def _check_texts(texts) -> list:
    if not isinstance(texts, (list, tuple)) or not texts or not all(isinstance(t, str) for t in texts):
        raise TypeError(f"Tokenizer: text must be a string or a non-empty list of strings, got {texts!r:.80}")
    return list(texts)


def _id_list(ids, name: str) -> list:
    if isinstance(ids, torch.Tensor):
        if ids.dim() > 1:
            raise ValueError(f"Tokenizer.decode: {name} must be 1-D, got shape {tuple(ids.shape)}")
        ids = ids.tolist()
    if isinstance(ids, int):
        ids = [ids]
    if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0
                                                      for i in ids):
        raise TypeError(f"Tokenizer.decode: {name} must be a list of non-negative ints or a 1-D tensor, "
                        f"got {ids!r:.80}")
    return list(ids)


__all__ = ["Tokenizer", "SPECIAL_TOKEN_NAMES"]
