"""What a prompt is made of: its caption, the terms chosen for it (each with its list, role and CLIP score) and
the separators between them.

The modes build prompt strings (byte for byte the reference's); the structure is read back from the finished string
against the labels the engine scored, so no mode has to report what it chose and the prompt cannot drift from it.
"""

import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

_SEPARATOR = re.compile(r"(, | )")
LONGEST_LABEL_WORDS = 32  # a label longer than this (in words) is read back as plain text


@dataclass(frozen=True)
class Term:
    label: str  # as it appears in the prompt, e.g. "by Claude Monet"
    list: str  # the term list it comes from (the first holding it, in vocabulary order)
    role: str  # that list's role: artist, flavor, medium, movement, site, negative
    score: float  # cosine similarity of the label and the image: the number Analyze Image shows


@dataclass(frozen=True)
class Span:
    """A stretch of a prompt: a chosen term, or plain text (the caption, a separator, anything else)."""

    text: str
    term: Optional[Term] = None


@dataclass(frozen=True)
class Interrogation:
    """One image's result. The spans' texts, joined, are exactly ``prompt``."""

    prompt: str
    caption: str
    mode: str
    spans: Tuple[Span, ...]
    gaps: Tuple[str, ...] = ()  # lists with no good term (modes with gap warnings; see confidence.py)

    @property
    def terms(self) -> List[Term]:
        """The chosen terms in prompt order."""
        return [span.term for span in self.spans if span.term is not None]


def segment(prompt: str, caption: str, is_label: Callable[[str], bool]) -> List[Tuple[str, bool]]:
    """``prompt`` as consecutive ``(text, is a label)`` pieces: the caption it starts with, then the labels it is
    made of, joined by ", " or " " (classic writes "medium by artist" as one phrase).

    Labels may themselves hold ", " or spaces, so this is a small dynamic programme over the words between
    separators: the reading with the fewest words left unexplained, then the fewest (so the longest) labels.
    """
    pieces: List[Tuple[str, bool]] = []
    rest = prompt
    if caption and prompt.startswith(caption):
        pieces.append((caption, False))
        rest = prompt[len(caption):]
    parts = _SEPARATOR.split(rest)
    words, seps = parts[0::2], parts[1::2]
    n = len(words)
    # best[j]: (unexplained words, pieces) of the best reading of words[:j]; start[j]: where its last piece starts
    best: List[Tuple[int, int]] = [(0, 0)] * (n + 1)
    start: List[Tuple[int, bool]] = [(0, False)] * (n + 1)
    for j in range(1, n + 1):
        best[j], start[j] = (best[j - 1][0] + bool(words[j - 1]), best[j - 1][1] + 1), (j - 1, False)
        for i in range(max(0, j - LONGEST_LABEL_WORDS), j):
            reading = (best[i][0], best[i][1] + 1)
            if reading < best[j] and is_label(_join(words, seps, i, j)):
                best[j], start[j] = reading, (i, True)
    readings = []
    j = n
    while j > 0:
        i, label = start[j]
        readings.append((i, j, label))
        j = i
    for i, j, label in reversed(readings):
        if i > 0:
            pieces.append((seps[i - 1], False))
        pieces.append((_join(words, seps, i, j), label))
    return _merge_plain([piece for piece in pieces if piece[0]])


def _join(words: List[str], seps: List[str], i: int, j: int) -> str:
    return "".join(w + (seps[k] if k < j - 1 else "") for k, w in enumerate(words[i:j], start=i))


def _merge_plain(pieces: List[Tuple[str, bool]]) -> List[Tuple[str, bool]]:
    merged: List[Tuple[str, bool]] = []
    for text, label in pieces:
        if merged and not label and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, label))
    return merged
