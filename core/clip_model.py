"""Loading CLIP models the way users have them: open_clip presets, local safetensors files, custom configs."""

import contextlib
import hashlib
import os
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Tuple

import torch

from . import hub
from .devices import parse_device
from .errors import ModelLoadError, ModelNotFoundError, first_line, out_of_memory
from .files import check_safetensors, get, read_json
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

    @property
    def logit_scale(self) -> float:
        """The temperature the model's softmax over captions was trained at (capped where open_clip caps it)."""
        scale = getattr(self.model, "logit_scale", None)
        return min(float(scale.exp()), 100.0) if isinstance(scale, torch.Tensor) else 100.0

    @torch.no_grad()
    def encode_images(self, images, poll: Optional[Callable[[], None]] = None) -> torch.Tensor:
        """Unit-length image features, one row per PIL image (``poll`` is called before each and between the
        vision tower's blocks: one pass of a large tower takes seconds on a CPU; see progress.py).

        One image per forward pass, as the reference does: a batched pass can round differently, and rankings of
        near-tied terms must not depend on how many images came along.
        """
        rows = []
        with _after_each_block(self.model.visual, poll):
            for image in images:
                if poll:
                    poll()
                pixels = self.preprocess(image).unsqueeze(0).to(self.device, self.dtype)
                with single_pass(self.device):
                    features = self.model.encode_image(pixels).float()
                rows.append(features / features.norm(dim=-1, keepdim=True))
        return self.check_finite(torch.cat(rows), "image features")

    def check_finite(self, features: torch.Tensor, what: str) -> torch.Tensor:
        """``features``, unless they hold NaN or infinity: then an error saying whether the weights are damaged
        or the precision overflowed, instead of prompts ranked on garbage."""
        if bool(torch.isfinite(features).all()):
            return features
        damaged = [n for n, p in self.model.named_parameters() if not bool(torch.isfinite(p).all())]
        if damaged:
            raise ModelLoadError(f"CLIP model {self.name} has NaN or infinite weights ({', '.join(damaged[:3])}"
                                 f"{', ...' if len(damaged) > 3 else ''}): its file is damaged; download it again.")
        fix = "load it in fp32" if self.dtype != torch.float32 else "its weights are not a working CLIP model's"
        raise ModelLoadError(f"CLIP model {self.name} computed NaN or infinite {what} in {self.dtype}; {fix}.")


@contextlib.contextmanager
def _after_each_block(tower: torch.nn.Module, poll: Optional[Callable[[], None]]) -> Iterator[None]:
    """``poll`` called after every residual block of an open_clip transformer tower while the block is open
    (towers of other kinds, e.g. timm's, are polled per image only)."""
    blocks = getattr(getattr(tower, "transformer", None), "resblocks", None)
    if poll is None or blocks is None:
        yield
        return
    handles = [block.register_forward_hook(lambda *args: poll()) for block in blocks]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


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
    """Load a CLIP model; only safetensors weights are ever read (pickled checkpoints can run code).

    - ``name="ViT-L-14/openai"`` (an open_clip architecture and pretrained tag): the file
      ``<models_dir>/ViT-L-14-openai.safetensors`` if present, else the tag's safetensors weights from the Hugging
      Face cache, else downloaded if the hub answers (see :mod:`.hub`).
    - ``weights=FILE`` with ``name="ViT-L-14"`` (or ``"ViT-L-14/openai"`` for that tag's preprocessing), or with
      ``config=JSON`` for a custom architecture; a ``<file>.json`` next to the weights is used as its config, and a
      file named like ``ViT-L-14-openai.safetensors`` needs neither.
    """
    device = parse_device(device)
    for value, what in ((name, "name"), (weights, "weights"), (config, "config")):
        if value is not None and not isinstance(value, (str, os.PathLike)):
            raise ModelNotFoundError(f"CLIP model {what} must be a string, not {type(value).__name__}.")
    name, weights, config = (os.fspath(v) if v is not None else None for v in (name, weights, config))
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
    return _load_file(_preset_weights(name, local), name, None, device, dtype, label=name)


def _preset_weights(name: str, local: Optional[str]) -> str:
    """The safetensors file of an open_clip 'arch/tag' preset, from the hub cache or the hub."""
    import open_clip

    arch, tag = split_name(name)
    if arch not in open_clip.list_models():
        raise ModelNotFoundError(f"unknown CLIP model {name!r}; use an open_clip 'arch/pretrained' name such as "
                                 f"{', '.join(PRESETS)}, or a local .safetensors file.")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not tag or not open_clip.get_pretrained_cfg(arch, tag):
        raise ModelNotFoundError(
            f"CLIP model {name!r} needs one of {arch}'s pretrained tags ({', '.join(tags[:6]) or 'none known'}), "
            f"e.g. {arch}/{(tags or ['<tag>'])[0]}; for weights of your own pass a .safetensors file.")
    where = f"put its weights at {local}" if local else "put its weights in the models folder"
    repo, filename = _hub_safetensors(open_clip.get_pretrained_cfg(arch, tag))
    if repo is None:
        raise ModelNotFoundError(f"open_clip has {name} only as a pickled checkpoint, which is never loaded (it can "
                                 f"run code); convert it to .safetensors and {where}.")
    try:
        return hub.download(repo, filename)
    except hub.HubError as error:
        raise ModelNotFoundError(
            f"CLIP model {name} is not in the models folder and could not be downloaded ({error}); {where} "
            f"(https://huggingface.co/{repo}, file {filename}), or allow downloads.") from None


def _hub_safetensors(pretrained_cfg: dict):
    """(repo, file) of the safetensors weights open_clip publishes for a tag, or (None, None) if it has none.

    open_clip's ``hf_hub`` entry is ``"org/repo/"`` (default file) or ``"org/repo/file.bin"``; beside each pickled
    file its hub repos hold a safetensors twin, the only file we fetch.
    """
    hf_hub = pretrained_cfg.get("hf_hub") or ""
    if not hf_hub:
        return None, None
    repo, filename = os.path.split(hf_hub)
    if not filename or filename == "open_clip_pytorch_model.bin":
        return repo, "open_clip_model.safetensors"
    return repo, os.path.splitext(filename)[0] + ".safetensors"


def _load_file(path: str, name: Optional[str], config: Optional[str], device, dtype,
               label: Optional[str] = None) -> ClipModel:
    import open_clip

    safetensors_file(path, "CLIP weights")
    held = check_safetensors(path, ModelLoadError)
    sidecar = os.path.splitext(path)[0] + ".json"
    config = config or sidecar_json(path)
    label = label or os.path.basename(path)
    if config:
        return _load_custom(path, config, label, device, dtype, held)
    arch, tag = split_name(name) if name else _arch_for_file(path)
    if not arch:
        raise ModelLoadError(f"cannot tell the architecture of {path}: name it like ViT-L-14-openai.safetensors, "
                             f"put a model config at {sidecar}, or pass the architecture name.")
    if arch not in open_clip.list_models():
        raise ModelNotFoundError(f"unknown CLIP architecture {arch!r} for {path}; use an open_clip architecture "
                                 f"name such as ViT-L-14, or put a model config at {sidecar}.")
    tag_cfg = open_clip.get_pretrained_cfg(arch, tag) if tag else {}
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=path, precision=_PRECISION[dtype], device=device,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu", False)),
            image_mean=tag_cfg.get("mean"), image_std=tag_cfg.get("std"),
            image_interpolation=tag_cfg.get("interpolation"), image_resize_mode=tag_cfg.get("resize_mode"))
    except _MISMATCH as error:
        if out_of_memory(error):
            raise
        raise ModelLoadError(f"{path} does not load as CLIP {arch}: {first_line(error)}. "
                             f"Pick the architecture these weights were trained with.") from error
    return ClipModel(model, preprocess, open_clip.get_tokenizer(arch), label)


# what open_clip raises for weights of another architecture (load_state_dict's RuntimeError, its converters'
# KeyError / ValueError / AssertionError); an out-of-memory RuntimeError is let through (see out_of_memory)
_MISMATCH = (RuntimeError, KeyError, ValueError, AssertionError)
_CONFIG_HINT = 'an open_clip model config: {"embed_dim": ..., "vision_cfg": {...}, "text_cfg": {...}}'


def _load_custom(path: str, config_path: str, label: str, device, dtype, held: int) -> ClipModel:
    """A custom architecture: an open_clip model config (plain, or {"model_cfg", "preprocess_cfg"}) + weights."""
    import open_clip
    from open_clip.tokenizer import HFTokenizer

    raw = read_json(config_path, ModelLoadError, _CONFIG_HINT)
    where = f"CLIP model config {config_path}"
    cfg = dict(get(raw, "model_cfg", dict, where, ModelLoadError, default=raw))
    get(cfg, "embed_dim", int, where, ModelLoadError)
    get(cfg, "vision_cfg", dict, where, ModelLoadError)
    text_cfg = get(cfg, "text_cfg", dict, where, ModelLoadError)
    preprocess_cfg = get(raw, "preprocess_cfg", dict, where, ModelLoadError, default={})
    mean, std = (_channels(preprocess_cfg, key, where) for key in ("mean", "std"))
    context_length = get(text_cfg, "context_length", int, where, ModelLoadError, default=77)
    hf_tokenizer = get(text_cfg, "hf_tokenizer_name", str, where, ModelLoadError, default=None)
    custom_text = cfg.pop("custom_text", False) or "hf_model_name" in text_cfg
    model = _build(open_clip.CustomTextCLIP if custom_text else open_clip.CLIP, cfg, config_path, path, held)
    try:
        open_clip.load_checkpoint(model, path)
    except _MISMATCH as error:
        if out_of_memory(error):
            raise
        raise ModelLoadError(f"{path} does not match the architecture in {config_path}: {first_line(error)}.") \
            from error
    model.to(device=device)
    if dtype != torch.float32:
        open_clip.convert_weights_to_lp(model, dtype=dtype)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False, mean=mean, std=std)
    try:
        tokenizer = HFTokenizer(hf_tokenizer, context_length=context_length) if hf_tokenizer else \
            open_clip.SimpleTokenizer(context_length=context_length)
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"tokenizer {hf_tokenizer} named in {config_path} cannot be loaded: "
                             f"{first_line(error)}") from error
    return ClipModel(model, preprocess, tokenizer, label)


def _build(model_class, cfg: dict, config_path: str, weights_path: str, held: int) -> torch.nn.Module:
    """The model a config describes, built for real only once it is known to fit the weights file: a shape-only
    build (no memory) catches configs open_clip cannot build and sizes the weights file cannot fill."""
    try:
        with torch.device("meta"):
            needed = sum(t.numel() for t in model_class(**cfg).state_dict().values())
    except (TypeError, ValueError, KeyError, AttributeError, RuntimeError) as error:
        raise ModelLoadError(f"{config_path} is not a model config open_clip can build ({first_line(error)}); "
                             f"it should be {_CONFIG_HINT}.") from error
    if needed > held:
        raise ModelLoadError(f"{config_path} describes a model of {needed:,} weights but {weights_path} holds "
                             f"{held:,}: the config and the weights do not belong together.")
    return model_class(**cfg)


def _channels(preprocess_cfg: dict, key: str, where: str) -> Optional[Tuple[float, ...]]:
    values = get(preprocess_cfg, key, list, where, ModelLoadError, default=None)
    if values is not None and (len(values) not in (1, 3) or
                               not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
        raise ModelLoadError(f"{where}: preprocess_cfg {key!r} must be 1 or 3 numbers, got {values!r:.60}.")
    return tuple(values) if values is not None else None
