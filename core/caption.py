"""Caption models: describe the image's content in words.

Each model family is one row of ``FAMILIES``: the transformers class that loads it, the oldest transformers that has
that class, its dtype policy, how its inputs are built (images only, a Florence-2 task, a chat instruction) and how
its output is decoded. A family is found from the ``model_type`` in the model's ``config.json``; any model type that
transformers loads natively as image-text-to-text (SmolVLM, Qwen2.5-VL, Qwen3-VL, LLaVA-family models such as
JoyCaption) falls to the generic vision-language row. Remote code is never run.
"""

import os
import re
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch

from . import hub
from .devices import parse_device
from .errors import ModelLoadError, ModelNotFoundError, first_line, out_of_memory
from .files import check_safetensors, get, read_json
from .progress import ProgressHook, Steps

CAPTION_MODELS = {
    "blip-base": "Salesforce/blip-image-captioning-base",
    "blip-large": "Salesforce/blip-image-captioning-large",
    "blip2-2.7b": "Salesforce/blip2-opt-2.7b",
    "blip2-flan-t5-xl": "Salesforce/blip2-flan-t5-xl",
    "git-large-coco": "microsoft/git-large-coco",
    "florence-2-base": "florence-community/Florence-2-base",
    "florence-2-large": "florence-community/Florence-2-large",
    "smolvlm-256m": "HuggingFaceTB/SmolVLM-256M-Instruct",
    "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct",
    "joycaption-beta-one": "fancyfeast/llama-joycaption-beta-one-hf-llava",
}
DEFAULT_CAPTION_MODEL = "blip-large"
NO_CAPTION = "none"

DETAILS = ("short", "detailed", "more detailed")
FLORENCE_TASKS = {"short": "<CAPTION>", "detailed": "<DETAILED_CAPTION>", "more detailed": "<MORE_DETAILED_CAPTION>"}
# CLIP adds the style terms, so the caption only has to say what is in the picture
INSTRUCTIONS = {
    "short": "Describe the main subject of this image in one short sentence. Do not mention style, medium, "
             "lighting or colors.",
    "detailed": "Describe the subject and the scene of this image in two sentences. Do not mention style, medium "
                "or artist.",
    "more detailed": "Describe everything shown in this image in one paragraph. Do not mention style, medium or "
                     "artist.",
}
MAX_IMAGE_SIDE = 1024  # vision-language models: bounds the image tokens of a huge photo


@dataclass(frozen=True)
class CaptionOptions:
    """How much to say, per call: the Florence-2 task or the default instruction (``detail``), a vision-language
    model's own ``instruction`` ("" for the default), and the most tokens to generate (0: the family's default)."""

    detail: str = "short"
    instruction: str = ""
    max_new_tokens: int = 0

    def __post_init__(self):
        if self.detail not in DETAILS:
            raise ModelLoadError(f"unknown caption detail {self.detail!r}; use one of {', '.join(DETAILS)}.")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or not 0 <= self.max_new_tokens <= 2048:
            raise ModelLoadError(f"caption max tokens must be a whole number from 0 to 2048, got "
                                 f"{self.max_new_tokens!r}.")


# -- inputs and outputs of each kind of family ---------------------------------------------------------------------
def _images_only(processor, images, options: CaptionOptions):
    return processor(images=list(images), return_tensors="pt")


def _florence_task(processor, images, options: CaptionOptions):
    task = FLORENCE_TASKS[options.detail]
    return processor(images=list(images), text=[task] * len(images), return_tensors="pt", padding=True)


def _chat(processor, images, options: CaptionOptions):
    if not getattr(processor, "chat_template", None):
        raise ModelLoadError("this vision-language model has no chat template (chat_template.json or "
                             "chat_template.jinja in its folder), so it cannot be given an instruction.")
    instruction = options.instruction.strip() or INSTRUCTIONS[options.detail]
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    # a flat list, one image per prompt: what every processor takes, old (4.46) and new
    images = [_bounded(image) for image in images]
    return processor(images=images, text=[prompt] * len(images), return_tensors="pt", padding=True)


def _bounded(image):
    scale = MAX_IMAGE_SIDE / max(image.size)
    if scale >= 1:
        return image
    from PIL import Image

    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                        Image.Resampling.BICUBIC)


def _decode_all(processor, tokens, inputs) -> List[str]:
    return [t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True)]


def _decode_sentences(processor, tokens, inputs) -> List[str]:
    """Generated text as one line: decoder-only models echo their prompt first, which is cut off."""
    prompt = inputs.get("input_ids")
    if prompt is not None and tokens.shape[1] > prompt.shape[1] and torch.equal(
            tokens[:, :prompt.shape[1]].cpu(), prompt.cpu()):
        tokens = tokens[:, prompt.shape[1]:]
    return [_one_line(t) for t in processor.batch_decode(tokens, skip_special_tokens=True)]


def _one_line(text: str) -> str:
    text = re.sub(r"\s+", " ", text).strip().strip("\"'“”").strip()
    return text[:-1] if text.endswith(".") and not text.endswith("..") else text


@dataclass(frozen=True)
class Family:
    name: str
    model_types: Tuple[str, ...]  # config.json model_type values; () for the generic row
    model_class: str  # attribute of ``transformers``
    since: str  # oldest transformers version with model_class (the requirement's floor for the old families)
    inputs: Callable = _images_only
    decode: Callable = _decode_all
    max_new_tokens: int = 32
    generate: Tuple[Tuple[str, object], ...] = ()  # extra generate() arguments
    float32: bool = False  # run in float32 whatever precision was asked for
    cast_inputs: bool = True  # cast floating inputs (pixels) to the model's dtype
    left_padding: bool = False  # decoder-only: batched prompts are padded on the left
    batch_size: int = 8
    # the family's repositories that carry their own code (config.json "auto_map") are in a format the native class
    # does not read: what to use instead
    remote_code_fix: str = ""


_DETERMINISTIC = (("do_sample", False), ("temperature", None), ("top_p", None), ("top_k", None))

FAMILIES: Tuple[Family, ...] = (
    Family("BLIP", ("blip",), "BlipForConditionalGeneration", "4.40"),
    Family("BLIP-2", ("blip-2",), "Blip2ForConditionalGeneration", "4.40"),
    # GIT runs in float32 with float32 pixels, as the reference keeps it
    Family("GIT", ("git",), "AutoModelForCausalLM", "4.40", float32=True, cast_inputs=False),
    Family("Florence-2", ("florence2",), "Florence2ForConditionalGeneration", "4.56", inputs=_florence_task,
           decode=_decode_sentences, max_new_tokens=256, generate=(("num_beams", 3), *_DETERMINISTIC),
           remote_code_fix="Use the converted weights (florence-community/Florence-2-base or -large), or convert "
                           "these with transformers' src/transformers/models/florence2/"
                           "convert_florence2_original_pytorch_to_hf.py."),
    Family("vision-language model", (), "AutoModelForImageTextToText", "4.46", inputs=_chat,
           decode=_decode_sentences, max_new_tokens=96, generate=(("num_beams", 1), *_DETERMINISTIC),
           left_padding=True, batch_size=4),
)
GENERIC = FAMILIES[-1]

# Vision-language model types many users have, with the first transformers that loads them natively; any other type
# transformers maps to image-text-to-text works too, this table only names the version to upgrade to.
VLM_SINCE = {"llava": "4.46", "idefics3": "4.46", "qwen2_vl": "4.46", "qwen2_5_vl": "4.49", "smolvlm": "4.50",
             "gemma3": "4.50", "qwen3_vl": "4.57"}


def family_of(model_type: Optional[str]) -> Family:
    for family in FAMILIES:
        if model_type in family.model_types:
            return family
    return GENERIC


class Captioner:
    """A captioning model, its processor and its family."""

    def __init__(self, model, processor, name: str, max_new_tokens: Optional[int] = None,
                 batch_size: Optional[int] = None, family: Optional[Family] = None):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        self.family = family or family_of(model.config.model_type)
        self.max_new_tokens = max_new_tokens or self.family.max_new_tokens
        self.batch_size = batch_size or self.family.batch_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def using(self, options: Optional[CaptionOptions]) -> "BoundCaptioner":
        """This captioner with per-call options, for code that calls ``caption(images, progress)``."""
        return BoundCaptioner(self, options or CaptionOptions())

    @torch.no_grad()
    def caption(self, images, hook: Optional[ProgressHook] = None,
                options: Optional[CaptionOptions] = None) -> List[str]:
        """One caption per PIL image, generated in batches (one ``generate`` call per batch)."""
        options = options or CaptionOptions()
        family = self.family
        captions: List[str] = []
        steps = Steps(hook, -(-len(images) // self.batch_size), "Captioning")
        dtype = next(self.model.parameters()).dtype
        polling = _polling(steps.tick)
        generate = dict(family.generate, max_new_tokens=options.max_new_tokens or self.max_new_tokens)
        for start in range(0, len(images), self.batch_size):
            inputs = family.inputs(self.processor, images[start:start + self.batch_size], options).to(self.device)
            if family.cast_inputs:
                inputs = inputs.to(dtype)
            tokens = self.model.generate(**inputs, **generate, stopping_criteria=polling)
            captions.extend(family.decode(self.processor, tokens, inputs))
            steps.advance()
        return captions


def _polling(poll):
    """A stopping criterion that never stops generation but calls ``poll`` after every generated token: a batch
    of captions takes seconds on a CPU, and this is how a cancel reaches the middle of it."""
    from transformers import StoppingCriteria, StoppingCriteriaList

    class Poll(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            poll()
            return False  # "not done" for every sequence, in the form every transformers version accepts

    return StoppingCriteriaList([Poll()])


@dataclass(frozen=True)
class BoundCaptioner:
    captioner: Captioner
    options: CaptionOptions

    @property
    def name(self) -> str:
        return self.captioner.name

    def caption(self, images, hook: Optional[ProgressHook] = None) -> List[str]:
        return self.captioner.caption(images, hook, self.options)


def caption_model_folder(name: str, models_dir: Optional[str]) -> Optional[str]:
    """The folder a caption model is looked for in: ``<models_dir>/<repo name>`` or ``<models_dir>/<name>``."""
    if not models_dir:
        return None
    hub_id = CAPTION_MODELS.get(name, name)
    for candidate in (hub_id.split("/")[-1], name):
        folder = os.path.join(models_dir, candidate)
        if os.path.isfile(os.path.join(folder, "config.json")):
            return folder
    return os.path.join(models_dir, hub_id.split("/")[-1])


# -- finding the family and checking the installed transformers ----------------------------------------------------
def _config(source: str, name: str, models_dir: Optional[str]) -> dict:
    """The model's config.json, its fields checked: from its folder, else the Hugging Face cache, else the hub if it
    answers at once (see :mod:`.hub`)."""
    if os.path.isdir(source):
        path = os.path.join(source, "config.json")
        if not os.path.isfile(path):
            raise ModelLoadError(f"caption model folder {source} has no config.json; copy every file of the model's "
                                 f"Hugging Face repository (config.json, model.safetensors, preprocessor and "
                                 f"tokenizer files) into it.")
    else:
        try:
            path = hub.download(source, "config.json")
        except hub.HubError as error:
            raise _not_found(name, source, models_dir, error) from None
    raw = read_json(path, ModelLoadError, "a transformers model config (the config.json of the model's repo)")
    for key in ("text_config", "vision_config", "qformer_config"):
        get(raw, key, dict, path, ModelLoadError, default=None)
    get(raw, "model_type", str, path, ModelLoadError, default=None)
    return raw


def installed_transformers() -> str:
    import transformers

    return transformers.__version__


def _version() -> Tuple[int, int]:
    return tuple(int(p) for p in re.findall(r"\d+", installed_transformers())[:2])


def _older_than(version: str) -> bool:
    return _version() < tuple(int(p) for p in version.split("."))


def _needs(what: str, version: str) -> ModelLoadError:
    return ModelLoadError(f"{what} needs transformers >= {version}, but {installed_transformers()} is installed. "
                          f"Upgrade it in the Python that runs ComfyUI: python -m pip install -U "
                          f"\"transformers>={version}\".")


def _transformers_class(name: str):
    import transformers

    return getattr(transformers, name, None)


def _model_class(family: Family, config: dict, source: str):
    model_type = config.get("model_type")
    if family.remote_code_fix and "auto_map" in config:
        raise ModelLoadError(f"{source} is a {family.name} model in its original remote-code format, which this "
                             f"pack never runs. {family.remote_code_fix}")
    if family is not GENERIC:
        model_class = _transformers_class(family.model_class)
        if model_class is None:
            raise _needs(f"{family.name} ({source})", family.since)
        return model_class
    model_class = _transformers_class(family.model_class)
    if model_class is None:
        raise _needs(f"a vision-language caption model ({source})", VLM_SINCE.get(model_type, family.since))
    from transformers.models.auto import modeling_auto

    if model_type not in modeling_auto.MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES:
        if model_type in VLM_SINCE and _older_than(VLM_SINCE[model_type]):
            raise _needs(f"{source} (model type {model_type!r})", VLM_SINCE[model_type])
        raise ModelLoadError(
            f"{source} is a {model_type!r} model, which transformers {installed_transformers()} does not load as an "
            f"image-text-to-text model without running the repository's own code (never done here). Caption models "
            f"are BLIP, BLIP-2, GIT, Florence-2 or a vision-language model transformers supports natively.")
    return model_class


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; ComfyUI installs have both kinds."""
    return {"dtype": dtype} if not _older_than("4.56") else {"torch_dtype": dtype}


def _source(name: str, models_dir: Optional[str]) -> str:
    if os.path.isdir(name):
        return name
    if name in CAPTION_MODELS or "/" in name:
        local = caption_model_folder(name, models_dir)
        return local if local and os.path.isfile(os.path.join(local, "config.json")) else CAPTION_MODELS.get(name, name)
    raise ModelNotFoundError(f"unknown caption model {name!r}; use one of {', '.join(CAPTION_MODELS)}, "
                             f"'{NO_CAPTION}', a Hugging Face id or a local folder.")


def _not_found(name: str, source: str, models_dir: Optional[str], reason) -> ModelNotFoundError:
    folder = caption_model_folder(name, models_dir) or f"<models>/{source.split('/')[-1]}"
    return ModelNotFoundError(
        f"caption model {name} ({source}) is not in {folder} and could not be downloaded ({reason}). Put the files of "
        f"https://huggingface.co/{source} (config.json, model.safetensors, preprocessor and tokenizer files) "
        f"in {folder}, allow downloads (unset HF_HUB_OFFLINE), or use caption model '{NO_CAPTION}'.")


def load_captioner(name: Optional[str] = DEFAULT_CAPTION_MODEL, *, models_dir: Optional[str] = None, device="cpu",
                   dtype: torch.dtype = torch.float32, max_new_tokens: Optional[int] = None) -> Optional[Captioner]:
    """Load a caption model by short name (see CAPTION_MODELS), hub id or local folder; ``none`` gives None.

    A local folder (``<models_dir>/blip-image-captioning-large``) is used first, then the Hugging Face cache or a
    download.
    """
    if not name or name == NO_CAPTION:
        return None
    if not isinstance(name, str):
        raise ModelNotFoundError(f"a caption model is a name or a folder, not {type(name).__name__}.")
    device = parse_device(device)
    source = _source(name, models_dir)
    config = _config(source, name, models_dir)
    family = family_of(config.get("model_type"))
    model_class = _model_class(family, config, source)
    dtype = torch.float32 if family.float32 else dtype
    if os.path.isdir(source):
        model, processor = _from_folder(model_class, source, dtype)
    else:
        model, processor = _from_hub(model_class, source, dtype, name, models_dir)
    if family.left_padding and getattr(processor, "tokenizer", None) is not None:
        processor.tokenizer.padding_side = "left"
    return Captioner(model.to(device), processor, os.path.basename(os.path.normpath(name)), max_new_tokens,
                     family=family)


def _load(model_class, source: str, dtype: torch.dtype, **options):
    """Model and processor; safetensors weights only (``use_safetensors``: a pickled-only model is refused)."""
    from transformers import AutoProcessor

    model = model_class.from_pretrained(source, use_safetensors=True, **_dtype_kwarg(dtype), **options)
    return model, AutoProcessor.from_pretrained(source, **options)


def _from_folder(model_class, folder: str, dtype: torch.dtype):
    for weights in sorted(f for f in os.listdir(folder) if f.endswith(".safetensors")):
        check_safetensors(os.path.join(folder, weights), ModelLoadError)
    try:
        return _load(model_class, folder, dtype)
    except Exception as error:  # transformers reports a bad folder with many types (OSError, ValueError, ...)
        if out_of_memory(error):
            raise
        raise ModelLoadError(f"caption model folder {folder} is incomplete or damaged: {first_line(error)}") \
            from error


def _from_hub(model_class, repo: str, dtype: torch.dtype, name: str, models_dir: Optional[str]):
    """From the Hugging Face cache when it has the model (no network), else downloaded if the hub answers at once."""
    if hub.cached_file(repo, "config.json"):
        try:
            return _load(model_class, repo, dtype, local_files_only=True)
        except OSError:
            pass  # only part of it is cached: download the rest
    reason = hub.unreachable()
    if reason is None:
        try:
            return _load(model_class, repo, dtype)
        except OSError as error:
            reason = first_line(error)
    raise _not_found(name, repo, models_dir, reason)
