"""The tensors inside ComfyUI's CLIP and CLIP_VISION objects, as sources for :mod:`core.clip_pair`.

ComfyUI keeps each text encoder of a CLIP at ``clip.cond_stage_model.<name>.transformer`` (clip_l, clip_g, clip_h,
beside t5xxl or llama in other models) and a CLIP Vision model at ``clip_vision.model``, both in the Hugging Face key
layout. Only attributes are read; nothing is imported from ComfyUI, and no weight is copied here.
"""

import uuid
import weakref
from typing import Dict, List, Tuple

import torch
import torch.nn.functional as F

from ..core.clip_pair import Pair, load_pair, pair_from_sources
from ..core.tensors import MemoryTensors

CLIP_INPUT = "the connected CLIP"
VISION_INPUT = "the connected CLIP Vision"
TEXT_ENCODERS = ("auto", "clip_l", "clip_h", "clip_g")
_tokens: "weakref.WeakKeyDictionary[torch.nn.Module, str]" = weakref.WeakKeyDictionary()


class ComfyPair:
    """A CLIP and a CLIP Vision from ComfyUI's loaders as one interrogator CLIP: checked from shapes when made (the
    error says what to connect), converted on first use. Holds the ComfyUI objects, never copies of weights."""

    def __init__(self, clip, clip_vision, text_encoder: str = "auto"):
        self.clip, self.clip_vision, self.text_encoder = clip, clip_vision, text_encoder
        pair = self.plan()
        self.arch, self.text_name, self.description, self.notes = pair.arch, pair.text.name, pair.description, \
            pair.notes
        self._modules = tuple(weakref.ref(model_identity(o)) for o in (clip, clip_vision))

    def plan(self) -> Pair:
        sources, others = text_sources(self.clip)
        return pair_from_sources(sources, vision_source(self.clip_vision), self.text_encoder, where=CLIP_INPUT,
                                 others=others)

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


def text_sources(clip) -> Tuple[List[MemoryTensors], List[str]]:
    """One source per CLIP text encoder of a ComfyUI CLIP, and the names of its other encoders (t5xxl ...)."""
    model = getattr(clip, "cond_stage_model", None)
    if not isinstance(model, torch.nn.Module):
        raise ValueError(f"CLIP Interrogator: the clip input is a {type(clip).__name__}, not a ComfyUI CLIP: connect "
                         f"Load Checkpoint's or Load CLIP's CLIP output.")
    backup = _originals(getattr(clip, "patcher", None))
    sources, others = [], []
    for name, encoder in model.named_children():
        transformer = getattr(encoder, "transformer", None)
        layers = _layers(getattr(transformer, "text_model", None))
        if not layers:
            others.append(name)
            continue
        config = {"name": name, "model_type": "clip_text_model", **_block_config(layers[0])}
        tensors = _loaded(transformer, f"{name}.transformer.", backup)
        sources.append(MemoryTensors(tensors, CLIP_INPUT, config))
    return sources, others


def vision_source(clip_vision) -> MemoryTensors:
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
    return MemoryTensors(tensors, VISION_INPUT, {k: v for k, v in config.items() if v is not None})


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
    """The module's tensors that came from a file, unpatched.

    ComfyUI allocates weights uninitialised and copies the file's tensors in, which bumps their version counters; a
    weight the file lacked (SD 1.x and SDXL checkpoints have no clip_l text_projection) keeps version 0 and holds
    garbage, so it is left out. Without any bumped counter (weights set some other way) every tensor is kept.
    While ComfyUI has LoRA patches applied, the patcher's backup holds the original weights: those are used.
    """
    tensors = module.state_dict(keep_vars=True)
    patched = {k: originals[prefix + k] for k in tensors if prefix + k in originals}
    if any(t._version for t in tensors.values()):
        tensors = {k: t for k, t in tensors.items() if t._version or k in patched}
    return {k: patched.get(k, t).detach() for k, t in tensors.items()}


def _originals(patcher) -> Dict[str, torch.Tensor]:
    backup = getattr(patcher, "backup", None) or {}
    return {k: getattr(v, "weight", v) for k, v in backup.items() if isinstance(getattr(v, "weight", v), torch.Tensor)}
