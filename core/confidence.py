"""How sure CLIP is of a list's best term, in units of that list's own spread of scores.

Cosine similarities live on a different scale in every CLIP model (about 0.2-0.35 for ViT-L-14, wider for small
models), so a threshold on raw scores would not carry from one model to another. Leads and standings are measured
in standard deviations of the image's scores instead, which is what lets the thresholds calibrated on the quality
harness's model (``calibration.json``, written by ``bench/quality.py --calibrate``) apply to real CLIP models.
"""

import json
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

import torch

CALIBRATION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "calibration.json")
KEEP = 3  # ranked terms a reading keeps: enough for the best term's and the runner-up's leads


@dataclass(frozen=True)
class Calibration:
    """Thresholds of precise mode, in spreads (standard deviations of scores); see ``calibration.json``."""

    pick: float  # a list's best term enters the prompt when it leads the runner-up by this much
    second: float  # the runner-up enters too when it leads the third by this much (and the best entered)
    gap: float  # an exhaustive list whose best term stands less than this above all terms has no good term
    crop: float  # detail pass: a crop's best term of a list not yet covered enters when it leads by this much

    @classmethod
    def load(cls, path: str = CALIBRATION) -> "Calibration":
        with open(path, "r", encoding="utf-8") as file:
            values = json.load(file)["thresholds"]
        # null: no threshold paid off in calibration, so that step never adds a term
        return cls(**{name: float("inf") if values[name] is None else float(values[name])
                      for name in cls.__dataclass_fields__})


@dataclass(frozen=True)
class Reading:
    """One list's best terms for one image, and how clearly they stand out."""

    name: str
    ranked: Tuple[Tuple[str, float], ...]  # the best few (label, cosine similarity), best first
    spread: float  # standard deviation of the list's scores for this image
    standing: float  # (best score - mean of all terms' scores) / their standard deviation

    def lead(self, rank: int = 0) -> float:
        """How far the term at ``rank`` is ahead of the next one, in spreads (infinite for the last term)."""
        if rank + 1 >= len(self.ranked):
            return float("inf") if rank < len(self.ranked) else float("-inf")
        return (self.ranked[rank][1] - self.ranked[rank + 1][1]) / max(self.spread, 1e-8)

    @property
    def best(self) -> str:
        return self.ranked[0][0]


@dataclass(frozen=True)
class Confidence:
    """One image: each list's reading, the lists whose best term is confident, those in which no term fits."""

    lists: Dict[str, Reading]
    confident: Tuple[str, ...]
    gaps: Tuple[str, ...]


def read(labels: Sequence[str], scores: torch.Tensor, spans: Dict[str, Tuple[int, int]],
         keep: int = KEEP) -> Dict[str, Reading]:
    """Readings of every list from one image's scores against all ``labels`` (``spans``: each list's rows)."""
    scores = scores.float().flatten()
    mean, std = float(scores.mean()), max(float(scores.std(unbiased=False)), 1e-8)
    readings = {}
    for name, (start, end) in spans.items():
        if end <= start:
            continue
        part = scores[start:end]
        top = part.topk(min(max(keep, KEEP), end - start))
        ranked = tuple((labels[start + int(i)], float(v)) for v, i in zip(top.values, top.indices))
        spread = float(part.std(unbiased=False)) if end - start > 1 else std
        readings[name] = Reading(name, ranked, spread, (ranked[0][1] - mean) / std)
    return readings


def gaps(readings: Dict[str, Reading], exhaustive: Sequence[str], calibration: Calibration) -> List[str]:
    """The exhaustive lists whose best term stands too low among all terms: none of their terms fits."""
    return [name for name in exhaustive if name in readings and readings[name].standing < calibration.gap]


def picks(reading: Reading, calibration: Calibration) -> List[str]:
    """The terms of a list that are confidently above the rest: none, the best, or the best two when both are."""
    if reading.lead(0) < calibration.pick:
        return []
    if len(reading.ranked) > 2 and reading.lead(1) >= calibration.second:
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

    1. An exhaustive list whose best term stands too low has no good term: it is reported, never filled.
    2. Each list's confident terms (``picks``), most confident list first.
    3. Detail pass: a list still empty takes the best term of the crop where that list leads most, when the lead
       is confident for a crop.
    4. Flavors: the best-scoring terms of the whole pool (``ranking``: (label, list) best first) while each one
       fills a list still empty; the first whose list is covered ends the prompt.
    """
    missing = gaps(whole, exhaustive, calibration)
    chosen: Dict[str, List[str]] = {}
    for reading in sorted(whole.values(), key=lambda r: -r.lead(0)):
        terms = picks(reading, calibration) if reading.name not in missing else []
        if terms:
            chosen[reading.name] = terms
    for name in whole:
        if name in chosen or name in missing:
            continue
        leads = [(crop[name].lead(0), crop[name].best) for crop in crops if name in crop]
        if leads and max(leads)[0] >= calibration.crop:
            chosen[name] = [max(leads)[1]]
    for label, name in ranking:
        if name in missing:
            continue
        if name in chosen:
            break
        chosen[name] = [label]
    return Verdict([t for terms in chosen.values() for t in terms], missing)
