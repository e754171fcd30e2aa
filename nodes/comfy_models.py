"""The tensors inside ComfyUI's CLIP and CLIP_VISION objects, as sources for :mod:`core.clip_pair`.

ComfyUI keeps each text encoder of a CLIP at ``clip.cond_stage_model.<name>.transformer`` (clip_l, clip_g, clip_h,
beside t5xxl or llama in other models) and a CLIP Vision model at ``clip_vision.model``, both in the Hugging Face key
layout. Only attributes are read; nothing is imported from ComfyUI, and no weight is copied here.

ComfyUI allocates every weight and copies the file's tensors in, so a weight the file lacked (SD 1.x and SDXL
checkpoints have no clip_l text_projection) is there, holding garbage. Which projections are real is read, in this
order, from torch's version counters (bumped by the copy; ComfyUI's own node runs make inference tensors, which
have none), from the headers of the files the graph says the models came from, and last from the values.
"""

import os
import uuid
import weakref
from typing import Dict, List, Sequence, Tuple

import torch
import torch.nn.functional as F

from ..core.clip_pair import Pair, load_pair, pair_from_sources, text_towers, vision_tower
from ..core.errors import InterrogatorError
from ..core.tensors import MemoryTensors, SafetensorsFiles

CLIP_INPUT = "the connected CLIP"
VISION_INPUT = "the connected CLIP Vision"
TEXT_ENCODERS = ("auto", "clip_l", "clip_h", "clip_g")
TEXT_PROJECTION, VISUAL_PROJECTION = "text_projection.weight", "visual_projection.weight"
_tokens: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


class ComfyPair:
    """A CLIP and a CLIP Vision from ComfyUI's loaders as one interrogator CLIP: checked from shapes when made (the
    error says what to connect), converted on first use. Holds the ComfyUI objects, never copies of weights.
    ``clip_files`` / ``vision_files``: the files they were loaded from, when known."""

    def __init__(self, clip, clip_vision, text_encoder: str = "auto", clip_files: Sequence[str] = (),
                 vision_files: Sequence[str] = ()):
        self.clip, self.clip_vision, self.text_encoder = clip, clip_vision, text_encoder
        self.clip_files, self.vision_files = tuple(clip_files), tuple(vision_files)
        pair = self.plan()
        self.arch, self.text_name, self.description, self.notes = pair.arch, pair.text.name, pair.description, \
            pair.notes
        self._modules = tuple(weakref.ref(model_identity(o)) for o in (clip, clip_vision))

    def plan(self) -> Pair:
        sources, others = text_sources(self.clip, self.clip_files)
        return pair_from_sources(sources, vision_source(self.clip_vision, self.vision_files), self.text_encoder,
                                 where=_label(self.clip_files, CLIP_INPUT), others=others)

    @property
    def key(self) -> tuple:
        """The same ComfyUI models (LoRA clones included) give the same key; any other load, another."""
        return ("comfy pair", *(_token(ref()) for ref in self._modules), self.text_name)

    @property
    def refs(self) -> Tuple[weakref.ref, ...]:
        """Weak references to ComfyUI's models: dead once ComfyUI drops them (the converted copy should go too)."""
        return self._modules

    def load(self, dtype, progress=None):
        return load_pair(self.plan(), dtype=dtype, progress=progress)

    def __str__(self) -> str:
        return self.description


def _token(module) -> str:
    if module is None:
        return "gone"
    if module not in _tokens:
        _tokens[module] = uuid.uuid4().hex
    return _tokens[module]


def text_sources(clip, files: Sequence[str] = ()) -> Tuple[List[MemoryTensors], List[str]]:
    """One source per CLIP text encoder of a ComfyUI CLIP, and the names of its other encoders (t5xxl ...)."""
    model = getattr(clip, "cond_stage_model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"CLIP Interrogator: the clip input is a {type(clip).__name__}, not a ComfyUI CLIP: connect "
                         f"Load Checkpoint's or Load CLIP's CLIP output.")
    backup = _originals(getattr(clip, "patcher", None))
    in_files = [tower for path in files for tower in _file_towers(path, "text")]
    sources, others = [], []
    for name, encoder in model.named_children():
        transformer = getattr(encoder, "transformer", None)
        layers = _layers(getattr(transformer, "text_model", None))
        if not layers:
            others.append(name)
            continue
        config = {"name": name, "model_type": "clip_text_model", **_block_config(layers[0])}
        tensors = _loaded(transformer, f"{name}.transformer.", backup)
        width = transformer.text_model.embeddings.token_embedding.weight.shape[-1]
        same = [t for t in in_files if (t.width, t.layers) == (width, len(layers))]
        _keep_if_real(tensors, TEXT_PROJECTION, [t.embed_dim is not None for t in same])
        sources.append(MemoryTensors(tensors, _label([t.ref.source.path for t in same], CLIP_INPUT), config))
    return sources, others


def vision_source(clip_vision, files: Sequence[str] = ()) -> MemoryTensors:
    """The tensors of a ComfyUI CLIP Vision model (SigLIP and DINOv2 ones too: core names those)."""
    model = getattr(clip_vision, "model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"CLIP Interrogator: the clip_vision input is a {type(clip_vision).__name__}, not a ComfyUI "
                         f"CLIP Vision model: connect Load CLIP Vision's output.")
    config = {"model_type": "clip_vision_model", "image_size": getattr(clip_vision, "image_size", None),
              "image_mean": getattr(clip_vision, "image_mean", None), "image_std": getattr(clip_vision, "image_std", None)}
    layers = _layers(getattr(model, "vision_model", None))
    if layers:
        config.update(_block_config(layers[0]))
    tensors = _loaded(model, "", _originals(getattr(clip_vision, "patcher", None)))
    _keep_if_real(tensors, VISUAL_PROJECTION, [t.embed_dim is not None for path in files
                                               for t in _file_towers(path, "vision")])
    return MemoryTensors(tensors, _label(files, VISION_INPUT), {k: v for k, v in config.items() if v is not None})


def model_identity(obj) -> torch.nn.Module:
    """The module whose weights a CLIP / CLIP Vision object holds: LoRA clones of one CLIP share it."""
    return obj.cond_stage_model if hasattr(obj, "cond_stage_model") else obj.model


def _layers(transformer_model):
    encoder = getattr(transformer_model, "encoder", None)
    layers = getattr(encoder, "layers", None)
    return list(layers) if isinstance(layers, torch.nn.ModuleList) else []


def _block_config(layer) -> dict:
    """What the tensors do not record: attention heads and the MLP's activation (ComfyUI keeps the function)."""
    config = {}
    heads = getattr(getattr(layer, "self_attn", None), "heads", None)
    if isinstance(heads, int):
        config["num_attention_heads"] = heads
    activation = getattr(getattr(layer, "mlp", None), "activation", None)
    if callable(activation):
        config["hidden_act"] = _activation_name(activation)
    return config


def _activation_name(function) -> str:
    x = torch.linspace(-4, 4, 33)
    y = function(x)
    if torch.allclose(y, x * torch.sigmoid(1.702 * x), atol=1e-6):
        return "quick_gelu"
    if torch.allclose(y, F.gelu(x), atol=1e-6):
        return "gelu"
    return "unrecognised"


def _loaded(module: torch.nn.Module, prefix: str, originals: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """The module's tensors, unpatched (while LoRA patches are applied, the patcher's backup holds the originals),
    less those torch's version counters show were never written (counters exist outside inference mode)."""
    tensors = module.state_dict(keep_vars=True)
    patched = {k: originals[prefix + k] for k in tensors if prefix + k in originals}
    counted = {k: t._version for k, t in tensors.items() if not t.is_inference()}
    if any(counted.values()):
        tensors = {k: t for k, t in tensors.items() if counted.get(k, 1) or k in patched}
    return {k: patched.get(k, t).detach() for k, t in tensors.items()}


def _keep_if_real(tensors: Dict[str, torch.Tensor], key: str, in_files: List[bool]) -> None:
    """Leave a projection out when the model's files lack it, or (files unknown) when its values are no trained
    weights: ComfyUI's never-written memory is zeros, tiny leftovers, NaN or huge numbers."""
    if key in tensors and (not any(in_files) if in_files else not _plausible(tensors[key])):
        del tensors[key]


def _plausible(weight: torch.Tensor) -> bool:
    if weight.is_meta:
        return True
    values = weight.float()
    return bool(torch.isfinite(values).all()) and 1e-3 < float(values.std()) < 10.0


def _file_towers(path: str, kind: str):
    """The towers in a model file's header (none when it cannot be read: then the values decide)."""
    try:
        source = SafetensorsFiles(path)
        return text_towers(source) if kind == "text" else [vision_tower(source)]
    except InterrogatorError:
        return []


def _label(files: Sequence[str], fallback: str) -> str:
    return " + ".join(os.path.basename(f) for f in files) or fallback


def _originals(patcher) -> Dict[str, torch.Tensor]:
    backup = getattr(patcher, "backup", None) or {}
    return {k: getattr(v, "weight", v) for k, v in backup.items() if isinstance(getattr(v, "weight", v), torch.Tensor)}
