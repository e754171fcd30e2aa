"""Banned words and phrases: matched in the text that reaches a prompt, whatever produced that text.

A ban is matched as whole words in any case, in the exact form a phrase takes in the prompt: the labels the engine
scores ("by Claude Monet", "shutterstock contest winner"), the caption, and the places where a mode joins two labels
("oil painting" + "by Claude Monet"). Labels that contain a banned phrase are never scored, so they cannot be chosen;
free text (a caption, a join) has the banned phrase cut out of it.
"""

import re
from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Pattern, Tuple

from .errors import VocabError

_SPACES = re.compile(r"\s+")


def _normalised(phrases: Iterable[str]) -> Tuple[str, ...]:
    cleaned = []
    for phrase in phrases:
        if not isinstance(phrase, str):
            raise VocabError(f"a banned word must be text, got {type(phrase).__name__} ({phrase!r}).")
        phrase = _SPACES.sub(" ", phrase).strip()
        if not phrase:
            continue
        if not re.search(r"\w", phrase):
            raise VocabError(f"banned phrase {phrase!r} has no letters or digits; ban words or phrases.")
        cleaned.append(phrase)
    return tuple(sorted({p.lower(): p for p in cleaned}.values(), key=str.lower))


@dataclass(frozen=True)
class Ban:
    """Words and phrases that never appear in an output (whole words, any case, any spacing)."""

    phrases: Tuple[str, ...] = ()
    _pattern: Optional[Pattern] = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        phrases = _normalised((self.phrases,) if isinstance(self.phrases, str) else self.phrases)
        object.__setattr__(self, "phrases", phrases)
        if phrases:
            # longest first, so "by Claude Monet" is cut whole rather than leaving "Claude Monet" after "by"
            ordered = sorted(phrases, key=len, reverse=True)
            alternatives = "|".join(r"\s+".join(map(re.escape, p.split(" "))) for p in ordered)
            object.__setattr__(self, "_pattern", re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE))

    def __bool__(self) -> bool:
        return bool(self.phrases)

    def __add__(self, other: "Ban") -> "Ban":
        return Ban(self.phrases + other.phrases)

    def hits(self, text: str) -> bool:
        return self._pattern is not None and self._pattern.search(text) is not None

    def keep(self, labels: Iterable[str]) -> List[str]:
        """The labels that contain no banned phrase."""
        return [label for label in labels if not self.hits(label)]

    def scrub(self, text: str) -> str:
        """``text`` with every banned phrase cut out and the spaces and commas around the cut tidied.

        Cutting can bring two words together into a new banned phrase ("a b" from "a a b b"), so it repeats until
        nothing matches; each round removes at least one word, so it ends. Text without a match is returned as is.
        """
        while self.hits(text):
            text = _tidy(self._pattern.sub(" ", text))
        return text


def _tidy(text: str) -> str:
    text = _SPACES.sub(" ", text)
    text = re.sub(r" ([,.;:!?])", r"\1", text)
    text = re.sub(r",(?:\s*,)+", ",", text)
    return text.strip(" ,;:")
