"""Run by tests/test_comfy_e2e.py under ComfyUI's Python: real ComfyUI CLIP / CLIP Vision objects (its own loader
classes, configured tiny through their model_options and config files) handed to the pack's extraction, printed as
JSON for the test to check. Usage: python comfy_objects.py COMFYUI_DIR PACK_DIR WORK_DIR
"""

import importlib.util
import json
import os
import sys

COMFYUI_DIR, PACK_DIR, WORK_DIR = sys.argv[1:4]
sys.argv = [sys.argv[0], "--cpu"]
sys.path.insert(0, COMFYUI_DIR)

import comfy.options  # noqa: E402

comfy.options.enable_args_parsing()

import torch  # noqa: E402

import comfy.clip_vision  # noqa: E402
import comfy.sd  # noqa: E402


def load_module(name, path, package_dir=None):
    spec = importlib.util.spec_from_file_location(name, path, submodule_search_locations=package_dir)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ComfyUI has its own tests package and nodes module: the pack's are loaded from their files
tiny = load_module("pack_tiny_models", os.path.join(PACK_DIR, "tests", "tiny_models.py"))
comfy_layout, sample_images = tiny.comfy_layout, tiny.sample_images
# ComfyUI's text projection is square: the embedding is as wide as the text tower
TINY_CLIP_CONFIG = dict(tiny.TINY_CLIP_CONFIG, embed_dim=tiny.TINY_CLIP_CONFIG["text_cfg"]["width"])


def import_pack():
    """As ComfyUI imports a custom node: the folder as a package under its own name."""
    load_module("clip_interrogator_pack", os.path.join(PACK_DIR, "__init__.py"), [PACK_DIR])
    importlib.import_module("clip_interrogator_pack.nodes.comfy_models")
    return sys.modules


def tiny_configs(activation):
    text, vision = TINY_CLIP_CONFIG["text_cfg"], TINY_CLIP_CONFIG["vision_cfg"]
    text_config = {"hidden_size": text["width"], "intermediate_size": text["width"] * 4,
                   "num_hidden_layers": text["layers"], "num_attention_heads": text["heads"],
                   "hidden_act": activation, "projection_dim": TINY_CLIP_CONFIG["embed_dim"]}
    vision_config = {"hidden_size": vision["width"], "intermediate_size": vision["width"] * 4,
                     "num_hidden_layers": vision["layers"], "num_attention_heads": vision["width"] // vision["head_width"],
                     "hidden_act": activation, "image_size": vision["image_size"], "patch_size": vision["patch_size"],
                     "projection_dim": TINY_CLIP_CONFIG["embed_dim"], "num_channels": 3, "model_type": "clip_vision_model"}
    return text_config, vision_config


def comfy_clip(text_sd, text_config):
    # ComfyUI's loader sizes clip_l from model_options["model_config"] (how it loads long-context CLIP-Ls)
    return comfy.sd.load_text_encoder_state_dicts([dict(text_sd)], model_options={"model_config": text_config})


def comfy_vision(vision_sd, vision_config, name):
    path = os.path.join(WORK_DIR, f"{name}.json")
    with open(path, "w") as file:
        json.dump(vision_config, file)
    vision = comfy.clip_vision.ClipVisionModel(path)
    vision.load_sd(dict(vision_sd))
    return vision


def main():
    modules = import_pack()
    pairs = modules["clip_interrogator_pack.core.clip_pair"]
    comfy_models = modules["clip_interrogator_pack.nodes.comfy_models"]
    errors = modules["clip_interrogator_pack.core.errors"]
    import open_clip

    report = {}
    images = sample_images()
    for activation in ("quick_gelu", "gelu"):
        torch.manual_seed(0)
        original = open_clip.CLIP(**TINY_CLIP_CONFIG, quick_gelu=activation == "quick_gelu").eval()
        text_sd, vision_sd = comfy_layout(original)
        text_config, vision_config = tiny_configs(activation)
        clip, vision = comfy_clip(text_sd, text_config), comfy_vision(vision_sd, vision_config, activation)
        sources, others = comfy_models.text_sources(clip)
        pair = pairs.pair_from_sources(sources, comfy_models.vision_source(vision))
        converted = pairs.load_pair(pair, dtype=torch.float32)
        tokens = converted.tokenizer(["a photo of a cat", "a painting"])
        pixels = torch.stack([converted.preprocess(image) for image in images])
        with torch.no_grad():  # ComfyUI's own forward passes (fp32 compute) are the reference
            comfy_text = clip.cond_stage_model.clip_l.transformer(input_tokens=tokens)[2]
            comfy_image = vision.model(pixel_values=pixels)[2]
            report[activation] = {
                "towers": [s.config["name"] for s in sources], "others": others,
                "hidden_act": [s.config.get("hidden_act") for s in sources],
                "text_max_diff": (converted.model.encode_text(tokens) - comfy_text).abs().max().item(),
                "image_max_diff": (converted.model.encode_image(pixels) - comfy_image).abs().max().item(),
                "text_scale": comfy_text.abs().max().item(), "image_scale": comfy_image.abs().max().item(),
            }
        shared = pairs.load_pair(pair, dtype=torch.float16)
        given = {t.untyped_storage().data_ptr() for t in list(clip.cond_stage_model.state_dict().values())
                 + list(vision.model.state_dict().values())}
        report[activation]["fp16_shared_tensors"] = sum(
            t.untyped_storage().data_ptr() in given for t in shared.model.state_dict().values())
        report[activation]["fp16_tensors"] = len(shared.model.state_dict())

        # LoRA patches applied while ComfyUI has the CLIP loaded: the unpatched weights are read
        key = "clip_l.transformer.text_model.encoder.layers.0.mlp.fc1.weight"
        patched = clip.clone()
        patched.add_patches({key: ("diff", (torch.ones_like(text_sd["text_model.encoder.layers.0.mlp.fc1.weight"]),))})
        patched.load_model()
        live = patched.cond_stage_model.state_dict()[key]
        sources = comfy_models.text_sources(patched)[0]
        report[activation]["lora_applied"] = not torch.equal(live, text_sd[key.split(".transformer.")[1]].half())
        report[activation]["lora_ignored"] = torch.equal(sources[0].get(key.split(".transformer.")[1]),
                                                         text_sd[key.split(".transformer.")[1]].half())
        report[activation]["same_identity"] = comfy_models.model_identity(patched) is comfy_models.model_identity(clip)

    # an SD 1.x-style text encoder: no text_projection in the file
    text_sd = {k: v for k, v in text_sd.items() if not k.startswith("text_projection")}
    clip = comfy_clip(text_sd, tiny_configs("gelu")[0])
    source = comfy_models.text_sources(clip)[0][0]
    report["projection_left_out"] = "text_projection.weight" not in source
    try:
        pairs.pair_from_sources([source], comfy_models.vision_source(vision))
        report["no_projection_error"] = None
    except errors.ModelLoadError as error:
        report["no_projection_error"] = str(error)

    # a SigLIP CLIP Vision, as ComfyUI builds it
    siglip_config = dict(tiny_configs("gelu")[1], model_type="siglip_vision_model")
    siglip_config.pop("projection_dim")
    siglip_sd = {k: v for k, v in vision_sd.items() if "class_embedding" not in k and "visual_projection" not in k
                 and "pre_layrnorm" not in k}
    siglip_sd["vision_model.embeddings.patch_embedding.bias"] = torch.zeros(TINY_CLIP_CONFIG["vision_cfg"]["width"])
    siglip_sd["vision_model.embeddings.position_embedding.weight"] = siglip_sd[
        "vision_model.embeddings.position_embedding.weight"][1:]
    siglip = comfy_vision(siglip_sd, siglip_config, "siglip")
    try:
        pairs.vision_tower(comfy_models.vision_source(siglip))
        report["siglip_error"] = None
    except errors.ModelLoadError as error:
        report["siglip_error"] = str(error)
    print("REPORT " + json.dumps(report))


if __name__ == "__main__":
    main()
