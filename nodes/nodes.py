"""The pack's nodes: thin declarations over :mod:`.runtime`, in the style of ComfyUI's comfy_extras/nodes_*.py."""

from ..core import DEFAULT_CLIP, MODES
from ..core.caption import DETAILS
from ..core.encoder_prompts import TARGETS
from .display import analysis_json, analysis_text
from .model_files import CAPTION_PRESETS
from .comfy_models import TEXT_ENCODERS
from .runtime import DEVICES, PRECISIONS, InterrogatorSpec, runtime

CATEGORY = "CLIP Interrogator"

IMAGE_INPUT = ("IMAGE", {"tooltip": "The image(s) to describe. A batch of N images gives N prompts."})
INTERROGATOR_INPUT = ("INTERROGATOR", {"tooltip": "The models to use, from a Load Interrogator node."})


def captioned_modes():
    return [m.name for m in MODES.values() if m.captioned]


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
            "Comma-separated words or phrases that must never appear in a prompt.")}),
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
    OUTPUT_TOOLTIPS = ("One prompt per image, for CLIPTextEncode.", "The whole caption of each image (its prompt "
                       "starts with it, cut at a phrase when it is too long to leave room for terms).")
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
        texts, captions = runtime().encoder_prompts(interrogator, image, self.TARGET.name, mode, caption,
                                                    max_flavors, self.contents(**extra))
        shown = ["\n".join(f"{name}: {texts[name][i]}" for name in self.TARGET.names) for i in range(len(captions))]
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
    OUTPUT_TOOLTIPS = ("Per image: the CLIP weights in use, then each term list's best terms with their CLIP scores.",
                       'The same as JSON: {"list": [{"term": ..., "score": ...}]}.')
    FUNCTION = "run"
    CATEGORY = CATEGORY
    DESCRIPTION = "Shows which terms of each list CLIP finds closest to the image, with their scores."

    def run(self, image, interrogator, top):
        results = runtime().analyze(interrogator, image, top=top)
        backbone = runtime().backbone(interrogator)
        texts = [f"{backbone}\n{text}" for text in analysis_text(results)]
        return {"ui": {"text": texts}, "result": (texts, analysis_json(results))}


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
}
