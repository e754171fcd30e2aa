"""The quality harness and precise mode on the committed synthetic-world CLIP (bench/quality_model/).

The smoke run scores a handful of held-out pictures: enough to check the table, the detail and gap lines and the
goal check, in seconds. The full run is ``python bench/quality.py`` (README).
"""

import hashlib
import json
import os
import subprocess
import sys
from dataclasses import replace

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "bench"))

import quality  # noqa: E402
import quality_world as world  # noqa: E402
from core import Interrogator, InterrogatorError, Vocabulary, load_clip  # noqa: E402
from core.confidence import CALIBRATION, Calibration  # noqa: E402

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
    for line in lines[1:]:  # the "|---|" rule does not start with "| "
        cells = [cell.strip().strip("*") for cell in line.strip("|").split("|")]
        rows[cells[0]] = dict(zip(head, cells))
    return head, rows


def test_smoke_run_prints_the_table_and_the_goal_check():
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
    # precise writes one term per confident list, best at least 8 terms: fewer wrong and unrelated terms
    assert value("precise", "wrong / prompt") < value("best", "wrong / prompt")
    assert value("precise", "noise / prompt") < value("best", "noise / prompt")
    assert "Vocabulary-gap warnings" in result.stdout and "- precise: the missing list reported on" in result.stdout
    goal = result.stdout.split("Goal (precise against our best mode)")[1].strip().splitlines()
    assert len(goal) == 6 and all(line.endswith((": met", ": NOT met")) for line in goal)


def test_precise_says_which_list_has_no_good_term_instead_of_a_wrong_one(engine):
    examples = world.examples(quality.CALIBRATION_SEED, 0, 0, 4)
    images = [e.image for e in examples]
    fits = [c.lists[e.scene.gap_category].fit for c, e in zip(engine.confidence(images), examples)]
    # a threshold above every gap list's fit: each picture reports its missing list and writes no term of it
    strict = Calibration(pick=engine.calibration.pick, second=float("inf"), gap=max(fits) + 1e-3,
                         crop=float("inf"))
    lenient = replace(strict, gap=float("-inf"))
    owner = world.term_categories()
    for calibration in (strict, lenient):
        prompts = Interrogator(engine.clip, None, engine.vocab, calibration=calibration).prompts(
            images, "precise", captions=world.PICTURE)
        assert [p.caption for p in prompts] == [world.PICTURE] * 4
        for prompt, example in zip(prompts, examples):
            reported = example.scene.gap_category in prompt.gaps
            assert reported == (calibration is strict)
            assert (f"no good term for {example.scene.gap_category}: the image may be outside the vocabulary"
                    in prompt.warnings) == reported
            if reported:
                assert not [t for t in quality.split_terms(prompt.text, owner) if owner.get(t) in prompt.gaps]
    assert not [p for p in Interrogator(engine.clip, None, engine.vocab, calibration=lenient).prompts(
        images, "precise", captions=world.PICTURE) if p.gaps]


def test_the_committed_calibration_reports_some_gap_pictures_and_few_others(engine):
    examples = world.examples(quality.CALIBRATION_SEED, 20, 0, 20)
    prompts = engine.prompts([e.image for e in examples], "precise", captions=world.PICTURE)
    gap = [e.scene.gap_category in p.gaps for p, e in zip(prompts, examples) if e.kind == "gap"]
    other = [bool(p.gaps) for p, e in zip(prompts, examples) if e.kind != "gap"]
    assert any(gap) and sum(other) <= 2
    # the prompt's report is the one Analyze Image shows
    shown = engine.confidence([e.image for e in examples])
    assert [p.gaps for p in prompts] == [c.gaps for c in shown]


def test_detail_pass_is_an_option_of_the_modes_that_have_one(engine):
    examples = world.examples(quality.CALIBRATION_SEED, 0, 3, 0)
    images = [e.image for e in examples]
    whole = engine.interrogate(images, "precise", captions=world.PICTURE)
    never = Interrogator(engine.clip, None, engine.vocab, calibration=replace(engine.calibration, crop=float("inf")))
    assert never.interrogate(images, "precise", captions=world.PICTURE, detail=True) == whole  # crop: null
    # a crop sure enough of its best term fills lists the whole picture leaves empty
    eager = Interrogator(engine.clip, None, engine.vocab,
                         calibration=replace(engine.calibration, crop=float("-inf")))
    detailed = eager.interrogate(images, "precise", captions=world.PICTURE, detail=True)
    owner = world.term_categories()
    for before, after in zip(whole, detailed):
        assert set(quality.split_terms(after, owner)) - set(quality.split_terms(before, owner))
    with pytest.raises(InterrogatorError, match="best mode has no detail pass; use it with precise mode"):
        engine.interrogate(images[0], "best", captions=world.PICTURE, detail=True)


def test_cli_precise_mode_prints_the_prompt_and_its_warnings(engine, vocab_dir, tmp_path):
    examples = world.examples(quality.CALIBRATION_SEED, 0, 0, 20)
    prompts = engine.prompts([e.image for e in examples], "precise", captions=world.PICTURE)
    prompt, example = next((p, e) for p, e in zip(prompts, examples) if p.gaps)
    path = tmp_path / "gap.png"
    example.image.save(path)
    result = subprocess.run([sys.executable, "-m", "core", "interrogate", str(path), "--mode", "precise",
                             "--detail-pass", "--clip-weights", quality.MODEL, "--vocab", vocab_dir,
                             "--caption", world.PICTURE, "--cache-dir", str(tmp_path / "cache"), "--device", "cpu",
                             "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT, env=ENV)
    assert result.returncode == 0, result.stderr
    assert result.stdout == prompt.text + "\n"
    assert result.stderr.splitlines() == [f"warning: {path}: {w}" for w in prompt.warnings]
    # prompts written for a model family's encoders carry the same warnings
    sdxl = subprocess.run([*result.args, "--target", "sdxl"], capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=ENV)
    assert sdxl.returncode == 0, sdxl.stderr
    assert json.loads(sdxl.stdout)["text_g"] == prompt.text
    assert sdxl.stderr.splitlines() == [f"warning: {path}: {w}" for w in prompt.warnings]


def test_the_calibration_was_made_on_the_committed_model():
    with open(CALIBRATION, encoding="utf-8") as file:
        obtained = json.load(file)["obtained"]
    with open(quality.MODEL, "rb") as file:
        digest = hashlib.sha256(file.read()).hexdigest()
    assert obtained["model"].startswith("bench/quality_model/synthetic-clip.safetensors")
    assert f"sha256 {digest[:16]}" in obtained["model"]
    assert f"seed {quality.CALIBRATION_SEED}" in obtained["pictures"] and quality.CALIBRATION_SEED != quality.EVAL_SEED


def test_precise_mode_captions_a_dataset_and_logs_the_gaps(engine, tmp_path):
    """Caption Folder reads precise mode from the mode table like any other: same prompts, and the gaps in the log."""
    from core.dataset import DatasetOptions, caption_dataset, find_dataset, read_jsonl
    from core.images import open_image

    data = tmp_path / "data"
    data.mkdir()
    for i, example in enumerate(world.examples(quality.CALIBRATION_SEED, 0, 0, 20)):
        example.image.save(data / f"p{i:02d}.png")
    items = find_dataset([str(data)])
    prompts = engine.prompts([open_image(item.path) for item in items], "precise")
    options = DatasetOptions(mode="precise", jsonl=str(tmp_path / "captions.jsonl"), batch_size=6)
    assert caption_dataset(engine, items, options).done == 20
    records = read_jsonl(options.jsonl)
    logged = [records[f"data/{os.path.basename(item.path)}"] for item in items]
    assert [r["prompt"] for r in logged] == [p.text for p in prompts]
    assert [r["gaps"] for r in logged] == [list(p.gaps) for p in prompts] and any(p.gaps for p in prompts)


def test_gap_ceiling_compares_a_detector_shown_the_answers_with_precise_modes_fit():
    result = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gap_ceiling.py"), "--train", "40",
                             "--epochs", "3"], capture_output=True, text=True, timeout=600, env=ENV)
    assert result.returncode == 0, result.stdout + result.stderr
    head, rows = _table(result.stdout)
    assert head[3:] == sorted(v for values in world.GAP.values() for v in values)
    assert set(rows) == {"trained with the answers (all term scores)", "precise mode's fit, naming the missing list"}
    for row in rows.values():
        assert all(0 <= int(row[column].rstrip("%")) <= 100 for column in head[1:])
    assert rows["trained with the answers (all term scores)"]["false alarms"] == "10%"
