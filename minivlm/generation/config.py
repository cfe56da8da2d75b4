"""GenerationConfig: every setting of `generate`, read from a checkpoint's generation_config.json.

    config = GenerationConfig.from_pretrained(folder)       # what the checkpoint asks for
    settings = config.merged(num_beams=4)                   # + generate()'s arguments, checked

A setting that neither the file nor generate() gives takes Transformers 5.23's default (DEFAULTS below:
top_k=50, max_length=20, ...). Defaults apply when generate runs, not when the file is read, so that
`to_dict()` writes back only what the file said.

Length: `max_new_tokens` counts new tokens. `max_length` counts the whole sequence (decoder-only: prompt +
new tokens; encoder-decoder: the decoder's, start token included). With neither set, generate makes 20 new
tokens, but never more than the model's `max_position_embeddings` in all (Transformers' rule).

Transformers knows many more settings than minivlm implements (UNSUPPORTED, with their defaults). A file
or an argument that sets one of them to anything but its default is refused by name when generate runs,
never silently ignored: generating without it would give other tokens than Transformers does.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional, Union

# Where a composite (vision-language) config.json keeps its decoder's settings, as Transformers looks.
TEXT_CONFIG_KEYS = ("decoder", "generator", "text_config")
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")

# Transformers 5.23's defaults for what minivlm implements (GenerationConfig._get_default_generation_params).
DEFAULTS = dict(max_length=20, max_new_tokens=None, min_length=0, min_new_tokens=None, do_sample=False,
                num_beams=1, temperature=1.0, top_k=50, top_p=1.0, repetition_penalty=1.0,
                no_repeat_ngram_size=0, length_penalty=1.0, early_stopping=False, num_return_sequences=1,
                stop_strings=None, output_scores=False, output_logits=False, return_dict_in_generate=False)

# Transformers' settings that minivlm does not implement, with the value that means "off". A file may hold
# them at that value (Transformers writes some of them); any other value is refused.
UNSUPPORTED = dict(
    max_time=None, use_mtp=None, typical_p=1.0, min_p=None, top_h=None, epsilon_cutoff=0.0, eta_cutoff=0.0,
    encoder_repetition_penalty=1.0, bad_words_ids=None, renormalize_logits=False, forced_bos_token_id=None,
    forced_eos_token_id=None, remove_invalid_values=False, exponential_decay_length_penalty=None,
    suppress_tokens=None, begin_suppress_tokens=None, sequence_bias=None, token_healing=False,
    guidance_scale=None, watermarking_config=None, output_attentions=False, output_hidden_states=False,
    encoder_no_repeat_ngram_size=0, is_assistant=False, num_assistant_tokens=20,
    num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.4, prompt_lookup_num_tokens=None,
    max_matching_ngram_size=None, assistant_early_exit=None, assistant_lookbehind=10, target_lookbehind=10,
    assistant_ensemble_weight=None, speculation_type=None, low_memory=None, penalty_alpha=None, dola_layers=None,
    diversity_penalty=0.0, num_beam_groups=1, constraints=None, force_words_ids=None)
# Settings that change how Transformers runs, not what it computes: read and ignored (minivlm always uses
# its own preallocated KV cache, and compiles nothing).
NO_EFFECT = ("use_cache", "cache_implementation", "cache_config", "max_cache_len", "compile_config",
             "disable_compile", "continuous_batching_config", "prefill_chunk_size", "transformers_version",
             "_from_model_config")


@dataclass
class GenerationConfig:
    """The settings of generate. None = not set (Transformers' default applies, see DEFAULTS)."""
    bos_token_id: Optional[int] = None      # start of sequence (kept for completeness: prompts carry their own)
    eos_token_id: Union[int, list, None] = None   # end of sequence: an int or a list, stored as a list or None
    pad_token_id: Optional[int] = None      # fills finished rows; None = the first eos id
    decoder_start_token_id: Optional[int] = None   # encoder-decoder models: the decoder's first input
    max_new_tokens: Optional[int] = None    # new tokens at most
    max_length: Optional[int] = None        # or: tokens in all at most (decoder-only: prompt included)
    min_new_tokens: Optional[int] = None    # no eos before this many new tokens
    min_length: Optional[int] = None        # no eos before the sequence is this long
    do_sample: Optional[bool] = None        # draw tokens (True) or take the best (False)
    num_beams: Optional[int] = None         # > 1: beam search
    temperature: Optional[float] = None     # sampling: logits / temperature
    top_k: Optional[int] = None             # sampling: keep the top_k best tokens (0 = all)
    top_p: Optional[float] = None           # sampling: keep the smallest set of probability >= top_p
    repetition_penalty: Optional[float] = None      # > 1 discourages tokens already in the sequence
    no_repeat_ngram_size: Optional[int] = None      # > 0: no n-gram of this size occurs twice
    length_penalty: Optional[float] = None  # beam search: a finished beam scores sum(log p) / length ** this
    early_stopping: Union[bool, str, None] = None   # beam search: True, False or "never" (see search.py)
    num_return_sequences: Optional[int] = None      # sequences per prompt (beams, or samples)
    stop_strings: Union[str, list, None] = None     # generation stops when the text ends in one of these
    output_scores: Optional[bool] = None    # return_dict_in_generate: keep each step's processed scores
    output_logits: Optional[bool] = None    # return_dict_in_generate: keep each step's raw logits
    return_dict_in_generate: Optional[bool] = None  # return a GenerateOutput instead of the tokens
    unsupported: dict = field(default_factory=dict)  # Transformers settings minivlm does not implement

    def __post_init__(self):
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        elif self.eos_token_id is not None:
            if not isinstance(self.eos_token_id, (list, tuple)):
                raise ValueError(f"GenerationConfig: eos_token_id must be an int or a list of ints, "
                                 f"got {self.eos_token_id!r}")
            self.eos_token_id = list(self.eos_token_id)
        for name in ("bos_token_id", "pad_token_id", "decoder_start_token_id"):
            check_int(f"GenerationConfig: {name}", getattr(self, name), 0)
        for token in self.eos_token_id or []:
            check_int("GenerationConfig: eos_token_id", token, 0)

    def merged(self, **kwargs) -> "GenerationConfig":
        """A copy with the arguments that are not None put in, then DEFAULTS for what is still unset; every
        value checked. Raises for an UNSUPPORTED setting that is on (here or in the file)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        unsupported = dict(values.pop("unsupported"))
        for k, v in kwargs.items():
            if k in UNSUPPORTED:
                unsupported[k] = v
            elif v is not None:
                values[k] = v
        for k, v in unsupported.items():
            if v != UNSUPPORTED[k] and v is not None:
                raise ValueError(f"generate: {k}={v!r} is a Transformers generation setting that minivlm does "
                                 f"not implement (generating without it would give other tokens); set "
                                 f"model.generation_config.unsupported[{k!r}] = None to generate without it")
        out = GenerationConfig(**values)
        for k, v in DEFAULTS.items():     # max_length stays None when unset: see generated_length()
            if getattr(out, k) is None and k != "max_length":
                setattr(out, k, v)
        out.check()
        return out

    def merged_fields(self, other: "GenerationConfig") -> "GenerationConfig":
        """A copy with every field that `other` sets put in (its unsupported settings too)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values["unsupported"] = {**self.unsupported, **other.unsupported}
        values.update({f.name: getattr(other, f.name) for f in fields(other)
                       if f.name != "unsupported" and getattr(other, f.name) is not None})
        return GenerationConfig(**values)

    def check(self):
        """Each set value of the right type and range (a ValueError naming it otherwise)."""
        fn = "generate"
        for name, minimum in (("max_new_tokens", 1), ("max_length", 1), ("min_new_tokens", 0), ("min_length", 0),
                              ("num_beams", 1), ("top_k", 0), ("no_repeat_ngram_size", 0),
                              ("num_return_sequences", 1)):
            check_int(f"{fn}: {name}", getattr(self, name), minimum)
        for name in ("do_sample", "output_scores", "output_logits", "return_dict_in_generate"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                raise TypeError(f"{fn}: {name} must be a bool, got {type(value).__name__}")
        for name, low, high, closed in (("temperature", 0, float("inf"), False), ("top_p", 0, 1, True),
                                        ("repetition_penalty", 0, float("inf"), False)):
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not \
                    (low < value <= high if closed else low < value < high):
                want = f"in ({low}, {high}]" if closed else f"a finite number > {low}"
                raise ValueError(f"{fn}: {name} must be {want}, got {value!r}")
        lp = self.length_penalty
        if lp is not None and (isinstance(lp, bool) or not isinstance(lp, (int, float)) or lp != lp or
                               abs(lp) == float("inf")):
            raise ValueError(f"{fn}: length_penalty must be a finite number, got {lp!r}")
        if self.early_stopping not in (None, True, False, "never"):
            raise ValueError(f"{fn}: early_stopping must be True, False or \"never\", got {self.early_stopping!r}")
        s = self.stop_strings
        if s is not None and not (isinstance(s, str) and s) and not \
                (isinstance(s, (list, tuple)) and s and all(isinstance(x, str) and x for x in s)):
            raise ValueError(f"{fn}: stop_strings must be a non-empty string or a list of them, got {s!r}")
        if self.num_return_sequences not in (None, 1):
            beams = self.num_beams or 1
            if beams == 1 and not self.do_sample:
                raise ValueError(f"{fn}: num_return_sequences={self.num_return_sequences} needs beam search "
                                 f"(num_beams > 1) or sampling (do_sample=True): greedy search has one answer")
            if beams > 1 and self.num_return_sequences > beams:
                raise ValueError(f"{fn}: num_return_sequences ({self.num_return_sequences}) must be <= "
                                 f"num_beams ({beams})")

    def to_dict(self) -> dict:
        """generation_config.json as Transformers writes it: each setting that is set (one eos id as an
        int), Transformers' own defaults for what minivlm does not have, and `_from_model_config` when
        nothing but the model's token ids is set; from_dict reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self)
             if f.name != "unsupported" and getattr(self, f.name) is not None}
        if isinstance(d.get("eos_token_id"), list) and len(d["eos_token_id"]) == 1:
            d["eos_token_id"] = d["eos_token_id"][0]
        d.update({k: v for k, v in self.unsupported.items() if v is not None})
        d.update(output_attentions=d.get("output_attentions", False),
                 output_hidden_states=d.get("output_hidden_states", False), use_cache=True)
        if set(d) <= set(TOKEN_FIELDS) | {"output_attentions", "output_hidden_states", "use_cache"}:
            d["_from_model_config"] = True
        return dict(sorted(d.items()))

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        """From generation_config.json's dict. Transformers' settings that minivlm lacks go to `unsupported`
        (refused when generate runs, if on); a key Transformers does not know either is ignored, as it is."""
        own = {f.name for f in fields(cls)} - {"unsupported"}
        kwargs = {k: v for k, v in d.items() if k in own and v is not None}
        unsupported = {k: v for k, v in d.items() if k in UNSUPPORTED and v is not None and v != UNSUPPORTED[k]}
        return cls(**kwargs, unsupported=unsupported)

    @classmethod
    def from_pretrained(cls, path) -> "GenerationConfig":
        """From a checkpoint folder: generation_config.json if there is one (alone: Transformers does not
        complete it from config.json), else config.json's token ids: its top level, then its decoder's
        text_config."""
        folder = Path(path)
        for name in ("generation_config.json", "config.json"):
            if (folder / name).is_file():
                with open(folder / name) as f:
                    d = json.load(f)
                if name == "generation_config.json":
                    return cls.from_dict(d)
                text = next((d[k] for k in TEXT_CONFIG_KEYS if isinstance(d.get(k), dict)), {})
                return cls.from_dict({k: d.get(k) if d.get(k) is not None else text.get(k) for k in TOKEN_FIELDS})
        return cls()

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """From a model's config dataclass: its own token ids, then its text_config's for those it lacks."""
        text = next((getattr(config, k) for k in TEXT_CONFIG_KEYS if getattr(config, k, None) is not None), None)
        values = {}
        for k in TOKEN_FIELDS:
            value = getattr(config, k, None)
            values[k] = value if value is not None else getattr(text, k, None)
        return cls.from_dict(values)


def check_int(name, value, minimum):
    """None, or an int >= minimum (a ValueError naming `name` otherwise)."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
