"""Prompts per text encoder: over hundreds of prompts made from the vocabulary and long captions, every output is
within its encoder's token limit (counted with that encoder's tokenizer) and never cut inside a term."""

import os
import random
from dataclasses import replace

import pytest

from core import Vocabulary
from core.encoder_prompts import CAPTION_TOKENS, TARGETS, PromptParts, get_target, write
from core.interrogator import Interrogator, Settings, split_prompt
from core.token_count import CharBound, T5Counter, clip_counter, shorten
from tests.tiny_models import CAPTION_WORDS, write_tiny_t5_tokenizer

COMFYUI_T5 = os.path.join(os.environ.get("COMFYUI_DIR", ""), "comfy", "text_encoders", "t5_tokenizer")


@pytest.fixture(scope="module")
def terms():
    return sorted({t for tl in Vocabulary.builtin().lists for t in tl.terms if ", " not in t})


def _caption(rng, words):
    """A caption of 3 to 160 words in sentences and comma phrases, like Florence-2's detailed ones."""
    out = []
    for i in range(rng.randint(3, 160)):
        word = rng.choice(words)
        out.append(word.capitalize() if not out or out[-1].endswith(".") else word)
        if i and rng.random() < 0.12:
            out[-1] += rng.choice([",", ",", ".", ";"])
    return " ".join(out)


def _cases(terms, n=300, seed=0):
    rng = random.Random(seed)
    words = list(CAPTION_WORDS) + [w for t in terms[:400] for w in t.split()]
    for _ in range(n):
        caption = _caption(rng, words) if rng.random() < 0.9 else ""
        picked = tuple(rng.sample(terms, rng.randint(0, 40)))
        yield PromptParts(caption, caption, picked, tuple(rng.sample(terms, rng.randint(0, 30))))


def _word_prefixes(text):
    """Every start of ``text`` that ends between words (punctuation may be dropped at the cut)."""
    words = text.split()
    prefixes = {" ".join(words[:i]) for i in range(len(words) + 1)}
    return prefixes | {p.rstrip(".,;:!?") for p in prefixes}


def _is_terms(text, terms):
    """``text`` is whole terms, in rank order, joined by ", "."""
    if not text:
        return True
    it = iter(terms)
    return all(any(part == t for t in it) for part in text.split(", "))


def _check_clip(text, parts, content):
    if content in ("terms", "negative"):
        assert _is_terms(text, parts.terms if content == "terms" else parts.negative), text
        return
    caption = " ".join(parts.head.split())
    heads = sorted(_word_prefixes(caption), key=len, reverse=True)
    assert any((text == h or text.startswith(h + ", ") or not h) and _is_terms(text[len(h) + 2 if h else 0:],
                                                                                parts.terms) for h in heads), text
    if parts.terms and parts.head:
        head = next(h for h in heads if text == h or text.startswith(h + ", "))
        assert clip_counter().count(head) <= CAPTION_TOKENS  # a long caption leaves room for terms


def _is_terms_sentence(text, terms):
    """``text`` is "Term, term, term." made of whole terms in rank order."""
    if not text.endswith("."):
        return False
    body = text[:-1]
    return any(body.startswith(t[:1].upper() + t[1:]) and _is_terms(t + body[len(t):], terms) for t in terms)


def _check_sentence(text, parts, fits):
    capital = lambda c: c[:1].upper() + c[1:]
    caption = parts.caption.strip().rstrip(".")
    whole = capital(caption) + "." if caption else ""
    if whole and fits(whole):
        assert text.startswith(whole), (text, whole)  # the caption stays whole in the T5 output
        leads = [whole]
    else:
        leads = [capital(p.rstrip(".")) + "." for p in _word_prefixes(caption) if p.rstrip(".")] + [""]
    assert any(text == lead or (text.startswith(lead + " ") if lead else True)
               and _is_terms_sentence(text[len(lead):].strip(), parts.terms) for lead in leads), text


@pytest.mark.parametrize("t5", ["tiny", "comfyui", "bound"])
def test_every_output_fits_its_encoder_and_keeps_terms_whole(terms, tmp_path, t5):
    if t5 == "comfyui" and not os.path.isfile(os.path.join(COMFYUI_T5, "tokenizer.json")):
        pytest.skip("set COMFYUI_DIR to also count with the T5 tokenizer ComfyUI ships")
    counters = {"clip": clip_counter(),
                "t5": {"tiny": lambda: T5Counter(write_tiny_t5_tokenizer(str(tmp_path / "t5"))),
                       "comfyui": lambda: T5Counter(COMFYUI_T5), "bound": CharBound}[t5]()}
    checked = 0
    for parts in _cases(terms):
        for target in TARGETS.values():
            for contents in ({}, {"text_l": "terms"}) if target.name == "sdxl" else ({},):
                texts = write(target, parts, counters, contents)
                assert list(texts) == list(target.names)
                for output in target.outputs:
                    text = texts[output.name]
                    counter = counters[output.encoder]
                    assert counter.count(text) <= output.limit, (target.name, output.name, text)
                    content = contents.get(output.name, output.content)
                    if content == "sentence":
                        _check_sentence(text, parts, lambda s: counter.count(s) <= output.limit)
                    else:
                        _check_clip(text, parts, content)
                    checked += 1
    assert checked == 300 * (3 + 3 + 3 + 2)  # hundreds of prompts, every output of every target


def test_terms_fill_the_window_and_long_captions_no_longer_swallow_it(terms):
    counter = clip_counter()
    caption = ("a woman in a red dress standing in a garden full of roses with a black cat at her feet and an old "
               "stone house behind her under a cloudy sky, ") * 3
    parts = PromptParts(caption, caption, tuple(terms[:40]))
    texts = write(get_target("sdxl"), parts, {"clip": counter, "t5": CharBound()})
    head, kept = split_prompt(texts["text_g"], caption.split(",")[0])
    assert head and len(kept) >= 3  # the caption was cut at its first phrase, the terms fill the rest
    assert counter.count(f"{texts['text_g']}, {terms[40]}") > 77 or len(kept) == 40
    flux = write(get_target("flux"), parts, {"clip": counter, "t5": T5Counter(COMFYUI_T5)
                                             if os.path.isfile(os.path.join(COMFYUI_T5, "tokenizer.json"))
                                             else CharBound()})
    assert flux["t5xxl"].startswith(caption.strip().rstrip(",")[:1].upper())
    assert "," not in flux["clip_l"].split(", ")[0] and flux["clip_l"].startswith(terms[0])


def test_shorten_cuts_at_phrases_then_words():
    counter = clip_counter()
    text = "A cat sleeps on a red sofa, next to a window with blue curtains and a small plant in a pot"
    fits = lambda n: (lambda s: counter.count(s) <= n)
    assert shorten(text, fits(77)) == text
    assert shorten(text, fits(12)) == "A cat sleeps on a red sofa"
    assert shorten(text, fits(6)) == "A cat sleeps on"
    assert shorten("Supercalifragilistic", fits(3)) == ""


def test_long_captions_leave_room_for_terms_in_the_engine(clip, images, tmp_path):
    """Before, a caption filling the CLIP window gave a prompt of the caption alone."""
    caption = " ".join(["a woman in a red dress standing in a garden with roses and a black cat and an old house"] * 5)
    engine = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=str(tmp_path / "c"))
    for mode in ("fast", "classic"):
        parts = engine.prompt_parts(images[0], mode, captions=caption, max_terms=8)[0]
        assert parts.caption == caption and caption.startswith(parts.head)
        assert engine.encoder.token_count(parts.head) <= Settings().caption_tokens and len(parts.terms) >= 3
        assert engine.interrogate(images[0], mode, captions=caption, max_terms=8)[0] == parts.prompt == \
            ", ".join([parts.head, *parts.terms])
    reference = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=str(tmp_path / "c"),
                             settings=Settings.reference())
    assert reference.interrogate(images[0], "fast", captions=caption)[0] == caption  # the reference's behaviour


def test_negative_terms_come_from_the_same_encoding_of_each_image(clip, images, tmp_path):
    """A target with a negative output gets negative mode's terms without putting the images through CLIP again."""
    engine = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=str(tmp_path / "c"))
    alone = [p.terms for p in engine.prompt_parts(images[:2], "negative", max_terms=5)]
    plain = engine.prompt_parts(images[:2], "fast", captions="a cat", max_terms=5)
    encoded = []
    original = clip.encode_images
    clip.encode_images = lambda batch, poll=None: encoded.append(len(batch)) or original(batch, poll)
    try:
        both = engine.prompt_parts(images[:2], "fast", captions="a cat", max_terms=5, negative=True)
    finally:
        del clip.encode_images
    assert encoded == [2]
    assert [p.negative for p in both] == alone and all(alone)
    assert [replace(p, negative=()) for p in both] == plain


def test_unknown_target_and_content_are_clear_errors():
    from core import InterrogatorError

    with pytest.raises(InterrogatorError, match="sdxl, sd3, flux"):
        get_target("sd4")
    with pytest.raises(InterrogatorError, match="unknown content"):
        write(get_target("flux"), PromptParts("a", "a", ("b",)), {"clip": clip_counter(), "t5": CharBound()},
              {"clip_l": "poem"})


def test_cli_writes_a_prompt_per_encoder_with_a_florence2_caption(models_dir, images, tmp_path):
    import csv
    import json
    import subprocess
    import sys

    from tests.tiny_models import write_tiny_florence2

    write_tiny_florence2(str(tmp_path / "models" / "Florence-2-base"))
    for i, image in enumerate(images[:2]):
        image.save(tmp_path / f"img{i}.png")
    t5 = write_tiny_t5_tokenizer(str(tmp_path / "t5"))
    out = tmp_path / "prompts.csv"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    done = subprocess.run(
        [sys.executable, "-m", "core", "interrogate", str(tmp_path / "img0.png"), str(tmp_path / "img1.png"),
         "--clip-weights", os.path.join(models_dir, "tiny-clip.safetensors"), "--models-dir", str(tmp_path / "models"),
         "--caption-model", "florence-2-base", "--caption-detail", "more detailed", "--caption-max-tokens", "8",
         "--mode", "fast", "--target", "flux", "--t5-tokenizer", t5, "--out", str(out), "--quiet"],
        cwd=root, env=dict(os.environ, HF_HUB_OFFLINE="1"), capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in done.stdout.splitlines()]
    assert [set(r) for r in rows] == [{"image", "clip_l", "t5xxl"}] * 2
    counter = T5Counter(t5)
    for row in rows:
        assert clip_counter().count(row["clip_l"]) <= 77 and counter.count(row["t5xxl"]) <= 256
        assert row["t5xxl"].endswith(".") and row["clip_l"] and row["t5xxl"][0].isupper()
    with open(out, newline="") as file:
        table = list(csv.reader(file))
    assert table[0] == ["image", "mode", "clip_l", "t5xxl"]
    assert [r[2:] for r in table[1:]] == [[r["clip_l"], r["t5xxl"]] for r in rows]
