"""Loading CLIP models the way users have them: open_clip presets, local safetensors files, custom configs."""

import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Tuple

import torch

from .errors import ModelLoadError, ModelNotFoundError
from .parallel import single_pass
from .tensors import safetensors_file, sidecar_json

PRESETS = {
    "ViT-L-14/openai": "Stable Diffusion 1.x",
    "ViT-H-14/laion2b_s32b_b79k": "Stable Diffusion 2.x",
    "ViT-bigG-14/laion2b_s39b_b160k": "SDXL",
}
DEFAULT_CLIP = "ViT-L-14/openai"

_PRECISION = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


@dataclass
class ClipModel:
    """An open_clip model with its image preprocessing and tokenizer, and a name users recognise."""

    model: torch.nn.Module
    preprocess: Callable
    tokenizer: Callable
    name: str
    key: str = field(default="")  # identifies these exact weights in embedding cache files
    description: str = ""  # which weights these are, for users (defaults to the name)
    notes: Tuple[str, ...] = ()  # warnings users should see next to the description

    def __post_init__(self):
        self.model.eval().requires_grad_(False)
        if not self.key:
            self.key = weights_fingerprint(self.model, self.name)
        self.description = self.description or self.name

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.visual.conv1.weight.dtype if hasattr(self.model.visual, "conv1") \
            else next(self.model.visual.parameters()).dtype

    @torch.no_grad()
    def encode_images(self, images) -> torch.Tensor:
        """Unit-length image features, one row per PIL image.

        One image per forward pass, as the reference does: a batched pass can round differently, and rankings of
        near-tied terms must not depend on how many images came along.
        """
        rows = []
        for image in images:
            pixels = self.preprocess(image).unsqueeze(0).to(self.device, self.dtype)
            with single_pass(self.device):
                features = self.model.encode_image(pixels).float()
            rows.append(features / features.norm(dim=-1, keepdim=True))
        return torch.cat(rows)


def weights_fingerprint(model: torch.nn.Module, name: str) -> str:
    """A short hash of the text tower's output layers: different weights never share an embedding cache."""
    digest = hashlib.sha256(name.encode())
    for attr in ("text_projection", "ln_final"):
        module = getattr(model, attr, None)
        tensors = [module] if isinstance(module, torch.Tensor) else list(module.parameters()) if module else []
        for tensor in tensors:
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def split_name(name: str):
    """'ViT-L-14/openai' -> ('ViT-L-14', 'openai'); a bare arch has no pretrained tag."""
    arch, _, tag = name.partition("/")
    return arch, (tag or None)


def preset_filename(name: str) -> str:
    """Where a named model is looked for in the models folder: 'ViT-L-14/openai' -> 'ViT-L-14-openai.safetensors'."""
    return name.replace("/", "-") + ".safetensors"


def list_local_files(models_dir: Optional[str]) -> List[str]:
    if not models_dir or not os.path.isdir(models_dir):
        return []
    return sorted(f for f in os.listdir(models_dir) if f.endswith(".safetensors"))


def _arch_for_file(path: str):
    """Guess (arch, tag) from a file named '<arch>-<tag>.safetensors' or '<arch>.safetensors'."""
    import open_clip

    stem = os.path.splitext(os.path.basename(path))[0]
    for arch in sorted(open_clip.list_models(), key=len, reverse=True):
        if stem == arch:
            return arch, None
        if stem.startswith(arch + "-"):
            tag = stem[len(arch) + 1:]
            return arch, (tag if open_clip.get_pretrained_cfg(arch, tag) else None)
    return None, None


def load_clip(name: Optional[str] = None, *, weights: Optional[str] = None, config: Optional[str] = None,
              models_dir: Optional[str] = None, device="cpu", dtype: torch.dtype = torch.float32) -> ClipModel:
    """Load a CLIP model.

    - ``name="ViT-L-14/openai"``: the file ``<models_dir>/ViT-L-14-openai.safetensors`` if present, else open_clip's
      download / hub cache.
    - ``weights=FILE`` with ``name="ViT-L-14"`` (or ``"ViT-L-14/openai"`` for that tag's preprocessing), or with
      ``config=JSON`` for a custom architecture; a ``<file>.json`` next to the weights is used as its config, and a
      file named like ``ViT-L-14-openai.safetensors`` needs neither.
    """
    if dtype not in _PRECISION:
        raise ModelLoadError(f"unsupported CLIP dtype {dtype}; use float32, float16 or bfloat16.")
    if weights is None and name and name.endswith(".safetensors"):
        name, weights = None, name
    if weights is not None:
        return _load_file(weights, name, config, device, dtype)
    name = name or DEFAULT_CLIP
    local = os.path.join(models_dir, preset_filename(name)) if models_dir else None
    if local and os.path.isfile(local):
        return _load_file(local, name, config, device, dtype)
    return _load_pretrained(name, local, device, dtype)


def _load_pretrained(name: str, local: Optional[str], device, dtype) -> ClipModel:
    import open_clip

    arch, tag = split_name(name)
    if arch not in open_clip.list_models():
        raise ModelNotFoundError(f"unknown CLIP model {name!r}; use an open_clip 'arch/pretrained' name such as "
                                 f"{', '.join(PRESETS)}, or a local .safetensors file.")
    if not tag:
        raise ModelNotFoundError(f"CLIP model {name!r} needs a pretrained tag (e.g. {arch}/"
                                 f"{(open_clip.list_pretrained_tags_by_model(arch) or ['<tag>'])[0]}) or a weights file.")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=tag, precision=_PRECISION[dtype], device=device)
    except Exception as error:
        where = f"put its weights at {local}, or " if local else ""
        raise ModelNotFoundError(
            f"CLIP model {name} is not in the models folder and could not be downloaded ({_first_line(error)}); "
            f"{where}allow downloads (unset HF_HUB_OFFLINE) so open_clip can fetch it.") from error
    return ClipModel(model, preprocess, open_clip.get_tokenizer(arch), name)


def _load_file(path: str, name: Optional[str], config: Optional[str], device, dtype) -> ClipModel:
    import open_clip

    safetensors_file(path, "CLIP weights")
    config = config or sidecar_json(path)
    label = os.path.basename(path)
    if config:
        return _load_custom(path, config, label, device, dtype)
    arch, tag = split_name(name) if name else _arch_for_file(path)
    if not arch:
        raise ModelLoadError(f"cannot tell the architecture of {path}: name it like ViT-L-14-openai.safetensors, "
                             f"put a model config at {os.path.splitext(path)[0]}.json, or pass the architecture name.")
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=path, precision=_PRECISION[dtype], device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"))
    except Exception as error:
        raise ModelLoadError(f"{path} does not load as CLIP {arch}: {_first_line(error)}. "
                             f"Pick the architecture these weights were trained with.") from error
    return ClipModel(model, preprocess, open_clip.get_tokenizer(arch), label)


def _load_custom(path: str, config_path: str, label: str, device, dtype) -> ClipModel:
    """A custom architecture: an open_clip model config (plain, or {"model_cfg", "preprocess_cfg"}) + weights."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    try:
        with open(config_path, "r", encoding="utf-8") as file:
            raw = json.load(file)
        cfg = dict(raw.get("model_cfg", raw))
        text_cfg = cfg["text_cfg"]
        cfg["vision_cfg"], cfg["embed_dim"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ModelLoadError(f"cannot read CLIP model config {config_path}: {error!r}. It must be an open_clip "
                             f"model config with embed_dim, vision_cfg and text_cfg.") from None
    preprocess_cfg = raw.get("preprocess_cfg", {})
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    try:
        model = (open_clip.CustomTextCLIP if custom_text else open_clip.CLIP)(**cfg)
        open_clip.load_checkpoint(model, path)
    except Exception as error:
        raise ModelLoadError(f"{path} does not match the architecture in {config_path}: {_first_line(error)}.") \
            from error
    model.to(device=device)
    if dtype != torch.float32:
        open_clip.convert_weights_to_lp(model, dtype=dtype)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False,
                                           mean=preprocess_cfg.get("mean"), std=preprocess_cfg.get("std"))
    context_length = text_cfg.get("context_length", 77)
    tokenizer = HFTokenizer(text_cfg["hf_tokenizer_name"], context_length=context_length) \
        if text_cfg.get("hf_tokenizer_name") else open_clip.SimpleTokenizer(context_length=context_length)
    return ClipModel(model, preprocess, tokenizer, label)


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
