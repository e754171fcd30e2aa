"""Counting a text's tokens the way each text encoder reads it, and cutting a text at a phrase or word boundary.

- CLIP (SD 1.x, SDXL's text_l/text_g, SD3's and Flux's clip_l/clip_g): open_clip's BPE tokenizer, the one CLIP was
  trained with and that ComfyUI's CLIP tokenizer matches; the count includes the start and end tokens (77 in all).
- T5 (SD3's and Flux's t5xxl): a T5 sentencepiece tokenizer read from a ``tokenizer.json`` (ComfyUI ships one in
  comfy/text_encoders/t5_tokenizer, read in place); the count includes the end token T5 appends. Without one, a
  safe bound is used instead: a piece covers at least one character, so ``len(text) + 2`` tokens are never exceeded.
"""

import logging
import os
import re
from typing import Callable, Optional

from .errors import ModelLoadError

log = logging.getLogger("clip_interrogator")

CLIP_CONTEXT = 77
MAX_COUNTED_CHARS = 20_000  # longer texts are cut before tokenizing: bounded work whatever a model wrote


class ClipCounter:
    """Tokens of a text for CLIP, start and end included."""

    name = "CLIP BPE"

    def __init__(self):
        from open_clip.tokenizer import SimpleTokenizer

        self.tokenizer = SimpleTokenizer()

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text[:MAX_COUNTED_CHARS])) + 2


class T5Counter:
    """Tokens of a text for T5, the end token included, from a tokenizer.json."""

    name = "T5"

    def __init__(self, path: str):
        from tokenizers import Tokenizer

        file = os.path.join(path, "tokenizer.json") if os.path.isdir(path) else path
        try:
            self.tokenizer = Tokenizer.from_file(file)
        except Exception as error:  # the tokenizers library raises plain Exceptions for missing and broken files
            raise ModelLoadError(f"cannot read the T5 tokenizer {file}: {error}. Point to a folder with the "
                                 f"tokenizer.json of a T5 model (ComfyUI ships one in "
                                 f"comfy/text_encoders/t5_tokenizer).") from None
        self.source = file

    def count(self, text: str) -> int:
        return len(self.tokenizer.encode(text[:MAX_COUNTED_CHARS]).ids)


class CharBound:
    """An upper bound of T5 tokens for when no T5 tokenizer is at hand (texts come out shorter than needed)."""

    name = "T5 (character bound)"

    def count(self, text: str) -> int:
        return len(text[:MAX_COUNTED_CHARS]) + 2


_clip: Optional[ClipCounter] = None


def clip_counter() -> ClipCounter:
    global _clip
    if _clip is None:
        _clip = ClipCounter()
    return _clip


def t5_counter(folder: Optional[str]):
    """A T5 counter from a folder (or tokenizer.json file); the character bound when there is none."""
    if folder:
        return T5Counter(folder)
    log.warning("CLIP Interrogator: no T5 tokenizer given; t5xxl texts are kept within a character bound, which is "
                "shorter than the encoder allows.")
    return CharBound()


# -- cutting ---------------------------------------------------------------------------------------------------------
_PUNCTUATION = ".,;:!?"
_PHRASE_END = re.compile(r"[.,;:!?](?=\s)")


def shorten(text: str, fits: Callable[[str], bool]) -> str:
    """The longest start of ``text`` that ``fits``, cut after a phrase (.,;:!?) when that keeps at least half of
    what a cut between words keeps, else between words; "" when not even the first word fits."""
    if len(text) <= MAX_COUNTED_CHARS and fits(text):
        return text
    text = " ".join(text.split())  # whitespace runs first: "a cat<200,000 spaces>on a mat" is four words, not "a"
    if len(text) <= MAX_COUNTED_CHARS and fits(text):
        return text
    text = text[:MAX_COUNTED_CHARS]
    words = [m.start() for m in re.finditer(r" ", text)]  # a cut before each space keeps whole words
    low, high = 0, len(words)  # binary search: a longer start never has fewer tokens
    while low < high:
        middle = (low + high + 1) // 2
        if fits(text[:words[middle - 1]]):
            low = middle
        else:
            high = middle - 1
    by_words = text[:words[low - 1]] if low else ""
    phrases = [m.start() for m in _PHRASE_END.finditer(text) if m.start() < len(by_words)]
    for end in reversed(phrases):
        if end + 1 >= len(by_words) / 2 and fits(text[:end]):
            return text[:end].rstrip(_PUNCTUATION)
    return by_words.rstrip(_PUNCTUATION)
