"""The modes, one row each: what a mode needs and what it gives by default.

A new mode is a row here plus an ``Interrogator._<name>`` method; the CLI, the nodes and the benchmark read this
table, so nothing else needs to learn about it.
"""

from dataclasses import dataclass
from typing import Dict, Optional

from .errors import InterrogatorError


@dataclass(frozen=True)
class Mode:
    name: str
    captioned: bool  # the prompt starts with the caption, so the caption model runs unless one is given
    max_terms: int  # terms added when the caller does not say (the reference's defaults)
    description: str
    reference: Optional[str] = None  # the clip-interrogator 0.6.0 method this mode reproduces, if any
    unlike: bool = False  # its terms are chosen for being least like the image (weighted output follows that)
    terms_from: str = "pool"  # the Vocabulary property listing the term lists it draws from
    detail_pass: bool = False  # can also score crops of the image, so small details can enter the prompt
    gap_warnings: bool = False  # reports exhaustive lists with no good term instead of writing a wrong one


MODES: Dict[str, Mode] = {mode.name: mode for mode in (
    Mode("best", True, 32, "caption + the terms that raise CLIP similarity most (greedy chain; slowest)",
         "interrogate"),
    Mode("classic", True, 3, "caption, medium, artist, site, movement and a few terms", "interrogate_classic"),
    Mode("fast", True, 32, "caption + the top-ranked terms", "interrogate_fast"),
    Mode("negative", False, 32, "the terms least like the image, for the negative encoder", "interrogate_negative",
         unlike=True, terms_from="negative_pool"),
    Mode("style", False, 6, "medium, artist, movement and look, without the subject", terms_from="style"),
    Mode("precise", True, 16, "caption + each list's best term where CLIP is confident of it, then terms of "
         "lists not yet named; says when a list has no good term", detail_pass=True, gap_warnings=True),
)}


def get_mode(name: str) -> Mode:
    mode = MODES.get(name) if isinstance(name, str) else None
    if mode is None:
        raise InterrogatorError(f"unknown mode {name!r}; use one of {', '.join(MODES)}.")
    return mode
