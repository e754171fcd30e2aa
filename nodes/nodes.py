"""The pack's nodes: thin declarations over :mod:`.runtime`, in the style of ComfyUI's comfy_extras/nodes_*.py."""

from ..core import DEFAULT_CLIP, MODES
from ..core.dataset import DatasetOptions, default_jsonl
from .display import analysis_json, analysis_text
from .model_files import CAPTION_PRESETS
from .runtime import DEVICES, PRECISIONS, VOCABULARIES, InterrogatorSpec, dataset_items, replace_pairs, runtime

CATEGORY = "CLIP Interrogator"

IMAGE_INPUT = ("IMAGE", {"tooltip": "The image(s) to describe. A batch of N images gives N prompts."})
INTERROGATOR_INPUT = ("INTERROGATOR", {"tooltip": "The models to use, from a Load Interrogator node."})


def captioned_modes():
    return [m.name for m in MODES.values() if m.captioned]


def max_flavors_input(*modes: str):
    defaults = ", ".join(f"{MODES[m].max_terms} for {m}" for m in modes)
    return ("INT", {"default": 0, "min": 0, "max": 128, "step": 1,
                    "tooltip": f"Most descriptive terms to add; 0 uses the mode's default ({defaults})."})


class LoadInterrogator:
    @classmethod
    def INPUT_TYPES(cls):
        files = runtime().files
        return {
            "required": {
                "clip_model": (files.clip_choices(), {"default": DEFAULT_CLIP, "tooltip": (
                    "CLIP model that ranks the terms. Match your checkpoint: ViT-L-14/openai for SD 1.x, ViT-H-14 for "
                    "SD 2.x, ViT-bigG-14 for SDXL. Local .safetensors files in models/clip_interrogator are listed "
                    "too (a custom architecture needs a .json config beside the file).")}),
                "caption_model": (files.caption_choices(), {"default": CAPTION_PRESETS[0], "tooltip": (
                    "Model that writes the caption (the subject) the prompt starts with; 'none' for prompts without "
                    "a caption. Local model folders in models/clip_interrogator are listed too.")}),
                "precision": (list(PRECISIONS), {"default": "auto", "tooltip": (
                    "Weight precision. auto follows ComfyUI: fp16/bf16 on a GPU, fp32 on the CPU.")}),
                "device": (list(DEVICES), {"default": "auto", "tooltip": (
                    "auto: the GPU ComfyUI uses (CPU under --cpu or --novram); cpu: always the CPU, which keeps "
                    "the GPU free for diffusion.")}),
            },
            "optional": {
                "vocabulary": (list(VOCABULARIES), {"default": "builtin", "tooltip": (
                    "Term lists to pick from: this pack's own lists, or 'reference' (the lists of the installed "
                    "clip-interrogator package). .txt files in models/clip_interrogator/vocab are added to either.")}),
                "artists": ("BOOLEAN", {"default": True, "label_on": "on", "label_off": "off",
                                        "tooltip": "Off: prompts never name an artist."}),
                "ban": ("STRING", {"default": "", "multiline": False, "tooltip": (
                    "Comma-separated words or phrases that must never appear in an output, in any form: 'by' "
                    "removes every 'by <artist>' term, and a banned word is cut out of the caption too.")}),
            },
        }

    RETURN_TYPES = ("INTERROGATOR",)
    RETURN_NAMES = ("interrogator",)
    OUTPUT_TOOLTIPS = ("A handle to the models: they load on first use, once, shared by every node.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = "Chooses the CLIP and caption models for the interrogation nodes. Loads nothing until they run."

    def load(self, clip_model, caption_model, precision, device, vocabulary="builtin", artists=True, ban=""):
        banned = tuple(sorted({b.strip() for b in ban.split(",") if b.strip()}))
        spec = InterrogatorSpec(clip_model, caption_model, precision, device, vocabulary, bool(artists), banned)
        runtime().validate(spec)
        return (spec,)


class _PromptNode:
    """Shared by the nodes that write prompts: one prompt per image, shown on the node after a run."""

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("prompt",)
    OUTPUT_IS_LIST = (True,)
    OUTPUT_NODE = True  # runs (and shows its prompt) even before anything is connected
    CATEGORY = CATEGORY
    FUNCTION = "run"

    def _prompts(self, image, interrogator, mode, max_flavors, caption=None):
        return runtime().run(interrogator, image, mode, caption=caption, max_terms=max_flavors)


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
            },
        }

    RETURN_TYPES = ("STRING", "STRING")
    RETURN_NAMES = ("prompt", "caption")
    OUTPUT_IS_LIST = (True, True)
    OUTPUT_TOOLTIPS = ("One prompt per image, for CLIPTextEncode.", "The caption each prompt starts with.")
    DESCRIPTION = "Writes a Stable Diffusion prompt that describes the image."

    def run(self, image, interrogator, mode, max_flavors, caption=""):
        prompts, captions = self._prompts(image, interrogator, mode, max_flavors, caption)
        return {"ui": {"text": prompts}, "result": (prompts, captions)}


class StyleOnlyPrompt(_PromptNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                             "max_flavors": max_flavors_input("style")}}

    OUTPUT_TOOLTIPS = ("One style prompt per image: medium, artist, movement and look, without the subject.",)
    DESCRIPTION = "Describes the image's style (medium, artist, movement, look) without its subject."

    def run(self, image, interrogator, max_flavors):
        prompts, _ = self._prompts(image, interrogator, "style", max_flavors)
        return {"ui": {"text": prompts}, "result": (prompts,)}


class NegativePrompt(_PromptNode):
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"image": IMAGE_INPUT, "interrogator": INTERROGATOR_INPUT,
                             "max_flavors": max_flavors_input("negative")}}

    OUTPUT_TOOLTIPS = ("One negative prompt per image: the terms least like it, for the negative encoder.",)
    DESCRIPTION = "Writes a negative prompt: the terms that describe the image least."

    def run(self, image, interrogator, max_flavors):
        prompts, _ = self._prompts(image, interrogator, "negative", max_flavors)
        return {"ui": {"text": prompts}, "result": (prompts,)}


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
    OUTPUT_TOOLTIPS = ("Per image, each term list's best terms with their CLIP scores.",
                       'The same as JSON: {"list": [{"term": ..., "score": ...}]}.')
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = "Shows which terms of each list CLIP finds closest to the image, with their scores."

    def run(self, image, interrogator, top):
        results = runtime().analyze(interrogator, image, top=top)
        texts = analysis_text(results)
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
    "ClipInterrogatorInterrogate": InterrogateImage,
    "ClipInterrogatorStylePrompt": StyleOnlyPrompt,
    "ClipInterrogatorNegativePrompt": NegativePrompt,
    "ClipInterrogatorAnalyze": AnalyzeImage,
    "ClipInterrogatorUnload": UnloadInterrogator,
    "ClipInterrogatorCaptionFolder": CaptionFolder,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ClipInterrogatorLoad": "Load Interrogator",
    "ClipInterrogatorInterrogate": "Interrogate Image",
    "ClipInterrogatorStylePrompt": "Style-Only Prompt",
    "ClipInterrogatorNegativePrompt": "Negative Prompt",
    "ClipInterrogatorAnalyze": "Analyze Image",
    "ClipInterrogatorUnload": "Unload Interrogator",
    "ClipInterrogatorCaptionFolder": "Caption Folder",
}
