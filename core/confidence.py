"""How sure CLIP is of a list's best term, and whether any of its terms fits the image at all.

A list's terms compete for the image the way CLIP was trained to rank them: a softmax over their cosine
similarities at the model's own temperature (its logit scale, 100 for the released CLIP models). That chance is a
probability, so one threshold carries from one model to another, and a term that is right more often than wrong
has a chance above about one half.

The chance says which term wins, not whether the winner is any good: a picture of a hexagon still gives "circle"
most of the chance when the list has no hexagon. The fit asks the second question. Seen from inside the space that
the list's best few terms span, the image points somewhere; the fit is the cosine between that direction and the
best term. It is 1 when the best term points exactly where the image does, and low when the image points between
or away from all of them, the signature of a value the list lacks. Features outside that space (the picture's other
attributes) leave it unchanged, and so does the list's length: it is always the best FIT_TERMS terms, so a fit
means the same for a list of five terms and one of three hundred, whose own span would take in much of any image.

The thresholds are calibrated on the quality harness's model (``calibration.json``, written by
``bench/quality.py --calibrate``).
"""

import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .errors import InterrogatorError
from .files import get, read_json

CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.json")
KEEP = 3  # ranked terms a reading keeps: the best, the runner-up and the one that follows
FIT_TERMS = 3  # the best terms whose span a fit is measured in, those that compete for the image (<= KEEP)


@dataclass(frozen=True)
class Calibration:
    """Thresholds of precise mode; see ``calibration.json``."""

    pick: float  # a list's best term enters the prompt when its chance is at least this
    second: float  # the runner-up enters too when its own chance is at least this (and the best entered)
    gap: float  # an exhaustive list whose best term fits the image less than this has no good term
    crop: float  # detail pass: a crop's best term of a list not yet covered enters when its chance is this

    @classmethod
    def load(cls, path: str = CALIBRATION) -> "Calibration":
        expected = "precise mode's thresholds, as written by python bench/quality.py --calibrate (reinstall the pack)"
        values = get(read_json(path, InterrogatorError, expected), "thresholds", dict, path, InterrogatorError)
        # null: no threshold paid off in calibration, so that step never adds a term
        return cls(**{name: float(value) if value is not None else float("inf")
                      for name in cls.__dataclass_fields__
                      for value in [get(values, name, (int, float, type(None)), f"{path}: thresholds",
                                        InterrogatorError)]})


@dataclass(frozen=True)
class Reading:
    """One list's best terms for one image, and how clearly they stand out."""

    name: str
    ranked: Tuple[Tuple[str, float], ...]  # the best few (label, cosine similarity), best first
    chances: Tuple[float, ...]  # each ranked term's probability among all the list's terms
    fit: Optional[float] = None  # the best term's fit to the image (see above); measured for exhaustive lists

    @property
    def best(self) -> str:
        return self.ranked[0][0]

    @property
    def chance(self) -> float:
        return self.chances[0]


@dataclass(frozen=True)
class Confidence:
    """One image: each list's reading, the lists whose best term is confident, those in which no term fits."""

    lists: Dict[str, Reading]
    confident: Tuple[str, ...]
    gaps: Tuple[str, ...]


def fit(scores: torch.Tensor, embeddings: torch.Tensor) -> float:
    """The fit of the best of a few terms, from the image's cosine similarities to them (best first) and their
    embeddings: the image's length inside their span is sqrt(s' G^-1 s), G being the terms' Gram matrix."""
    scores, embeddings = scores.float().cpu(), embeddings.float().cpu()
    # near-duplicate terms make the Gram matrix nearly singular: directions below fp16's precision are dropped,
    # or the rounding of half-precision scores would be amplified into the length
    inside = float(scores @ torch.linalg.pinv(embeddings @ embeddings.T, rtol=1e-3, hermitian=True) @ scores)
    # an image with nothing in the terms' span fits none of them
    return float(scores[0]) / inside ** 0.5 if inside > 1e-12 else 0.0


def read(labels: Sequence[str], scores: torch.Tensor, spans: Dict[str, Tuple[int, int]], scale: float,
         keep: int = KEEP, embeddings: Optional[torch.Tensor] = None, fitted: Sequence[str] = ()
         ) -> Dict[str, Reading]:
    """Readings of every list from one image's cosine similarities to all ``labels`` (``spans``: each list's
    rows); ``scale``: the model's logit scale, the temperature its softmax was trained at; ``fitted``: the lists
    whose fit is measured, from ``embeddings`` (the labels' rows)."""
    scores = scores.float().flatten()
    readings = {}
    for name, (start, end) in spans.items():
        if end <= start:
            continue
        part = scores[start:end]
        chance = torch.softmax(part * scale, dim=0)
        top = part.topk(min(max(keep, KEEP), end - start))
        ranked = tuple((labels[start + int(i)], float(v)) for v, i in zip(top.values, top.indices))
        chances = tuple(float(chance[int(i)]) for i in top.indices)
        best = top.indices[:FIT_TERMS]
        measured = fit(part[best], embeddings[(start + best).to(embeddings.device)]) if name in fitted else None
        readings[name] = Reading(name, ranked, chances, measured)
    return readings


def gaps(readings: Dict[str, Reading], exhaustive: Sequence[str], calibration: Calibration) -> List[str]:
    """The exhaustive lists whose best term fits the image too poorly: none of their terms is right."""
    return [name for name in exhaustive if name in readings and readings[name].fit < calibration.gap]


def picks(reading: Reading, calibration: Calibration) -> List[str]:
    """The terms of a list that CLIP is confident of: none, the best, or the best two when both are."""
    if reading.chance < calibration.pick:
        return []
    if len(reading.ranked) > 1 and reading.chances[1] >= calibration.second:
        return [reading.ranked[0][0], reading.ranked[1][0]]
    return [reading.best]


@dataclass(frozen=True)
class Verdict:
    """What precise mode writes after the caption, and the lists it found no good term in."""

    terms: List[str]
    gaps: List[str]


def choose(whole: Dict[str, Reading], ranking: Sequence[Tuple[str, str]], calibration: Calibration,
           exhaustive: Sequence[str] = (), crops: Sequence[Dict[str, Reading]] = ()) -> Verdict:
    """Precise mode's terms, by list (each list is a category).

    1. An exhaustive list whose best term fits too poorly has no good term: it is reported, never filled.
    2. Each list's confident terms (``picks``), most confident list first.
    3. Detail pass: a list still empty takes the best term of the crop most confident of it, when that chance
       clears the crop threshold (a detail is one crop's whole view but a few pixels of the picture).
    4. Flavors: the best-scoring terms of the whole pool (``ranking``: (label, list) best first) while each one
       fills a list still empty; the first whose list is covered ends the prompt.
    """
    missing = gaps(whole, exhaustive, calibration)
    chosen: Dict[str, List[str]] = {}
    for reading in sorted(whole.values(), key=lambda r: -r.chance):
        terms = picks(reading, calibration) if reading.name not in missing else []
        if terms:
            chosen[reading.name] = terms
    for name in whole:
        if name in chosen or name in missing:
            continue
        sure = [(crop[name].chance, crop[name].best) for crop in crops if name in crop]
        if sure and max(sure)[0] >= calibration.crop:
            chosen[name] = [max(sure)[1]]
    for label, name in ranking:
        if name in missing:
            continue
        if name in chosen:
            break
        chosen[name] = [label]
    return Verdict([t for terms in chosen.values() for t in terms], missing)
