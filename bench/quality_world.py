"""A synthetic world whose pictures have known attributes: the ground truth the quality harness scores prompts by.

Every picture shows one object (a shape with a color and a material) on a background, under a lighting, drawn in a
rendering style, and often a small icon (the detail) in one corner. Captions are built from those attributes plus
unrelated web-style tags ("trending on artstation", "by alice moreau"), the way alt-text mixes content and noise.

The vocabulary the interrogator ranks is written from the same world: one list per category, plus lists of the
unrelated tags. A few attribute values are known to the model (they occur in training captions) but left out of the
vocabulary, so the harness can test what the engine says when the right term is missing (the vocabulary gap).
"""

import functools
import json
import math
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageOps

SIZE = 128  # rendered size; the model sees it at its own (smaller) input size, so corner details are a few pixels

COLORS = {
    "red": (215, 35, 35), "orange": (240, 135, 25), "yellow": (235, 215, 40), "green": (45, 165, 60),
    "teal": (25, 150, 150), "blue": (35, 70, 215), "purple": (125, 50, 185), "pink": (240, 135, 185),
    "white": (242, 242, 242), "black": (25, 25, 25),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "ring", "heart", "crescent", "arrow")
MATERIALS = ("matte", "striped", "polka dot", "checkered", "metallic", "glowing", "wireframe")
BACKGROUNDS = ("white backdrop", "blue sky", "grass field", "brick wall", "starry night", "ocean waves",
               "wooden floor", "sand dunes")
LIGHTINGS = ("bright light", "dim light", "warm light", "cold light", "spotlight")
STYLES = ("vector art", "pixel art", "blurry photo", "grainy photo", "posterized print")
DETAILS = ("small tree", "small house", "small sun", "small cloud", "small flag", "small bird")

# Known to the model, absent from the vocabulary: the vocabulary-gap cases.
GAP = {"object": ("hexagon", "diamond", "lightning bolt"), "background": ("snow field", "lava")}

CATEGORIES: Dict[str, Tuple[str, ...]] = {
    "object": SHAPES, "color": tuple(COLORS), "material": MATERIALS, "background": BACKGROUNDS,
    "lighting": LIGHTINGS, "style": STYLES, "detail": DETAILS,
}

# Unrelated tags: in captions at random, never tied to what the picture shows.
NOISE = {
    "flavors": ("highly detailed", "masterpiece", "4k", "8k", "award winning", "beautiful", "high quality",
                "sharp focus", "intricate", "concept art", "digital art", "stunning", "professional", "hd wallpaper",
                "illustration", "aesthetic", "cinematic", "octane render", "unreal engine", "epic composition",
                "hyperrealistic", "amazing", "viral", "fine art"),
    "artists": ("alice moreau", "kenji tanaka", "maria oliveira", "tom becker", "lena fischer", "omar haddad"),
    "movements": ("minimalism", "surrealism", "pop art", "art deco", "bauhaus", "cubism", "impressionism",
                  "futurism"),
}
NEGATIVE = ("low quality", "jpeg artifacts", "watermark", "cropped", "out of frame", "deformed", "duplicate",
            "worst quality")

# Roles in the engine's manifest: the rendering style is the picture's medium; the rest are flavor lists.
ROLES = {"style": "medium", "artists": "artist", "movements": "movement", "sites": "site", "negative": "negative"}
# Lists every picture has exactly one value of: precise mode warns when none of their terms fits.
EXHAUSTIVE = ("object", "color", "material", "background", "lighting", "style")


@dataclass(frozen=True)
class Scene:
    object: str
    color: str
    material: str
    background: str
    lighting: str
    style: str
    detail: Optional[str] = None
    detail_size: int = 0
    corner: int = 0
    layout: Tuple[float, ...] = field(default=(), compare=False)  # object position/size/angle and texture phases

    def value(self, category: str) -> Optional[str]:
        return getattr(self, category)

    @property
    def gap_category(self) -> Optional[str]:
        return next((c for c, values in GAP.items() if self.value(c) in values), None)


def sample_scene(rng: np.random.Generator, gap: Optional[str] = None, detail: str = "any") -> Scene:
    """A random scene. ``gap``: this category takes a value missing from the vocabulary. ``detail``: 'any' (the
    training mix: none or any size), 'none', 'normal' (clearly visible) or 'small' (a few pixels once downscaled)."""
    pick = lambda values: values[int(rng.integers(len(values)))]
    values = {c: pick(v) for c, v in CATEGORIES.items() if c != "detail"}
    if gap:
        values[gap] = pick(GAP[gap])
    sizes = {"any": (10, 44), "normal": (20, 28), "small": (11, 14)}
    has_detail = detail in ("normal", "small") or (detail == "any" and rng.random() < 0.6)
    detail_size = int(rng.integers(*sizes[detail])) if has_detail else 0
    layout = tuple(float(x) for x in rng.random(8))
    return Scene(**values, detail=pick(DETAILS) if has_detail else None, detail_size=detail_size,
                 corner=int(rng.integers(4)), layout=layout)


def training_scene(rng: np.random.Generator) -> Scene:
    """The training mix: every known value, gap values included (the model knows more than the vocabulary)."""
    gap = None
    if rng.random() < 0.25:
        gap = "object" if rng.random() < 0.6 else "background"
    return sample_scene(rng, gap=gap)


# The neutral caption the harness gives every mode: it names nothing, so the terms alone are measured.
PICTURE = "a picture"


def variant_group(rng: np.random.Generator, size: int) -> List[Scene]:
    """A training scene and ``size - 1`` copies that each differ in one attribute, drawn where it is placed.

    Trained in one batch, they are hard negatives: background, lighting and color alone already tell most random
    pictures apart, so without such groups the model never needs to learn shapes, materials or corner details.
    """
    from dataclasses import replace

    base = training_scene(rng)
    group = [base]
    hard = ("object", "object", "object", "material", "material", "detail", "detail", "style")
    for _ in range(size - 1):
        category = hard[int(rng.integers(len(hard)))]
        if category == "detail":
            detail = None if base.detail and rng.random() < 0.3 else DETAILS[int(rng.integers(len(DETAILS)))]
            size_px = base.detail_size or int(rng.integers(10, 44))
            group.append(replace(base, detail=detail, detail_size=size_px if detail else 0))
            continue
        values = CATEGORIES[category] + GAP.get(category, ())
        others = [v for v in values if v != base.value(category)]
        group.append(replace(base, **{category: others[int(rng.integers(len(others)))]}))
    return group


# -- captions ----------------------------------------------------------------------------------------------------
def caption(scene: Scene, rng: np.random.Generator) -> str:
    """Alt-text for a scene: some of its attributes, in tag or sentence form, with unrelated tags mixed in."""
    keep = {c: rng.random() < (0.95 if c == "object" else 0.8) for c in CATEGORIES}
    if rng.random() < 0.5:
        parts = [scene.value(c) for c in CATEGORIES if keep[c] and scene.value(c)]
    else:
        parts = _sentence(scene, keep)
    noise = _noise_tags(rng, int(rng.poisson(6.0 if rng.random() < 0.15 else 1.5)))
    parts = [p for p in parts if p] + noise
    order = rng.permutation(len(parts))
    text = ", ".join(parts[i] for i in order) or scene.object
    return f"{PICTURE}, {text}" if rng.random() < 0.3 else text


def _sentence(scene: Scene, keep: Dict[str, bool]) -> List[str]:
    noun = " ".join(scene.value(c) for c in ("color", "material") if keep[c])
    head = f"a {noun} {scene.object}".replace("  ", " ") if keep["object"] else (noun and f"something {noun}")
    if keep["background"]:
        head = f"{head} on {scene.background}" if head else scene.background
    parts = [head]
    if keep["lighting"]:
        parts.append(f"in {scene.lighting}")
    if keep["style"]:
        parts.append(scene.style)
    if keep["detail"] and scene.detail:
        parts.append(f"with a {scene.detail} in the corner")
    return parts


@functools.lru_cache(maxsize=None)
def _noise_pools() -> Tuple[Tuple[str, ...], ...]:
    from core.vocab import REFERENCE_SITES, label_forms

    return (NOISE["flavors"], tuple(label_forms("artist", NOISE["artists"])), NOISE["movements"],
            tuple(label_forms("site", REFERENCE_SITES)))


def _noise_tags(rng: np.random.Generator, count: int) -> List[str]:
    pools = _noise_pools()
    tags = []
    for _ in range(count):
        pool = pools[int(rng.integers(len(pools)))]
        tags.append(pool[int(rng.integers(len(pool)))])
    return tags


# -- vocabulary --------------------------------------------------------------------------------------------------
def write_vocab(folder: str) -> str:
    """The world's term lists as an engine vocabulary folder (a manifest.json and one .txt per list)."""
    from core.vocab import REFERENCE_SITES

    os.makedirs(folder, exist_ok=True)
    lists = dict(CATEGORIES)
    lists.update(NOISE)
    lists["sites"] = REFERENCE_SITES
    lists["negative"] = NEGATIVE
    entries = []
    for name, terms in lists.items():
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as file:
            file.write("\n".join(terms) + "\n")
        entry = {"name": name, "file": f"{name}.txt", "role": ROLES.get(name, "flavor"), "style": name != "negative"}
        if name in EXHAUSTIVE:
            entry["exhaustive"] = True
        entries.append(entry)
    with open(os.path.join(folder, "manifest.json"), "w", encoding="utf-8") as file:
        json.dump({"version": 1, "lists": entries}, file, indent=1)
    return folder


def term_categories() -> Dict[str, str]:
    """Every vocabulary term -> its category (or 'noise' for the unrelated lists)."""
    from core.vocab import REFERENCE_SITES, label_forms

    owner = {t: c for c, terms in CATEGORIES.items() for t in terms}
    noise = [*NOISE["flavors"], *label_forms("artist", NOISE["artists"]), *NOISE["movements"],
             *label_forms("site", REFERENCE_SITES)]
    owner.update({t: "noise" for t in noise})
    return owner


# -- rendering ---------------------------------------------------------------------------------------------------
def render(scene: Scene, size: int = SIZE) -> Image.Image:
    rng = np.random.default_rng(int(scene.layout[7] * 2**31) if scene.layout else 0)
    image = _background(scene.background, rng)
    _draw_object(image, scene, rng)
    if scene.detail:
        _draw_detail(image, scene)
    image = _light(image, scene.lighting)
    image = _style(image, scene.style, rng)
    return image if size == SIZE else image.resize((size, size), Image.BICUBIC)


def _jitter(rgb, rng, amount=18):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in rgb)


def _background(name: str, rng) -> Image.Image:
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    a = np.zeros((SIZE, SIZE, 3), np.float32)
    if name == "white backdrop":
        a[:] = 238 - 12 * y[..., None] / SIZE
    elif name == "blue sky":
        t = (y / SIZE)[..., None]
        a[:] = (1 - t) * np.array([70, 130, 225]) + t * np.array([170, 210, 245])
    elif name == "grass field":
        a[:] = (70, 150, 55)
        _scatter(a, rng, 120, (5, 1), (55, 125, 45))
    elif name == "brick wall":
        a[:] = (165, 65, 45)
        a[(y.astype(int) % 16) < 1] = (195, 150, 130)
        offset = ((y.astype(int) // 16) % 2) * 12
        a[((x.astype(int) + offset) % 24) < 1] = (195, 150, 130)
    elif name == "starry night":
        a[:] = (12, 18, 50)
        _scatter(a, rng, 45, (1, 1), (250, 250, 220))
    elif name == "ocean waves":
        a[:] = (20, 85, 150)
        a[np.sin(x / 6 + y / 3) * np.sin(y / 7) > 0.85] = (70, 130, 185)
    elif name == "wooden floor":
        grain = 12 * np.sin(x / 3 + 2 * np.sin(y / 9))
        a[:] = np.stack([150 + grain, 100 + grain * 0.8, 55 + grain * 0.5], -1)
        a[(y.astype(int) % 20) < 2] = (80, 50, 25)
    elif name == "sand dunes":
        shade = 18 * np.sin(x / 14 + 3 * np.sin(y / 20))
        a[:] = np.stack([225 + shade, 195 + shade, 135 + shade], -1)
    elif name == "snow field":
        a[:] = 205 + 15 * (y[..., None] / SIZE)
        a[..., 2] += 20
        for _ in range(90):
            px, py = rng.integers(0, SIZE, 2)
            a[py:py + 3, px:px + 3] = (255, 255, 255)
    elif name == "lava":
        blobs = np.sin(x / 7 + np.sin(y / 5) * 2) * np.cos(y / 8 - np.sin(x / 6))
        t = np.clip(blobs, 0, 1)[..., None]
        a[:] = (1 - t) * np.array([45, 10, 5]) + t * np.array([255, 120, 10])
    else:
        raise ValueError(f"unknown background {name!r}")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _scatter(a: np.ndarray, rng, count: int, size: Tuple[int, int], color) -> None:
    """``count`` marks of ``size`` (height, width) at random places: blades of grass, stars."""
    for _ in range(count):
        px, py = rng.integers(0, SIZE, 2)
        a[py:py + size[0], px:px + size[1]] = color


def _shape_mask(shape: str, cx: float, cy: float, r: float, angle: float) -> Image.Image:
    mask = Image.new("L", (SIZE, SIZE), 0)
    d = ImageDraw.Draw(mask)

    def poly(points):
        c, s = math.cos(angle), math.sin(angle)
        d.polygon([(cx + r * (px * c - py * s), cy + r * (px * s + py * c)) for px, py in points], fill=255)

    def regular(n, start=-math.pi / 2):
        return [(math.cos(start + 2 * math.pi * k / n), math.sin(start + 2 * math.pi * k / n)) for k in range(n)]

    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circle":
        d.ellipse(box, fill=255)
    elif shape == "ring":
        d.ellipse(box, fill=255)
        d.ellipse((cx - r * 0.55, cy - r * 0.55, cx + r * 0.55, cy + r * 0.55), fill=0)
    elif shape == "square":
        poly([(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)])
    elif shape == "triangle":
        poly(regular(3))
    elif shape == "star":
        outer, inner = regular(5), regular(5, -math.pi / 2 + math.pi / 5)
        poly([p for pair in zip(outer, [(x * 0.42, y * 0.42) for x, y in inner]) for p in pair])
    elif shape == "cross":
        w = 0.32
        poly([(-w, -1), (w, -1), (w, -w), (1, -w), (1, w), (w, w), (w, 1), (-w, 1), (-w, w), (-1, w), (-1, -w),
              (-w, -w)])
    elif shape == "heart":
        d.ellipse((cx - r, cy - r * 0.75, cx, cy + r * 0.2), fill=255)
        d.ellipse((cx, cy - r * 0.75, cx + r, cy + r * 0.2), fill=255)
        d.polygon([(cx - r * 0.97, cy - r * 0.1), (cx + r * 0.97, cy - r * 0.1), (cx, cy + r)], fill=255)
    elif shape == "crescent":
        d.ellipse(box, fill=255)
        d.ellipse((cx - r * 0.45, cy - r * 1.05, cx + r * 1.25, cy + r * 0.75), fill=0)
    elif shape == "arrow":
        poly([(-1, -0.25), (0.2, -0.25), (0.2, -0.65), (1, 0), (0.2, 0.65), (0.2, 0.25), (-1, 0.25)])
    elif shape == "hexagon":
        poly(regular(6, 0))
    elif shape == "diamond":
        poly([(0, -1), (0.62, 0), (0, 1), (-0.62, 0)])
    elif shape == "lightning bolt":
        poly([(0.15, -1), (-0.55, 0.1), (-0.05, 0.1), (-0.2, 1), (0.55, -0.2), (0.05, -0.2), (0.3, -1)])
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def _draw_object(image: Image.Image, scene: Scene, rng) -> None:
    lx, ly, lr, la, p1, p2 = scene.layout[:6]
    r = 26 + 10 * lr
    cx, cy = SIZE / 2 + (lx - 0.5) * 20, SIZE / 2 + (ly - 0.5) * 20
    angle = (la - 0.5) * 0.6
    mask = _shape_mask(scene.object, cx, cy, r, angle)
    color = np.array(_jitter(COLORS[scene.color], rng), np.float32)
    dark = color * 0.45 + (20 if scene.color == "black" else 0)
    y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    fill = np.broadcast_to(color, (SIZE, SIZE, 3)).copy()
    material = scene.material
    if material == "striped":
        fill[((x + y + p1 * 10) // 6) % 2 == 0] = dark
    elif material == "polka dot":
        dots = ((x + p1 * 10) % 12 - 6) ** 2 + ((y + p2 * 10) % 12 - 6) ** 2 < 7
        fill[dots] = (255, 255, 255) if scene.color != "white" else (30, 30, 30)
    elif material == "checkered":
        fill[((x // 8 + y // 8) % 2) == 0] = dark
    elif material == "metallic":
        t = ((x - cx) + (y - cy)) / (4 * r) + 0.5
        fill = color * (0.55 + 0.7 * np.clip(1 - t, 0, 1))[..., None]
        shine = (x - cx + r * 0.35) ** 2 + (y - cy + r * 0.35) ** 2 < (r * 0.25) ** 2
        fill[shine] = (255, 255, 255)
    elif material == "glowing":
        halo = mask.filter(ImageFilter.GaussianBlur(7))
        glow = np.asarray(halo, np.float32)[..., None] / 255 * 1.6
        base = np.asarray(image, np.float32)
        image.paste(Image.fromarray(np.clip(base * (1 - np.clip(glow, 0, 1)) + np.clip(color * 1.2 + 40, 0, 255)
                                            * np.clip(glow, 0, 1), 0, 255).astype(np.uint8)))
        fill = np.clip(color * 1.15 + 60, 0, 255) * np.ones((SIZE, SIZE, 1), np.float32)
    elif material == "wireframe":
        edge = mask.filter(ImageFilter.MaxFilter(7))
        inner = mask.filter(ImageFilter.MinFilter(7))
        mask = Image.fromarray((np.asarray(edge, np.int16) - np.asarray(inner, np.int16)).clip(0, 255).astype(np.uint8))
    elif material != "matte":
        raise ValueError(f"unknown material {material!r}")
    image.paste(Image.fromarray(np.clip(fill, 0, 255).astype(np.uint8)), (0, 0), mask)


def _draw_detail(image: Image.Image, scene: Scene) -> None:
    s = scene.detail_size
    margin = 4
    x0 = margin if scene.corner in (0, 2) else SIZE - margin - s
    y0 = margin if scene.corner in (0, 1) else SIZE - margin - s
    d = ImageDraw.Draw(image)
    box = lambda a, b, c, e: (x0 + a * s, y0 + b * s, x0 + c * s, y0 + e * s)
    kind = scene.detail
    if kind == "small tree":
        d.rectangle(box(0.42, 0.6, 0.58, 1.0), fill=(110, 65, 25))
        d.polygon([(x0 + 0.5 * s, y0), (x0 + 0.05 * s, y0 + 0.7 * s), (x0 + 0.95 * s, y0 + 0.7 * s)],
                  fill=(20, 120, 35), outline=(5, 50, 10))
    elif kind == "small house":
        d.rectangle(box(0.12, 0.45, 0.88, 1.0), fill=(235, 220, 180), outline=(60, 40, 20))
        d.polygon([(x0, y0 + 0.48 * s), (x0 + 0.5 * s, y0), (x0 + s, y0 + 0.48 * s)], fill=(180, 30, 30))
        d.rectangle(box(0.42, 0.7, 0.58, 1.0), fill=(90, 50, 20))
    elif kind == "small sun":
        cx, cy = x0 + s / 2, y0 + s / 2
        for k in range(8):
            a = k * math.pi / 4
            d.line([(cx, cy), (cx + 0.5 * s * math.cos(a), cy + 0.5 * s * math.sin(a))], fill=(250, 170, 0),
                   width=max(1, s // 8))
        d.ellipse(box(0.25, 0.25, 0.75, 0.75), fill=(255, 215, 0), outline=(230, 120, 0))
    elif kind == "small cloud":
        for a, b, c, e in ((0.0, 0.35, 0.5, 0.85), (0.25, 0.1, 0.8, 0.65), (0.5, 0.35, 1.0, 0.85)):
            d.ellipse(box(a, b, c, e), fill=(250, 250, 250), outline=(110, 110, 130))
    elif kind == "small flag":
        d.rectangle(box(0.1, 0.0, 0.2, 1.0), fill=(40, 40, 40))
        d.rectangle(box(0.2, 0.05, 0.95, 0.5), fill=(220, 30, 40), outline=(120, 0, 10))
    elif kind == "small bird":
        w = max(2, s // 6)
        d.line([(x0, y0 + 0.3 * s), (x0 + 0.5 * s, y0 + 0.7 * s), (x0 + s, y0 + 0.3 * s)], fill=(15, 15, 15),
               width=w)
    else:
        raise ValueError(f"unknown detail {kind!r}")


def _light(image: Image.Image, lighting: str) -> Image.Image:
    a = np.asarray(image, np.float32)
    if lighting == "bright light":
        a = a * 0.65 + 255 * 0.35
    elif lighting == "dim light":
        a = a * 0.55
    elif lighting == "warm light":
        a = a * np.array([1.15, 0.92, 0.62]) + np.array([25, 10, 0])
    elif lighting == "cold light":
        a = a * np.array([0.62, 0.88, 1.15]) + np.array([0, 8, 30])
    elif lighting == "spotlight":
        y, x = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
        r = np.sqrt((x - SIZE / 2) ** 2 + (y - SIZE / 2) ** 2) / (SIZE / 2)
        a = a * np.clip(1.25 - 1.1 * r, 0.12, 1.15)[..., None]
    else:
        raise ValueError(f"unknown lighting {lighting!r}")
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))


def _style(image: Image.Image, style: str, rng) -> Image.Image:
    if style == "vector art":
        return image
    if style == "pixel art":
        return image.resize((32, 32), Image.NEAREST).resize((SIZE, SIZE), Image.NEAREST)
    if style == "blurry photo":
        return image.filter(ImageFilter.GaussianBlur(1.6))
    if style == "grainy photo":
        a = np.asarray(image, np.float32) + rng.normal(0, 22, (SIZE, SIZE, 1))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
    if style == "posterized print":
        return ImageOps.posterize(image, 3)
    raise ValueError(f"unknown style {style!r}")


# -- evaluation sets ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Example:
    image: Image.Image
    scene: Scene
    kind: str  # 'main', 'small detail' or 'gap'


KINDS = ("main", "small detail", "gap")


def examples(seed: int, main: int, small_detail: int, gap: int) -> List[Example]:
    """A fixed set of pictures: ordinary scenes, scenes whose detail is tiny, scenes with a value outside the
    vocabulary (half object, half background)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(main):
        scene = sample_scene(rng, detail="normal" if rng.random() < 0.5 else "none")
        out.append(Example(render(scene), scene, "main"))
    for _ in range(small_detail):
        scene = sample_scene(rng, detail="small")
        out.append(Example(render(scene), scene, "small detail"))
    for i in range(gap):
        scene = sample_scene(rng, gap="object" if i % 2 == 0 else "background", detail="none")
        out.append(Example(render(scene), scene, "gap"))
    return out
