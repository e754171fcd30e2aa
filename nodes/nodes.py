"""The pack's nodes: thin declarations over :mod:`.runtime`, in the style of ComfyUI's comfy_extras/nodes_*.py."""

from ..core import DEFAULT_CLIP, MODES
from ..core.caption import DETAILS
from ..core.dataset import DatasetOptions, default_jsonl
from ..core.encoder_prompts import TARGETS
from .display import analysis_json, analysis_text, prompt_text
from .model_files import CAPTION_PRESETS
from .comfy_models import TEXT_ENCODERS
from .runtime import DEVICES, PRECISIONS, InterrogatorSpec, dataset_items, replace_pairs, runtime

CATEGORY = "CLIP Interrogator"

IMAGE_INPUT = ("IMAGE", {"tooltip": "The image(s) to describe. A batch of N images gives N prompts."})
INTERROGATOR_INPUT = ("INTERROGATOR", {"tooltip": "The models to use, from a Load Interrogator node."})


def captioned_modes():
    return [m.name for m in MODES.values() if m.captioned]


def detail_modes():
    return [m.name for m in MODES.values() if m.detail_pass]


def max_flavors_input(*modes: str):
    defaults = ", ".join(f"{MODES[m].max_terms} for {m}" for m in modes)
    return ("INT", {"default": 0, "min": 0, "max": 128, "step": 1,
                    "tooltip": f"Most descriptive terms to add; 0 uses the mode's default ({defaults})."})


def model_inputs(files) -> dict:
    """The inputs both interrogator loaders take besides the CLIP: caption model, precision, device."""
    return {
        "caption_model": (files.caption_choices(), {"default": CAPTION_PRESETS[0], "tooltip": (
            "Model that writes the caption (the subject) the prompt starts with; 'none' for prompts without "
            "a caption. Local model folders in models/clip_interrogator are listed too.")}),
        "precision": (list(PRECISIONS), {"default": "auto", "tooltip": (
            "Weight precision. auto follows ComfyUI: fp16/bf16 on a GPU, fp32 on the CPU.")}),
        "device": (list(DEVICES), {"default": "auto", "tooltip": (
            "auto: the GPU ComfyUI uses (CPU under --cpu or --novram); cpu: always the CPU, which keeps "
            "the GPU free for diffusion.")}),
    }


def vocabulary_inputs(files) -> dict:
    return {
        "vocabulary": (files.vocabulary_choices(), {"default": "builtin", "tooltip": (
            "Term lists to pick from: this pack's own lists, 'reference' (the lists of the installed "
            "clip-interrogator package), or your own set (a folder with a manifest.json in "
            "models/clip_interrogator/vocabularies). .txt files in models/clip_interrogator/vocab are added to any.")}),
        "artists": ("BOOLEAN", {"default": True, "label_on": "on", "label_off": "off",
                                "tooltip": "Off: prompts never name an artist."}),
        "ban": ("STRING", {"default": "", "multiline": False, "tooltip": (
            "Comma-separated words or phrases that must never appear in an output, in any form: 'by' removes every "
            "'by <artist>' term, and a banned word is cut out of the caption too.")}),
    }


def caption_inputs() -> dict:
    return {
        "caption_detail": (list(DETAILS), {"default": "short", "tooltip": (
            "How much the caption says. Florence-2: its caption task (<CAPTION>, <DETAILED_CAPTION>, "
            "<MORE_DETAILED_CAPTION>). Vision-language models: the default instruction (a sentence, two, "
            "a paragraph). BLIP and GIT ignore it.")}),
        "caption_instruction": ("STRING", {"default": "", "multiline": True, "tooltip": (
            "Vision-language models only: the instruction they caption with. Empty: describe the subject "
            "without style words (CLIP adds those).")}),
        "caption_max_tokens": ("INT", {"default": 0, "min": 0, "max": 2048, "step": 1, "tooltip": (
            "Most tokens the caption model writes; 0 uses its default (BLIP 32, Florence-2 256, "
            "vision-language models 96).")}),
    }


def interrogator(clip, caption_model, precision, device, vocabulary, artists, ban, caption_detail,
                 caption_instruction, caption_max_tokens) -> tuple:
    banned = tuple(sorted({b.strip() for b in ban.split(",") if b.strip()}))
    spec = InterrogatorSpec(clip, caption_model, precision, device, vocabulary, bool(artists), banned,
                            caption_detail, caption_instruction.strip(), int(caption_max_tokens))
    runtime().validate(spec)
    return (spec,)


class LoadInterrogator:
    @classmethod
    def INPUT_TYPES(cls):
        files = runtime().files
        return {
            "required": {
                "clip_model": (files.clip_choices(), {"default": DEFAULT_CLIP, "tooltip": (
                    "CLIP model that ranks the terms. Match your checkpoint: ViT-L-14/openai for SD 1.x, ViT-H-14 for "
                    "SD 2.x, ViT-bigG-14 for SDXL. Also listed: pairs of files you already have (a checkpoint or "
                    "text encoder + a CLIP Vision file that make one CLIP), and .safetensors files in "
                    "models/clip_interrogator (a custom architecture needs a .json config beside the file).")}),
                **model_inputs(files),
            },
            "optional": {**vocabulary_inputs(files), **caption_inputs()},
        }

    RETURN_TYPES = ("INTERROGATOR",)
    RETURN_NAMES = ("interrogator",)
    OUTPUT_TOOLTIPS = ("A handle to the models: they load on first use, once, shared by every node.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Chooses the CLIP and caption models for the interrogation nodes. Loads nothing until they run."

    def load(self, clip_model, caption_model, precision, device, vocabulary="builtin", artists=True, ban="",
             caption_detail="short", caption_instruction="", caption_max_tokens=0):
        return interrogator(clip_model, caption_model, precision, device, vocabulary, artists, ban, caption_detail,
                            caption_instruction, caption_max_tokens)


class InterrogatorFromComfyModels:
    @classmethod
    def INPUT_TYPES(cls):
        files = runtime().files
        return {
            "required": {
                "clip": ("CLIP", {"tooltip": (
                    "The text encoder(s) you already load: Load Checkpoint's CLIP (SDXL: its clip_g; SD 2.x: its "
                    "ViT-H), or Load CLIP / DualCLIPLoader. SD 1.x checkpoints lack CLIP-L's projection: load a "
                    "clip_l text encoder instead.")}),
                "clip_vision": ("CLIP_VISION", {"tooltip": (
                    "The matching CLIP Vision (Load CLIP Vision): ViT-bigG-14 for SDXL, ViT-H-14 for SD 2.x, "
                    "ViT-L-14 for SD 1.x.")}),
                "text_encoder": (list(TEXT_ENCODERS), {"default": "auto", "tooltip": (
                    "Which text encoder of the CLIP pairs with the CLIP Vision; auto picks the one trained with it "
                    "(ViT-bigG vision -> clip_g).")}),
                **model_inputs(files),
            },
            "optional": {**vocabulary_inputs(files), **caption_inputs()},
            "hidden": {"prompt": "PROMPT", "unique_id": "UNIQUE_ID"},  # which files the two inputs came from
        }

    RETURN_TYPES = ("INTERROGATOR",)
    RETURN_NAMES = ("interrogator",)
    OUTPUT_TOOLTIPS = ("A handle for every interrogation node: the pair becomes one CLIP on first use.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Interrogates with the CLIP and CLIP Vision models ComfyUI already loaded, nothing to download: "
                   "an SDXL checkpoint's clip_g + ViT-bigG CLIP Vision is the SDXL interrogator.")

    def load(self, clip, clip_vision, text_encoder, caption_model, precision, device, vocabulary="builtin",
             artists=True, ban="", caption_detail="short", caption_instruction="", caption_max_tokens=0, prompt=None,
             unique_id=None):
        pair = runtime().comfy_pair(clip, clip_vision, text_encoder, prompt, unique_id)
        return interrogator(pair, caption_model, precision, device, vocabulary, artists, ban, caption_detail,
                            caption_instruction, caption_max_tokens)


class _PromptNode:
    """Shared by the nodes that write prompts: one prompt per image, shown on the node after a run."""

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_NODE = True  # runs (and shows its prompt) even before anything is connected
    CATEGORY = CATEGORY
    FUNCTION = "run"

    def _prompts(self, image, interrogator, mode, max_flavors, caption=None, detail=False):
        return runtime().run(interrogator, image, mode, caption=caption, max_terms=max_flavors, detail=detail)


class InterrogateImage(_PromptNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": IMAGE_INPUT,
                "interrogator": INTERROGATOR_INPUT,
                "mode": (captioned_modes(), {"default": "best", "tooltip": "; ".join(
                    f"{m}: {MODES[m].description}" for m in captioned_modes())}),
                "max_flavors": max_flavors_input(*captioned_modes()),
            },
            "optional": {
                "caption": ("STRING", {"default": "", "multiline": True, "tooltip": (
                    "Your own caption (the subject). When set, the caption model is skipped and the prompt starts "
                    "with this text.")}),
                "detail_pass": ("BOOLEAN", {"default": False, "label_on": "on", "label_off": "off", "tooltip": (
                    "Modes " + ", ".join(detail_modes()) + " only: also score the four quarters and the centre of "
                    "the image, so a small detail can enter the prompt (six image passes instead of one).")}),
            },
        }

    RETURN_TYPES = ("STRING", "STRING", "STRING")
    RETURN_NAMES = ("prompt", "caption", "warnings")
    OUTPUT_IS_LIST = (True, True, True)
    OUTPUT_TOOLTIPS = ("One prompt per image, for CLIPTextEncode.", "The whole caption of each image (its prompt "
                       "starts with it, cut at a phrase when it is too long to leave room for terms).",
                       "Per image, the lists with no good term (precise mode), one line each; empty when none.")
    DESCRIPTION = "Writes a Stable Diffusion prompt that describes the image."

    def run(self, image, interrogator, mode, max_flavors, caption="", detail_pass=False):
        detail = bool(detail_pass) and mode in detail_modes()
        prompts = self._prompts(image, interrogator, mode, max_flavors, caption, detail)
        return {"ui": {"text": [prompt_text(p) for p in prompts]},
                "result": ([p.text for p in prompts], [p.caption for p in prompts],
                           ["\n".join(p.warnings) for p in prompts])}


class StyleOnlyPrompt(_PromptNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                             "max_flavors": max_flavors_input("style")}}

    OUTPUT_TOOLTIPS = ("One style prompt per image: medium, artist, movement and look, without the subject.",)
    DESCRIPTION = "Describes the image's style (medium, artist, movement, look) without its subject."

    def run(self, image, interrogator, max_flavors):
        prompts = [p.text for p in self._prompts(image, interrogator, "style", max_flavors)]
        return {"ui": {"text": prompts}, "result": (prompts,)}


class NegativePrompt(_PromptNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                             "max_flavors": max_flavors_input("negative")}}

    OUTPUT_TOOLTIPS = ("One negative prompt per image: the terms least like it, for the negative encoder.",)
    DESCRIPTION = "Writes a negative prompt: the terms that describe the image least."

    def run(self, image, interrogator, max_flavors):
        prompts = [p.text for p in self._prompts(image, interrogator, "negative", max_flavors)]
        return {"ui": {"text": prompts}, "result": (prompts,)}


class _EncoderPromptsNode:
    """One output per text encoder input of a model family, each within that encoder's token limit."""

    TARGET = None  # a row of core.encoder_prompts.TARGETS
    OUTPUT_NODE = True
    CATEGORY = CATEGORY
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                         "mode": (captioned_modes(), {"default": "best", "tooltip": "; ".join(
                             f"{m}: {MODES[m].description}" for m in captioned_modes())}),
                         "max_flavors": max_flavors_input(*captioned_modes()),
                         **cls.EXTRA_INPUTS},
            "optional": {"caption": ("STRING", {"default": "", "multiline": True, "tooltip": (
                "Your own caption (the subject). When set, the caption model is skipped.")})},
        }

    EXTRA_INPUTS = {}

    @classmethod
    def declare(cls, target):
        cls.TARGET = target
        cls.RETURN_TYPES = ("STRING",) * (len(target.outputs) + 1)
        cls.RETURN_NAMES = (*target.names, "caption")
        cls.OUTPUT_IS_LIST = (True,) * (len(target.outputs) + 1)
        cls.OUTPUT_TOOLTIPS = (*[o.tooltip for o in target.outputs], "The whole caption of each image.")
        cls.DESCRIPTION = (f"Writes one prompt per text encoder of {target.label} ({target.encode_node}), each cut "
                           f"to what that encoder reads: whole terms only, a long caption shortened at a phrase.")
        return cls

    def run(self, image, interrogator, mode, max_flavors, caption="", **extra):
        texts, captions, warnings = runtime().encoder_prompts(interrogator, image, self.TARGET.name, mode, caption,
                                                              max_flavors, self.contents(**extra))
        shown = ["\n".join([*(f"{name}: {texts[name][i]}" for name in self.TARGET.names), *warnings[i]])
                 for i in range(len(captions))]
        return {"ui": {"text": shown}, "result": (*[texts[name] for name in self.TARGET.names], captions)}

    def contents(self, **extra):
        return None


class PromptsForSDXL(_EncoderPromptsNode):
    EXTRA_INPUTS = {"text_l": (["same as text_g", "style terms"], {"default": "same as text_g", "tooltip": (
        "What CLIP-L reads: the same prompt as CLIP-G, or only the style terms (the caption stays on text_g).")})}

    def contents(self, text_l="same as text_g"):
        return {"text_l": "terms"} if text_l == "style terms" else None


class PromptsForSD3(_EncoderPromptsNode):
    pass


class PromptsForFlux(_EncoderPromptsNode):
    pass


PromptsForSDXL.declare(TARGETS["sdxl"])
PromptsForSD3.declare(TARGETS["sd3"])
PromptsForFlux.declare(TARGETS["flux"])


class AnalyzeImage:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                             "top": ("INT", {"default": 5, "min": 1, "max": 50,
                                             "tooltip": "How many terms to show per list."})}}

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("text", "json")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("Per image: the CLIP weights in use, then each term list's best terms with their CLIP scores, "
                       "the chance CLIP gives the best term among its list, for lists every image has a value of "
                       "(mediums) how well that term fits the image (1: exactly), and the lists with no good term.",
                       'The scores as JSON: {"list": [{"term": ..., "score": ...}]}.')
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Shows which terms of each list CLIP finds closest to the image, with their scores and how "
                   "confident it is of each list's best term.")

    def run(self, image, interrogator, top):
        results, confidences = runtime().analyze(interrogator, image, top=top)
        backbone = runtime().backbone(interrogator)
        texts = [f"{backbone}\n{text}" for text in analysis_text(results, confidences)]
        return {"ui": {"text": texts}, "result": (texts, analysis_json(results))}


class CaptionFolder:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "folder": ("STRING", {"default": "", "tooltip": (
                    "The dataset folder (a full path). Each image gets a .txt caption file of the same name.")}),
                "interrogator": INTERROGATOR_INPUT,
                "mode": (list(MODES), {"default": "best", "tooltip": "; ".join(
                    f"{m.name}: {m.description}" for m in MODES.values())}),
                "max_flavors": max_flavors_input(*MODES),
            },
            "optional": {
                "trigger_word": ("STRING", {"default": "", "tooltip": "Written first in every caption, e.g. ohwx."}),
                "prefix": ("STRING", {"default": "", "tooltip": "Written after the trigger word."}),
                "suffix": ("STRING", {"default": "", "tooltip": "Written at the end of every caption."}),
                "exclude": ("STRING", {"default": "", "tooltip": (
                    "Comma-separated words or phrases that never appear in a caption, in any form (added to the "
                    "interrogator's ban).")}),
                "replace": ("STRING", {"default": "", "multiline": True, "tooltip": (
                    "One 'old = new' per line: whole words, any case, replaced in the caption and the terms.")}),
                "artists": ("BOOLEAN", {"default": True, "label_on": "on", "label_off": "off",
                                        "tooltip": "Off: captions never name an artist."}),
                "weighted": ("BOOLEAN", {"default": False, "tooltip": (
                    "Write (term:1.15) weights from each term's CLIP score: the image's weakest term plain, its "
                    "strongest 1.3.")}),
                "overwrite": ("BOOLEAN", {"default": False, "tooltip": (
                    "Off: images that already have a caption file are skipped (a stopped run resumes). On: "
                    "caption files are replaced, your own included.")}),
                "recursive": ("BOOLEAN", {"default": False, "tooltip": "Also caption images in subfolders."}),
                "output_folder": ("STRING", {"default": "", "tooltip": (
                    "Empty: captions beside the images. A full path: captions there, mirroring the folder tree.")}),
                "jsonl": ("BOOLEAN", {"default": False, "tooltip": (
                    "Also write captions.jsonl (in the output folder, else the dataset folder): per image the "
                    "prompt, caption, terms with lists, roles and CLIP scores, models and settings.")}),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("summary",)
    OUTPUT_NODE = True
    OUTPUT_TOOLTIPS = ("How many images were captioned, skipped and failed, and why each failure happened.",)
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = "Writes a caption file beside every image of a dataset folder, for LoRA or fine-tune training."

    def run(self, folder, interrogator, mode, max_flavors, trigger_word="", prefix="", suffix="", exclude="",
            replace="", artists=True, weighted=False, overwrite=False, recursive=False, output_folder="",
            jsonl=False):
        items, output = dataset_items(folder, recursive, output_folder)
        options = DatasetOptions(
            mode=mode, max_terms=max_flavors or None, trigger=trigger_word.strip(), prefix=prefix.strip(),
            suffix=suffix.strip(), exclude=tuple(t.strip() for t in exclude.split(",") if t.strip()),
            replace=replace_pairs(replace), artists=bool(artists), weighted=bool(weighted),
            overwrite=bool(overwrite), output=output, jsonl=default_jsonl([folder], output) if jsonl else None)
        text = runtime().caption_folder(interrogator, items, options).text()
        return {"ui": {"text": [text]}, "result": (text,)}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run: the folder's files may have changed


class UnloadInterrogator:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {"free_ram": ("BOOLEAN", {"default": False, "label_on": "vram and ram",
                                                  "label_off": "vram only", "tooltip": (
                "vram only: move the interrogator's models off the GPU (they come back on next use). vram and ram: "
                "also forget them, freeing system memory.")})},
            "optional": {"text": ("STRING", {"forceInput": True, "tooltip": (
                "Connect a prompt here so the unload runs after it is written; passed through unchanged.")})},
        }

    INPUT_IS_LIST = True
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("text",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_NODE = True
    FUNCTION = "unload"
    CATEGORY = CATEGORY
    DESCRIPTION = "Frees the memory the CLIP Interrogator models use."

    def unload(self, free_ram, text=None):
        count = runtime().unload(free_ram=bool(free_ram[0]))
        message = f"unloaded {count} model(s)" + (" from VRAM and RAM" if free_ram[0] else " from VRAM")
        return {"ui": {"text": [message]}, "result": (list(text or []),)}

    @classmethod
    def IS_CHANGED(cls, **kwargs):
        return float("nan")  # always run: the models may have come back since


NODE_CLASS_MAPPINGS = {
    "ClipInterrogatorLoad": LoadInterrogator,
    "ClipInterrogatorFromComfyModels": InterrogatorFromComfyModels,
    "ClipInterrogatorInterrogate": InterrogateImage,
    "ClipInterrogatorStylePrompt": StyleOnlyPrompt,
    "ClipInterrogatorNegativePrompt": NegativePrompt,
    "ClipInterrogatorAnalyze": AnalyzeImage,
    "ClipInterrogatorUnload": UnloadInterrogator,
    "ClipInterrogatorPromptsSDXL": PromptsForSDXL,
    "ClipInterrogatorPromptsSD3": PromptsForSD3,
    "ClipInterrogatorPromptsFlux": PromptsForFlux,
    "ClipInterrogatorCaptionFolder": CaptionFolder,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ClipInterrogatorLoad": "Load Interrogator",
    "ClipInterrogatorFromComfyModels": "Interrogator from ComfyUI Models",
    "ClipInterrogatorInterrogate": "Interrogate Image",
    "ClipInterrogatorStylePrompt": "Style-Only Prompt",
    "ClipInterrogatorNegativePrompt": "Negative Prompt",
    "ClipInterrogatorAnalyze": "Analyze Image",
    "ClipInterrogatorUnload": "Unload Interrogator",
    "ClipInterrogatorPromptsSDXL": "Prompts for SDXL",
    "ClipInterrogatorPromptsSD3": "Prompts for SD3",
    "ClipInterrogatorPromptsFlux": "Prompts for Flux",
    "ClipInterrogatorCaptionFolder": "Caption Folder",
}
