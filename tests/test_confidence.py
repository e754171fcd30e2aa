"""Precise mode's rules on hand-made scores: chances and fits, picks, gaps, and how a prompt is put together."""

import json
from dataclasses import replace

import pytest
import torch

from core.confidence import CALIBRATION, Calibration, choose, gaps, picks, read
from core.errors import InterrogatorError

LABELS = ["circle", "square", "star", "red", "blue", "green", "masterpiece", "8k", "hd"]
SPANS = {"object": (0, 3), "color": (3, 6), "noise": (6, 9)}
CAL = Calibration(pick=0.6, second=0.4, gap=0.5, crop=0.8)


def readings(scores, scale=10.0):
    return read(LABELS, torch.tensor(scores), SPANS, scale=scale)


def with_fit(readings, **fits):
    return {name: replace(reading, fit=fits.get(name)) for name, reading in readings.items()}


def test_a_chance_is_the_softmax_over_the_list_at_the_models_temperature():
    scores = [0.9, 0.2, 0.1, 0.5, 0.45, 0.1, 0.3, 0.31, 0.29]
    cool, hot = readings(scores, scale=10.0), readings(scores, scale=100.0)
    expected = torch.softmax(torch.tensor([0.9, 0.2, 0.1]) * 10.0, dim=0)
    assert cool["object"].chances == pytest.approx(tuple(expected.tolist()), rel=1e-5)
    assert [label for label, _ in cool["object"].ranked] == ["circle", "square", "star"]
    # the same cosines from a model trained at a higher temperature are a surer ranking
    assert cool["color"].chance < hot["color"].chance
    assert hot["object"].chance == pytest.approx(1.0) and cool["noise"].chance < 0.4


TERMS = torch.eye(5)[:3]  # a list of three terms, orthogonal; the two other axes are the picture's other attributes


def fit(image, terms=TERMS, dtype=torch.float32):
    image = torch.tensor(image, dtype=torch.float32)
    image = image / image.norm()
    labels = [str(i) for i in range(len(terms))]
    scores = (terms.to(dtype) @ image.to(dtype)).float()
    return read(labels, scores, {"list": (0, len(terms))}, scale=100.0, embeddings=terms.to(dtype),
                fitted=["list"])["list"].fit


def test_fit_is_the_cosine_between_the_best_term_and_the_image_seen_within_the_terms_span():
    assert fit([0.6, 0.0, 0.0, 0.8, 0.0]) == pytest.approx(1.0)  # points at a term
    assert fit([0.4, 0.4, 0.0, 0.8, 0.0]) == pytest.approx(0.5 ** 0.5)  # halfway between two: a value it lacks
    assert fit([0.3, 0.3, 0.3, 0.0, 0.8]) == pytest.approx(3 ** -0.5)  # equally near all three
    # how much of the picture the other attributes take changes the cosines, not the fit
    for other in (0.1, 1.0, 5.0):
        assert fit([0.4, 0.4, 0.0, other, other]) == pytest.approx(0.5 ** 0.5)
    assert fit([0.0, 0.0, 0.0, 0.6, 0.8]) == 0.0  # nothing of the picture lies in the terms' span


def test_a_fit_is_measured_among_the_best_three_terms_whatever_the_lists_length():
    image = [0.5, 0.3, 0.0, 0.8, 0.0]
    expected = 0.5 / (0.5 ** 2 + 0.3 ** 2) ** 0.5
    assert fit(image) == pytest.approx(expected)
    # a term far from the picture leaves it as it is, though it would bring the other attributes into a whole
    # list's span
    longer = torch.cat([TERMS, -torch.eye(5)[3:4]])
    assert fit(image, longer) == pytest.approx(expected)
    # a repeated term adds no direction
    repeated = torch.stack([TERMS[0], TERMS[0], TERMS[1], TERMS[2]])
    assert fit(image, repeated) == pytest.approx(expected)
    # two nearly identical terms (cosine 0.99995) span one direction: their tiny difference is no direction of its
    # own, which would take in whatever of the picture lies along it
    twins = torch.nn.functional.normalize(torch.stack([TERMS[0], TERMS[0] + 1e-2 * TERMS[1], TERMS[2]]), dim=-1)
    assert fit(image, twins) == pytest.approx(1.0, abs=0.01)
    assert fit(image, twins, torch.float16) == pytest.approx(1.0, abs=0.01)  # as the GPU scores them


def test_a_term_is_picked_only_when_clip_is_sure_of_it():
    clear = readings([0.9, 0.2, 0.1, 0.5, 0.48, 0.1, 0.3, 0.31, 0.29])
    assert picks(clear["object"], CAL) == ["circle"]
    assert picks(clear["color"], CAL) == []  # red and blue nearly tied: neither is said
    # two terms of one list only when the runner-up is likely too
    pair = readings([0.9, 0.88, 0.0, 0.5, 0.45, 0.1, 0.3, 0.31, 0.29])
    assert picks(pair["object"], Calibration(pick=0.3, second=0.4, gap=0.0, crop=1.0)) == ["circle", "square"]
    assert picks(pair["object"], Calibration(pick=0.3, second=0.9, gap=0.0, crop=1.0)) == ["circle"]


def test_an_exhaustive_list_whose_best_term_fits_poorly_is_a_gap():
    weak_objects = with_fit(readings([0.31, 0.3, 0.29, 0.9, 0.2, 0.1, 0.3, 0.31, 0.29]), object=0.4, color=0.9)
    assert gaps(weak_objects, ["object", "color"], CAL) == ["object"]
    assert gaps(weak_objects, ["color"], CAL) == []  # only exhaustive lists are checked


def test_choose_builds_the_prompt_list_by_list():
    whole = with_fit(readings([0.31, 0.305, 0.1, 0.9, 0.2, 0.1, 0.5, 0.49, 0.1]), object=0.4, color=0.9)
    ranking = [("masterpiece", "noise"), ("circle", "object"), ("red", "color"), ("8k", "noise")]
    verdict = choose(whole, ranking, CAL, exhaustive=["object"])
    # color is confident; object is a gap, so it is never filled; the fill adds noise, then stops at "red"
    assert verdict.gaps == ["object"]
    assert verdict.terms == ["red", "masterpiece"]
    # without the gap, a crop where the object leads clearly names it; the fill then stops at once
    crop = readings([0.9, 0.1, 0.1, 0.2, 0.2, 0.2, 0.3, 0.29, 0.28])
    verdict = choose(whole, ranking, CAL, exhaustive=[], crops=[crop])
    assert verdict.gaps == [] and verdict.terms == ["red", "circle", "masterpiece"]
    assert choose(whole, ranking[1:], CAL, exhaustive=[], crops=[crop]).terms == ["red", "circle"]


def test_calibration_file_is_data_with_its_provenance(tmp_path):
    with open(CALIBRATION, encoding="utf-8") as file:
        data = json.load(file)
    assert set(data["thresholds"]) == set(Calibration.__dataclass_fields__)
    assert data["obtained"]["command"].startswith("python bench/quality.py --calibrate")
    assert set(data["obtained"]["rules"]) == set(Calibration.__dataclass_fields__)
    # null means "no threshold paid off": that step never adds a term
    path = tmp_path / "calibration.json"
    path.write_text(json.dumps({"thresholds": {"pick": 0.5, "second": None, "gap": 0.5, "crop": None}}))
    assert Calibration.load(str(path)) == Calibration(0.5, float("inf"), 0.5, float("inf"))


@pytest.mark.parametrize("text, problem", [
    ("{not json", "is not valid JSON"),
    ('{"thresholds": []}', "'thresholds' must be an object"),
    ('{"thresholds": {"pick": 0.5, "second": null, "gap": 0.5}}', "has no 'crop'"),
    ('{"thresholds": {"pick": "high", "second": null, "gap": 0.5, "crop": null}}', "'pick' must be"),
])
def test_a_damaged_calibration_file_is_named_with_the_fix(tmp_path, text, problem):
    path = tmp_path / "calibration.json"
    path.write_text(text)
    with pytest.raises(InterrogatorError, match=problem) as caught:
        Calibration.load(str(path))
    assert str(path) in str(caught.value)
