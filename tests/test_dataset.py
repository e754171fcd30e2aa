"""Captioning a dataset folder: files on disk, resume after a kill, exclusions in every form, JSONL against Analyze."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from core import MODES, InterrogatorError, Interrogator, Vocabulary
from core.ban import Ban
from core.dataset import (TEMP_SUFFIX, CaptionLog, DatasetOptions, caption_dataset, find_dataset, read_jsonl,
                          term_weights, write_caption)
from core.images import open_image
from core.result import Interrogation, Span, Term

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ARTIST = "Monir Shahroudy Farmanfarmaian"
GOOD = ["a0.png", "a1.png", "a2.png", "a3.png", "a4.jpg", "a5.webp", "a6.bmp", "twin.jpg",
        "sub/b0.png", "sub/b1.png", "sub/b2.png", "sub/b3.png", "sub/b4.jpg", "sub/b5.png", "sub/b6.png",
        "sub/deeper/c0.png", "sub/deeper/c1.png", "sub/deeper/c2.png", "sub/deeper/c3.png", "sub/deeper/c4.png",
        "sub/deeper/c5.png", "sub/deeper/c6.png"]
CORRUPT = ["broken.png", "empty.webp", "truncated.jpg", "sub/deeper/notes.png"]
USER_CAPTION = "a3.txt"  # the user's own caption: never touched
TWIN = "twin.png"  # twin.jpg comes first and owns twin.txt


@pytest.fixture(scope="module")
def vocab_dir(tmp_path_factory):
    """A few terms per role (fast to embed), with an artist and a site so every derived form can appear."""
    folder = tmp_path_factory.mktemp("dataset_vocab")
    lists = {"artists": ("artist", [ARTIST, "Claude Monet"]), "sites": ("site", ["shutterstock", "artstation"]),
             "mediums": ("medium", ["oil painting", "a photograph", "watercolor"]),
             "movements": ("movement", ["art nouveau", "impressionism"]),
             "flavors": ("flavor", ["highly detailed", "soft light", "moody", "vibrant colors", "golden hour",
                                    "(dramatic) shadows", "pastel palette", "cinematic"]),
             "negative": ("negative", ["blurry", "watermark", "low quality"])}
    for name, (_, terms) in lists.items():
        (folder / f"{name}.txt").write_text("\n".join(terms) + "\n", encoding="utf-8")
    manifest = {"lists": [{"name": n, "file": f"{n}.txt", "role": r} for n, (r, _) in lists.items()]}
    (folder / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="module")
def vocab(vocab_dir):
    return Vocabulary.from_folder(vocab_dir)


def make_dataset(folder) -> str:
    """~30 files: images of five formats in nested folders, four unreadable ones, a name clash, a user's caption,
    and files that are not images (or are hidden) and must be left alone."""
    rng = np.random.default_rng(1)
    for i, name in enumerate(GOOD + [TWIN]):
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        pixels = rng.integers(0, 256, (24 + i % 5 * 8, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path)
    with open(os.path.join(folder, "a4.jpg"), "rb") as file:
        jpeg = file.read()
    corrupt = {"broken.png": b"\x89PNG not really", "empty.webp": b"", "truncated.jpg": jpeg[:120],
               "sub/deeper/notes.png": b"these are my notes"}
    for name, data in corrupt.items():
        with open(os.path.join(folder, name), "wb") as file:
            file.write(data)
    for name, text in {USER_CAPTION: "my own words\n", "notes.txt": "not a caption\n", ".hidden.png": "",
                       "readme.md": "# dataset\n"}.items():
        with open(os.path.join(folder, name), "w", encoding="utf-8") as file:
            file.write(text)
    return str(folder)


def files_below(folder):
    """Every file below ``folder`` with its bytes, captions.jsonl aside."""
    found = {}
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            if name != "captions.jsonl":
                with open(path, "rb") as file:
                    found[os.path.relpath(path, folder).replace(os.sep, "/")] = file.read()
    return found


def txt(name):
    return os.path.splitext(name)[0] + ".txt"


@pytest.fixture
def engine(clip, captioner, vocab, tmp_path):
    return Interrogator(clip, captioner, vocab, cache_dir=str(tmp_path / "cache"))


@pytest.fixture
def bare(clip, vocab, tmp_path):
    """No caption model: for tests about files, where the caption's words do not matter (and BLIP costs time)."""
    return Interrogator(clip, None, vocab, cache_dir=str(tmp_path / "cache"))


# -- the run ------------------------------------------------------------------------------------------------------
def test_folder_gets_the_right_caption_files(engine, tmp_path):
    folder = make_dataset(tmp_path / "data")
    before = files_below(folder)
    options = DatasetOptions(mode="fast", max_terms=4, trigger="ohwx", prefix="photo of ohwx", suffix="sharp",
                             batch_size=4)
    reports, seen = [], []
    summary = caption_dataset(engine, find_dataset([folder], recursive=True), options, report=reports.append,
                              progress=lambda done, total, desc: seen.append((done, total, desc)))
    after = files_below(folder)
    written = {name: after[name].decode("utf-8") for name in set(after) - set(before)}
    assert set(written) == {txt(n) for n in GOOD} - {USER_CAPTION}
    assert before.items() <= after.items()  # nothing else touched: the user's a3.txt, the images, other files
    for name in set(GOOD) - {"a3.png"}:
        image = open_image(os.path.join(folder, name))
        prompt = engine.interrogate(image, "fast", max_terms=4)[0]
        assert written[txt(name)] == f"ohwx, photo of ohwx, {prompt}, sharp\n", name
    assert (summary.done, summary.skipped, len(summary.failed)) == (len(GOOD) - 1, 1, len(CORRUPT) + 1)
    failed = {os.path.relpath(path, folder).replace(os.sep, "/") for path, _ in summary.failed}
    assert failed == set(CORRUPT) | {TWIN}
    for path, why in summary.failed:
        assert path in why and why in reports  # each named with its reason, as it happened
    assert "twin.jpg" in next(why for path, why in summary.failed if path.endswith(TWIN))
    images = [entry for entry in seen if entry[2] == "Captioning images"]
    assert images[0][:2] == (0, len(GOOD) - 1 + len(CORRUPT)) and images[-1][0] == images[-1][1]

    again = caption_dataset(engine, find_dataset([folder], recursive=True), options)
    assert (again.done, again.skipped) == (0, len(GOOD)) and files_below(folder) == after  # a rerun skips all


def test_top_level_only_output_folder_and_overwrite(bare, tmp_path):
    engine = bare
    folder = make_dataset(tmp_path / "data")
    items = find_dataset([folder])
    assert {item.name for item in items} == {n for n in GOOD + CORRUPT + [TWIN] if "/" not in n}
    out = tmp_path / "captions"
    options = DatasetOptions(mode="fast", max_terms=3, output=str(out), batch_size=3)
    summary = caption_dataset(engine, find_dataset([folder], recursive=True), options)
    assert summary.skipped == 0 and summary.done == len(GOOD)  # the user's a3.txt is beside the image, not in out/
    assert set(files_below(out)) == {txt(n) for n in GOOD}  # the tree mirrored
    assert not [n for n in files_below(folder) if n.endswith(".txt") and n not in (USER_CAPTION, "notes.txt")]
    (out / "a0.txt").write_text("edited by hand\n")
    kept = caption_dataset(engine, find_dataset([folder]), options)
    assert (out / "a0.txt").read_text() == "edited by hand\n" and kept.done == 0
    replaced = caption_dataset(engine, find_dataset([folder]), DatasetOptions(mode="fast", max_terms=2,
                                                                             output=str(out), overwrite=True))
    assert (out / "a0.txt").read_text() != "edited by hand\n" and replaced.done == 8


def test_a_caption_that_cannot_be_written_is_reported_and_the_run_goes_on(bare, images, tmp_path):
    (tmp_path / "data" / "sub").mkdir(parents=True)
    images[0].save(tmp_path / "data" / "a.png")
    images[1].save(tmp_path / "data" / "sub" / "b.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "sub").write_text("a file where the mirrored folder should go")
    reports = []
    summary = caption_dataset(bare, find_dataset([str(tmp_path / "data")], recursive=True),
                              DatasetOptions(mode="fast", output=str(tmp_path / "out")), report=reports.append)
    assert summary.done == 1 and (tmp_path / "out" / "a.txt").exists()
    (path, why), = summary.failed
    assert path.endswith("b.png") and "cannot write" in why and reports == [why]


def test_cancel_stops_after_the_current_image(bare, tmp_path):
    engine = bare
    folder = make_dataset(tmp_path / "data")

    class Stop(Exception):
        pass

    cancel = []

    def hook(done, total, desc):  # like ComfyUI's: a Cancel clicked while an image runs raises at the next call
        if cancel:
            raise Stop()
        if desc == "Captioning images" and os.path.exists(os.path.join(folder, "a0.txt")):
            cancel.append("clicked while a1.png runs")

    options = DatasetOptions(mode="fast", jsonl=str(tmp_path / "captions.jsonl"), batch_size=8)
    with pytest.raises(Stop):
        caption_dataset(engine, find_dataset([folder]), options, progress=hook)
    written = {n for n in files_below(folder) if n.endswith(".txt")} - {USER_CAPTION, "notes.txt"}
    assert written == {"a0.txt", "a1.txt"}  # the image running when Cancel came was finished, no other begun
    assert set(read_jsonl(options.jsonl)) == {"data/a0.png", "data/a1.png"}
    assert not [n for n in os.listdir(folder) if n.endswith(TEMP_SUFFIX)]


# -- exclusions ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", list(MODES))
def test_excluded_terms_never_appear_in_any_form(clip, captioner, vocab, tmp_path, mode):
    folder = tmp_path / "data"
    folder.mkdir()
    rng = np.random.default_rng(2)
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    excluded = ("by", "contest winner", "trending on", "light")
    unbanned = Interrogator(clip, None, vocab).interrogate(open_image(folder / "0.png"), "fast", captions="x",
                                                           max_terms=32)[0]
    assert all(Ban(word).hits(unbanned) for word in excluded), "the exclusion must have something to remove"
    options = DatasetOptions(mode=mode, max_terms=32, exclude=excluded, weighted=True, trigger="ohwx",
                             jsonl=str(tmp_path / "captions.jsonl"), replace=(("golden", "warm"),))
    engine = Interrogator(clip, captioner, options.vocabulary(vocab), cache_dir=str(tmp_path / "cache"))
    summary = caption_dataset(engine, find_dataset([str(folder)]), options)
    assert summary.done == 2
    ban = Ban(excluded)
    texts = [(folder / f"{i}.txt").read_text() for i in range(2)]
    records = read_jsonl(options.jsonl).values()
    for text in texts + [r[k] for r in records for k in ("text", "prompt", "caption")] + \
            [t["term"] for r in records for t in r["terms"]]:
        assert not ban.hits(text), text
    assert all(t.startswith("ohwx, ") for t in texts)


def test_options_that_contradict_the_exclusions_are_refused(engine, vocab, tmp_path):
    folder = make_dataset(tmp_path / "data")
    before = files_below(folder)
    items = find_dataset([folder])
    with pytest.raises(InterrogatorError, match="not built with these options"):
        caption_dataset(engine, items, DatasetOptions(exclude=("moody",)))
    options = DatasetOptions(exclude=("moody",), trigger="moody style")
    banned = Interrogator(engine.clip, None, options.vocabulary(vocab))
    with pytest.raises(InterrogatorError, match="trigger word 'moody style' holds an excluded term"):
        caption_dataset(banned, items, options)
    options = DatasetOptions(exclude=("moody",), replace=(("calm", "Moody"),))
    with pytest.raises(InterrogatorError, match="replacement for 'calm'"):
        caption_dataset(banned, items, options)
    assert files_below(folder) == before  # refused before any work


# -- JSONL ----------------------------------------------------------------------------------------------------------
def test_jsonl_parses_and_its_scores_match_analyze(engine, tmp_path):
    folder = make_dataset(tmp_path / "data")
    log = tmp_path / "out" / "captions.jsonl"
    options = DatasetOptions(mode="classic", jsonl=str(log), output=str(tmp_path / "out"), weighted=True)
    caption_dataset(engine, find_dataset([folder]), options)
    lines = log.read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines]
    top = [n for n in GOOD if "/" not in n]
    assert len(records) == len(top) and {r["image"] for r in records} == {f"../data/{n}" for n in top}
    for record in records:
        image = os.path.normpath(os.path.join(log.parent, record["image"]))
        assert (log.parent / record["caption_file"]).read_text(encoding="utf-8") == record["text"] + "\n"
        assert record["models"] == {"clip": engine.clip.name, "caption": "blip-large"}
        assert record["settings"]["mode"] == "classic" and record["settings"]["max_terms"] == MODES["classic"].max_terms
        assert record["prompt"].startswith(record["caption"]) and len(record["terms"]) >= 4
        analysis = engine.analyze(open_image(image), top=1000)[0]
        for term in record["terms"]:
            assert dict(analysis[term["list"]])[term["term"]] == term["score"], term
            assert term["role"] == engine.vocab[term["list"]].role and 1.0 <= term["weight"] <= 1.3


def test_jsonl_torn_line_is_cut_and_identical_lines_are_not_repeated(tmp_path):
    path = tmp_path / "captions.jsonl"
    path.write_bytes(b'{"image": "a.png", "text": "one"}\nnot json\n{"image": "b.png", "te')
    reports = []
    log = CaptionLog(str(path), reports.append)
    assert path.read_bytes() == b'{"image": "a.png", "text": "one"}\nnot json\n'
    assert "line 3 was cut short" in reports[-1] and "line 2 is not a caption record" in reports[0]
    log.add({"image": "a.png", "text": "one"})  # the same record: not written twice
    log.add({"image": "b.png", "text": "two"})
    log.add({"image": "a.png", "text": "one, again"})  # a new record supersedes the old one
    log.close()
    assert path.read_text().count("\n") == 4
    assert {k: v["text"] for k, v in read_jsonl(str(path)).items()} == {"a.png": "one, again", "b.png": "two"}


# -- files ----------------------------------------------------------------------------------------------------------
def test_caption_files_never_replace_a_users_file_unless_asked(tmp_path):
    target = tmp_path / "sub" / "a.txt"
    assert write_caption(str(target), "first", overwrite=False) and target.read_text() == "first\n"
    assert not write_caption(str(target), "second", overwrite=False) and target.read_text() == "first\n"
    assert write_caption(str(target), "third", overwrite=True) and target.read_text() == "third\n"
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(target).st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's private 0600
    assert os.listdir(target.parent) == ["a.txt"]


def test_a_caption_file_whose_name_is_as_long_as_the_file_system_allows(tmp_path):
    """The temp file beside it must not be longer: an image named with 251 characters still gets its caption."""
    target = tmp_path / ("x" * 251 + ".txt")
    assert write_caption(str(target), "a cat", overwrite=False) and target.read_text() == "a cat\n"
    assert os.listdir(tmp_path) == [target.name]


# -- the text -------------------------------------------------------------------------------------------------------
def _result(mode="fast"):
    terms = [Term("soft light", "flavors", "flavor", 0.30), Term("by Claude Monet", "artists", "artist", 0.20),
             Term("(dramatic) shadows", "flavors", "flavor", 0.25)]
    spans = [Span("a red fox in snow"), Span(", "), Span(terms[0].label, terms[0]), Span(", "),
             Span(terms[1].label, terms[1]), Span(", "), Span(terms[2].label, terms[2])]
    return Interrogation("".join(s.text for s in spans), "a red fox in snow", mode, tuple(spans))


def test_weights_spread_the_scores_of_one_image_over_one_to_one_point_three():
    assert term_weights(_result().terms) == [1.3, 1.0, 1.15]
    assert term_weights(_result().terms, unlike=True) == [1.0, 1.3, 1.15]
    assert term_weights([Term("a", "l", "flavor", 0.2)] * 2) == [1.0, 1.0] and term_weights([]) == []
    text = DatasetOptions(weighted=True, trigger="ohwx", replace=(("RED FOX", "sks fox"),)).text(_result())
    assert text == r"ohwx, a sks fox in snow, (soft light:1.3), by Claude Monet, (\(dramatic\) shadows:1.15)"
    negative = DatasetOptions(weighted=True).text(_result("negative"))
    assert negative == r"a red fox in snow, soft light, (by Claude Monet:1.3), (\(dramatic\) shadows:1.15)"
    assert DatasetOptions(suffix="end").text(_result()) == _result().prompt + ", end"


# -- command line: a killed run, resumed, gives the files of one clean run -----------------------------------------
def _command(folder, models_dir, vocab_dir, cache):
    return [sys.executable, "-m", "core", "caption-folder", str(folder), "--recursive", "--mode", "fast",
            "--max-terms", "6", "--clip-weights", os.path.join(models_dir, "tiny-clip.safetensors"),
            "--models-dir", models_dir, "--vocab", vocab_dir, "--cache-dir", str(cache), "--trigger", "ohwx",
            "--exclude", "contest winner", "--weighted", "--jsonl", "--batch-size", "2", "--quiet"]


def test_cli_run_killed_midway_then_resumed_equals_one_clean_run(models_dir, vocab_dir, tmp_path):
    clean, killed = make_dataset(tmp_path / "clean"), make_dataset(tmp_path / "killed")
    cache = tmp_path / "cache"
    done = subprocess.run(_command(clean, models_dir, vocab_dir, cache), capture_output=True, text=True,
                          timeout=900, cwd=ROOT)
    assert done.returncode == 3, done.stderr  # some images could not be read
    assert done.stdout.splitlines()[0] == f"{len(GOOD) - 1} captioned, 1 skipped (caption file exists), 5 failed"
    for name in CORRUPT:
        assert os.path.join(clean, name) in done.stderr

    run = subprocess.Popen(_command(killed, models_dir, vocab_dir, cache), cwd=ROOT, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, start_new_session=True)
    captions = lambda: [n for n in files_below(killed) if n.endswith(".txt") and n not in (USER_CAPTION, "notes.txt")]
    deadline = time.monotonic() + 600
    while len(captions()) < 3 and run.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.killpg(run.pid, signal.SIGKILL)
    run.wait()
    assert 3 <= len(captions()) < len(GOOD) - 1, "the kill must land midway"

    resumed = subprocess.run(_command(killed, models_dir, vocab_dir, cache), capture_output=True, text=True,
                             timeout=900, cwd=ROOT)
    assert resumed.returncode == 3, resumed.stderr
    assert files_below(killed) == files_below(clean)  # every caption file, byte for byte; no temp file left
    ours, theirs = (read_jsonl(os.path.join(f, "captions.jsonl")) for f in (killed, clean))
    assert ours == theirs and len(ours) == len(GOOD) - 1
    with open(os.path.join(killed, "captions.jsonl"), encoding="utf-8") as file:
        assert len(file.read().splitlines()) == len(GOOD) - 1  # no image recorded twice


def test_cli_bad_folder_is_one_line(tmp_path):
    result = subprocess.run([sys.executable, "-m", "core", "caption-folder", str(tmp_path / "nope"), "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: no such file or folder: {tmp_path / 'nope'}"]
    (tmp_path / "sub").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "sub" / "a.png")
    result = subprocess.run([sys.executable, "-m", "core", "caption-folder", str(tmp_path), "--quiet"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2 and "add --recursive" in result.stderr


@pytest.mark.parametrize("presses, written", [(1, ["0.txt"]), (2, [])])
def test_cli_ctrl_c_finishes_the_image_in_flight_then_stops(models_dir, vocab_dir, tmp_path, monkeypatch, capsys,
                                                            presses, written):
    """One Ctrl-C while the first image is being finished: it is written, no other is begun. Two: stop at once."""
    from core import cli, dataset

    folder = tmp_path / "data"
    folder.mkdir()
    for i in range(4):
        Image.new("RGB", (16, 16), (60 * i, 0, 0)).save(folder / f"{i}.png")
    write = dataset.write_caption

    def pressed(path, text, overwrite):
        for _ in range(presses):
            os.kill(os.getpid(), signal.SIGINT)
        return write(path, text, overwrite)

    monkeypatch.setattr(dataset, "write_caption", pressed)
    argv = ["caption-folder", str(folder), "--mode", "fast", "--caption-model", "none", "--vocab", vocab_dir,
            "--clip-weights", os.path.join(models_dir, "tiny-clip.safetensors"), "--cache-dir",
            str(tmp_path / "cache"), "--quiet"]
    assert cli.main(argv) == 130
    assert sorted(n for n in os.listdir(folder) if not n.endswith(".png")) == written  # no temp file either
    out, err = capsys.readouterr()
    assert out.splitlines() == [f"{len(written)} captioned, 0 skipped (caption file exists), 0 failed"]
    assert "stopping after the current image" in err and err.rstrip().endswith("cancelled")
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # Ctrl-C is the default again
