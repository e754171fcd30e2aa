"""Caption models (BLIP, BLIP-2, GIT through transformers): describe the image's content in words."""

import os
from typing import List, Optional

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
}
DEFAULT_CAPTION_MODEL = "blip-large"
NO_CAPTION = "none"


class Captioner:
    """A captioning model and its processor."""

    def __init__(self, model, processor, name: str, max_new_tokens: int = 32, batch_size: int = 8):
        self.model = model.eval().requires_grad_(False)
        self.processor = processor
        self.name = name
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size
        # GIT is kept in float32 as the reference does; its pixel inputs stay float32 too
        self.cast_inputs = model.config.model_type != "git"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def caption(self, images, hook: Optional[ProgressHook] = None) -> List[str]:
        """One caption per PIL image, generated in batches (one ``generate`` call per batch)."""
        captions: List[str] = []
        steps = Steps(hook, -(-len(images) // self.batch_size), "Captioning")
        dtype = next(self.model.parameters()).dtype
        polling = _polling(steps.tick)
        for start in range(0, len(images), self.batch_size):
            inputs = self.processor(images=list(images[start:start + self.batch_size]), return_tensors="pt")
            inputs = inputs.to(self.device)
            if self.cast_inputs:
                inputs = inputs.to(dtype)
            tokens = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, stopping_criteria=polling)
            captions.extend(t.strip() for t in self.processor.batch_decode(tokens, skip_special_tokens=True))
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


def _model_class(source: str, name: str):
    import transformers

    model_type = _model_type(source) or ("git" if name.startswith("git-") else
                                         "blip-2" if name.startswith("blip2-") else "blip")
    classes = {"blip": "BlipForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration",
               "git": "AutoModelForCausalLM"}
    if model_type not in classes:
        raise ModelLoadError(f"{source} is a {model_type!r} model; caption models must be BLIP, BLIP-2 or GIT.")
    return getattr(transformers, classes[model_type])


def _model_type(source: str) -> Optional[str]:
    config = os.path.join(source, "config.json")
    if not os.path.isdir(source):
        return None
    if not os.path.isfile(config):
        raise ModelLoadError(f"caption model folder {source} has no config.json; copy every file of the model's "
                             f"Hugging Face repository (config.json, model.safetensors, preprocessor and tokenizer "
                             f"files) into it.")
    raw = read_json(config, ModelLoadError, "a transformers model config (the config.json of the model's repo)")
    for key in ("text_config", "vision_config", "qformer_config"):
        get(raw, key, dict, config, ModelLoadError, default=None)
    return get(raw, "model_type", str, config, ModelLoadError, default=None)


def _dtype_kwarg(dtype: torch.dtype) -> dict:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; ComfyUI installs have both kinds."""
    import transformers

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def load_captioner(name: Optional[str] = DEFAULT_CAPTION_MODEL, *, models_dir: Optional[str] = None, device="cpu",
                   dtype: torch.dtype = torch.float32, max_new_tokens: int = 32) -> Optional[Captioner]:
    """Load a caption model by short name (see CAPTION_MODELS), hub id or local folder; ``none`` gives None.

    A local folder (``<models_dir>/blip-image-captioning-large``) is used first, then the Hugging Face cache or a
    download.
    """
    if not name or name == NO_CAPTION:
        return None
    if not isinstance(name, str):
        raise ModelNotFoundError(f"a caption model is a name or a folder, not {type(name).__name__}.")
    device = parse_device(device)
    if os.path.isdir(name):
        source = name
    elif name in CAPTION_MODELS or "/" in name:
        local = caption_model_folder(name, models_dir)
        source = local if local and os.path.isfile(os.path.join(local, "config.json")) else CAPTION_MODELS.get(name, name)
    else:
        raise ModelNotFoundError(f"unknown caption model {name!r}; use one of {', '.join(CAPTION_MODELS)}, "
                                 f"'{NO_CAPTION}', a Hugging Face id or a local folder.")
    model_class = _model_class(source, name)
    model_dtype = torch.float32 if model_class.__name__ == "AutoModelForCausalLM" else dtype
    if os.path.isdir(source):
        model, processor = _from_folder(model_class, source, model_dtype)
    else:
        model, processor = _from_hub(model_class, source, model_dtype, name, models_dir)
    return Captioner(model.to(device), processor, os.path.basename(os.path.normpath(name)), max_new_tokens)


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
    folder = caption_model_folder(name, models_dir) or f"<models>/{repo.split('/')[-1]}"
    raise ModelNotFoundError(
        f"caption model {name} ({repo}) is not in {folder} and could not be downloaded ({reason}). Put the files "
        f"of https://huggingface.co/{repo} (config.json, model.safetensors, preprocessor and tokenizer files) in "
        f"{folder}, allow downloads (unset HF_HUB_OFFLINE), or use caption model '{NO_CAPTION}'.")
