"""Streamers: text as generate makes it, piece by piece.

    model.generate(**inputs, streamer=TextStreamer(processor))           # prints as tokens arrive
    streamer = TextIteratorStreamer(processor)                           # or: iterate in another thread
    threading.Thread(target=model.generate, kwargs=dict(**inputs, streamer=streamer)).start()
    for piece in streamer: ...

generate calls `streamer.put(ids)` with the prompt (1, T) once, then with each new token (1,), and
`streamer.end()` when it is done (any object with these two methods will do). Only one row at a time can
be streamed, and not with beam search (the best beam is known only at the end).

Text is released when it is safe: a token's text can change once the next token arrives (a byte-fallback
character spans several tokens, and a tokenizer may only know how to space a word when the next one
comes). So the tokens since the last release are decoded together, and their new text is released up to
its last space (all of it at a newline, and at the end); text that ends in an unfinished character
(U+FFFD) waits.
"""
from __future__ import annotations

import queue
from typing import Callable, Optional


class TextStreamer:
    """Decodes tokens as they arrive and hands each released piece of text to `on_text` (default: print
    it without a newline). skip_prompt: do not release the prompt's text. skip_special_tokens: as in
    decode."""

    def __init__(self, tokenizer, *, skip_prompt: bool = False, skip_special_tokens: bool = False,
                 on_text: Optional[Callable[[str], None]] = None):
        self.tokenizer = getattr(tokenizer, "tokenizer", tokenizer)    # a Processor or a Tokenizer
        self.skip_prompt, self.skip_special_tokens = skip_prompt, skip_special_tokens
        self.on_text = on_text or (lambda text: print(text, end="", flush=True))
        self.tokens, self.released, self.prompt_pending = [], 0, True

    def put(self, ids):
        if (ids.dim() == 2 and ids.shape[0] != 1) or (ids.dim() == 1 and ids.numel() != 1) or ids.dim() > 2:
            raise ValueError(f"TextStreamer: streams one row at a time, got ids of shape {tuple(ids.shape)}")
        if self.prompt_pending:
            self.prompt_pending = False
            if self.skip_prompt:
                return
        self.tokens += ids.reshape(-1).tolist()
        text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
        if text.endswith("\n"):
            self._release(text[self.released:])
            self.tokens, self.released = [], 0
        elif not text.endswith("\ufffd"):
            cut = text.rfind(" ") + 1
            if cut > self.released:
                self._release(text[self.released:cut])
                self.released = cut

    def end(self):
        if self.tokens:
            text = self.tokenizer.decode(self.tokens, skip_special_tokens=self.skip_special_tokens)
            self._release(text[self.released:])
        self.tokens, self.released, self.prompt_pending = [], 0, True
        self._finish()

    def _release(self, text: str):
        if text:
            self.on_text(text)

    def _finish(self):
        pass


class TextIteratorStreamer(TextStreamer):
    """A TextStreamer whose pieces are read by iterating over it (generate runs in another thread).
    timeout: seconds to wait for the next piece before queue.Empty is raised (None: wait for ever)."""

    def __init__(self, tokenizer, *, skip_prompt: bool = False, skip_special_tokens: bool = False,
                 timeout: Optional[float] = None):
        super().__init__(tokenizer, skip_prompt=skip_prompt, skip_special_tokens=skip_special_tokens,
                         on_text=self._queue_text)
        self.queue, self.timeout = queue.Queue(), timeout
        self._done = object()

    def _queue_text(self, text: str):
        self.queue.put(text)

    def _finish(self):
        self.queue.put(self._done)

    def __iter__(self):
        return self

    def __next__(self) -> str:
        piece = self.queue.get(timeout=self.timeout)
        if piece is self._done:
            raise StopIteration
        return piece
