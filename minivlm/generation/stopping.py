"""Stop strings: generation of a row stops once its text contains one of the strings, ending in the last
token (it may begin in earlier tokens, and the last token may go on past it).

    generate(..., stop_strings=["\\n\\n", "User:"], tokenizer=processor.tokenizer)

The check works on bytes, token by token: each token id is turned once into the bytes it adds to the text
(`token_bytes`), which needs the tokenizer. A string counts only if it overlaps the last token, so one
that appeared earlier and was generated past does not stop a row later: every new token is checked as it
comes. That is the rule of Transformers' StopStringCriteria, which finds the same matches with a
precomputed table instead of strings.
"""
from __future__ import annotations

import json
from functools import lru_cache

import torch


class StopStrings:
    def __init__(self, strings, tokenizer):
        strings = [strings] if isinstance(strings, str) else list(strings)
        self.strings = [s.encode("utf-8") for s in strings]
        self.window = max(len(s) for s in self.strings)   # every token adds >= 1 byte, or is never part of a match
        self.token_bytes = token_bytes_function(getattr(tokenizer, "tokenizer", tokenizer))

    def __call__(self, sequences: torch.Tensor) -> torch.Tensor:
        """(R,) bool: which rows of sequences (R, L) now end in a stop string."""
        done = []
        for row in sequences[:, -self.window:].tolist():
            pieces = [self.token_bytes(t) for t in row]
            text = b"".join(pieces)
            last_starts = len(text) - len(pieces[-1])
            # A match [p, p + len(s)) must end inside the last token: p + len(s) > last_starts.
            done.append(any(text.find(s, max(0, last_starts - len(s) + 1)) >= 0 for s in self.strings))
        return torch.tensor(done, device=sequences.device)


def token_bytes_function(tokenizer):
    """id -> the bytes that token adds to the decoded text, for a minivlm Tokenizer (its `tokenizers`
    backend). Byte-level BPE tokens (GPT-2, OPT) spell bytes with printable characters; byte-fallback
    tokens <0xNN> are one byte; any other token is decoded after a fixed prefix, which is then cut off (a
    Metaspace tokenizer drops the leading space of a text's first token, not of a later one)."""
    backend = tokenizer.backend if hasattr(tokenizer, "backend") else tokenizer
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    kinds = _decoder_types(decoder)
    prefix = backend.encode("abcdef", add_special_tokens=False).ids
    prefix_text = backend.decode(prefix, skip_special_tokens=False)
    to_byte = {c: b for b, c in _printable_bytes().items()}

    @lru_cache(maxsize=None)
    def token_bytes(token_id: int) -> bytes:
        piece = backend.id_to_token(token_id)
        if piece is None:
            return b""
        if "ByteLevel" in kinds and all(c in to_byte for c in piece):
            return bytes(to_byte[c] for c in piece)
        if "ByteFallback" in kinds and len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return bytes([int(piece[3:5], 16)])
            except ValueError:
                pass
        text = backend.decode(prefix + [token_id], skip_special_tokens=False)
        return text[text.find(prefix_text) + len(prefix_text):].encode("utf-8") if prefix_text in text \
            else text.encode("utf-8")
    return token_bytes


def _decoder_types(decoder: dict) -> set:
    kinds = {decoder.get("type")}
    for part in decoder.get("decoders") or []:
        kinds |= _decoder_types(part)
    return kinds


def _printable_bytes() -> dict:
    """GPT-2's byte-level alphabet: byte -> the character that spells it. Printable Latin-1 bytes spell
    themselves; the others (control characters, space, ...) take the characters from U+0100 on, in order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAC + 1), *range(0xAE, 0xFF + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table
