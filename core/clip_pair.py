"""One open_clip CLIP from the two halves users already have: a text encoder and a CLIP Vision model.

SDXL's ``clip_g`` is OpenCLIP ViT-bigG-14's text tower, SD 2.x's is ViT-H-14's, and ComfyUI's CLIP Vision files hold
the matching image towers; together they are the interrogator's CLIP. :func:`plan_pair` checks a pair from shapes
alone (sizes, projections, family, activation) and says what to connect instead; :func:`load_pair` then builds one
``open_clip.CLIP`` whose tensors are the given ones wherever open_clip's layout allows: only q/k/v (concatenated into
``in_proj``), the two small projections (transposed) and dtype changes are copies.
"""

import hashlib
import math
import os
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .clip_layout import Origin, TowerRef, Transposed, find_towers, first_key, other_vision_family
from .clip_model import _PRECISION, ClipModel
from .errors import ModelLoadError
from .progress import ProgressHook, Steps

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
ACTIVATIONS = ("quick_gelu", "gelu")


@dataclass(frozen=True)
class KnownClip:
    """A CLIP whose halves Stable Diffusion users hold: sizes that files do not record, and what to connect."""

    arch: str  # open_clip architecture
    pretrained: str  # open_clip pretrained tag
    training: str  # who trained it, as file names say it
    text_name: Optional[str]  # ComfyUI's name for its text encoder; None: no SD model uses it
    text: Tuple[int, int, int]  # width, layers, heads
    vision: Tuple[int, int, int, int, int]  # width, layers, heads, patch size, image size
    embed_dim: int
    activation: str
    connect: str  # which text encoder to connect for this CLIP Vision

    def sizes(self, kind: str) -> tuple:
        """(width, layers, heads ...) of the text or vision tower."""
        return self.text if kind == "text" else self.vision


KNOWN = (
    KnownClip("ViT-L-14", "openai", "OpenAI", "clip_l", (768, 12, 12), (1024, 24, 16, 14, 224), 768, "quick_gelu",
              "a clip_l text encoder that keeps text_projection (a clip_l.safetensors exported with it, or "
              "openai/clip-vit-large-patch14's model.safetensors, in models/text_encoders via Load CLIP)"),
    KnownClip("ViT-L-14-336", "openai", "OpenAI", None, (768, 12, 12), (1024, 24, 16, 14, 336), 768, "quick_gelu",
              "the text tower of openai/clip-vit-large-patch14-336 (its model.safetensors)"),
    KnownClip("ViT-H-14", "laion2b_s32b_b79k", "LAION-2B", "clip_h", (1024, 24, 16), (1280, 32, 16, 14, 224), 1024,
              "gelu", "an SD 2.x checkpoint's CLIP or a ViT-H-14 (clip_h) text encoder"),
    KnownClip("ViT-bigG-14", "laion2b_s39b_b160k", "LAION-2B", "clip_g", (1280, 32, 20), (1664, 48, 16, 14, 224),
              1280, "gelu", "an SDXL checkpoint's CLIP (its clip_g) or a clip_g text encoder"),
)

# Words in file names that tell a CLIP's training apart from the SD one of the same size.
TRAININGS = (("openai", "OpenAI"), ("laion2b", "LAION-2B"), ("laion400m", "LAION-400M"), ("datacomp", "DataComp"),
             ("dfn", "DFN"), ("metaclip", "MetaCLIP"), ("commonpool", "CommonPool"), ("webli", "WebLI"))


@dataclass(frozen=True)
class Tower:
    """One half of a CLIP: where its tensors are, its sizes and how it computes."""

    ref: TowerRef
    name: str  # "clip_g", "text encoder", "CLIP Vision"
    label: str  # in messages: "clip_g of sd_xl_base_1.0.safetensors"
    width: int
    layers: int
    heads: int
    mlp_width: int
    activation: str
    embed_dim: Optional[int]  # None: no projection in the file
    known: Optional[KnownClip]
    vocab_size: int = 0  # text
    context_length: int = 0
    patch_size: int = 0  # vision
    image_size: int = 0
    mean: Tuple[float, ...] = OPENAI_MEAN
    std: Tuple[float, ...] = OPENAI_STD

    @property
    def kind(self) -> str:
        return self.ref.kind

    def origins(self) -> Dict[str, Origin]:
        return self.ref.layout.origins(self.layers, self.ref.projection())

    def open_clip_cfg(self) -> dict:
        ratio = _mlp_ratio(self.width, self.mlp_width)
        if self.kind == "text":
            return dict(context_length=self.context_length, vocab_size=self.vocab_size, width=self.width,
                        heads=self.heads, layers=self.layers, mlp_ratio=ratio)
        return dict(layers=self.layers, width=self.width, head_width=self.width // self.heads, mlp_ratio=ratio,
                    patch_size=self.patch_size, image_size=self.image_size)


@dataclass(frozen=True)
class Pair:
    """A checked text + vision pair, ready to load."""

    text: Tower
    vision: Tower
    arch: str  # "ViT-bigG-14", or a description of custom sizes
    notes: Tuple[str, ...] = ()  # warnings users should see (towers that look like different trainings)

    @property
    def name(self) -> str:
        """Names the embedding cache folder: the same text tower gives the same name from files or ComfyUI."""
        return f"{self.arch}-{self.text.name}-pair".replace(" ", "_")

    @property
    def description(self) -> str:
        return f"{self.arch}: {self.text.label} + {self.vision.label}"

    def open_clip_kwargs(self) -> dict:
        return dict(embed_dim=self.text.embed_dim, quick_gelu=self.text.activation == "quick_gelu",
                    vision_cfg=self.vision.open_clip_cfg(), text_cfg=self.text.open_clip_cfg())


# -- finding and describing towers ---------------------------------------------------------------------------------
def text_towers(source) -> List[Tower]:
    """The CLIP text encoders in a source (an SDXL checkpoint has clip_l and clip_g), described."""
    return [describe(ref) for ref in find_towers(source) if ref.kind == "text"]


def vision_tower(source) -> Tower:
    """The CLIP image tower of a source; a clear error for SigLIP, DINOv2 and anything else."""
    family = other_vision_family(source)
    if family:
        raise ModelLoadError(f"{source.label} is a {family[0]} image encoder, not CLIP: {family[1]}. Connect a CLIP "
                             f"Vision file of ViT-L-14, ViT-H-14 or ViT-bigG-14 (models/clip_vision) instead.")
    towers = [ref for ref in find_towers(source) if ref.kind == "vision"]
    if not towers:
        raise ModelLoadError(f"{source.label} holds no CLIP vision tower: connect a CLIP Vision file of ViT-L-14, "
                             f"ViT-H-14 or ViT-bigG-14 (models/clip_vision).")
    return describe(towers[0])


def describe(ref: TowerRef) -> Tower:
    """Sizes from shapes; heads, activation and image size from the source's config, else from the known CLIPs."""
    config = _tower_config(getattr(ref.source, "config", {}) or {}, ref.kind)
    for origin in dict(ref.layout.fixed).values():
        if not ref.has(origin):
            raise ModelLoadError(f"{ref.source.label}: its {ref.kind} tower lacks {ref.key(first_key(origin))}; the "
                                 f"file is incomplete or not a CLIP {ref.kind} encoder.")
    layers = ref.layers()
    width, known, sizes = (_text_sizes if ref.kind == "text" else _vision_sizes)(ref, layers, config)
    if ref.kind == "text":
        name = config.get("name") or (known.text_name if known else "text encoder")
        label = f"{name} of {ref.source.label}"
    else:
        name, label = config.get("name") or "CLIP Vision", ref.source.label
    heads = int(config.get("num_attention_heads") or (known.sizes(ref.kind)[2] if known else 0))
    activation = config.get("hidden_act") or (known.activation if known else None)
    _check_computation(ref.kind, f"{label} ({width} wide, {layers} layers)", width, heads, activation, config)
    fc = ref.layout.origins(1, None)[f"{ref.layout.open_clip_prefix}transformer.resblocks.0.mlp.c_fc.weight"]
    projection = ref.projection()
    embed_dim = ref.shape(projection)[1] if projection is not None else None
    return Tower(ref, name, label, width, layers, heads, ref.shape(fc)[0], activation, embed_dim, known, **sizes)


def _text_sizes(ref: TowerRef, layers: int, config: dict):
    fixed = dict(ref.layout.fixed)
    vocab_size, width = ref.shape(fixed["token_embedding.weight"])
    known = next((k for k in KNOWN if k.text[:2] == (width, layers) and k.text_name), None)
    return width, known, dict(vocab_size=vocab_size, context_length=ref.shape(fixed["positional_embedding"])[0])


def _vision_sizes(ref: TowerRef, layers: int, config: dict):
    fixed = dict(ref.layout.fixed)
    width, channels, patch, patch_w = ref.shape(fixed["conv1.weight"])
    positions = ref.shape(fixed["positional_embedding"])[0]
    grid = math.isqrt(max(positions - 1, 0))
    if channels != 3 or patch != patch_w or grid * grid != positions - 1:
        raise ModelLoadError(f"{ref.source.label}: a vision tower with {channels}-channel {patch}x{patch_w} patches "
                             f"and {positions} positions is not a CLIP ViT this pack can load.")
    image_size = int(config.get("image_size") or grid * patch)
    if image_size != grid * patch:
        raise ModelLoadError(f"{ref.source.label}: config image_size {image_size} does not match its "
                             f"{positions - 1} patches of {patch} px.")
    known = next((k for k in KNOWN if k.vision[:2] == (width, layers) and k.vision[3:] == (patch, image_size)), None)
    return width, known, dict(patch_size=patch, image_size=image_size, mean=tuple(config.get("image_mean") or
                                                                                  OPENAI_MEAN),
                              std=tuple(config.get("image_std") or OPENAI_STD))


def _check_computation(kind: str, where: str, width: int, heads: int, activation: Optional[str], config: dict):
    """What the tensors cannot tell must come from a config or the known CLIPs, and be what open_clip computes."""
    if not heads or width % heads:
        same_width = [k for k in KNOWN if k.sizes(kind)[0] == width][:1]
        pruned = "".join(f"; {k.arch} has {k.sizes(kind)[1]} (a pruned file?)" for k in same_width)
        raise ModelLoadError(f"{where} is not a CLIP size this pack knows{pruned}, and no config gives its attention "
                             f"heads: use the complete file, or put its Hugging Face config.json beside it.")
    if activation not in ACTIVATIONS:
        raise ModelLoadError(f"{where} uses activation {activation!r}; CLIP towers use {' or '.join(ACTIVATIONS)}"
                             + ("" if activation else ": put its Hugging Face config.json beside it") + ".")
    eps = config.get("layer_norm_eps", 1e-5)
    if abs(float(eps) - 1e-5) > 1e-12:
        raise ModelLoadError(f"{where} uses layer_norm_eps {eps}; open_clip's CLIP uses 1e-5.")


def _tower_config(config: dict, kind: str) -> dict:
    """The part of a Hugging Face config (CLIPModel, CLIPTextModel or CLIPVisionModel) about one tower."""
    nested = config.get(f"{kind}_config")
    if isinstance(nested, dict):
        return nested
    model_type = str(config.get("model_type", ""))
    if "siglip" in model_type and kind == "vision":
        raise ModelLoadError("a SigLIP image encoder is not CLIP: connect a CLIP Vision file of ViT-L-14, ViT-H-14 or "
                             "ViT-bigG-14 (models/clip_vision) instead.")
    return config if model_type in ("", f"clip_{kind}_model") else {}


def _mlp_ratio(width: int, hidden: int) -> float:
    """open_clip sizes the MLP as ``int(width * mlp_ratio)``: a ratio that gives exactly ``hidden``."""
    ratio = hidden / width
    while int(width * ratio) < hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


# -- pairing -------------------------------------------------------------------------------------------------------
def pick_text(towers: Sequence[Tower], vision: Tower, choice: str = "auto", where: str = "the text encoder") -> Tower:
    """The text tower to pair with ``vision``: by name, or (``auto``) the one whose embeddings match its size."""
    names = ", ".join(f"{t.name} ({t.embed_dim or 'no projection'})" for t in towers) or "no CLIP text encoder"
    if choice != "auto":
        chosen = [t for t in towers if t.name == choice]
        if not chosen:
            raise ModelLoadError(f"{where} has no {choice} (it holds {names}); pick 'auto' or another text encoder.")
        return chosen[0]
    def trained_with(tower: Tower) -> bool:
        return bool(vision.known and tower.known and tower.known.text == vision.known.text)

    matching = [t for t in towers if trained_with(t) or (t.embed_dim and t.embed_dim == vision.embed_dim)]
    if matching:  # the tower trained with this vision first, even without its projection (plan_pair says so)
        return sorted(matching, key=lambda t: (not trained_with(t), t.embed_dim is None))[0]
    if len(towers) == 1:
        return towers[0]  # plan_pair names the mismatch
    need = f"{vision.known.connect}" if vision.known else f"a text encoder with {vision.embed_dim}-d embeddings"
    raise ModelLoadError(f"{where} holds {names}, none matching {vision.label} ({vision.embed_dim}-d): connect "
                         f"{need}.")


def plan_pair(text: Tower, vision: Tower) -> Pair:
    """Check that two towers make one CLIP, from shapes alone; the error says what to connect instead."""
    if text.kind != "text" or vision.kind != "vision":
        raise ModelLoadError(f"expected a text tower and a vision tower, got {text.kind} and {vision.kind}.")
    if text.embed_dim is None:
        fix = KNOWN[0].connect if text.name == "clip_l" else "a text-encoder file that includes text_projection"
        dropped = " (Stable Diffusion 1.x and SDXL checkpoints drop CLIP-L's)" if text.name == "clip_l" else ""
        raise ModelLoadError(f"{text.label} has no text_projection{dropped}, so its embeddings cannot be compared "
                             f"with images: connect {fix} instead.")
    if vision.embed_dim is None:
        raise ModelLoadError(f"{vision.label} has no visual_projection: connect a CLIP Vision file that includes it "
                             f"(a CLIPVisionModelWithProjection export).")
    if text.embed_dim != vision.embed_dim:
        need = vision.known.connect if vision.known else f"a text encoder with {vision.embed_dim}-d embeddings"
        raise ModelLoadError(f"{text.label} makes {text.embed_dim}-d embeddings but {vision.label} makes "
                             f"{vision.embed_dim}-d: they are not one CLIP; connect {need}.")
    if text.activation != vision.activation:
        raise ModelLoadError(f"{text.label} ({text.activation}) and {vision.label} ({vision.activation}) come from "
                             f"different CLIP trainings: connect the text encoder trained with this CLIP Vision.")
    notes = _training_notes(text, vision)
    same = vision.known and text.known and text.known.text == vision.known.text
    arch = vision.known.arch if same else (
        f"CLIP text {text.width}x{text.layers} + vision {vision.width}x{vision.layers}/{vision.patch_size}")
    return Pair(text, vision, arch, notes)


def _training_notes(text: Tower, vision: Tower) -> Tuple[str, ...]:
    """Same sizes, different training: detectable from the sizes of a known CLIP, or from file names."""
    if text.ref.source is vision.ref.source:
        return ()  # one file: one model
    notes = []
    if text.known and vision.known and text.known is not vision.known:
        notes.append(f"{vision.label} is {vision.known.arch} ({vision.known.training}), but {text.label} is the text "
                     f"tower of {text.known.arch}: they were trained apart, so prompts will be poor. Connect "
                     f"{vision.known.connect}.")
    for tower in (text, vision):
        expected = (vision.known or text.known)
        said = [name for word, name in TRAININGS if word in os.path.basename(tower.ref.source.label).lower()]
        if expected and said and expected.training not in said:
            notes.append(f"{tower.label} looks like a {said[0]} training, but a {expected.arch} pair for Stable "
                         f"Diffusion is {expected.training}'s: towers trained apart give poor prompts.")
    return tuple(notes)


def pair_from_sources(text_sources, vision_source, text_encoder: str = "auto", *, where: Optional[str] = None,
                      others: Sequence[str] = ()) -> Pair:
    """Check the pair that a source (or several: one per text encoder) and a vision source make. ``text_encoder``
    names the text tower to use (``auto``: the one matching the vision side); ``others`` names encoders of the
    text side that are not CLIP (t5xxl ...), for the error when there is no CLIP one."""
    text_sources = list(text_sources) if isinstance(text_sources, (list, tuple)) else [text_sources]
    where = where or (text_sources[0].label if text_sources else "the text encoder")
    vision = vision_tower(vision_source)
    towers = [tower for source in text_sources for tower in text_towers(source)]
    if not towers:
        need = vision.known.connect if vision.known else "a CLIP text encoder"
        holds = f" (only {', '.join(others)})" if others else ""
        raise ModelLoadError(f"{where} holds no CLIP text encoder{holds}: connect {need}.")
    return plan_pair(pick_text(towers, vision, text_encoder, where), vision)


def load_clip_pair(text_path: str, vision_path: Optional[str] = None, *, text_encoder: str = "auto",
                   dtype: torch.dtype = torch.float32, progress: Optional[ProgressHook] = None) -> ClipModel:
    """A CLIP from files: a checkpoint, text-encoder file or Hugging Face CLIP folder, and a CLIP Vision file (or
    none, when the first holds both towers)."""
    from .tensors import SafetensorsFiles

    text_source = SafetensorsFiles(text_path)
    vision_source = text_source if vision_path in (None, text_path) else SafetensorsFiles(vision_path)
    return load_pair(pair_from_sources(text_source, vision_source, text_encoder), dtype=dtype, progress=progress)


# -- loading -------------------------------------------------------------------------------------------------------
def load_pair(pair: Pair, *, dtype: torch.dtype = torch.float32, progress: Optional[ProgressHook] = None) -> ClipModel:
    """Build the pair's open_clip CLIP on the CPU, reusing the given tensors wherever layout and dtype allow."""
    import open_clip

    if dtype not in _PRECISION:
        raise ModelLoadError(f"unsupported CLIP dtype {dtype}; use float32, float16 or bfloat16.")
    low = dtype in (torch.float16, torch.bfloat16)
    with torch.device("meta"):
        model = open_clip.CLIP(**pair.open_clip_kwargs(), cast_dtype=dtype if low else None)
    origins = {**pair.text.origins(), **pair.vision.origins()}
    wanted = {k: v for k, v in model.state_dict().items() if k not in ("logit_scale", "logit_bias")}
    _check_shapes(pair, origins, wanted)
    norms = {f"{name}.{p}" for name, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)
             for p in ("weight", "bias")}
    tensors = {}
    steps = Steps(progress, len(origins), f"Converting {pair.arch}")
    try:
        for key, origin in origins.items():
            tower = pair.text if not key.startswith("visual.") else pair.vision
            tensors[key] = _read(tower.ref, origin, torch.float32 if (low and key in norms) else dtype)
            steps.advance()
    finally:
        pair.text.ref.source.close()
        pair.vision.ref.source.close()
    # neither file carries it; every released CLIP of these families ends training at open_clip's cap of 100, and
    # precise mode reads its chances at this temperature
    tensors["logit_scale"] = torch.tensor(math.log(100.0))
    model.load_state_dict(tensors, strict=True, assign=True)
    context = pair.text.context_length
    model.attn_mask = torch.full((context, context), float("-inf")).triu_(1)
    preprocess = open_clip.image_transform(pair.vision.image_size, is_train=False, mean=pair.vision.mean,
                                           std=pair.vision.std)
    tokenizer = open_clip.SimpleTokenizer(context_length=context)
    return ClipModel(model, preprocess, tokenizer, pair.name, key=text_key(model, pair), description=pair.description,
                     notes=pair.notes)


def _check_shapes(pair: Pair, origins: Dict[str, Origin], wanted: Dict[str, torch.Tensor]) -> None:
    missing = sorted(set(wanted) - set(origins))
    if missing:
        raise ModelLoadError(f"{pair.description}: no tensor for {missing[0]} (an unusual CLIP this pack cannot "
                             f"convert).")
    for key, origin in origins.items():
        tower = pair.text if not key.startswith("visual.") else pair.vision
        if not tower.ref.has(origin):
            raise ModelLoadError(f"{tower.label} lacks {tower.ref.key(first_key(origin))}: the file is incomplete "
                                 f"(e.g. a pruned checkpoint); use a complete text encoder or CLIP Vision file.")
        if tuple(tower.ref.shape(origin)) != tuple(wanted[key].shape):
            raise ModelLoadError(f"{tower.label}: {tower.ref.key(first_key(origin))} has shape "
                                 f"{tuple(tower.ref.shape(origin))}, expected {tuple(wanted[key].shape)}: "
                                 f"not a standard CLIP {tower.kind} tower.")


def _read(ref: TowerRef, origin: Origin, dtype: torch.dtype) -> torch.Tensor:
    """A tower tensor in open_clip's layout on the CPU: the very tensor when nothing changes, else a copy."""
    source = ref.source
    if isinstance(origin, str):
        tensor = source.get(ref.key(origin)).detach()
        return tensor.to(device="cpu", dtype=dtype)
    if isinstance(origin, Transposed):
        return source.get(ref.key(origin.key)).detach().t().to(device="cpu", dtype=dtype).contiguous()
    out = torch.empty(ref.shape(origin), dtype=dtype)
    start = 0
    for key in origin.keys:
        part = source.get(ref.key(key)).detach()
        out[start:start + part.shape[0]].copy_(part)
        start += part.shape[0]
    return out


def text_key(model: torch.nn.Module, pair: Pair) -> str:
    """A hash of the text tower: its architecture and every tensor (names, dtypes, shapes, bytes). Label embeddings
    depend on nothing else, so the same text encoder reuses its cache whichever vision tower it is paired with, and
    any change re-embeds."""
    digest = hashlib.sha256(repr((pair.text.open_clip_cfg(), pair.text.activation)).encode())
    for name, tensor in model.state_dict().items():
        if name.startswith("visual.") or name in ("logit_scale", "logit_bias", "attn_mask"):
            continue
        data = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{data.dtype}:{tuple(data.shape)};".encode())
        digest.update(memoryview(data.view(torch.uint8).numpy()))
    return digest.hexdigest()[:16]
