"""Bad input, by class: every kind gets a clear error (or the right repair), never a traceback, a hang or nonsense.

One section per class of bad input (JSON configs, damaged weights, devices, images, caches, output files, long
text, empty vocabularies, names outside their folder, pickles, the hub, cancel, the CLI's exit codes), each
parametrized over many instances.
"""

import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import warnings
import zlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from core import (Cancelled, ImageError, Interrogator, InterrogatorError, ModelLoadError, ModelNotFoundError,
                  Settings, VocabError, Vocabulary, load_captioner, load_clip)
from core.embeddings import EmbeddingCache, LabelIndex
from core.images import MAX_PIXELS, as_pil_list, open_image
from core.text_encoder import MAX_TEXT_CHARS, TextEncoder
from core.vocab import MAX_TERM_CHARS, TermList

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def clip_file(models_dir):
    return os.path.join(models_dir, "tiny-clip.safetensors")


@pytest.fixture
def small_vocab(tmp_path):
    folder = tmp_path / "small_vocab"
    folder.mkdir()
    lists = {"artists.txt": ["Claude Monet", "Hokusai"], "flavors.txt": ["cinematic", "soft light", "moody"],
             "mediums.txt": ["oil painting", "watercolor"], "movements.txt": ["impressionism"],
             "negative.txt": ["blurry", "watermark"]}
    for name, terms in lists.items():
        (folder / name).write_text("\n".join(terms) + "\n", encoding="utf-8")
    return Vocabulary.from_folder(str(folder))


@pytest.fixture(scope="module")
def builtin_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("builtin_cache"))


def cli(*args):
    from core.cli import main

    return main(list(args))


# -- 1. JSON configs: one validated reader for CLIP configs, caption config.json and vocab manifests -------------------
MALFORMED_JSON = {
    "a list": "[]", "null": "null", "a string": '"config"', "a number": "3", "broken": '{"a": ', "empty": "",
    "not utf-8": b"\xff\xfe{\x00", "deep": "[" * 100000 + "]" * 100000,
}


def _write(path, content):
    mode = "wb" if isinstance(content, bytes) else "w"
    with open(path, mode) as file:
        file.write(content)


@pytest.mark.parametrize("kind", list(MALFORMED_JSON))
def test_malformed_clip_config_is_a_clear_error(clip_file, tmp_path, kind):
    config = tmp_path / "tiny.json"
    _write(config, MALFORMED_JSON[kind])
    with pytest.raises(ModelLoadError, match="tiny.json"):
        load_clip(weights=clip_file, config=str(config))


@pytest.mark.parametrize("field, value", [
    ("embed_dim", "32"), ("embed_dim", True), ("vision_cfg", []), ("text_cfg", "x"), ("text_cfg", None),
    ("vision_cfg", {"layers": "two", "width": 64}), ("text_cfg", {"width": -5}), ("unknown_key", 1),
    ("model_cfg", 5), ("preprocess_cfg", []), ("preprocess_cfg", {"mean": "red"}),
    ("preprocess_cfg", {"std": [1, 2]}), ("vision_cfg", {"width": 10**6, "layers": 100, "patch_size": 16,
                                                         "image_size": 64, "head_width": 32}),
])
def test_clip_config_fields_of_the_wrong_type_or_size(clip_file, tmp_path, field, value):
    from tests.tiny_models import TINY_CLIP_CONFIG

    config = dict(TINY_CLIP_CONFIG)
    if field in ("preprocess_cfg", "model_cfg"):
        config = {"model_cfg": config, field: value} if field == "preprocess_cfg" else {field: value}
    else:
        config[field] = value
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="tiny.json"):
        load_clip(weights=clip_file, config=str(path))


@pytest.fixture(scope="module")
def blip_copy(models_dir, tmp_path_factory):
    """Fresh copies of the tiny BLIP folder, to damage one way each."""
    source = os.path.join(models_dir, "blip-image-captioning-large")
    count = [0]

    def copy():
        count[0] += 1
        target = str(tmp_path_factory.mktemp("blip") / f"blip-{count[0]}")
        shutil.copytree(source, target)
        return target

    return copy


@pytest.mark.parametrize("kind", list(MALFORMED_JSON))
def test_malformed_caption_config_is_a_clear_error(blip_copy, kind):
    folder = blip_copy()
    _write(os.path.join(folder, "config.json"), MALFORMED_JSON[kind])
    with pytest.raises(ModelLoadError, match="config.json"):
        load_captioner(folder)


@pytest.mark.parametrize("field, value", [("model_type", 5), ("model_type", ["blip"]), ("text_config", "oops"),
                                          ("vision_config", [1, 2])])
def test_caption_config_fields_of_the_wrong_type(blip_copy, field, value):
    folder = blip_copy()
    path = os.path.join(folder, "config.json")
    config = json.load(open(path))
    config[field] = value
    _write(path, json.dumps(config))
    with pytest.raises(ModelLoadError, match=field):
        load_captioner(folder)


@pytest.mark.parametrize("kind", list(MALFORMED_JSON))
def test_malformed_manifest_is_a_clear_error(tmp_path, kind):
    _write(tmp_path / "manifest.json", MALFORMED_JSON[kind])
    with pytest.raises(VocabError, match="manifest.json"):
        Vocabulary.from_folder(str(tmp_path))


@pytest.mark.parametrize("lists, message", [
    ('{"no_lists": []}', "'lists'"),
    ('{"lists": {"a": 1}}', "'lists' must be an array"),
    ('{"lists": [1]}', "list 1 is a whole number"),
    ('{"lists": [null]}', "list 1 is null"),
    ('{"lists": [["a.txt"]]}', "list 1 is an array"),
    ('{"lists": [{"name": "a", "role": "flavor"}]}', "neither 'file' nor 'terms'"),
    ('{"lists": [{"name": "a", "file": 7}]}', "'file' must be a string"),
    ('{"lists": [{"name": "a", "file": "sub"}]}', "is a folder"),
    ('{"lists": [{"name": "a", "file": "missing.txt"}]}', "not found"),
    ('{"lists": [{"name": "a", "terms": "cinematic"}]}', "'terms' must be an array"),
    ('{"lists": [{"name": "a", "terms": ["ok", 5]}]}', "terms must be a sequence of strings"),
    ('{"lists": [{"name": "a", "terms": [null]}]}', "terms must be a sequence of strings"),
    ('{"lists": [{"name": 5, "terms": ["x"]}]}', "'name' must be a string"),
    ('{"lists": [{"name": "", "terms": ["x"]}]}', "name must be a non-empty string"),
    ('{"lists": [{"terms": ["x"]}]}', "name must be a non-empty string"),
    ('{"lists": [{"name": "a", "terms": ["x"], "role": 3}]}', "'role' must be a string"),
    ('{"lists": [{"name": "a", "terms": ["x"], "style": "yes"}]}', "'style' must be true or false"),
    ('{"lists": [{"name": "a", "terms": ["x"]}, {"name": "a", "terms": ["y"]}]}', "more than one list named a"),
])
def test_manifest_entries_are_checked(tmp_path, lists, message):
    (tmp_path / "sub").mkdir()
    (tmp_path / "manifest.json").write_text(lists)
    with pytest.raises(VocabError, match=message):
        Vocabulary.from_folder(str(tmp_path))


def _unreadable(path):
    """A path open() fails on with an OSError that is neither 'not found' nor 'is a folder' (root reads 000 files)."""
    os.symlink(path, path)  # a symlink to itself: "too many levels of symbolic links"


@pytest.mark.parametrize("make, message", [(os.mkdir, "is a folder"), (_unreadable, "cannot read term list")])
def test_term_list_path_that_is_a_folder_or_unreadable(tmp_path, make, message):
    (tmp_path / "manifest.json").write_text('{"lists": [{"name": "a", "file": "a.txt"}]}')
    make(str(tmp_path / "a.txt"))
    with pytest.raises(VocabError, match=message):
        Vocabulary.from_folder(str(tmp_path))
    user = tmp_path / "user"
    user.mkdir()
    make(str(user / "mine.txt"))
    with pytest.raises(VocabError, match=message):
        Vocabulary.builtin().with_user_lists(str(user))


# -- 2. damaged weights: truncated, empty or random safetensors; a folder without its config ---------------------------
def _truncate(path):
    data = open(path, "rb").read()
    _write(path, data[:len(data) // 2])


DAMAGE = {"truncated": _truncate, "zero bytes": lambda p: _write(p, b""), "random bytes":
          lambda p: _write(p, np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes()),
          "header only": lambda p: _write(p, open(p, "rb").read()[:200])}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_clip_weights_are_named(clip_file, tmp_path, damage):
    copy = tmp_path / "tiny-clip.safetensors"
    shutil.copy(clip_file, copy)
    shutil.copy(clip_file.replace(".safetensors", ".json"), tmp_path / "tiny-clip.json")
    DAMAGE[damage](str(copy))
    with pytest.raises(ModelLoadError, match="tiny-clip.safetensors (is damaged|holds no tensors)"):
        load_clip(weights=str(copy))


@pytest.mark.parametrize("index, config, message", [
    ({"weight_map": {"w": "../outside.safetensors"}}, {}, "is outside"),
    ({"weight_map": ["a.safetensors"]}, {}, "'weight_map' must be an object"),
    ({"weight_map": {"w": "a.safetensors"}}, ["not", "a", "config"], "config.json holds an array"),
    ({"weight_map": {"w": "a.safetensors"}}, {}, "a.safetensors (is damaged|holds no tensors)"),
])
def test_a_model_folder_is_checked_file_by_file(tmp_path, index, config, message):
    """A sharded model folder (a text encoder or CLIP Vision model in Hugging Face's layout) names what is wrong."""
    from core.tensors import SHARD_INDEX, SafetensorsFiles

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / SHARD_INDEX).write_text(json.dumps(index))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "a.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ModelLoadError, match=message):
        SafetensorsFiles(str(folder))


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_damaged_caption_weights_are_named(blip_copy, damage):
    folder = blip_copy()
    DAMAGE[damage](os.path.join(folder, "model.safetensors"))
    with pytest.raises(ModelLoadError, match="model.safetensors (is damaged|holds no tensors)"):
        load_captioner(folder)


def test_caption_folder_without_config_says_so(blip_copy):
    folder = blip_copy()
    os.remove(os.path.join(folder, "config.json"))
    with pytest.raises(ModelLoadError, match="has no config.json"):
        load_captioner(folder)


def test_out_of_memory_is_not_reported_as_a_bad_model(clip_file, tmp_path, monkeypatch):
    """Allocation failures pass through: they are not "wrong architecture" or "could not be downloaded"."""
    import open_clip

    def no_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", no_memory)
    named = tmp_path / "ViT-B-32-openai.safetensors"
    shutil.copy(clip_file, named)
    with pytest.raises(torch.OutOfMemoryError):
        load_clip(weights=str(named))

    def cpu_out_of_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory")

    monkeypatch.setattr(open_clip, "load_checkpoint", cpu_out_of_memory)
    with pytest.raises(RuntimeError, match="can't allocate memory"):
        load_clip(weights=clip_file)


# -- 3. devices -------------------------------------------------------------------------------------------------------
BAD_DEVICES = ["gpu", "cuda:banana", "", "meta", "cuda", "cuda:7", "mps", "xpu"]


@pytest.mark.parametrize("device", [d for d in BAD_DEVICES if d not in ("cuda", "cuda:7") or
                                    not torch.cuda.is_available()])
def test_bad_or_missing_device_is_a_clear_error(clip_file, images, tmp_path, capsys, device):
    from core.devices import parse_device

    said = f"device '{device}'"
    with pytest.raises(InterrogatorError, match=said):
        parse_device(device)
    with pytest.raises(InterrogatorError, match=said):
        load_clip(weights=clip_file, device=device)
    with pytest.raises(InterrogatorError, match=said):
        load_captioner("blip-large", device=device)
    images[0].save(tmp_path / "a.png")
    assert cli("interrogate", str(tmp_path / "a.png"), "--clip-weights", clip_file, "--device", device,
               "--quiet") == 2
    assert said in capsys.readouterr().err


# -- 4. images: every PIL mode as a viewer shows it, bombs refused, tensors checked ------------------------------------
def _png_header(path, width, height):
    """A PNG whose header claims ``width x height`` pixels, with almost no data: a decompression bomb."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    _write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
           + chunk(b"IEND", b""))


@pytest.mark.parametrize("side", [12000, 20000, 100000])
def test_decompression_bomb_is_refused_before_decoding(tmp_path, side):
    assert side * side > MAX_PIXELS
    path = str(tmp_path / "bomb.png")
    _png_header(path, side, side)
    with pytest.raises(ImageError, match="larger than .* megapixels"):
        open_image(path)


@pytest.mark.parametrize("value", [None, 5, 3.5, b"png", {"image": 1}, [None], [5], object()])
def test_wrong_image_types_through_the_api(clip, small_vocab, tmp_path, value):
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    with pytest.raises(ImageError):
        engine.interrogate(value, "fast", captions="a cat")
    with pytest.raises(ImageError):
        engine.analyze(value)


@pytest.mark.parametrize("captions", [5, 3.5, [1, 2, 3], b"a cat", {"a": 1}, ["a cat", 7, None]])
def test_wrong_caption_types_through_the_api(clip, small_vocab, images, tmp_path, captions):
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    with pytest.raises(InterrogatorError, match="captions must be"):
        engine.interrogate(images, "fast", captions=captions)


def test_exif_orientation_is_applied(tmp_path):
    """A phone photo stored sideways with an EXIF 'rotate 90' tag is read upright, from a file or a PIL image."""
    stored = Image.new("RGB", (40, 20), (255, 0, 0))
    stored.paste((0, 0, 255), (20, 0, 40, 20))  # left half red, right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = str(tmp_path / "phone.jpg")
    stored.save(path, exif=exif, quality=95)
    for upright in (open_image(path), as_pil_list(Image.open(path))[0]):
        assert upright.size == (20, 40)
        top, bottom = upright.getpixel((10, 5)), upright.getpixel((10, 35))
        assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # red on top, blue below


@pytest.mark.parametrize("array, mode, expected", [
    (np.array([[0, 30000, 65535]], np.uint16), "I;16", (0, 117, 255)),  # 16-bit grayscale PNG
    (np.array([[0, 30000, 65535]], np.int32), "I", (0, 117, 255)),  # how older PIL opens 16-bit PNGs
    (np.array([[0.0, 0.5, 1.0]], np.float32), "F", (0, 128, 255)),  # float TIFF in 0..1
    (np.array([[-0.2, 0.25, 7.0]], np.float32), "F", (0, 64, 255)),  # out of range: clipped, not wrapped
])
def test_high_bit_depth_and_float_images_are_scaled(tmp_path, array, mode, expected):
    image = Image.fromarray(array)
    assert image.mode == mode
    assert [as_pil_list(image)[0].getpixel((x, 0)) for x in range(3)] == [(v, v, v) for v in expected]
    if mode in ("I;16", "F"):
        path = str(tmp_path / ("gray16.png" if mode == "I;16" else "float.tif"))
        image.save(path)
        assert [open_image(path).getpixel((x, 0)) for x in range(3)] == [(v, v, v) for v in expected]


@pytest.mark.parametrize("mode", ["1", "CMYK", "HSV", "L", "LA", "LAB", "La", "P", "PA", "RGBA", "RGBX", "RGBa",
                                  "YCbCr", "I;16B", "I;16L"])
def test_every_pil_mode_decodes_to_rgb(mode):
    image = as_pil_list(Image.new(mode, (5, 4)))[0]
    assert image.mode == "RGB" and image.size == (5, 4)


@pytest.mark.parametrize("tensor, message", [
    (torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.uint8), "uint8; divide 8-bit pixels by 255"),
    (torch.randint(0, 256, (1, 8, 8, 3), dtype=torch.int64), "int64"),
    (torch.zeros(1, 8, 8, 3, dtype=torch.bool), "bool"),
    (torch.rand(1, 8, 8, 3) * 255, "divide by 255"),
    (torch.rand(1, 8, 8, 3) * 2 - 1, "map it to 0..1"),
    (torch.full((1, 8, 8, 3), float("nan")), "NaN"),
    (torch.tensor([[[[0.5, float("inf"), 0.1]]]]), "NaN or infinite"),
    (np.full((8, 8, 3), 200, np.uint8), "uint8"),
])
def test_tensors_that_are_not_float_0_to_1_are_refused(tensor, message):
    with pytest.raises(ImageError, match=message):
        as_pil_list(tensor)


def test_slightly_out_of_range_floats_are_clipped():
    """Filters overshoot a little; that is clipped, not refused."""
    tensor = torch.tensor([[[[-0.01, 0.5, 1.02]]]])
    assert as_pil_list(tensor)[0].getpixel((0, 0)) == (0, 128, 255)


# -- 5. NaN weights and damaged caches -------------------------------------------------------------------------------
def _nan_copy(clip_file, tmp_path, key_part):
    from safetensors.torch import load_file, save_file

    weights = load_file(clip_file)
    key = next(k for k in weights if key_part in k)
    weights[key] = torch.full_like(weights[key], float("nan"))
    path = tmp_path / "nan-clip.safetensors"
    save_file(weights, str(path))
    shutil.copy(clip_file.replace(".safetensors", ".json"), tmp_path / "nan-clip.json")
    return str(path), key


@pytest.mark.parametrize("key_part, tower", [("visual.conv1.weight", "image"),
                                             ("transformer.resblocks.0.mlp.c_fc.weight", "text")])
def test_nan_weights_are_named_and_never_cached(clip_file, small_vocab, images, tmp_path, key_part, tower):
    from safetensors.torch import load_file

    path, key = _nan_copy(clip_file, tmp_path, key_part)
    engine = Interrogator(load_clip(weights=path), None, small_vocab, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ModelLoadError, match=f"NaN or infinite weights \\({key}"):
        engine.interrogate(images[0], "fast", captions="a cat")
    cached = list((tmp_path / "cache").rglob("*.safetensors"))
    assert len(cached) == (6 if tower == "image" else 0)  # text features of a NaN text tower are never cached
    assert all(torch.isfinite(load_file(str(f))["embeds"]).all() for f in cached)


def _rewrite_cache(path, change):
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as file:
        meta, embeds = file.metadata(), file.get_tensor("embeds")
    save_file({"embeds": change(embeds)}, str(path), metadata=meta)


CACHE_DAMAGE = {
    "NaN": (lambda e: torch.full_like(e, float("nan")), "NaN"),
    "infinity": (lambda e: e.index_fill(0, torch.tensor([0]), float("inf")), "NaN or infinite"),
    "wide": (lambda e: torch.cat([e, e[:, :1]], 1), "not \\[3, 32\\]"),
    "short": (lambda e: e[:2], "not \\[3, 32\\]"),
    "1-d": (lambda e: e.flatten(), "not \\[3, 32\\]"),
    "float32": (lambda e: e.float(), "float32"),
}


@pytest.mark.parametrize("damage", list(CACHE_DAMAGE))
def test_damaged_cache_is_rebuilt(clip, small_vocab, tmp_path, damage):
    change, message = CACHE_DAMAGE[damage]
    cache_dir = tmp_path / "cache"
    good = LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    flavors = next(cache_dir.rglob("flavors-*.safetensors"))
    _rewrite_cache(flavors, change)
    with pytest.warns(UserWarning, match=f"{message}.*rebuilding"):
        again = LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    assert torch.equal(good.embeds, again.embeds)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LabelIndex(small_vocab, TextEncoder(clip), EmbeddingCache(str(cache_dir)))  # the rebuilt file is good


# -- 6. files we write: unique temp names, list names of any script ---------------------------------------------------
SCRIPTS = ["日本", "русский", "ελληνικά", "中文", "한국어", "עברית", "a b", "a/b", "a_b", "..", "CON"]


def test_list_names_in_any_script_get_their_own_cache_files(clip, tmp_path):
    lists = tuple(TermList(name, "flavor", (f"term {i}", f"other {i}")) for i, name in enumerate(SCRIPTS))
    cache_dir = tmp_path / "cache"
    LabelIndex(Vocabulary(lists), TextEncoder(clip), EmbeddingCache(str(cache_dir)))
    files = list(cache_dir.rglob("*.safetensors"))
    assert len(files) == len(SCRIPTS) and all(f.parent.parent == cache_dir for f in files)
    calls = []
    encoder = TextEncoder(clip)
    encoder.encode = lambda *a, **k: calls.append(a) or torch.zeros(0)
    LabelIndex(Vocabulary(lists), encoder, EmbeddingCache(str(cache_dir)))  # every list from its own file
    assert calls == []


def test_out_into_a_missing_folder_below_a_file_or_onto_a_folder(clip_file, models_dir, images, tmp_path, capsys):
    image = tmp_path / "a.png"
    images[0].save(image)
    (tmp_path / "file.txt").write_text("keep")
    (tmp_path / "folder").mkdir()
    cases = {str(tmp_path / "missing" / "out.txt"): "does not exist",
             str(tmp_path / "file.txt" / "out.txt"): "file.txt is a file",
             str(tmp_path / "file.txt" / "sub" / "out.txt"): "file.txt is a file",
             str(tmp_path / "folder"): "is a folder"}
    for out, message in cases.items():
        code = cli("interrogate", str(image), "--mode", "fast", "--clip-weights", clip_file, "--caption-model",
                   "none", "--models-dir", models_dir, "--quiet", "--out", out)
        error = capsys.readouterr().err
        assert code == 2 and message in error and "Traceback" not in error, (out, error)
    assert (tmp_path / "file.txt").read_text() == "keep" and not list((tmp_path / "folder").iterdir())


def test_a_users_own_tmp_file_survives_and_nothing_is_left_behind(clip_file, models_dir, images, tmp_path, capsys):
    image = tmp_path / "a.png"
    images[0].save(image)
    out = tmp_path / "prompts.txt"
    mine = tmp_path / "prompts.txt.tmp"
    mine.write_text("my notes")
    code = cli("interrogate", str(image), "--mode", "fast", "--clip-weights", clip_file, "--caption-model", "none",
               "--models-dir", models_dir, "--caption", "a cat", "--quiet", "--out", str(out))
    assert code == 0, capsys.readouterr().err
    assert mine.read_text() == "my notes" and out.read_text().startswith(f"{image}\ta cat, ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "prompts.txt", "prompts.txt.tmp"]


# -- 7. long text: bounded before tokenizing --------------------------------------------------------------------------
def test_giant_term_in_a_list_is_skipped_with_a_warning(tmp_path):
    giant = "x" * 2**20
    (tmp_path / "manifest.json").write_text('{"lists": [{"name": "mine", "file": "mine.txt"}]}')
    (tmp_path / "mine.txt").write_text(f"cinematic\n{giant}\nmoody\n", encoding="utf-8")
    with pytest.warns(UserWarning, match=f"longer than {MAX_TERM_CHARS} characters skipped"):
        vocab = Vocabulary.from_folder(str(tmp_path))
    assert vocab["mine"].terms == ("cinematic", "moody")


@pytest.mark.parametrize("caption", ["y" * 128 * 1024, "a cat " + "z" * 5000 + " on a mat", "word " * 40000,
                                     "a cat" + " " * 200000 + "on a mat"])
def test_giant_caption_is_cut_before_tokenizing(clip, small_vocab, images, tmp_path, monkeypatch, caption):
    seen = []
    encode = clip.tokenizer.encode

    def bounded_encode(text):
        seen.append(len(text))
        assert len(text) <= MAX_TEXT_CHARS, f"{len(text)} characters reached the tokenizer"
        return encode(text)

    monkeypatch.setattr(clip.tokenizer, "encode", bounded_encode)
    # ours cuts the caption part of the prompt to its token budget; the reference's settings keep it whole
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    for mode in ("fast", "best"):
        parts = engine.prompt_parts(images[0], mode, captions=caption)[0]
        assert parts.caption == caption  # kept whole (the T5 outputs take it)
        assert parts.prompt.startswith(parts.head) and " ".join(caption.split()).startswith(parts.head)
        assert parts.head or len(caption.split()[0]) > MAX_TEXT_CHARS  # only a giant first word leaves none
        if len(" ".join(caption.split())) < 100:  # a few words between giant whitespace runs are all kept
            assert parts.head == " ".join(caption.split()), parts.head
    reference = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path), settings=Settings.reference())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for mode in ("fast", "best"):
            assert reference.interrogate(images[0], mode, captions=caption)[0].startswith(caption)
    assert seen
    cut = len(" ".join(caption.split())) > MAX_TEXT_CHARS  # whitespace runs alone are collapsed, not cut
    assert any("before tokenizing" in str(w.message) for w in caught) == cut


# -- 8. modes with nothing to choose from ------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["fast", "classic", "best", "negative", "style"])
def test_mode_with_every_list_off_or_every_term_banned_says_so(clip, small_vocab, images, tmp_path, mode):
    all_off = small_vocab.without(names=small_vocab.names)
    emptied = Vocabulary(tuple(replace(tl, terms=()) for tl in small_vocab.lists))
    banned = small_vocab.banning([t for tl in small_vocab.lists for t in tl.terms])
    for vocab, message in ((all_off, "switched off"), (emptied, "banned"), (banned, "banned")):
        engine = Interrogator(clip, None, vocab, cache_dir=str(tmp_path))
        with pytest.raises(VocabError, match=f"{mode} mode has no terms to choose from.*{message}"):
            engine.interrogate(images[0], mode, captions="a cat")


def test_modes_that_draw_on_switched_off_lists_only(clip, small_vocab, images, tmp_path):
    """Negative mode needs flavor or negative lists; style mode needs style lists."""
    only_artists = small_vocab.without(names=[n for n in small_vocab.names if n != "artists"])
    engine = Interrogator(clip, None, only_artists, cache_dir=str(tmp_path))
    assert engine.interrogate(images[0], "fast", captions="a cat")[0].startswith("a cat, ")
    with pytest.raises(VocabError, match="negative mode"):
        engine.interrogate(images[0], "negative")
    no_style = Vocabulary(tuple(replace(tl, style=False) for tl in small_vocab.lists))
    with pytest.raises(VocabError, match="style mode"):
        Interrogator(clip, None, no_style, cache_dir=str(tmp_path)).interrogate(images[0], "style")


@pytest.mark.parametrize("value", [-1, -100, 2.5, "3", True])
def test_counts_below_range_or_of_the_wrong_type(clip, small_vocab, images, tmp_path, value):
    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    with pytest.raises(InterrogatorError, match="max_terms"):
        engine.interrogate(images[0], "fast", captions="a cat", max_terms=value)
    with pytest.raises(InterrogatorError, match="top"):
        engine.analyze(images[0], top=value if value != 2.5 else 0)


# -- 9. names stay inside their folder --------------------------------------------------------------------------------
@pytest.fixture
def model_files(tmp_path, clip_file):
    from tests.test_nodes import import_pack

    import_pack()
    environment = sys.modules["ci_pack_under_test.nodes.environment"]
    model_files = sys.modules["ci_pack_under_test.nodes.model_files"]
    models = tmp_path / "models"
    models.mkdir()
    outside = tmp_path / "outside"
    (outside / "captioner").mkdir(parents=True)
    shutil.copy(clip_file, outside / "x.safetensors")
    (outside / "captioner" / "config.json").write_text('{"model_type": "blip"}')
    return model_files.ModelFiles(environment.PlainEnvironment(str(models))), str(outside)


@pytest.mark.parametrize("name", ["../outside/x.safetensors", "..\\outside\\x.safetensors",
                                  "sub/../../outside/x.safetensors", "{outside}/x.safetensors"])
def test_node_model_names_cannot_leave_the_models_folder(model_files, name):
    files, outside = model_files
    error = sys.modules["ci_pack_under_test.core"].ModelNotFoundError
    name = name.format(outside=outside)
    with pytest.raises(error, match="is outside .*models"):
        files.clip_source(name)
    with pytest.raises(error, match="is outside .*models"):
        files.caption_source(name.replace("x.safetensors", "captioner"))


@pytest.mark.parametrize("file", ["../secret.txt", "../../secret.txt", "{root}/secret.txt", "sub/../../secret.txt",
                                  "..\\secret.txt"])
def test_manifest_files_cannot_leave_the_vocabulary_folder(tmp_path, file):
    (tmp_path / "secret.txt").write_text("secret term\n")
    folder = tmp_path / "vocab"
    folder.mkdir()
    file = file.format(root=tmp_path)
    (folder / "manifest.json").write_text(json.dumps({"lists": [{"name": "a", "file": file}]}))
    with pytest.raises(VocabError, match="is outside .*vocab"):
        Vocabulary.from_folder(str(folder))


# -- 10. pickles are never loaded ------------------------------------------------------------------------------------
@pytest.fixture
def no_torch_load(monkeypatch):
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("torch.load was called")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


def test_pretrained_tag_that_is_a_pickle_path_is_refused(tmp_path, no_torch_load):
    pickled = tmp_path / "weights.pt"
    torch.save({"x": torch.zeros(1)}, pickled)
    for name in (f"ViT-B-32/{pickled}", "ViT-B-32/weights.pt", "ViT-B-32/not-a-tag"):
        with pytest.raises(ModelNotFoundError, match="pretrained tags"):
            load_clip(name, models_dir=str(tmp_path))
    assert no_torch_load == []


def test_pickled_caption_weights_are_refused(blip_copy, no_torch_load):
    from safetensors.torch import load_file

    folder = blip_copy()
    weights = load_file(os.path.join(folder, "model.safetensors"))
    os.remove(os.path.join(folder, "model.safetensors"))
    torch.save(weights, os.path.join(folder, "pytorch_model.bin"), _use_new_zipfile_serialization=True)
    with pytest.raises(ModelLoadError, match="incomplete or damaged"):
        load_captioner(folder)
    assert no_torch_load == []


# -- 11. the hub: local cache first, fail fast when it does not answer ------------------------------------------------
HUB_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    sys.path.insert(0, sys.argv[1])
    import open_clip
    from core import ModelNotFoundError, load_clip, load_captioner
    results = {}
    for label, load in (("clip", lambda: load_clip("ViT-B-32/openai", models_dir=sys.argv[2])),
                        ("caption", lambda: load_captioner("blip-base", models_dir=sys.argv[2]))):
        start = time.monotonic()
        try:
            load()
            results[label] = ["loaded", time.monotonic() - start]
        except ModelNotFoundError as error:
            results[label] = [str(error), time.monotonic() - start]
    print(json.dumps(results))
""")


def _closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cancel_on_third_call(desc: str, seen: list):
    """A progress hook recording ``done`` for ``desc``'s calls into ``seen``, cancelling at the third."""
    def hook(done, total, what):
        if what == desc:
            seen.append(done)
            if len(seen) == 3:
                raise Cancelled("stop")

    return hook


def _silent_server():
    """A port that accepts connections and never answers: a network that drops packets."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server, server.getsockname()[1]


@pytest.mark.parametrize("network", ["refused", "silent", "offline"])
def test_missing_preset_fails_fast_when_the_hub_does_not_answer(tmp_path, network):
    server = None
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    env["HF_HOME"] = str(tmp_path / "hf")
    if network == "refused":
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{_closed_port()}"
    elif network == "silent":
        server, port = _silent_server()
        env["HF_ENDPOINT"] = f"http://127.0.0.1:{port}"
    else:
        env["HF_HUB_OFFLINE"] = "1"
    try:
        result = subprocess.run([sys.executable, "-c", HUB_SCRIPT, ROOT, str(tmp_path / "models")], env=env,
                                capture_output=True, text=True, timeout=600)
    finally:
        if server:
            server.close()
    assert result.returncode == 0, result.stderr[-3000:]
    results = json.loads(result.stdout.strip().splitlines()[-1])
    for label, (message, seconds) in results.items():
        assert "could not be downloaded" in message and str(tmp_path / "models") in message, message
        assert seconds < 10, (label, seconds, message)  # one short probe, not a minute of retries
    assert "ViT-B-32-openai.safetensors" in results["clip"][0]


# -- 12. cancel inside a long step -----------------------------------------------------------------------------------
def test_cancel_is_honoured_inside_a_chain_step(clip, images, builtin_cache, monkeypatch):
    """A hook that cancels on its third call within the first chain step stops it before the step ends."""
    import core.progress

    monkeypatch.setattr(core.progress, "TICK_SECONDS", 0.0, raising=False)
    engine = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=builtin_cache)
    engine.label_index()
    seen = []
    hook = _cancel_on_third_call("Flavor chain", seen)

    with pytest.raises(Cancelled):
        engine.interrogate(images[0], "best", captions="a cat", progress=hook)
    assert seen == [0, 0, 0]  # started, polled inside step 1, cancelled there: step 1 never finished


def test_cancel_is_honoured_inside_an_image_pass(clip, small_vocab, images, tmp_path, monkeypatch):
    """One image's pass through the vision tower polls between its blocks, and leaves no hooks behind."""
    import core.progress

    engine = Interrogator(clip, None, small_vocab, cache_dir=str(tmp_path))
    engine.label_index()
    monkeypatch.setattr(core.progress, "TICK_SECONDS", 0.0, raising=False)
    seen = []
    hook = _cancel_on_third_call("Interrogating (fast)", seen)

    with pytest.raises(Cancelled):
        engine.interrogate(images[0], "fast", captions="a cat", progress=hook)
    assert seen == [0, 0, 0]  # started, polled before the image, cancelled after the tower's first block
    assert not any(block._forward_hooks for block in clip.model.visual.transformer.resblocks)
    assert engine.interrogate(images[0], "fast", captions="a cat") == \
        engine.interrogate(images[0], "fast", captions="a cat", progress=lambda *a: None)


def test_cancel_is_honoured_inside_a_caption_batch(captioner, images, monkeypatch):
    """Generating a batch of captions polls after every token, so a cancel stops it before the batch ends."""
    import core.progress

    monkeypatch.setattr(core.progress, "TICK_SECONDS", 0.0, raising=False)
    seen = []

    def hook(done, total, desc):
        seen.append((done, total, desc))
        if len(seen) == 3:
            raise Cancelled("stop")

    with pytest.raises(Cancelled):
        captioner.caption(images, hook)
    assert seen == [(0, 1, "Captioning")] * 3  # started, polled during generation, cancelled there


def test_polling_does_not_change_prompts(clip, images, builtin_cache, monkeypatch):
    import core.progress

    engine = Interrogator(clip, None, Vocabulary.builtin(), cache_dir=builtin_cache)
    quiet = engine.interrogate(images[1], "best", captions="a cat")
    monkeypatch.setattr(core.progress, "TICK_SECONDS", 0.0, raising=False)
    calls = []
    polled = engine.interrogate(images[1], "best", captions="a cat", progress=lambda *a: calls.append(a))
    assert polled == quiet
    assert sum(a == b for a, b in zip(calls, calls[1:])) > 10  # positions re-reported inside steps


# -- 13. the CLI: a folder with good and bad images, and its exit codes -----------------------------------------------
def test_cli_folder_with_good_and_bad_images(clip_file, models_dir, images, tmp_path, capsys):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, image in enumerate(images):
        image.save(folder / f"good{i}.png")
    (folder / "bad0.png").write_bytes(b"\x89PNG not really")
    (folder / "bad1.jpg").write_bytes(b"")
    _png_header(str(folder / "bad2.png"), 30000, 30000)
    out = tmp_path / "out.csv"
    code = cli("interrogate", str(folder), "--mode", "fast", "--clip-weights", clip_file, "--caption-model", "none",
               "--models-dir", models_dir, "--caption", "a cat", "--quiet", "--out", str(out))
    captured = capsys.readouterr()
    assert code == 3
    printed = captured.out.strip().splitlines()
    assert [line.split("\t")[0] for line in printed] == [str(folder / f"good{i}.png") for i in range(3)]
    errors = captured.err.strip().splitlines()
    assert [line for line in errors if "bad" in line and line.startswith("error: ")][:3] == errors[:3]
    assert "bad0.png" in errors[0] and "bad1.jpg" in errors[1] and "megapixels" in errors[2]
    assert errors[-1] == "error: 3 of 6 images could not be read; the others' prompts were written."
    assert len(out.read_text().splitlines()) == 4


def test_cli_exit_codes(clip_file, models_dir, images, tmp_path, capsys, monkeypatch):
    image = tmp_path / "a.png"
    images[0].save(image)
    bad = tmp_path / "b.png"
    bad.write_bytes(b"nope")
    common = ["--mode", "fast", "--clip-weights", clip_file, "--caption-model", "none", "--models-dir", models_dir,
              "--caption", "a cat", "--quiet"]
    assert cli("interrogate", str(image), *common) == 0
    assert cli("interrogate", str(bad), *common) == 2  # nothing could be done
    assert cli("interrogate", str(image), str(bad), *common) == 3  # some images failed
    assert cli("interrogate", str(tmp_path / "missing.png"), *common) == 2
    with pytest.raises(SystemExit) as usage:
        cli("interrogate", str(image), "--max-terms", "-1", *common)
    assert usage.value.code == 2
    monkeypatch.setattr(Interrogator, "prompts", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert cli("interrogate", str(image), *common) == 130
    assert "cancelled" in capsys.readouterr().err
