"""The interrogator made of models ComfyUI already holds: the node over CLIP + CLIP_VISION, and file pairs listed by
Load Interrogator. ComfyUI's objects are stood in for by transformers' CLIP towers carrying the attributes ComfyUI's
own modules have (its real classes are exercised by test_comfy_e2e.py)."""

import copy
import gc
import json
import os
import shutil
import sys
import types

import pytest
import torch
import torch.nn.functional as F

from tests.test_nodes import PACK, batch, comfy, import_pack, interrogate, load, node  # noqa: F401  (fixtures)
from tests.tiny_models import TINY_CLIP_CONFIG, comfy_layout, save_tensors, tiny_tower_configs

CAPTION = "a house by a lake"


class Encoder(torch.nn.Module):
    """What ComfyUI keeps per text encoder: ``<name>.transformer`` = the CLIP text model with its projection."""

    def __init__(self, transformer):
        super().__init__()
        self.transformer = transformer


def fake_clip(**encoders):
    """A ComfyUI CLIP: ``cond_stage_model`` holding one module per encoder, and a patcher without LoRA backups."""
    model = torch.nn.Module()
    for name, transformer in encoders.items():
        model.add_module(name, Encoder(transformer) if transformer is not None else torch.nn.Linear(1, 1))
    return types.SimpleNamespace(cond_stage_model=model, patcher=types.SimpleNamespace(backup={}))


def fake_clip_vision(model, image_size=224):
    return types.SimpleNamespace(model=model, image_size=image_size, image_mean=[0.48145466, 0.4578275, 0.40821073],
                                 image_std=[0.26862954, 0.26130258, 0.27577711],
                                 patcher=types.SimpleNamespace(backup={}))


@pytest.fixture(scope="module")
def tiny_comfy_models(models_dir):
    """The fixture CLIP (models_dir/tiny-clip.safetensors) as ComfyUI would hold it after its loaders."""
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection, CLIPVisionConfig, \
        CLIPVisionModelWithProjection

    import open_clip
    from safetensors.torch import load_file

    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    model.load_state_dict(load_file(os.path.join(models_dir, "tiny-clip.safetensors")))
    text_sd, vision_sd = comfy_layout(model)
    text_cfg, vision_cfg = TINY_CLIP_CONFIG["text_cfg"], TINY_CLIP_CONFIG["vision_cfg"]
    text = CLIPTextModelWithProjection(CLIPTextConfig(
        hidden_size=text_cfg["width"], intermediate_size=4 * text_cfg["width"], num_hidden_layers=text_cfg["layers"],
        num_attention_heads=text_cfg["heads"], projection_dim=TINY_CLIP_CONFIG["embed_dim"], hidden_act="gelu"))
    vision_heads = vision_cfg["width"] // vision_cfg["head_width"]
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
        hidden_size=vision_cfg["width"], intermediate_size=4 * vision_cfg["width"],
        num_hidden_layers=vision_cfg["layers"], num_attention_heads=vision_heads, image_size=vision_cfg["image_size"],
        patch_size=vision_cfg["patch_size"], projection_dim=TINY_CLIP_CONFIG["embed_dim"], hidden_act="gelu"))
    text.load_state_dict(text_sd, strict=False)
    vision.load_state_dict(vision_sd, strict=False)
    # the attributes ComfyUI's CLIPLayer has and transformers' lacks: heads and the activation function
    for layer in text.text_model.encoder.layers:
        layer.self_attn.heads, layer.mlp.activation = text_cfg["heads"], F.gelu
    for layer in vision.vision_model.encoder.layers:
        layer.self_attn.heads, layer.mlp.activation = vision_heads, F.gelu
    return text.eval(), vision.eval()


def from_comfy(comfy, clip, clip_vision, text_encoder="auto", **overrides):
    args = dict(caption_model="none", precision="auto", device="auto")
    args.update(overrides)
    return node(comfy, "ClipInterrogatorFromComfyModels").load(clip, clip_vision, text_encoder, **args)[0]


def test_node_gives_the_prompts_of_the_same_weights_as_an_open_clip_file(comfy, batch, tiny_comfy_models):
    text, vision = tiny_comfy_models
    clip = fake_clip(clip_l=text, t5xxl=None)  # Flux-like: the T5 encoder is passed over
    handle = from_comfy(comfy, clip, fake_clip_vision(vision, image_size=64))
    rt = comfy.runtime_module.runtime()
    assert len(rt.cache) == 0  # checked from shapes; converted on first use
    ours = {}
    for mode in ("fast", "classic"):
        ours[mode] = interrogate(comfy, handle, batch, mode=mode, caption=CAPTION)["result"][0]
        reference = interrogate(comfy, load(comfy, caption_model="none"), batch, mode=mode, caption=CAPTION)
        assert ours[mode] == reference["result"][0]
    # one conversion, reused; every node can take the handle; Analyze Image names the weights
    assert len([r for r in rt.cache.residents() if r.key[0] == "comfy pair"]) == 1
    texts = node(comfy, "ClipInterrogatorAnalyze").run(batch, handle, 3)["result"][0]
    assert all(t.startswith("CLIP: ") and "clip_l of the connected CLIP + the connected CLIP Vision (float32 on cpu)"
               in t.splitlines()[0] for t in texts)
    # the same models through another node run (or a LoRA clone, which shares cond_stage_model): no new conversion
    clone = types.SimpleNamespace(cond_stage_model=clip.cond_stage_model, patcher=clip.patcher)
    again = from_comfy(comfy, clone, fake_clip_vision(vision, image_size=64))
    assert interrogate(comfy, again, batch, caption=CAPTION)["result"][0] == ours["fast"]
    assert len([r for r in rt.cache.residents() if r.key[0] == "comfy pair"]) == 1


def test_converted_pair_goes_when_comfyui_drops_its_models(comfy, batch, tiny_comfy_models):
    text, vision = tiny_comfy_models
    rt = comfy.runtime_module.runtime()
    clip = fake_clip(clip_l=copy.deepcopy(text))  # its own module, as a second loader's
    interrogate(comfy, from_comfy(comfy, clip, fake_clip_vision(vision, image_size=64)), batch, caption=CAPTION)
    assert len(rt.cache) == 1
    del clip  # ComfyUI replaced its CLIP (another checkpoint): nothing holds the old one but our weakrefs
    gc.collect()
    interrogate(comfy, from_comfy(comfy, fake_clip(clip_l=text), fake_clip_vision(vision, image_size=64)), batch,
                caption=CAPTION)
    assert len(rt.cache) == 1  # the old conversion was dropped, the new one is cached


# -- bad pairs: one-line node errors, raised from shapes before anything loads -------------------------------------
def as_loaded(model):
    """Every tensor written once, as ComfyUI's loader copies each file tensor in (see nodes/comfy_models._loaded)."""
    with torch.no_grad():
        for tensor in model.state_dict(keep_vars=True).values():
            tensor.copy_(tensor)
    return model


def meta_text(width, layers, heads, activation="gelu", projection=True):
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    with torch.device("meta"):
        model = CLIPTextModelWithProjection(CLIPTextConfig(
            hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers, num_attention_heads=heads,
            projection_dim=width, hidden_act=activation))
    as_loaded(model)
    if not projection:  # what an SD 1.x checkpoint gives ComfyUI's clip_l: a projection allocated, never written
        model.text_projection.weight = torch.nn.Parameter(torch.empty(width, width, device="meta"))
    return model


def meta_vision(width, layers, heads, mlp, projection, activation="gelu"):
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    with torch.device("meta"):
        return as_loaded(CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=width, intermediate_size=mlp, num_hidden_layers=layers, num_attention_heads=heads,
            image_size=224, patch_size=14, projection_dim=projection, hidden_act=activation)))


@pytest.fixture(scope="module")
def full_size():
    """Real SD text encoders and CLIP Vision sizes, on the meta device: shapes only, no memory, no data to read."""
    return {"clip_l": meta_text(768, 12, 12, "quick_gelu"), "clip_l_sd15": meta_text(768, 12, 12, "quick_gelu", False),
            "clip_g": meta_text(1280, 32, 20),
            "vit_l": meta_vision(1024, 24, 16, 4096, 768, "quick_gelu"), "vit_h": meta_vision(1280, 32, 16, 5120, 1024),
            "vit_g": meta_vision(1664, 48, 16, 8192, 1280)}


def node_error(comfy, clip, clip_vision, text_encoder="auto") -> str:
    with pytest.raises(RuntimeError) as error:
        from_comfy(comfy, clip, fake_clip_vision(clip_vision), text_encoder)
    message = str(error.value)
    assert message.startswith("CLIP Interrogator: ") and "\n" not in message
    assert len(comfy.runtime_module.runtime().cache) == 0
    return message


def test_bad_pairs_are_one_line_errors_that_say_what_to_connect(comfy, full_size):
    m = full_size
    sd15 = node_error(comfy, fake_clip(clip_l=m["clip_l_sd15"]), m["vit_l"])
    assert "clip_l of the connected CLIP has no text_projection" in sd15 and "clip_l.safetensors" in sd15
    sizes = node_error(comfy, fake_clip(clip_l=m["clip_l"]), m["vit_g"])
    assert "768-d" in sizes and "1280-d" in sizes and "SDXL checkpoint's CLIP (its clip_g)" in sizes
    sdxl = fake_clip(clip_l=m["clip_l_sd15"], clip_g=m["clip_g"])
    none_matching = node_error(comfy, sdxl, m["vit_h"])
    assert "none matching" in none_matching and "SD 2.x checkpoint" in none_matching
    assert "has no clip_h" in node_error(comfy, sdxl, m["vit_g"], "clip_h")
    t5_only = node_error(comfy, fake_clip(t5xxl=None), m["vit_l"])
    assert "holds no CLIP text encoder (only t5xxl)" in t5_only
    from transformers import SiglipVisionConfig, SiglipVisionModel

    with torch.device("meta"):
        siglip = as_loaded(SiglipVisionModel(SiglipVisionConfig(
            hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=384,
            patch_size=14)))
    assert "is a SigLIP image encoder, not CLIP" in node_error(comfy, fake_clip(clip_l=m["clip_l"]), siglip)
    with pytest.raises(ValueError, match="not a ComfyUI CLIP"):
        from_comfy(comfy, "a string", fake_clip_vision(m["vit_l"]))


def test_sdxl_clip_pairs_its_clip_g_with_bigg_vision(comfy, full_size):
    m = full_size
    handle = from_comfy(comfy, fake_clip(clip_l=m["clip_l_sd15"], clip_g=m["clip_g"]), fake_clip_vision(m["vit_g"]))
    assert handle.clip.arch == "ViT-bigG-14" and handle.clip.text_name == "clip_g" and not handle.clip.notes
    assert len(comfy.runtime_module.runtime().cache) == 0


# -- where ComfyUI's models came from -------------------------------------------------------------------------------
def test_files_are_read_off_the_prompt_graph():
    import_pack()
    graph = sys.modules[f"{PACK}.nodes.comfy_graph"]
    files = {("checkpoints", "sd_xl_base_1.0.safetensors"): "/m/ckpt/sd_xl_base_1.0.safetensors",
             ("clip_vision", "vit_g.safetensors"): "/m/clip_vision/vit_g.safetensors"}
    find = lambda folder, name: files.get((folder, name))
    prompt = {"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
              "5": {"class_type": "LoraLoader", "inputs": {"model": ["4", 0], "clip": ["4", 1], "lora_name": "x"}},
              "6": {"class_type": "CLIPSetLastLayer", "inputs": {"clip": ["5", 1], "stop_at_clip_layer": -2}},
              "7": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "vit_g.safetensors"}},
              "8": {"class_type": "SomeCustomLoader", "inputs": {"path": "x"}},
              "9": {"class_type": "Loop", "inputs": {"clip": ["9", 0]}},
              "20": {"class_type": "ClipInterrogatorFromComfyModels", "inputs": {"clip": ["6", 0],
                                                                                 "clip_vision": ["7", 0]}},
              "21": {"class_type": "ClipInterrogatorFromComfyModels", "inputs": {"clip": ["8", 0],
                                                                                 "clip_vision": ["9", 0]}}}
    assert graph.input_files(prompt, "20", "clip", find) == ("/m/ckpt/sd_xl_base_1.0.safetensors",)
    assert graph.input_files(prompt, 20, "clip_vision", find) == ("/m/clip_vision/vit_g.safetensors",)
    assert graph.input_files(prompt, "21", "clip", find) == ()  # a loader it does not know
    assert graph.input_files(prompt, "21", "clip_vision", find) == ()  # a cycle ends after MAX_HOPS
    assert graph.input_files(None, "20", "clip", find) == () and graph.input_files(prompt, "99", "clip", find) == ()
    prompt["7"]["inputs"]["clip_name"] = "gone.safetensors"
    assert graph.input_files(prompt, "20", "clip_vision", find) == ()


def test_file_headers_decide_which_projection_is_real(comfy, host_models, tiny_comfy_models):
    """In a ComfyUI run the CLIP's tensors are inference tensors (no version counters): the graph names the file,
    and its header says the projection is missing, however plausible the memory ComfyUI left there looks."""
    text, vision = tiny_comfy_models
    with torch.inference_mode():
        loaded = copy.deepcopy(text)
    assert loaded.text_projection.weight.is_inference()
    prompt = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15-like.safetensors"}},
              "2": {"class_type": "CLIPVisionLoader", "inputs": {"clip_name": "tiny_vision.safetensors"}},
              "3": {"class_type": "ClipInterrogatorFromComfyModels", "inputs": {"clip": ["1", 1],
                                                                                "clip_vision": ["2", 0]}}}
    make = node(comfy, "ClipInterrogatorFromComfyModels").load
    args = ("auto", "none", "auto", "auto")
    with pytest.raises(RuntimeError, match="clip_l of sd15-like.safetensors has no text_projection"):
        make(fake_clip(clip_l=loaded), fake_clip_vision(vision, image_size=64), *args, prompt=prompt, unique_id="3")
    prompt["1"] = {"class_type": "CLIPLoader", "inputs": {"clip_name": "tiny_te.safetensors", "type": "x"}}
    handle = make(fake_clip(clip_l=loaded), fake_clip_vision(vision, image_size=64), *args, prompt=prompt,
                  unique_id="3")[0]
    assert handle.clip.description.endswith(": clip_l of tiny_te.safetensors + tiny_vision.safetensors")
    # no graph (a custom loader): the values decide; never-written memory is zeros or leftovers
    with torch.inference_mode():
        loaded.text_projection.weight.zero_()
    with pytest.raises(RuntimeError, match="clip_l of the connected CLIP has no text_projection"):
        make(fake_clip(clip_l=loaded), fake_clip_vision(vision, image_size=64), *args)


# -- file pairs in Load Interrogator -------------------------------------------------------------------------------
@pytest.fixture
def host_models(comfy, tmp_path, models_dir, monkeypatch):
    """ComfyUI's checkpoints / text_encoders / clip_vision folders with the fixture CLIP split into two files, an
    SD 1.x-style text encoder without projection and a T5 file."""
    from safetensors.torch import load_file

    import open_clip

    model = open_clip.CLIP(**TINY_CLIP_CONFIG)
    model.load_state_dict(load_file(os.path.join(models_dir, "tiny-clip.safetensors")))
    text_sd, vision_sd = comfy_layout(model)
    text_config, vision_config = tiny_tower_configs("gelu")
    root = tmp_path / "host"
    save_tensors(text_sd, str(root / "text_encoders" / "tiny_te.safetensors"), text_config)
    save_tensors({k: v for k, v in text_sd.items() if "projection" not in k},
                 str(root / "checkpoints" / "sd15-like.safetensors"), text_config)
    save_tensors({"encoder.block.0.layer.0.SelfAttention.k.weight": torch.zeros(2, 2)},
                 str(root / "text_encoders" / "t5.safetensors"))
    save_tensors(vision_sd, str(root / "clip_vision" / "tiny_vision.safetensors"), vision_config)
    for kind in ("checkpoints", "text_encoders", "clip_vision"):
        comfy.folder_paths.folder_names_and_paths[kind] = ([str(root / kind)], {".safetensors"})

    def get_full_path(kind, name):
        path = os.path.join(comfy.folder_paths.folder_names_and_paths[kind][0][0], name)
        return path if os.path.isfile(path) else None

    monkeypatch.setattr(comfy.folder_paths, "get_full_path", get_full_path, raising=False)
    return root


def test_load_interrogator_lists_and_runs_file_pairs(comfy, batch, host_models):
    choices = comfy.pack.NODE_CLASS_MAPPINGS["ClipInterrogatorLoad"].INPUT_TYPES()["required"]["clip_model"][0]
    pair = "text_encoders/tiny_te.safetensors [text encoder] + clip_vision/tiny_vision.safetensors"
    assert [c for c in choices if " + clip_vision/" in c] == [pair]  # no SD 1.x-style or T5 pair
    assert choices.index(pair) == 3  # after the presets
    handle = load(comfy, clip_model=pair, caption_model="none")
    assert len(comfy.runtime_module.runtime().cache) == 0
    ours = interrogate(comfy, handle, batch, caption=CAPTION)["result"][0]
    assert ours == interrogate(comfy, load(comfy, caption_model="none"), batch, caption=CAPTION)["result"][0]
    os.remove(host_models / "clip_vision" / "tiny_vision.safetensors")
    with pytest.raises(RuntimeError, match="tiny_vision.safetensors is not in ComfyUI's models/clip_vision"):
        load(comfy, clip_model=pair)


def test_user_vocabulary_folders_are_choices(comfy, batch, models_dir, tmp_path):
    folder = os.path.join(models_dir, "vocabularies", "mini")
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "manifest.json"), "w") as file:
        json.dump({"lists": [{"name": "looks", "role": "flavor", "terms": ["red", "blue", "green", "misty"]},
                             {"name": "media", "role": "medium", "terms": ["oil painting", "photo"]}]}, file)
    try:
        declared = comfy.pack.NODE_CLASS_MAPPINGS["ClipInterrogatorLoad"].INPUT_TYPES()["optional"]["vocabulary"]
        assert declared[0] == ["builtin", "reference", "mini"]
        prompts = interrogate(comfy, load(comfy, vocabulary="mini"), batch, caption=CAPTION)["result"][0]
        for prompt in prompts:
            assert set(prompt[len(CAPTION) + 2:].split(", ")) <= {"red", "blue", "green", "misty", "oil painting",
                                                                  "photo"}
        with pytest.raises(ValueError, match="vocabulary 'maxi'"):
            load(comfy, vocabulary="maxi")
    finally:
        shutil.rmtree(os.path.join(models_dir, "vocabularies"))
