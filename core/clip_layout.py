"""Where CLIP towers sit in a file or state dict, and how their tensors map onto open_clip's names.

Hugging Face and ComfyUI store CLIP alike (``text_model.encoder.layers.N.self_attn.q_proj`` ...); open_clip, and the
text encoders inside SD 2.x / SDXL checkpoints, store it as open_clip does (``transformer.resblocks.N.attn.in_proj``).
A layout is a row of data: the open_clip key of each tensor and where it comes from in that layout, whole
(shared, not copied), transposed, or concatenated (q, k and v become one ``in_proj``).
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

import torch


@dataclass(frozen=True)
class Transposed:
    key: str


@dataclass(frozen=True)
class Stacked:
    """Tensors concatenated along the first dimension (q, k, v -> in_proj)."""
    keys: Tuple[str, ...]


Origin = Union[str, Transposed, Stacked]

_HF_BLOCK = tuple(
    [(f"ln_1.{p}", f"layer_norm1.{p}") for p in ("weight", "bias")]
    + [(f"ln_2.{p}", f"layer_norm2.{p}") for p in ("weight", "bias")]
    + [(f"attn.in_proj_{p}", Stacked(tuple(f"self_attn.{x}_proj.{p}" for x in "qkv"))) for p in ("weight", "bias")]
    + [(f"attn.out_proj.{p}", f"self_attn.out_proj.{p}") for p in ("weight", "bias")]
    + [(f"mlp.c_fc.{p}", f"mlp.fc1.{p}") for p in ("weight", "bias")]
    + [(f"mlp.c_proj.{p}", f"mlp.fc2.{p}") for p in ("weight", "bias")])
_OPEN_CLIP_BLOCK = tuple((k, k) for k, _ in _HF_BLOCK)


@dataclass(frozen=True)
class Layout:
    """One way a tower is stored. Keys are relative to the tower's root (e.g. ``conditioner.embedders.1.model.``)."""

    name: str
    kind: str  # "text" | "vision"
    anchor: str  # a key that marks a tower of this layout
    fixed: Tuple[Tuple[str, Origin], ...]  # open_clip key -> origin, outside the blocks
    projection: Tuple[Tuple[str, Origin], ...]  # the projection's open_clip key and the origins it may have
    block_prefix: str  # origin prefix of block i, with {i}
    block: Tuple[Tuple[str, Origin], ...]
    open_clip_prefix: str = ""  # prefix of the tower inside open_clip.CLIP ("visual." for the vision tower)

    def origins(self, layers: int, with_projection: Optional[Origin]) -> Dict[str, Origin]:
        """Every open_clip key of the tower (prefixed as in open_clip.CLIP) with its origin in this layout."""
        out = {self.open_clip_prefix + k: v for k, v in self.fixed}
        for i in range(layers):
            prefix = self.block_prefix.format(i=i)
            for key, origin in self.block:
                out[f"{self.open_clip_prefix}transformer.resblocks.{i}.{key}"] = _prefixed(origin, prefix)
        if with_projection is not None:
            out[self.open_clip_prefix + self.projection[0][0]] = with_projection
        return out

    def block_key(self, i: int) -> str:
        """A key block ``i`` has (its first layer norm): counts the layers."""
        return first_key(_prefixed(self.block[0][1], self.block_prefix.format(i=i)))


def _prefixed(origin: Origin, prefix: str) -> Origin:
    if isinstance(origin, str):
        return prefix + origin
    if isinstance(origin, Transposed):
        return Transposed(prefix + origin.key)
    return Stacked(tuple(prefix + k for k in origin.keys))


def first_key(origin: Origin) -> str:
    return origin if isinstance(origin, str) else origin.key if isinstance(origin, Transposed) else origin.keys[0]


def _pairs(*names: Tuple[str, str]) -> Tuple[Tuple[str, str], ...]:
    return tuple((f"{a}.{p}", f"{b}.{p}") for a, b in names for p in ("weight", "bias"))


LAYOUTS = (
    Layout("Hugging Face", "text", "text_model.embeddings.token_embedding.weight",
           fixed=(("token_embedding.weight", "text_model.embeddings.token_embedding.weight"),
                  ("positional_embedding", "text_model.embeddings.position_embedding.weight"))
           + _pairs(("ln_final", "text_model.final_layer_norm")),
           # ComfyUI's CLIPSave wrote the projection unwrapped, as open_clip stores it
           projection=(("text_projection", Transposed("text_projection.weight")),
                       ("text_projection", "text_projection")),
           block_prefix="text_model.encoder.layers.{i}.", block=_HF_BLOCK),
    Layout("open_clip", "text", "token_embedding.weight",
           fixed=(("token_embedding.weight", "token_embedding.weight"), ("positional_embedding", "positional_embedding"))
           + _pairs(("ln_final", "ln_final")),
           projection=(("text_projection", "text_projection"),),
           block_prefix="transformer.resblocks.{i}.", block=_OPEN_CLIP_BLOCK),
    Layout("Hugging Face", "vision", "vision_model.embeddings.patch_embedding.weight",
           fixed=(("class_embedding", "vision_model.embeddings.class_embedding"),
                  ("positional_embedding", "vision_model.embeddings.position_embedding.weight"),
                  ("conv1.weight", "vision_model.embeddings.patch_embedding.weight"))
           + _pairs(("ln_pre", "vision_model.pre_layrnorm"), ("ln_post", "vision_model.post_layernorm")),
           projection=(("proj", Transposed("visual_projection.weight")),),
           block_prefix="vision_model.encoder.layers.{i}.", block=_HF_BLOCK, open_clip_prefix="visual."),
    Layout("open_clip", "vision", "visual.conv1.weight",
           fixed=tuple((k, "visual." + k) for k in ("class_embedding", "positional_embedding", "conv1.weight"))
           + _pairs(("ln_pre", "visual.ln_pre"), ("ln_post", "visual.ln_post")),
           projection=(("proj", "visual.proj"),),
           block_prefix="visual.transformer.resblocks.{i}.", block=_OPEN_CLIP_BLOCK, open_clip_prefix="visual."),
)

# Image encoders ComfyUI also loads as CLIP Vision that are not CLIP: (marker key, family, why it cannot pair).
OTHER_VISION = (
    ("head.probe", "SigLIP", "its text tower is not a CLIP text encoder"),
    ("embeddings.mask_token", "DINOv2", "it has no text tower at all"),
)


@dataclass(frozen=True)
class TowerRef:
    """A tower found in a tensor source: its layout and the key prefix it sits under."""

    source: object  # a core.tensors source
    layout: Layout
    root: str

    @property
    def kind(self) -> str:
        return self.layout.kind

    def key(self, relative: str) -> str:
        return self.root + relative

    def has(self, origin: Origin) -> bool:
        keys = [origin] if isinstance(origin, str) else [origin.key] if isinstance(origin, Transposed) \
            else list(origin.keys)
        return all(self.root + k in self.source for k in keys)

    def shape(self, origin: Origin) -> Tuple[int, ...]:
        if isinstance(origin, str):
            return self.source.shape(self.root + origin)
        if isinstance(origin, Transposed):
            return tuple(reversed(self.source.shape(self.root + origin.key)))
        shapes = [self.source.shape(self.root + k) for k in origin.keys]
        return (sum(s[0] for s in shapes), *shapes[0][1:])

    def dtype(self, origin: Origin) -> torch.dtype:
        return self.source.dtype(self.root + first_key(origin))

    def layers(self) -> int:
        count = 0
        while self.root + self.layout.block_key(count) in self.source:
            count += 1
        return count

    def projection(self) -> Optional[Origin]:
        """Where this tower's projection is, or None when the file lacks it."""
        for _, origin in self.layout.projection:
            if self.has(origin):
                return origin
        return None


def find_towers(source) -> List[TowerRef]:
    """Every CLIP text and vision tower in a tensor source (a checkpoint holds up to two text encoders)."""
    found = []
    keys = list(source.keys())
    for layout in LAYOUTS:
        for key in keys:
            if not key.endswith(layout.anchor):
                continue
            root = key[:len(key) - len(layout.anchor)]
            ref = TowerRef(source, layout, root)
            if ref.layers() > 0:
                found.append(ref)
    return sorted(found, key=lambda r: (r.kind, r.root))


def other_vision_family(source) -> Optional[Tuple[str, str]]:
    """(family, reason) when the source is an image encoder of another family than CLIP."""
    keys = list(source.keys())
    for marker, family, reason in OTHER_VISION:
        if any(k.endswith(marker) for k in keys):
            return family, reason
    for ref in (r for r in find_towers(source) if r.kind == "vision" and r.layout.name == "Hugging Face"):
        if not ref.has("vision_model.embeddings.class_embedding"):  # SigLIP: no class token, pooled by a head
            return "SigLIP", "its text tower is not a CLIP text encoder"
    return None
