"""A CLIP from a text encoder + a CLIP Vision model: transformers as the oracle, round trips, and clear errors."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from core import MODES, Interrogator, ModelLoadError, Settings, Vocabulary, load_clip
from core.clip_pair import load_clip_pair, load_pair, pair_from_sources
from core.tensors import MemoryTensors, SafetensorsFiles
from core.text_encoder import TextEncoder
from tests.tiny_models import comfy_layout, save_tensors, tiny_tower_configs, write_hf_clip, write_tiny_clip

TEXTS = ["a photo of a cat", "an oil painting of a city at night, trending on artstation", "", "by greg rutkowski"]
TOLERANCE = dict(atol=1e-5, rtol=1e-4)  # fp32 on the CPU: both sides run the same math in a different order


# -- the oracle: transformers' own CLIPModel ----------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["quick_gelu", "gelu"])
def test_pair_gives_transformers_features(tmp_path, images, activation):
    """OpenAI CLIPs use quick_gelu, LAION's gelu: the activation comes from config.json, and the features match."""
    hf = write_hf_clip(str(tmp_path / "hf"), activation)
    clip = load_clip_pair(str(tmp_path / "hf"))
    tokens = clip.tokenizer(TEXTS)
    pixels = torch.stack([clip.preprocess(image) for image in images])
    with torch.no_grad():
        text = _features(hf.get_text_features(input_ids=tokens))
        image = _features(hf.get_image_features(pixel_values=pixels))
        assert torch.allclose(clip.model.encode_text(tokens), text, **TOLERANCE)
        assert torch.allclose(clip.model.encode_image(pixels), image, **TOLERANCE)
    encoder = TextEncoder(clip)
    assert encoder.fast and encoder.prefix_reuse  # a real open_clip CLIP: the engine's fast paths stay on
    assert torch.allclose(encoder.encode(TEXTS), F.normalize(text, dim=-1), **TOLERANCE)
    assert torch.allclose(clip.encode_images(images), F.normalize(image, dim=-1), **TOLERANCE)


def _features(output) -> torch.Tensor:
    """transformers 5 wraps the projected features in an output object (its pooler_output); 4.x returned them."""
    return output if isinstance(output, torch.Tensor) else output.pooler_output


def test_towers_in_separate_files_as_comfyui_keeps_them(tmp_path, images):
    """A text-encoder file and a CLIP Vision file (each with its Hugging Face config beside it) = the whole model."""
    hf = write_hf_clip(str(tmp_path / "hf"), "gelu")
    sd = hf.state_dict()
    text = save_tensors({k: v for k, v in sd.items() if k.startswith(("text_model.", "text_projection"))},
                        str(tmp_path / "text_encoders" / "te.safetensors"), hf.config.text_config.to_dict())
    vision = save_tensors({k: v for k, v in sd.items() if k.startswith(("vision_model.", "visual_projection"))},
                          str(tmp_path / "clip_vision" / "vision.safetensors"), hf.config.vision_config.to_dict())
    whole, split = load_clip_pair(str(tmp_path / "hf")), load_clip_pair(text, vision)
    assert torch.equal(whole.encode_images(images), split.encode_images(images))
    assert torch.equal(TextEncoder(whole).encode(TEXTS), TextEncoder(split).encode(TEXTS))
    assert whole.key == split.key  # the label cache follows the text tower's content, not the files


# -- round trip: an open_clip model exported to ComfyUI's layout and back -------------------------------------------
@pytest.fixture(scope="module")
def split_files(tmp_path_factory):
    """The tiny CLIP as an open_clip file, and as a text-encoder file + a CLIP Vision file in ComfyUI's layout."""
    folder = tmp_path_factory.mktemp("round_trip")
    path = write_tiny_clip(str(folder))
    text, vision = comfy_layout(load_clip(weights=path).model)
    text_config, vision_config = tiny_tower_configs("gelu")
    return (path, save_tensors(text, str(folder / "te.safetensors"), text_config),
            save_tensors(vision, str(folder / "vision.safetensors"), vision_config))


@pytest.fixture(scope="module")
def round_trip(split_files):
    path, text, vision = split_files
    original = load_clip(weights=path)
    # ComfyUI's files carry no temperature: a pair is read at the released models' 100, so the original must be too
    original.model.logit_scale.data.fill_(math.log(100.0))
    return original, load_clip_pair(text, vision)


@pytest.fixture(scope="module")
def engines(round_trip):
    """Both models over the first terms of every shipped list and a short chain search: every role and mode, a
    fraction of the work."""
    vocab = Vocabulary.builtin()
    vocab = Vocabulary(tuple(replace(tl, terms=tl.terms[:200]) for tl in vocab.lists), source=vocab.source)
    return tuple(Interrogator(clip, None, vocab, settings=Settings(flavor_intermediate_count=128))
                 for clip in round_trip)


@pytest.mark.parametrize("mode", list(MODES))
def test_round_trip_gives_identical_prompts(engines, images, mode):
    original, converted = engines
    caption = "a painting of a woman in a garden"
    expected = original.interrogate(images, mode, captions=caption)
    assert len(set(expected)) == len(images)
    assert converted.interrogate(images, mode, captions=caption) == expected


def test_round_trip_gives_identical_analysis(engines, images):
    original, converted = engines
    assert converted.analyze(images) == original.analyze(images)


def test_round_trip_keeps_every_tensor(round_trip):
    original, converted = round_trip
    mine = converted.model.state_dict()
    for key, tensor in original.model.state_dict().items():
        assert torch.equal(mine[key], tensor), key
    assert converted.logit_scale == pytest.approx(100.0)


def test_cli_takes_a_text_encoder_and_a_clip_vision_file(split_files, images, tmp_path):
    from tests.test_core import _cli

    path, text, vision = split_files
    folder = tmp_path / "vocab"
    folder.mkdir()
    (folder / "manifest.json").write_text(
        '{"lists": [{"name": "looks", "role": "flavor", "terms": ["red", "blue", "misty", "sunny", "dark"]}]}')
    images[1].save(tmp_path / "image.png")
    common = ("interrogate", str(tmp_path / "image.png"), "--mode", "fast", "--caption", "a road", "--vocab",
              str(folder), "--device", "cpu", "--quiet", "--cache-dir", str(tmp_path / "cache"))
    pair = _cli(*common, "--clip-text", text, "--clip-vision", vision)
    whole = _cli(*common, "--clip-weights", path)
    assert pair.returncode == 0 == whole.returncode, pair.stderr + whole.stderr
    assert pair.stdout == whole.stdout and pair.stdout.startswith("a road, ")


# -- what the conversion costs ------------------------------------------------------------------------------------
def _storages(model):
    return {k: t.untyped_storage().data_ptr() for k, t in model.state_dict().items()}


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_tensors_held_in_memory_are_reused_not_copied(round_trip, dtype):
    """ComfyUI holds fp16 weights: an fp16 model shares them (only q/k/v, projections and norms are new); an fp32
    model needs its own copy of everything."""
    original = round_trip[0]
    text, vision = comfy_layout(original.model.half())
    try:
        text_config, vision_config = tiny_tower_configs("gelu")
        sources = MemoryTensors(text, "clip", text_config), MemoryTensors(vision, "clip_vision", vision_config)
        clip = load_pair(pair_from_sources(*sources), dtype=dtype)
        given = {t.untyped_storage().data_ptr() for s in sources for t in s.tensors.values()}
        shared = sorted(k for k, ptr in _storages(clip.model).items() if ptr in given)
        if dtype == torch.float32:
            assert shared == []
        else:
            own = [k for k in clip.model.state_dict() if k not in shared]
            assert own and all(("in_proj" in k or "ln_" in k or k in ("text_projection", "visual.proj",
                                                                        "logit_scale")) for k in own), own
            assert "token_embedding.weight" in shared and "visual.transformer.resblocks.0.mlp.c_fc.weight" in shared
    finally:
        original.model.float()


def test_label_cache_key_follows_the_text_tower(tmp_path):
    text_config, vision_config = tiny_tower_configs("gelu")
    original = load_clip(weights=write_tiny_clip(str(tmp_path), "a", seed=1))
    other = load_clip(weights=write_tiny_clip(str(tmp_path), "b", seed=2))

    def key(model, vision_model=None, activation="gelu"):
        text, _ = comfy_layout(model)
        vision = comfy_layout(vision_model or model)[1]
        configs = tiny_tower_configs(activation)
        return load_pair(pair_from_sources(MemoryTensors(text, "t", configs[0]),
                                           MemoryTensors(vision, "v", configs[1]))).key

    base = key(original.model)
    assert key(original.model, other.model) == base  # another vision tower: the labels embed the same
    assert key(other.model) != base
    assert key(original.model, activation="quick_gelu") != base
    tweaked = load_clip(weights=write_tiny_clip(str(tmp_path), "c", seed=1))
    with torch.no_grad():
        tweaked.model.transformer.resblocks[1].mlp.c_fc.weight[0, 0] += 1e-3
    assert key(tweaked.model) != base


# -- bad pairs: one-line errors that name what to connect, from shapes alone -----------------------------------------
def _meta_towers(arch: str, quick_gelu=False):
    """A full-size CLIP's towers in ComfyUI's layout as meta tensors: shapes without memory, and reading any data
    would fail, so these also prove that the checks run before anything heavy loads."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config(arch), quick_gelu=quick_gelu)
    return comfy_layout(model), model.state_dict()


@pytest.fixture(scope="module")
def meta():
    return {arch: _meta_towers(arch) for arch in ("ViT-L-14", "ViT-H-14", "ViT-bigG-14")}


def _one_line_error(text_source, vision_source, choice="auto") -> str:
    with pytest.raises(ModelLoadError) as error:
        load_pair(pair_from_sources(text_source, vision_source, choice))
    message = str(error.value)
    assert "\n" not in message
    return message


def test_sd15_clip_without_projection(meta):
    (text, _), _ = meta["ViT-L-14"]
    vision = meta["ViT-L-14"][0][1]
    text = {f"cond_stage_model.transformer.{k}": v for k, v in text.items() if not k.startswith("text_projection")}
    message = _one_line_error(MemoryTensors(text, "v1-5-pruned-emaonly.safetensors"),
                              MemoryTensors(vision, "clip_vision_l.safetensors"))
    assert "clip_l of v1-5-pruned-emaonly.safetensors has no text_projection" in message
    assert "clip_l.safetensors" in message and "openai/clip-vit-large-patch14" in message


def test_sdxl_checkpoint_pairs_its_clip_g_with_bigg_vision(meta):
    """An SDXL checkpoint holds clip_l (Hugging Face layout, no projection) and clip_g (open_clip layout)."""
    clip_l = {f"conditioner.embedders.0.transformer.{k}": v for k, v in meta["ViT-L-14"][0][0].items()
              if not k.startswith("text_projection")}
    clip_g = {f"conditioner.embedders.1.model.{k}": v for k, v in meta["ViT-bigG-14"][1].items()
              if not k.startswith(("visual.", "logit_scale"))}
    checkpoint = MemoryTensors({**clip_l, **clip_g, "model.diffusion_model.out.0.weight": torch.empty(4)},
                               "sd_xl_base_1.0.safetensors")
    bigg = MemoryTensors(meta["ViT-bigG-14"][0][1], "CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors")
    pair = pair_from_sources(checkpoint, bigg)
    assert (pair.arch, pair.text.name, pair.text.ref.layout.name, pair.notes) == ("ViT-bigG-14", "clip_g",
                                                                                 "open_clip", ())
    assert pair.open_clip_kwargs()["quick_gelu"] is False and pair.vision.heads == 16 and pair.text.heads == 20
    # with a ViT-L CLIP Vision, auto takes clip_l and says what it lacks
    vit_l = MemoryTensors(meta["ViT-L-14"][0][1], "clip_vision_l.safetensors")
    assert "clip_l of sd_xl_base_1.0.safetensors has no text_projection" in _one_line_error(checkpoint, vit_l)
    # with a ViT-H CLIP Vision, no text encoder of the checkpoint matches
    vit_h = MemoryTensors(meta["ViT-H-14"][0][1], "CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors")
    message = _one_line_error(checkpoint, vit_h)
    assert "none matching" in message and "clip_g (1280)" in message and "SD 2.x checkpoint" in message
    assert "has no clip_h" in _one_line_error(checkpoint, vit_h, "clip_h")


def test_siglip_vision_is_refused(meta):
    vision = {k: v for k, v in meta["ViT-L-14"][0][1].items() if "class_embedding" not in k}
    vision["vision_model.embeddings.patch_embedding.bias"] = torch.empty(1024, device="meta")
    text = MemoryTensors(meta["ViT-L-14"][0][0], "clip_l.safetensors")
    assert "is a SigLIP image encoder, not CLIP" in _one_line_error(text, MemoryTensors(vision, "siglip.safetensors"))
    vision["vision_model.head.probe"] = torch.empty(1, 1, 1024, device="meta")
    assert "SigLIP" in _one_line_error(text, MemoryTensors(vision, "siglip.safetensors"))


def test_mismatched_sizes(meta):
    text = MemoryTensors(meta["ViT-L-14"][0][0], "clip_l.safetensors")
    vision = MemoryTensors(meta["ViT-bigG-14"][0][1], "clip_vision_g.safetensors")
    message = _one_line_error(text, vision)
    assert "768-d" in message and "1280-d" in message and "SDXL checkpoint's CLIP (its clip_g)" in message


def test_text_only_source_and_other_trainings(meta, tmp_path):
    vision = MemoryTensors(meta["ViT-L-14"][0][1], "clip_vision_l.safetensors")
    t5 = MemoryTensors({"encoder.block.0.layer.0.SelfAttention.k.weight": torch.empty(8, 8)}, "t5xxl.safetensors")
    assert "t5xxl.safetensors holds no CLIP text encoder: connect a clip_l" in _one_line_error(t5, vision)
    # same sizes, other activation: a LAION ViT-L vision with OpenAI's clip_l
    text = MemoryTensors(meta["ViT-L-14"][0][0], "clip_l.safetensors", {"hidden_act": "quick_gelu"})
    laion = MemoryTensors(meta["ViT-L-14"][0][1], "vision.safetensors", {"hidden_act": "gelu"})
    assert "different CLIP trainings" in _one_line_error(text, laion)
    # same sizes and activation: only the file name tells
    named = MemoryTensors(meta["ViT-L-14"][0][1], "CLIP-ViT-L-14-laion2B-s32B-b82K.safetensors")
    notes = pair_from_sources(MemoryTensors(meta["ViT-L-14"][0][0], "clip_l.safetensors"), named).notes
    assert len(notes) == 1 and "LAION-2B" in notes[0]
    # the 336-px OpenAI vision tower was trained with its own text tower, not SD's clip_l
    import open_clip

    with torch.device("meta"):
        vit_336 = comfy_layout(open_clip.CLIP(**open_clip.get_model_config("ViT-L-14-336")))[1]
    pair = pair_from_sources(MemoryTensors(meta["ViT-L-14"][0][0], "clip_l.safetensors"),
                             MemoryTensors(vit_336, "clip_vision_336.safetensors"))
    assert pair.vision.image_size == 336 and any("ViT-L-14-336" in n for n in pair.notes)


def test_pruned_and_unknown_towers(meta, tmp_path):
    vision = MemoryTensors(meta["ViT-H-14"][0][1], "CLIP-ViT-H-14.safetensors")
    text = {k: v for k, v in meta["ViT-H-14"][0][0].items() if ".layers.23." not in k}
    message = _one_line_error(MemoryTensors(text, "sd2_pruned.safetensors"), vision)
    assert "1024 wide, 23 layers" in message and "ViT-H-14 has 24" in message
    with pytest.raises(ModelLoadError, match="broken.safetensors is damaged or not a safetensors file"):
        SafetensorsFiles(save_broken(tmp_path / "broken.safetensors"))


def save_broken(path) -> str:
    path.write_bytes(b"\xff" * 64)
    return str(path)
