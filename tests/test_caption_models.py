"""Caption model families (Florence-2, a generic vision-language model) on tiny random models the tests save with
``save_pretrained``, loaded through the product's own loader; and the clear errors for what cannot load."""

import json
import os

import pytest

import core.caption as caption
from core import ModelLoadError, load_captioner
from core.caption import CaptionOptions, family_of
from tests.tiny_models import write_tiny_florence2, write_tiny_llava


@pytest.fixture(scope="module")
def caption_dir(tmp_path_factory):
    """Florence-2 under the preset's folder name, and a LLaVA (JoyCaption's architecture) under a folder of its own."""
    folder = str(tmp_path_factory.mktemp("caption_models"))
    write_tiny_florence2(os.path.join(folder, "Florence-2-base"))
    write_tiny_llava(os.path.join(folder, "my-vlm"))
    return folder


@pytest.fixture(scope="module")
def florence(caption_dir):
    return load_captioner("florence-2-base", models_dir=caption_dir)


@pytest.fixture(scope="module")
def vlm(caption_dir):
    return load_captioner(os.path.join(caption_dir, "my-vlm"))


def test_florence2_loads_natively_and_captions_every_image(florence, images):
    assert type(florence.model).__name__ == "Florence2ForConditionalGeneration"
    assert florence.family.name == "Florence-2" and florence.name == "florence-2-base"
    captions = florence.caption(images, options=CaptionOptions(max_new_tokens=8))
    assert len(captions) == 3 and all(captions) and len(set(captions)) == 3
    # batched generation gives each image the caption it gets alone, and the same again (beam search, no sampling)
    assert captions == [florence.caption([im], options=CaptionOptions(max_new_tokens=8))[0] for im in images]


def test_florence2_tasks_are_the_detail_choice(florence, images):
    prompts = {}
    for detail, task in caption.FLORENCE_TASKS.items():
        inputs = caption._florence_task(florence.processor, images[:1], CaptionOptions(detail=detail))
        prompts[detail] = inputs["input_ids"][0].tolist()
        assert florence.processor.tokenizer.decode(prompts[detail], skip_special_tokens=True).strip()
    assert len({tuple(p) for p in prompts.values()}) == 3
    short = florence.caption(images, options=CaptionOptions("short", max_new_tokens=8))
    detailed = florence.caption(images, options=CaptionOptions("more detailed", max_new_tokens=8))
    assert short != detailed


def test_vision_language_model_follows_the_instruction(vlm, images):
    assert vlm.family is caption.GENERIC and type(vlm.model).__name__ == "LlavaForConditionalGeneration"
    assert vlm.processor.tokenizer.padding_side == "left"  # batched prompts of a decoder-only model
    default = vlm.caption(images, options=CaptionOptions(max_new_tokens=8))
    assert len(default) == 3 and all(default) and len(set(default)) == 3
    assert default == [vlm.caption([im], options=CaptionOptions(max_new_tokens=8))[0] for im in images]
    assert all("\n" not in c and "user" not in c.lower() for c in default)  # the prompt is not echoed
    other = vlm.caption(images, options=CaptionOptions(instruction="describe the cat in detail",
                                                       max_new_tokens=8))
    assert other != default
    assert all(len(c.split()) <= 8 for c in vlm.caption(images, options=CaptionOptions(max_new_tokens=3)))


def test_bound_captioner_carries_its_options_per_call(vlm, images):
    options = CaptionOptions(instruction="describe the cat in detail", max_new_tokens=8)
    bound = vlm.using(options)
    assert bound.caption(images) == vlm.caption(images, options=options)
    assert bound.name == vlm.name


def test_caption_options_are_checked():
    with pytest.raises(ModelLoadError, match="detail"):
        CaptionOptions(detail="long")
    with pytest.raises(ModelLoadError, match="max tokens"):
        CaptionOptions(max_new_tokens=-1)


def test_every_family_is_one_row():
    assert [f.name for f in caption.FAMILIES] == ["BLIP", "BLIP-2", "GIT", "Florence-2", "vision-language model"]
    assert family_of("blip").model_class == "BlipForConditionalGeneration"
    assert family_of("git").float32 and not family_of("git").cast_inputs
    assert family_of("qwen2_5_vl") is caption.GENERIC and family_of(None) is caption.GENERIC


def _config_folder(tmp_path, config, name="model"):
    folder = tmp_path / name
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_older_transformers_gets_the_version_to_install(tmp_path, monkeypatch, caption_dir):
    """What a ComfyUI install with transformers 4.55 sees for Florence-2 (class added in 4.56) and Qwen3-VL."""
    monkeypatch.setattr(caption, "installed_transformers", lambda: "4.55.4")
    real = caption._transformers_class
    monkeypatch.setattr(caption, "_transformers_class",
                        lambda name: None if name == "Florence2ForConditionalGeneration" else real(name))
    with pytest.raises(ModelLoadError) as error:
        load_captioner("florence-2-base", models_dir=caption_dir)
    assert "transformers >= 4.56" in str(error.value) and "4.55.4 is installed" in str(error.value)
    with pytest.raises(ModelLoadError) as error:
        load_captioner(_config_folder(tmp_path, {"model_type": "qwen3_vl_future"}))
    assert "does not load" in str(error.value)
    from transformers.models.auto import modeling_auto

    monkeypatch.delitem(modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES, "qwen3_vl")
    with pytest.raises(ModelLoadError, match=r"transformers >= 4\.57"):
        load_captioner(_config_folder(tmp_path, {"model_type": "qwen3_vl"}, "qwen3"))


def test_remote_code_florence2_is_refused_with_the_conversion(tmp_path):
    folder = _config_folder(tmp_path, {"model_type": "florence2", "auto_map": {"AutoConfig": "x.Config"},
                                       "vision_config": {"model_type": "davit"}})
    with pytest.raises(ModelLoadError) as error:
        load_captioner(folder)
    assert "remote-code" in str(error.value) and "florence-community/Florence-2-base" in str(error.value)


def test_models_that_are_no_captioners_are_refused(tmp_path):
    with pytest.raises(ModelLoadError, match="'bert' model"):
        load_captioner(_config_folder(tmp_path, {"model_type": "bert"}))
    with pytest.raises(ModelLoadError, match="config.json holds an array, not a JSON object"):
        load_captioner(_config_folder(tmp_path, [], "list"))
