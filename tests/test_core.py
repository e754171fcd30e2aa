"""The engine's loaders, inputs, caches and CLI, on tiny models loaded through the product's own code."""

import os
import shutil
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from core import (Cancelled, ImageError, Interrogator, ModelLoadError, ModelNotFoundError, VocabError,
                  Vocabulary, load_captioner, load_clip)
from core.embeddings import EmbeddingCache, LabelIndex
from core.images import as_pil_list
from core.text_encoder import TextEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def small_vocab(tmp_path):
    folder = tmp_path / "vocab"
    folder.mkdir()
    lists = {
        "artists.txt": ["Alphonse Mucha", "Claude Monet", "Hokusai", "Rembrandt", "Gustav Klimt"],
        "flavors.txt": ["cinematic", "highly detailed", "soft light", "moody", "vibrant colors", "matte painting",
                        "dramatic shadows", "pastel palette", "golden hour", "intricate ornaments"],
        "mediums.txt": ["oil painting", "watercolor", "a photograph", "a 3d render"],
        "movements.txt": ["art nouveau", "impressionism", "surrealism"],
        "negative.txt": ["blurry", "low quality", "watermark"],
    }
    for name, terms in lists.items():
        (folder / name).write_text("\n".join(terms) + "\n", encoding="utf-8")
    return Vocabulary.from_folder(str(folder))


# -- loading ---------------------------------------------------------------------------------------------------------
def test_clip_loads_from_file_with_sidecar_config(clip):
    assert clip.name == "tiny-clip.safetensors"
    assert clip.device.type == "cpu" and clip.dtype == torch.float32
    features = clip.encode_images([Image.new("RGB", (32, 48), (200, 10, 10))])
    assert features.shape == (1, 32)
    assert torch.allclose(features.norm(dim=-1), torch.ones(1))


def test_clip_weights_for_another_arch_give_clear_error(models_dir, tmp_path):
    wrong = tmp_path / "ViT-B-32-openai.safetensors"
    shutil.copy(os.path.join(models_dir, "tiny-clip.safetensors"), wrong)
    with pytest.raises(ModelLoadError, match="does not load as CLIP ViT-B-32"):
        load_clip(weights=str(wrong))


def test_preset_in_models_folder_is_preferred(models_dir, tmp_path):
    """'ViT-B-32/openai' is looked up as <models_dir>/ViT-B-32-openai.safetensors before any download."""
    shutil.copy(os.path.join(models_dir, "tiny-clip.safetensors"), tmp_path / "ViT-B-32-openai.safetensors")
    with pytest.raises(ModelLoadError, match="ViT-B-32-openai.safetensors does not load"):
        load_clip("ViT-B-32/openai", models_dir=str(tmp_path))


def test_missing_clip_names_the_file_to_provide(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        load_clip("ViT-L-14/openai", models_dir=str(tmp_path))
    assert str(tmp_path / "ViT-L-14-openai.safetensors") in str(error.value)


def test_missing_weights_file_and_unknown_arch(tmp_path, models_dir):
    with pytest.raises(ModelNotFoundError, match="not found"):
        load_clip(weights=str(tmp_path / "nothing.safetensors"))
    with pytest.raises(ModelNotFoundError, match="unknown CLIP model"):
        load_clip("ViT-Nope/openai")
    odd = tmp_path / "mystery.safetensors"
    shutil.copy(os.path.join(models_dir, "tiny-clip.safetensors"), odd)
    with pytest.raises(ModelLoadError, match="mystery.json"):
        load_clip(weights=str(odd))


def test_pickled_checkpoints_are_refused(tmp_path):
    path = tmp_path / "model.pt"
    path.write_bytes(b"not really a checkpoint")
    with pytest.raises(ModelLoadError, match="only .safetensors"):
        load_clip(weights=str(path), config=str(tmp_path / "x.json"))


def test_captioner_found_in_models_folder(captioner, models_dir):
    assert captioner.name == "blip-large"
    assert type(captioner.model).__name__ == "BlipForConditionalGeneration"
    assert load_captioner("none", models_dir=models_dir) is None


def test_missing_caption_model_names_the_folder(tmp_path):
    with pytest.raises(ModelNotFoundError) as error:
        load_captioner("blip-base", models_dir=str(tmp_path))
    assert str(tmp_path / "blip-image-captioning-base") in str(error.value)


def test_captions_are_batched_and_per_image(captioner, images):
    batch = captioner.caption(images)
    assert batch == [captioner.caption([image])[0] for image in images]
    assert len(set(batch)) == 3 and all(batch)


# -- images ----------------------------------------------------------------------------------------------------------
def test_tensor_gives_the_same_images_as_pil(images):
    rgb = images[0]
    tensor = torch.from_numpy(np.asarray(rgb, dtype=np.float32) / 255.0)[None]
    assert np.array_equal(np.asarray(as_pil_list(tensor)[0]), np.asarray(rgb))


def test_grayscale_and_rgba_are_converted():
    gray = torch.rand(2, 16, 16, 1)
    rgba = torch.rand(1, 16, 16, 4)
    assert [i.mode for i in as_pil_list(gray)] == ["RGB", "RGB"]
    assert as_pil_list(rgba)[0].mode == "RGB"
    assert as_pil_list(Image.new("L", (8, 8)))[0].mode == "RGB"


def test_bad_images_give_clear_errors(tmp_path):
    with pytest.raises(ImageError, match="empty"):
        as_pil_list(Image.new("RGB", (0, 10)))
    with pytest.raises(ImageError, match="empty"):
        as_pil_list(torch.zeros(1, 0, 8, 3))
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG garbage")
    with pytest.raises(ImageError, match="cannot read image .*broken.png"):
        as_pil_list(str(broken))
    with pytest.raises(ImageError, match="not found"):
        as_pil_list(str(tmp_path / "missing.png"))


# -- text encoder ----------------------------------------------------------------------------------------------------
TEXTS = ["a photo of a cat", "", "oil painting by Alphonse Mucha, art nouveau!!, trending on artstation",
         "word " * 90, "8k, (masterpiece:1.2), f/1.8"]


def test_fast_text_path_equals_open_clip_encode_text(clip):
    encoder = TextEncoder(clip, batch_size=2)
    assert encoder.fast
    ours = encoder.encode(TEXTS)
    theirs = clip.model.encode_text(clip.tokenizer(TEXTS))
    theirs = theirs / theirs.norm(dim=-1, keepdim=True)
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_prefix_and_term_tokenise_like_the_whole_prompt(clip):
    """The chain relies on ids(prefix + ", " + term) == ids(prefix + ",") + ids(term)."""
    encoder = TextEncoder(clip)
    vocab = Vocabulary.builtin()
    terms = [label for term_list in vocab.lists for label in term_list.labels[::7]]
    for prefix in ("a cat on a sofa", "art nouveau!", "f/1.8", "by Hokusai, 8k"):
        for term in terms:
            assert encoder.tokenizer.encode(f"{prefix}, {term}") == encoder.ids(prefix + ",") + encoder.ids(term)


def test_token_memo_is_bounded_and_keeps_what_is_in_use(clip):
    """A long run (10,000 images of a dataset) tokenises a new prompt per step: the memo must not grow with it."""
    encoder = TextEncoder(clip, memo_size=100)
    calls = []
    encode = encoder.tokenizer.encode
    encoder.tokenizer = type("Counting", (), {"encode": lambda self, t: calls.append(t) or encode(t),
                                              "context_length": 77})()
    for i in range(1000):
        assert encoder.ids("cinematic") == encode("cinematic")  # in use throughout: tokenised once
        assert encoder.ids(f"a prompt number {i}, cinematic") == encode(f"a prompt number {i}, cinematic")
    assert len(encoder._ids) + len(encoder._older_ids) <= 200
    assert calls.count("cinematic") == 1 and len(calls) == 1001


def test_token_budget(clip):
    encoder = TextEncoder(clip)
    assert encoder.token_count("a cat") == 4
    assert encoder.fits("word " * 75) and not encoder.fits("word " * 76)
    assert encoder.at_max_length("word " * 75)


# -- embedding cache -------------------------------------------------------------------------------------------------
def test_embeddings_cached_per_list_and_reused(clip, small_vocab, tmp_path):
    cache_dir = tmp_path / "cache"
    encoder = TextEncoder(clip)
    first = LabelIndex(small_vocab, encoder, EmbeddingCache(str(cache_dir)))
    files = sorted(p.name.rsplit("-", 1)[0] for p in cache_dir.rglob("*.safetensors"))
    assert files == ["artists", "flavors", "mediums", "movements", "negative", "trendings"]
    assert first.embeds.dtype == torch.float16 and first.embeds.shape == (10 + 10 + 4 + 3 + 72 + 3, 32)
    calls = []
    encoder.encode = lambda *a, **k: calls.append(a) or torch.zeros(0)
    second = LabelIndex(small_vocab, encoder, EmbeddingCache(str(cache_dir)))
    assert calls == [] and torch.equal(first.embeds, second.embeds)


def test_corrupt_and_stale_cache_files_are_rebuilt(clip, small_vocab, tmp_path):
    cache_dir = tmp_path / "cache"
    good = LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    flavors = next(cache_dir.rglob("flavors-*.safetensors"))
    flavors.write_bytes(flavors.read_bytes()[:100])  # truncated
    with pytest.warns(UserWarning, match="unreadable"):
        again = LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    assert torch.equal(good.embeds, again.embeds)
    mediums = next(cache_dir.rglob("mediums-*.safetensors"))
    shutil.copy(next(cache_dir.rglob("movements-*.safetensors")), mediums)  # valid file, other labels
    with pytest.warns(UserWarning, match="other labels"):
        LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))  # rebuilt file is now valid


def test_edited_list_gets_its_own_cache_file_and_old_variants_are_pruned(clip, small_vocab, tmp_path):
    cache_dir = tmp_path / "cache"
    for keep in (10, 9, 8, 7, 10):
        lists = tuple(tl if tl.name != "flavors" else tl.__class__(tl.name, tl.role, tl.terms[:keep])
                      for tl in small_vocab.lists)
        LabelIndex(Vocabulary(lists), TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    assert len(list(cache_dir.rglob("flavors-*.safetensors"))) == 3
    assert len(list(cache_dir.rglob("mediums-*.safetensors"))) == 1


def test_cancelled_embedding_leaves_no_cache_file(clip, small_vocab, tmp_path):
    def cancel(done, total, desc):
        if desc == "Embedding flavors" and done:
            raise Cancelled("stop")

    cache_dir = tmp_path / "cache"
    with pytest.raises(Cancelled):
        LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)), cancel)
    names = sorted(p.name.rsplit("-", 1)[0] for p in cache_dir.rglob("*") if p.is_file())
    assert names == ["artists"]


# -- modes -----------------------------------------------------------------------------------------------------------
def test_modes_and_progress(clip, small_vocab, images, tmp_path):
    seen = []
    hook = lambda *a: seen.append(a)
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    fast = engine.interrogate(images[0], "fast", captions="a cat", max_terms=4, progress=hook)[0]
    assert fast.startswith("a cat, ") and fast.count(", ") == 4
    classic = engine.interrogate(images[0], "classic", captions="a cat")[0]
    assert classic.startswith("a cat, ") and " by " in classic
    assert engine.interrogate(images[0], "best", captions="a cat", progress=hook)[0].startswith("a cat")
    negative = engine.interrogate(images[0], "negative", progress=hook)[0].split(", ")
    allowed = set(small_vocab["flavors"].terms) | set(small_vocab["negative"].terms)
    assert negative and set(negative) <= allowed and len(set(negative)) == len(negative)
    assert {d for _, _, d in seen} >= {"Embedding flavors", "Flavor chain", "Negative chain"}
    with pytest.raises(Exception, match="unknown mode"):
        engine.interrogate(images[0], "sideways")


def test_results_say_what_each_prompt_is_made_of(clip, small_vocab, images, tmp_path):
    """Same prompts as interrogate; every chosen term named with its list, role and the score Analyze Image shows."""
    from core import MODES

    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    analysis = engine.analyze(images[:2], top=1000)
    for mode in MODES:
        results = list(engine.interrogations(images[:2], mode, captions="a cat", max_terms=6))
        assert [r.prompt for r in results] == engine.interrogate(images[:2], mode, captions="a cat", max_terms=6)
        for result, analyzed in zip(results, analysis):
            assert "".join(span.text for span in result.spans) == result.prompt and result.terms, mode
            assert result.caption == ("a cat" if MODES[mode].captioned else "")
            for term in result.terms:
                assert term.role == small_vocab[term.list].role and term.label in small_vocab[term.list].labels
                assert dict(analyzed[term.list])[term.label] == term.score, (mode, term)
            plain = "".join(span.text for span in result.spans if span.term is None)
            assert set(plain.replace(result.caption, "", 1)) <= {",", " "}, (mode, plain)


def test_prompt_segments_into_caption_labels_and_separators():
    from core.result import segment

    labels = {"oil painting", "by Claude Monet", "highly detailed, 8k", "highly detailed", "art nouveau"}
    prompt = "oil painting of a cat by Claude Monet, highly detailed, 8k, art nouveau, not a label"
    pieces = segment(prompt, "oil painting of a cat", labels.__contains__)
    assert pieces == [("oil painting of a cat ", False), ("by Claude Monet", True), (", ", False),
                      ("highly detailed, 8k", True), (", ", False), ("art nouveau", True), (", not a label", False)]
    assert segment("oil painting by Claude Monet", "", labels.__contains__) == [
        ("oil painting", True), (" ", False), ("by Claude Monet", True)]
    assert segment("", "", labels.__contains__) == [] and segment("a cat", "a cat", bool) == [("a cat", False)]


def test_every_mode_is_one_row_with_its_method_and_the_cli_offers_it():
    from core import MODES
    from core.cli import _parser

    for mode in MODES.values():
        assert callable(getattr(Interrogator, f"_{mode.name}", None)), mode.name
    interrogate = _parser()._subparsers._group_actions[0].choices["interrogate"]
    assert next(a for a in interrogate._actions if a.dest == "mode").choices == list(MODES)


def test_prompts_fit_the_token_budget(clip, images, tmp_path):
    engine = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=str(tmp_path / "c"))
    caption = "a very long caption " * 8
    for mode in ("fast", "best"):
        prompt = engine.interrogate(images[1], mode, captions=caption)[0]
        assert engine.encoder.fits(prompt), mode


# -- CLI -------------------------------------------------------------------------------------------------------------
def _cli(*args, cwd=ROOT):
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    return subprocess.run([sys.executable, "-m", "core", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=600)


def test_cli_interrogates_folder_to_csv(models_dir, images, tmp_path):
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    images[0].save(folder / "a.png")
    images[1].save(folder / "sub" / "b.jpg")
    out = tmp_path / "out.csv"
    result = _cli("interrogate", str(folder), "--mode", "fast", "--clip-weights",
                  os.path.join(models_dir, "tiny-clip.safetensors"), "--models-dir", models_dir, "--device", "cpu",
                  "--quiet", "--out", str(out))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith(str(folder / "a.png") + "\t")
    rows = out.read_text().splitlines()
    assert rows[0] == "image,mode,prompt" and len(rows) == 3


def test_cli_bad_input_is_one_line_and_nonzero(models_dir, tmp_path):
    result = _cli("interrogate", str(tmp_path / "nope.png"), "--quiet")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: no such file or folder: {tmp_path / 'nope.png'}"]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"nope")
    result = _cli("interrogate", str(broken), "--quiet")
    assert result.returncode == 2 and "cannot read image" in result.stderr


def test_vocab_errors(tmp_path):
    with pytest.raises(VocabError, match="not a clip-interrogator data folder"):
        Vocabulary.from_folder(str(tmp_path))
    (tmp_path / "manifest.json").write_text('{"lists": [{"name": "x", "file": "x.txt", "role": "bogus"}]}')
    with pytest.raises(VocabError, match="role 'bogus'"):
        Vocabulary.from_folder(str(tmp_path))


def test_prefix_reuse_equals_open_clip_encode_text(clip):
    """Chain candidates computed from the shared prefix's keys/values match whole-prompt encoding, truncation too."""
    encoder = TextEncoder(clip, batch_size=3)
    assert encoder.prefix_reuse
    for current in ("a cat on a sofa, oil painting", "word " * 70):
        prefix = [encoder.sot, *encoder.tokenizer.encode(current + ",")]
        terms = ["cinematic", "by Alphonse Mucha", "trending on artstation", "highly detailed, 8k", "f/1.8 bokeh"]
        ours = encoder.encode_continuations(prefix, [encoder.continuation(prefix, encoder.ids(t)) for t in terms])
        tokens = clip.tokenizer([f"{current}, {t}" for t in terms])
        theirs = clip.model.encode_text(tokens)
        theirs = theirs / theirs.norm(dim=-1, keepdim=True)
        assert torch.allclose(ours, theirs, atol=1e-5), current


def test_core_imports_nothing_from_comfyui():
    import ast

    for name in os.listdir(os.path.join(ROOT, "core")):
        if not name.endswith(".py"):
            continue
        tree = ast.parse(open(os.path.join(ROOT, "core", name), encoding="utf-8").read())
        for node in ast.walk(tree):
            modules = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for module in modules:
                assert module.split(".")[0] not in {"comfy", "comfy_extras", "comfy_api", "folder_paths",
                                                    "nodes", "server"}, (name, module)


def test_inspect_is_analyze_and_confidence_from_one_encoding(clip, small_vocab, images, tmp_path):
    """Analyze Image shows both: each image goes through the vision tower once, not once per view."""
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    analysis, confidence = engine.analyze(images[:2], top=3), engine.confidence(images[:2], top=3)
    encoded = []
    original = clip.encode_images
    clip.encode_images = lambda batch, poll=None: encoded.append(len(batch)) or original(batch, poll)
    try:
        assert engine.inspect(images[:2], top=3) == (analysis, confidence)
    finally:
        del clip.encode_images
    assert encoded == [2]
