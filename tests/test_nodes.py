"""The ComfyUI nodes, run directly on the tiny fixture models with small stand-ins for the comfy.* calls.

The stand-ins behave like ComfyUI's: load_models_gpu keeps a list of loaded patchers, unload_all_models (what
POST /free calls) detaches them, and detaching runs the patcher's ON_DETACH callbacks.
"""

import enum
import importlib.util
import json
import os
import re
import sys
import types

import numpy as np
import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACK = "ci_pack_under_test"  # ComfyUI imports the pack folder under an arbitrary name


def import_pack():
    if PACK in sys.modules:
        return sys.modules[PACK]
    spec = importlib.util.spec_from_file_location(PACK, os.path.join(ROOT, "__init__.py"),
                                                  submodule_search_locations=[ROOT])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK] = module
    spec.loader.exec_module(module)
    return module


# -- stand-ins for the few comfy.* functions the adapter calls ------------------------------------------------------
class FakeComfy:
    def __init__(self, base_dir, extra_folder):
        self.interrupt = False
        self.load_calls = []  # one list of patchers per load_models_gpu call
        self.bars = []
        VRAMState = enum.Enum("VRAMState", "DISABLED NO_VRAM LOW_VRAM NORMAL_VRAM HIGH_VRAM SHARED")

        class InterruptProcessingException(Exception):
            pass

        fake = self
        mm = types.ModuleType("comfy.model_management")
        mm.VRAMState = VRAMState
        mm.vram_state = VRAMState.NORMAL_VRAM
        mm.current_loaded_models = []
        mm.InterruptProcessingException = InterruptProcessingException
        mm.get_torch_device = lambda: torch.device("cpu")
        mm.text_encoder_offload_device = lambda: torch.device("cpu")
        mm.is_device_cpu = lambda d: torch.device(d).type == "cpu"
        mm.should_use_fp16 = lambda device=None, **kw: False
        mm.should_use_bf16 = lambda device=None, **kw: False
        mm.soft_empty_cache = lambda force=False: None

        def throw_exception_if_processing_interrupted():
            if fake.interrupt:
                fake.interrupt = False
                raise InterruptProcessingException()

        class LoadedModel:
            def __init__(self, patcher):
                self.model = patcher

            def model_unload(self, memory_to_free=None, unpatch_weights=True):
                self.model.detach()
                return True

            def __eq__(self, other):
                return self.model is other.model

        def load_models_gpu(models, memory_required=0, force_patch_weights=False, minimum_memory_required=None,
                            force_full_load=False):
            fake.load_calls.append({"models": list(models), "force_full_load": force_full_load,
                                    "loaded_before": [m.model for m in mm.current_loaded_models]})
            for patcher in models:
                if LoadedModel(patcher) not in mm.current_loaded_models:
                    patcher.model.to(patcher.load_device)
                    patcher.loaded = True
                    mm.current_loaded_models.insert(0, LoadedModel(patcher))

        def unload_all_models():
            for loaded in list(mm.current_loaded_models):
                loaded.model_unload()
                mm.current_loaded_models.remove(loaded)

        mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        mm.load_models_gpu = load_models_gpu
        mm.unload_all_models = unload_all_models

        class CallbacksMP:
            ON_DETACH = "on_detach_after"

        class ModelPatcher:
            def __init__(self, model, load_device, offload_device, size=0, weight_inplace_update=False):
                self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
                self.callbacks = {}
                self.loaded = False
                self.detached = 0

            def add_callback(self, kind, callback):
                self.callbacks.setdefault(kind, []).append(callback)

            def model_size(self):
                return self.size

            def detach(self, unpatch_all=True):
                self.model.to(self.offload_device)
                self.loaded = False
                self.detached += 1
                for callback in self.callbacks.get(CallbacksMP.ON_DETACH, []):
                    callback(self, unpatch_all)
                return self.model

        class ProgressBar:
            def __init__(self, total, node_id=None):
                self.total, self.values = total, []
                fake.bars.append(self)

            def update_absolute(self, value, total=None, preview=None):
                self.values.append((value, total))

        utils = types.ModuleType("comfy.utils")
        utils.ProgressBar = ProgressBar
        patcher_module = types.ModuleType("comfy.model_patcher")
        patcher_module.ModelPatcher = ModelPatcher
        extension = types.ModuleType("comfy.patcher_extension")
        extension.CallbacksMP = CallbacksMP
        comfy = types.ModuleType("comfy")
        comfy.model_management, comfy.utils = mm, utils
        comfy.model_patcher, comfy.patcher_extension = patcher_module, extension

        folder_paths = types.ModuleType("folder_paths")
        folder_paths.models_dir = os.path.join(base_dir, "models")
        # as if extra_model_paths.yaml had added the fixture folder before the pack loaded
        folder_paths.folder_names_and_paths = {"clip_interrogator": ([extra_folder], set())}
        folder_paths.get_folder_paths = lambda name: list(folder_paths.folder_names_and_paths[name][0])

        def get_filename_list(name):
            found = []
            for folder in folder_paths.folder_names_and_paths[name][0]:
                for root, _, files in os.walk(folder):
                    found += [os.path.relpath(os.path.join(root, f), folder).replace(os.sep, "/") for f in files
                              if f.endswith(".safetensors")]
            return sorted(found)

        folder_paths.get_filename_list = get_filename_list
        self.mm, self.folder_paths, self.utils = mm, folder_paths, utils
        self.modules = {"comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
                        "comfy.model_patcher": patcher_module, "comfy.patcher_extension": extension,
                        "folder_paths": folder_paths}

    def loaded_patchers(self):
        return [loaded.model for loaded in self.mm.current_loaded_models]


@pytest.fixture
def comfy(tmp_path, models_dir, monkeypatch):
    fake = FakeComfy(str(tmp_path), models_dir)
    for name, module in fake.modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    pack = import_pack()
    adapter = sys.modules[f"{PACK}.nodes.comfy_adapter"]
    runtime = sys.modules[f"{PACK}.nodes.runtime"]
    monkeypatch.setattr(adapter, "_checked", False)
    monkeypatch.setattr(adapter, "_environment", None)
    runtime.reset_runtime()
    fake.pack, fake.runtime_module = pack, runtime
    yield fake
    runtime.reset_runtime()


@pytest.fixture(scope="module")
def batch(images):
    """The three fixture images as one ComfyUI IMAGE batch [3, 64, 64, 3]."""
    arrays = [np.asarray(im.resize((64, 64)), dtype=np.float32) / 255.0 for im in images]
    return torch.from_numpy(np.stack(arrays))


def node(comfy, name):
    return comfy.pack.NODE_CLASS_MAPPINGS[name]()


def load(comfy, **overrides):
    args = dict(clip_model="tiny-clip.safetensors", caption_model="blip-large", precision="auto", device="auto")
    args.update(overrides)
    return node(comfy, "ClipInterrogatorLoad").load(**args)[0]


def interrogate(comfy, handle, image, mode="fast", caption="", max_flavors=0):
    return node(comfy, "ClipInterrogatorInterrogate").run(image, handle, mode, max_flavors, caption)


# -- declarations -------------------------------------------------------------------------------------------------
def test_every_node_is_declared_for_comfyui(comfy):
    pack = comfy.pack
    assert pack.WEB_DIRECTORY == "./web" and os.path.isfile(os.path.join(ROOT, "web", "show_prompt.js"))
    assert set(pack.NODE_CLASS_MAPPINGS) == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert {"Load Interrogator", "Interrogate Image", "Style-Only Prompt", "Negative Prompt",
            "Analyze Image"} <= set(pack.NODE_DISPLAY_NAME_MAPPINGS.values())
    for name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert cls.CATEGORY == "CLIP Interrogator"
        assert callable(getattr(cls(), cls.FUNCTION))
        inputs = cls.INPUT_TYPES()
        for section in (inputs.get("required", {}), inputs.get("optional", {})):  # hidden inputs are no widgets
            for input_name, declaration in section.items():
                assert declaration[1].get("tooltip"), f"{name}.{input_name} has no tooltip"
        assert len(getattr(cls, "OUTPUT_IS_LIST", cls.RETURN_TYPES)) == len(cls.RETURN_TYPES)
    # prompts are plain STRINGs, so they connect to CLIPTextEncode.text and CLIPTextEncodeSDXL.text_g / text_l
    for name in ("ClipInterrogatorInterrogate", "ClipInterrogatorStylePrompt", "ClipInterrogatorNegativePrompt"):
        assert pack.NODE_CLASS_MAPPINGS[name].RETURN_TYPES[0] == "STRING"
        assert pack.NODE_CLASS_MAPPINGS[name].OUTPUT_IS_LIST[0] is True


def test_model_folder_is_registered_and_listed(comfy, models_dir):
    load_node = comfy.pack.NODE_CLASS_MAPPINGS["ClipInterrogatorLoad"]
    required = load_node.INPUT_TYPES()["required"]
    paths, extensions = comfy.folder_paths.folder_names_and_paths["clip_interrogator"]
    assert paths[0] == models_dir  # the extra_model_paths.yaml entry is kept, first
    assert os.path.join(comfy.folder_paths.models_dir, "clip_interrogator") in paths
    clip_choices = required["clip_model"][0]
    assert clip_choices[:3] == ["ViT-L-14/openai", "ViT-H-14/laion2b_s32b_b79k", "ViT-bigG-14/laion2b_s39b_b160k"]
    assert "tiny-clip.safetensors" in clip_choices
    assert not [c for c in clip_choices if c.startswith("cache/") or "blip-image-captioning" in c]
    caption_choices = required["caption_model"][0]
    assert caption_choices[0] == "blip-large"
    assert {"blip-base", "blip2-2.7b", "blip2-flan-t5-xl", "git-large-coco", "none"} <= set(caption_choices)
    assert "blip-image-captioning-large" not in caption_choices  # that folder *is* blip-large
    assert required["precision"][0] == ["auto", "fp16", "bf16", "fp32"]
    assert required["device"][0] == ["auto", "cpu"]


# -- running ------------------------------------------------------------------------------------------------------
def test_load_is_lazy_and_errors_name_the_folder(comfy, models_dir):
    handle = load(comfy)
    assert len(comfy.runtime_module.runtime().cache) == 0  # a handle, not weights
    with pytest.raises(RuntimeError) as info:
        load(comfy, clip_model="missing.safetensors")
    assert "missing.safetensors" in str(info.value) and models_dir in str(info.value)
    with pytest.raises(RuntimeError) as info:
        load(comfy, caption_model="my-captioner")
    assert "my-captioner" in str(info.value) and models_dir in str(info.value)
    assert handle.clip == "tiny-clip.safetensors"


def test_batch_gives_one_prompt_per_image_equal_to_single_runs(comfy, batch, models_dir):
    handle = load(comfy)
    out = interrogate(comfy, handle, batch, mode="fast")
    prompts, captions, warnings = out["result"]
    assert len(prompts) == len(captions) == len(warnings) == 3
    assert warnings == ["", "", ""]  # fast mode never reports gaps
    assert all(prompts) and all(captions)
    assert len(set(prompts)) == 3, prompts  # they differ per image
    assert out["ui"]["text"] == prompts
    for i in range(3):
        single, single_captions, _ = interrogate(comfy, handle, batch[i:i + 1], mode="fast")["result"]
        assert single == [prompts[i]] and single_captions == [captions[i]]
        assert prompts[i].startswith(captions[i])
    # and they are what the engine writes when used directly
    core = sys.modules[f"{PACK}.core"]
    clip = core.load_clip(weights=os.path.join(models_dir, "tiny-clip.safetensors"))
    captioner = core.load_captioner("blip-large", models_dir=models_dir)
    engine = core.Interrogator(clip, captioner, core.Vocabulary.builtin())
    assert engine.interrogate(batch, "fast") == prompts


def test_best_and_classic_modes(comfy, batch):
    handle = load(comfy)
    best = interrogate(comfy, handle, batch, mode="best")["result"][0]
    classic = interrogate(comfy, handle, batch, mode="classic")["result"][0]
    assert len(best) == len(classic) == 3 and all(best) and all(classic)
    assert best != classic


def test_a_new_mode_row_reaches_the_nodes_with_its_caption(comfy, batch, monkeypatch):
    """A mode is one row of core's table: the node offers it and the runtime captions for it, no other list."""
    modes = sys.modules[f"{PACK}.core.modes"]
    engine_class = sys.modules[f"{PACK}.core.interrogator"].Interrogator
    monkeypatch.setitem(modes.MODES, "quick", modes.Mode("quick", True, 2, "fast, with two terms"))
    monkeypatch.setattr(engine_class, "_quick", engine_class._fast, raising=False)
    declared = comfy.pack.NODE_CLASS_MAPPINGS["ClipInterrogatorInterrogate"].INPUT_TYPES()["required"]
    assert "quick" in declared["mode"][0] and "2 for quick" in declared["max_flavors"][1]["tooltip"]
    prompts, captions, _ = interrogate(comfy, load(comfy), batch, mode="quick")["result"]
    assert all(captions) and [p.count(", ") for p in prompts] == [c.count(", ") + 2 for c in captions]
    assert all(p.startswith(c + ", ") for p, c in zip(prompts, captions))


def test_caption_input_skips_the_caption_model(comfy, batch):
    handle = load(comfy)
    prompts, captions, _ = interrogate(comfy, handle, batch, mode="fast", caption="a red fox in snow")["result"]
    assert captions == ["a red fox in snow"] * 3
    assert all(p.startswith("a red fox in snow, ") for p in prompts)
    assert not [k for k in (r.key for r in comfy.runtime_module.runtime().cache.residents()) if k[0] == "caption"]
    assert all(len(call["models"]) == 1 for call in comfy.load_calls)  # only CLIP was ever loaded


def test_precise_mode_shows_its_warnings_and_analyze_its_chances(comfy, batch, monkeypatch):
    """A list with no good term is named on the warnings output and on the node; Analyze Image shows the chances
    and, for the exhaustive list, the fit."""
    confidence = sys.modules[f"{PACK}.core.confidence"]
    never_close = confidence.Calibration(pick=1.0, second=float("inf"), gap=float("inf"), crop=float("inf"))
    monkeypatch.setattr(confidence.Calibration, "load", classmethod(lambda cls, path=None: never_close))
    handle = load(comfy, ban="no such word")  # a vocabulary no earlier test built an engine for
    out = node(comfy, "ClipInterrogatorInterrogate").run(batch, handle, "precise", 0, "a cat", True)
    prompts, captions, warnings = out["result"]
    message = "no good term for mediums: the image may be outside the vocabulary"  # the builtin exhaustive list
    assert captions == ["a cat"] * 3 and all(p.startswith("a cat") for p in prompts)
    assert warnings == [message] * 3
    assert out["ui"]["text"] == [f"{p}\n{message}" for p in prompts]
    mediums = set(sys.modules[f"{PACK}.core"].Vocabulary.builtin()["mediums"].terms)
    assert not [term for p in prompts for term in p.split(", ")[1:] if term in mediums]  # reported, not filled
    texts, _ = node(comfy, "ClipInterrogatorAnalyze").run(batch, handle, 3)["result"]
    for text in texts:
        assert text.endswith(message)
        mediums_line = text.split("\nmediums: ")[1].splitlines()[0]
        assert re.search(r" \| chance \d+%, fit -?\d\.\d\d$", mediums_line)  # mediums is exhaustive: it has a fit
        flavors_line = text.split("\nflavors: ")[1].splitlines()[0]
        assert " | chance " in flavors_line and ", fit " not in flavors_line  # flavors is not
    # the prompts for one model family's encoders show the same warning under their texts
    sdxl = node(comfy, "ClipInterrogatorPromptsSDXL").run(batch, handle, "precise", 0, "a cat")
    text_g, text_l, negative, _ = sdxl["result"]
    assert sdxl["ui"]["text"] == [f"text_g: {g}\ntext_l: {l}\nnegative: {n}\n{message}"
                                  for g, l, n in zip(text_g, text_l, negative)]


def test_style_negative_and_analyze_nodes(comfy, batch):
    handle = load(comfy)
    style = node(comfy, "ClipInterrogatorStylePrompt").run(batch, handle, 0)
    negative = node(comfy, "ClipInterrogatorNegativePrompt").run(batch, handle, 0)
    analysis = node(comfy, "ClipInterrogatorAnalyze").run(batch, handle, 5)
    for out in (style, negative):
        prompts = out["result"][0]
        assert len(prompts) == 3 and all(prompts) and out["ui"]["text"] == prompts
    assert style["result"][0] != negative["result"][0]
    caption_model_used = [r for r in comfy.runtime_module.runtime().cache.residents() if r.key[0] == "caption"]
    assert not caption_model_used  # style and negative prompts have no caption
    texts, jsons = analysis["result"]
    assert len(texts) == len(jsons) == 3
    vocab = sys.modules[f"{PACK}.core"].Vocabulary.builtin()
    for text, raw in zip(texts, jsons):
        parsed = json.loads(raw)
        assert set(parsed) == set(vocab.names)
        for name, ranked in parsed.items():
            assert len(ranked) == min(5, len(vocab[name].labels))
            scores = [r["score"] for r in ranked]
            assert scores == sorted(scores, reverse=True)
            assert f"{name}: {ranked[0]['term']} ({ranked[0]['score']:.3f}" in text


def test_max_flavors_limits_fast_prompts(comfy, batch):
    handle = load(comfy)
    prompts, captions, _ = interrogate(comfy, handle, batch, mode="fast", max_flavors=2)["result"]
    for prompt, caption in zip(prompts, captions):
        assert prompt.startswith(caption) and len(prompt[len(caption):].split(", ")) == 3


def test_models_are_loaded_once_and_shared(comfy, batch):
    first, second = load(comfy), load(comfy)
    interrogate(comfy, first, batch[:1])
    interrogate(comfy, second, batch[1:2])
    node(comfy, "ClipInterrogatorNegativePrompt").run(batch[:1], second, 0)
    rt = comfy.runtime_module.runtime()
    kinds = sorted(r.key[0] for r in rt.cache.residents())
    assert kinds == ["caption", "clip"]
    assert rt.clip(first).value is rt.clip(second).value
    patchers = {id(m) for call in comfy.load_calls for m in call["models"]}
    assert len(patchers) == 2 and all(call["force_full_load"] for call in comfy.load_calls)
    # the label matrices count in the budget ComfyUI sees
    clip = rt.clip(first)
    assert clip.extra_bytes > 0 and clip.handle.size == clip.weight_bytes + clip.extra_bytes


def test_unload_and_free_release_models_and_label_matrices(comfy, batch):
    handle = load(comfy)
    before = interrogate(comfy, handle, batch, mode="fast")["result"][0]
    rt = comfy.runtime_module.runtime()
    clip = rt.clip(handle)
    engine = rt.engine(handle, clip)[1]
    assert engine.label_index().on_device  # scoring matrices on the device
    assert len(comfy.loaded_patchers()) == 2

    out = node(comfy, "ClipInterrogatorUnload").unload([False], ["a prompt"])
    assert out["result"] == (["a prompt"],)
    assert comfy.loaded_patchers() == [] and clip.handle.detached == 1
    assert not engine.label_index().on_device
    assert len(rt.cache) == 2  # still cached in RAM: they come back on next use

    again = interrogate(comfy, handle, batch, mode="fast")["result"][0]
    assert again == before and len(comfy.loaded_patchers()) == 2

    comfy.mm.unload_all_models()  # what POST /free {"unload_models": true} runs
    assert comfy.loaded_patchers() == [] and not engine.label_index().on_device
    assert interrogate(comfy, handle, batch, mode="fast")["result"][0] == before

    node(comfy, "ClipInterrogatorUnload").unload([True])
    assert len(rt.cache) == 0 and comfy.loaded_patchers() == []


def test_lowvram_keeps_one_model_on_the_gpu(comfy, batch):
    comfy.mm.vram_state = comfy.mm.VRAMState.LOW_VRAM
    handle = load(comfy)
    interrogate(comfy, handle, batch, mode="fast")
    caption_call, clip_call = comfy.load_calls[-2:]
    assert caption_call["models"][0].model.inner.__class__.__name__.startswith("Blip")
    assert caption_call["models"][0] not in clip_call["loaded_before"]  # unloaded before CLIP came in
    assert len(comfy.loaded_patchers()) == 1


def test_progress_bars_and_cancel(comfy, batch, tmp_path):
    handle = load(comfy)
    interrogate(comfy, handle, batch, mode="best")
    assert len(comfy.bars) >= 4  # captioning, the interrogation of the 3 images, chains
    assert [bar for bar in comfy.bars if bar.values[-1] == (3, 3)]  # the bar counting the images
    assert all(bar.values[-1][0] == bar.values[-1][1] for bar in comfy.bars)
    comfy.bars.clear()
    comfy.interrupt = True
    with pytest.raises(comfy.mm.InterruptProcessingException):
        interrogate(comfy, handle, batch, mode="best", caption="a cat")
    assert comfy.interrupt is False


def test_bad_image_and_unknown_options_are_node_errors(comfy):
    handle = load(comfy)
    with pytest.raises(ValueError, match="image"):
        interrogate(comfy, handle, torch.zeros(0, 64, 64, 3))
    with pytest.raises(ValueError, match="precision"):
        load(comfy, precision="fp8")


def test_vocabulary_options(comfy, batch):
    handle = load(comfy, artists=False, ban="photo, painting")
    prompts = node(comfy, "ClipInterrogatorStylePrompt").run(batch, handle, 0)["result"][0]
    fast, _, _ = interrogate(comfy, handle, batch, mode="fast", caption="x")["result"]
    for prompt in prompts + fast:
        assert " by " not in f" {prompt}" and "inspired by" not in prompt
        terms = prompt.lower().split(", ")
        assert not [t for t in terms[1:] if "photo" in t.split() or "painting" in t.split()]


ARTIST = "Monir Shahroudy Farmanfarmaian"


@pytest.mark.parametrize("ban, cut", [  # issue 8, bug 1's examples, and the caption they leave
    (f"by {ARTIST}, contest winner", "a man standing by a lake, painted for a"),
    ("by", f"a man standing a lake, painted {ARTIST} for a contest winner")])
def test_ban_reaches_every_output_in_every_form(comfy, batch, ban, cut):
    """Load Interrogator's ban, in every mode's node: "by" starts every artist label (style prompts always name
    one), "contest winner" ends some site labels, and a caption may hold either. None may appear in any output, the
    caption output included, nor in any label the engine scores."""
    banned = importlib.import_module(f"{PACK}.core.ban").Ban([b.strip() for b in ban.split(",")])
    runtime = comfy.runtime_module.runtime()
    labels = lambda handle: [l for tl in runtime.vocabulary(handle).lists for l in tl.labels]
    assert {f"by {ARTIST}", "shutterstock contest winner"} <= set(labels(load(comfy)))
    handle = load(comfy, ban=ban)
    assert not [label for label in labels(handle) if banned.hits(label)]
    caption = f"a man standing by a lake, painted by {ARTIST} for a contest winner"
    outputs = []
    for mode in [m.name for m in importlib.import_module(f"{PACK}.core").MODES.values() if m.captioned]:
        prompts, captions, warnings = interrogate(comfy, handle, batch[:1], mode=mode, caption=caption,
                                                  max_flavors=8 if mode == "best" else 64)["result"]
        assert captions == [cut]
        outputs += prompts + captions + [w for w in warnings if w]  # warnings: empty unless a list has a gap
    style = node(comfy, "ClipInterrogatorStylePrompt").run(batch, handle, 0)["result"][0]
    assert len(style) == 3
    negative = node(comfy, "ClipInterrogatorNegativePrompt").run(batch[:1], handle, 64)["result"][0]
    analysis = node(comfy, "ClipInterrogatorAnalyze").run(batch[:1], handle, 50)["result"]
    for text in outputs + style + negative + analysis[0] + analysis[1]:
        assert text and not banned.hits(text), text


def test_caption_folder_node(comfy, images, tmp_path):
    """Caption files beside the images, the summary on the node, the shared models, and what Interrogate Image and
    Analyze Image say about the same image with the same bans."""
    folder = tmp_path / "data"
    (folder / "sub").mkdir(parents=True)
    for image, name in zip(images, ("a.png", "b.png", "sub/c.png")):
        image.resize((64, 64)).save(folder / name)
    (folder / "bad.png").write_bytes(b"not an image")
    captioner = node(comfy, "ClipInterrogatorCaptionFolder")
    out = captioner.run(str(folder), load(comfy, ban="contest winner"), "fast", 6, trigger_word="ohwx",
                        exclude="by", jsonl=True)
    summary = out["result"][0]
    assert out["ui"]["text"] == [summary]
    assert summary.splitlines()[0] == "2 captioned, 0 skipped (caption file exists), 1 failed"
    assert str(folder / "bad.png") in summary and not (folder / "sub" / "c.txt").exists()
    assert [bar.values[-1] for bar in comfy.bars if bar.total == 3][-1] == (3, 3)  # one step per image

    both = load(comfy, ban="by, contest winner")  # the node's exclusions are the interrogator's bans
    tensor = torch.from_numpy(np.asarray(images[0].resize((64, 64)), dtype=np.float32)[None] / 255.0)
    prompt = interrogate(comfy, both, tensor, mode="fast", max_flavors=6)["result"][0][0]
    assert (folder / "a.txt").read_text(encoding="utf-8") == f"ohwx, {prompt}\n"
    analysis = json.loads(node(comfy, "ClipInterrogatorAnalyze").run(tensor, both, 50)["result"][1][0])
    record = next(json.loads(line) for line in (folder / "captions.jsonl").read_text().splitlines()
                  if json.loads(line)["image"] == "a.png")
    assert record["text"] == f"ohwx, {prompt}" and record["terms"]
    for term in record["terms"]:
        assert {"term": term["term"], "score": round(term["score"], 4)} in analysis[term["list"]]
    assert sorted(r.key[0] for r in comfy.runtime_module.runtime().cache.residents()) == ["caption", "clip"]


def test_caption_folder_node_errors_and_cancel(comfy, images, tmp_path):
    captioner, handle = node(comfy, "ClipInterrogatorCaptionFolder"), load(comfy)
    with pytest.raises(ValueError, match=r"the folder .*nowhere does not exist; give the full path"):
        captioner.run(str(tmp_path / "nowhere"), handle, "fast", 0)
    images[0].save(tmp_path / "a.png")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        captioner.run(str(tmp_path / "a.png"), handle, "fast", 0)
    with pytest.raises(ValueError, match="needs the full path"):
        captioner.run("  ", handle, "fast", 0)
    with pytest.raises(ValueError, match="replace line 1 .* is not 'old = new'"):
        captioner.run(str(tmp_path), handle, "fast", 0, replace="no equals sign")
    comfy.interrupt = True
    with pytest.raises(comfy.mm.InterruptProcessingException):
        captioner.run(str(tmp_path), handle, "fast", 0)
    assert not (tmp_path / "a.txt").exists()


# -- outside ComfyUI ----------------------------------------------------------------------------------------------
def test_runtime_works_without_comfyui(models_dir, batch):
    import_pack()
    runtime = sys.modules[f"{PACK}.nodes.runtime"]
    rt = runtime.Runtime(sys.modules[f"{PACK}.nodes.environment"].PlainEnvironment(models_dir))
    assert rt.env.name == "plain"
    spec = runtime.InterrogatorSpec("tiny-clip.safetensors", "none")
    prompts = rt.run(spec, batch, "fast", caption="a house")
    assert len(prompts) == 3 and [p.caption for p in prompts] == ["a house"] * 3 and all(p.text for p in prompts)
    assert rt.unload() == 1


def test_simple_memory_keeps_to_its_budget():
    import_pack()
    cache_module = sys.modules[f"{PACK}.nodes.model_cache"]

    class Tracked(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(25))  # 100 bytes
            self.moves = []

        def to(self, device):  # records the move; the test machine has no second device
            self.moves.append(str(device))
            return self

    cache = cache_module.ModelCache(cache_module.SimpleMemory(budget_bytes=250))
    released = []
    residents = []
    for name in "abc":
        resident = cache.get(name, lambda: (name, Tracked()), load_device="cuda:0", offload_device="cpu")
        resident.on_release(lambda name=name: released.append(name))
        residents.append(resident)
    assert cache.get("a", lambda: pytest.fail("loaded twice")) is residents[0]
    a, b, c = residents
    cache.use([a])
    cache.use([b])
    assert released == []
    cache.use([c])  # 300 bytes > 250: the least recently used goes back
    assert released == ["a"] and a.module.moves == ["cuda:0", "cpu"]
    cache.use([b])
    cache.use([a])  # now c is the least recently used
    assert released == ["a", "c"]
    cache.clear()
    assert len(cache) == 0 and sorted(released) == ["a", "a", "b", "c"]


# -- packaging and example workflows ------------------------------------------------------------------------------
def _requirements():
    with open(os.path.join(ROOT, "requirements.txt")) as file:
        return [line.split("#")[0].strip() for line in file if line.split("#")[0].strip()]


def test_pyproject_mirrors_requirements_without_torch():
    tomllib = pytest.importorskip("tomllib")
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as file:
        project = tomllib.load(file)
    meta = project["project"]
    assert meta["name"] == "comfyui-clip-interrogator-nodes" and meta["version"] == "0.1.0"
    assert meta["description"] and "MIT" in str(meta["license"]) and meta["urls"]
    assert set(project["tool"]["comfy"]) >= {"PublisherId", "DisplayName", "Icon"}
    assert sorted(meta["dependencies"]) == sorted(_requirements())
    assert not [d for d in meta["dependencies"] if d.lower().startswith(("torch", "torchvision"))]


def test_install_script_pins_the_installed_torch():
    spec = importlib.util.spec_from_file_location("pack_install", os.path.join(ROOT, "install.py"))
    install = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(install)  # importing it installs nothing
    from importlib.metadata import version

    assert f"torch=={version('torch')}" in install.constraints()  # '==2.x' also matches a '+cu' build
    command = install.pip_command("requirements.txt", "pins.txt")
    assert command[:4] == [sys.executable, "-m", "pip", "install"] and command[-2:] == ["-c", "pins.txt"]
    assert "--upgrade" not in command and "-U" not in command


WIDGET_FREE_TYPES = {"IMAGE", "INTERROGATOR", "MODEL", "CLIP", "VAE", "LATENT", "CONDITIONING", "MASK"}


def _widget_names(cls):
    names = []
    for section in ("required", "optional"):
        for name, declaration in cls.INPUT_TYPES().get(section, {}).items():
            kind = declaration[0]
            if isinstance(kind, list) or (kind not in WIDGET_FREE_TYPES and not declaration[1].get("forceInput")):
                names.append(name)
    return names


@pytest.mark.parametrize("filename", ["sd15_image_to_prompt.json", "sdxl_image_to_prompt.json",
                                      "flux_image_to_prompt.json"])
def test_example_workflows_are_consistent(comfy, filename):
    with open(os.path.join(ROOT, "example_workflows", filename)) as file:
        workflow = json.load(file)
    assert workflow["version"] == 0.4
    nodes = {n["id"]: n for n in workflow["nodes"]}
    for link_id, src, src_slot, dst, dst_slot, kind in workflow["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]
    ours = [n for n in nodes.values() if n["type"].startswith("ClipInterrogator")]
    for n in ours:
        cls = comfy.pack.NODE_CLASS_MAPPINGS[n["type"]]
        assert len(n["widgets_values"]) == len(_widget_names(cls)), n["type"]
        assert [o["name"] for o in n["outputs"]] == list(cls.RETURN_NAMES), n["type"]
    loader = next(n for n in ours if n["type"] == "ClipInterrogatorLoad")
    expected_clip = "ViT-bigG-14/laion2b_s39b_b160k" if "sdxl" in filename else "ViT-L-14/openai"
    assert loader["widgets_values"][0] == expected_clip
    # (node, output) -> (encoder node, input) of every prompt link
    wired = {(nodes[src]["type"], nodes[src]["outputs"][slot]["name"], nodes[dst]["type"],
              nodes[dst]["inputs"][i]["name"]) for _, src, slot, dst, i, kind in workflow["links"] if kind == "STRING"}
    if "sd15" in filename:
        assert ("ClipInterrogatorInterrogate", "prompt", "CLIPTextEncode", "text") in wired
        assert {"CheckpointLoaderSimple", "EmptyLatentImage", "KSampler", "VAEDecode", "SaveImage",
                "LoadImage"} <= {n["type"] for n in nodes.values()}
    elif "sdxl" in filename:
        node_type = "ClipInterrogatorPromptsSDXL"
        assert wired == {(node_type, "text_g", "CLIPTextEncodeSDXL", "text_g"),
                         (node_type, "text_l", "CLIPTextEncodeSDXL", "text_l"),
                         (node_type, "negative", "CLIPTextEncodeSDXL", "text_g"),
                         (node_type, "negative", "CLIPTextEncodeSDXL", "text_l")}
        sampler = next(n for n in nodes.values() if n["type"] == "KSampler")
        negative_encoder = [l[1] for l in workflow["links"] if l[3] == sampler["id"] and l[4] == 2][0]
        assert {nodes[l[1]]["outputs"][l[2]]["name"] for l in workflow["links"] if l[3] == negative_encoder
                and l[5] == "STRING"} == {"negative"}
    else:
        node_type = "ClipInterrogatorPromptsFlux"
        assert wired == {(node_type, "clip_l", "CLIPTextEncodeFlux", "clip_l"),
                         (node_type, "t5xxl", "CLIPTextEncodeFlux", "t5xxl")}
        clip_loader = next(n for n in nodes.values() if n["type"] == "DualCLIPLoader")
        assert clip_loader["widgets_values"][2] == "flux"


# -- caption model families and prompts per text encoder (issue 10) --------------------------------------------------
@pytest.fixture
def comfy_models(comfy):
    """ComfyUI's own models/clip_interrogator folder, and a comfy package folder with a T5 tokenizer in the place
    ComfyUI ships it (comfy/text_encoders/t5_tokenizer)."""
    from tests.tiny_models import write_tiny_t5_tokenizer

    folder = os.path.join(comfy.folder_paths.models_dir, "clip_interrogator")
    package = os.path.join(os.path.dirname(comfy.folder_paths.models_dir), "comfy")
    write_tiny_t5_tokenizer(os.path.join(package, "text_encoders", "t5_tokenizer"))
    comfy.modules["comfy"].__file__ = os.path.join(package, "__init__.py")
    return folder


def test_florence2_and_a_vlm_caption_through_the_nodes(comfy, comfy_models, batch):
    from tests.tiny_models import write_tiny_florence2, write_tiny_llava

    write_tiny_florence2(os.path.join(comfy_models, "Florence-2-base"))
    write_tiny_llava(os.path.join(comfy_models, "my-vlm"))
    choices = comfy.pack.NODE_CLASS_MAPPINGS["ClipInterrogatorLoad"].INPUT_TYPES()["required"]["caption_model"][0]
    assert {"florence-2-base", "florence-2-large", "qwen2.5-vl-3b", "joycaption-beta-one", "my-vlm"} <= set(choices)
    assert "Florence-2-base" not in choices  # that folder *is* the florence-2-base preset
    from core import load_captioner
    from core.caption import CaptionOptions

    for name, options in (("florence-2-base", dict(caption_detail="detailed", caption_max_tokens=8)),
                          ("my-vlm", dict(caption_instruction="describe the cat in detail", caption_max_tokens=6))):
        handle = load(comfy, caption_model=name, **options)
        prompts, captions, _ = interrogate(comfy, handle, batch, mode="fast")["result"]
        assert len(prompts) == len(captions) == 3 and all(captions) and len(set(captions)) == 3
        assert all(p.startswith(c) for p, c in zip(prompts, captions))
        source = name if name == "florence-2-base" else os.path.join(comfy_models, name)
        direct = load_captioner(source, models_dir=comfy_models).caption(
            [comfy.runtime_module.as_pil_list(batch)[i] for i in range(3)],
            options=CaptionOptions(options.get("caption_detail", "short"), options.get("caption_instruction", ""),
                                   options["caption_max_tokens"]))
        assert captions == direct
    kinds = [r.key for r in comfy.runtime_module.runtime().cache.residents() if r.key[0] == "caption"]
    assert len(kinds) == 2  # both caption models live in the one model cache ComfyUI manages
    assert node(comfy, "ClipInterrogatorUnload").unload([True])["result"] == ([],)
    assert len(comfy.runtime_module.runtime().cache) == 0


def test_bad_caption_options_fail_at_load(comfy):
    with pytest.raises(RuntimeError, match="caption detail"):
        load(comfy, caption_detail="epic")


def test_prompts_for_each_text_encoder(comfy, comfy_models, batch):
    from core.encoder_prompts import TARGETS
    from core.token_count import T5Counter, clip_counter

    handle = load(comfy)
    t5 = T5Counter(os.path.join(os.path.dirname(comfy.modules["comfy"].__file__), "text_encoders", "t5_tokenizer"))
    sentence = "a woman in a red dress standing in a garden with roses and a black cat near an old house"
    long_caption = " ".join([sentence] * 4)
    for node_name, target in (("ClipInterrogatorPromptsSDXL", "sdxl"), ("ClipInterrogatorPromptsSD3", "sd3"),
                              ("ClipInterrogatorPromptsFlux", "flux")):
        cls = comfy.pack.NODE_CLASS_MAPPINGS[node_name]
        assert cls.RETURN_NAMES == (*TARGETS[target].names, "caption") and set(cls.RETURN_TYPES) == {"STRING"}
        extra = {"text_l": "same as text_g"} if target == "sdxl" else {}
        out = cls().run(batch, handle, "fast", 6, long_caption, **extra)
        result = dict(zip(cls.RETURN_NAMES, out["result"]))
        assert result["caption"] == [long_caption] * 3 and len(out["ui"]["text"]) == 3
        for output in TARGETS[target].outputs:
            texts = result[output.name]
            assert len(texts) == 3 and all(texts)
            counter = t5 if output.encoder == "t5" else clip_counter()
            assert all(counter.count(t) <= output.limit for t in texts), (target, output.name)
        if target != "flux":
            # the long caption no longer swallows the window: it is cut and terms follow
            clip_text = result["text_g" if target == "sdxl" else "clip_l"][0]
            assert clip_text.startswith("a woman in a red dress") and clip_text.count(", ") >= 3
        else:
            assert result["t5xxl"][0].startswith("A woman in a red dress standing in a garden with roses and a "
                                                 "black cat near an old house a woman")
            assert not result["clip_l"][0].startswith("a woman")
    sdxl = node(comfy, "ClipInterrogatorPromptsSDXL").run(batch, handle, "fast", 6, "a red fox", text_l="style terms")
    text_g, text_l, negative, _ = sdxl["result"]
    assert all(g.startswith("a red fox, ") and g.endswith(l) for g, l in zip(text_g, text_l))
    assert not any(l.startswith("a red fox") for l in text_l)
    assert negative == node(comfy, "ClipInterrogatorNegativePrompt").run(batch, handle, 6)["result"][0]
