"""The quality harness and precise mode on the committed synthetic-world CLIP (bench/quality_model/).

The smoke run scores a handful of held-out pictures: enough to check the table and that precise beats best where
the issue says it must, in seconds. The full run is ``python bench/quality.py`` (README).
"""

import hashlib
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import quality  # noqa: E402
import quality_world as world  # noqa: E402
from core import Interrogator, InterrogatorError, Vocabulary, load_clip  # noqa: E402
from core.confidence import CALIBRATION  # noqa: E402

ENV = dict(os.environ, HF_HUB_OFFLINE="1")


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    return world.write_vocab(str(tmp_path_factory.mktemp("synthetic_vocab")))


@pytest.fixture(scope="module")
def engine(vocab_dir):
    return Interrogator(load_clip(weights=quality.MODEL), None, Vocabulary.from_folder(vocab_dir))


def _table(stdout: str):
    lines = [line for line in stdout.splitlines() if line.startswith("| ")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return head, rows


def test_smoke_run_prints_the_table_and_precise_beats_best():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "quality.py"), "--main", "8",
                             "--small-detail", "4", "--gap", "4"],
                            capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    head, rows = _table(result.stdout)
    assert head == ["method", *world.CATEGORIES, "mean recall", "wrong / prompt", "noise / prompt", "tokens",
                    "similarity", "s / picture"]
    assert set(rows) == {"reference best (clip-interrogator 0.6.0)", "fast", "classic", "best", "precise",
                         "precise + detail pass", "top-1 per category (ceiling)", "true attributes (for similarity)"}
    value = lambda row, column: float(rows[row][column])
    for row in rows:
        assert 0.0 <= value(row, "mean recall") <= 1.0
    truth = "true attributes (for similarity)"
    assert value(truth, "mean recall") == 1.0 and value(truth, "wrong / prompt") == value(truth, "noise / prompt") == 0
    assert value("top-1 per category (ceiling)", "noise / prompt") == 0  # it never takes an unrelated list
    assert value("precise", "mean recall") > value("best", "mean recall")
    assert value("precise", "wrong / prompt") < value("best", "wrong / prompt")
    assert value("precise", "noise / prompt") < value("best", "noise / prompt")
    assert "Vocabulary-gap warnings" in result.stdout and "- precise: the missing list reported on" in result.stdout


def test_precise_says_which_list_has_no_good_term_instead_of_a_wrong_one(engine):
    examples = world.examples(quality.CALIBRATION_SEED, 6, 0, 6)
    prompts = engine.prompts([e.image for e in examples], "precise", captions=world.PICTURE)
    owner = world.term_categories()
    gap, other = prompts[6:], prompts[:6]
    reported = [p for p, e in zip(gap, examples[6:]) if e.scene.gap_category in p.gaps]
    assert len(reported) >= 4
    for prompt in reported:  # a reported list gets no term
        assert not [t for t in quality.split_terms(prompt.text, owner) if owner.get(t) in prompt.gaps]
        assert prompt.warnings[0].endswith(": the image may be outside the vocabulary")
    assert sum(bool(p.gaps) for p in other) <= 1
    assert [p.caption for p in prompts] == [world.PICTURE] * 12


def test_detail_pass_is_an_option_of_the_modes_that_have_one(engine):
    image = world.examples(quality.CALIBRATION_SEED, 0, 1, 0)[0].image
    whole = engine.interrogate(image, "precise", captions=world.PICTURE)[0]
    detailed = engine.interrogate(image, "precise", captions=world.PICTURE, detail=True)[0]
    assert detailed.startswith(world.PICTURE) and whole.startswith(world.PICTURE)
    with pytest.raises(InterrogatorError, match="best mode has no detail pass; use it with precise mode"):
        engine.interrogate(image, "best", captions=world.PICTURE, detail=True)


def test_cli_precise_mode_prints_the_prompt_and_its_warnings(vocab_dir, tmp_path):
    example = next(e for e in world.examples(quality.CALIBRATION_SEED, 0, 0, 6)
                   if e.scene.gap_category == "object")
    path = tmp_path / "gap.png"
    example.image.save(path)
    result = subprocess.run([sys.executable, "-m", "core", "interrogate", str(path), "--mode", "precise", "--detail",
                             "--clip-weights", quality.MODEL, "--vocab", vocab_dir, "--caption", world.PICTURE,
                             "--cache-dir", str(tmp_path / "cache"), "--device", "cpu", "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(world.PICTURE)
    assert f"warning: {path}: no good term for object: the image may be outside the vocabulary" in result.stderr


def test_the_calibration_was_made_on_the_committed_model():
    with open(CALIBRATION, encoding="utf-8") as file:
        obtained = json.load(file)["obtained"]
    with open(quality.MODEL, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    assert obtained["model"].startswith("bench/quality_model/synthetic-clip.safetensors")
    assert f"sha256 {digest[:16]}" in obtained["model"]
    assert f"seed {quality.CALIBRATION_SEED}" in obtained["pictures"] and quality.CALIBRATION_SEED != quality.EVAL_SEED
