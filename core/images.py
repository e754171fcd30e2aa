"""Turn what users hand us (PIL images, ComfyUI IMAGE tensors, files) into RGB PIL images, as users see them.

One place decodes every PIL mode (16-bit and float ones scaled, not clipped), applies EXIF orientation, and checks
tensors are ComfyUI's float 0..1 layout; anything else is an ImageError that says what was wrong.
"""

import os
import warnings
from typing import Iterable, Iterator, List, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
# Checked from the file header, before decoding: a few bytes can claim billions of pixels (a decompression bomb).
# 128 megapixels: more than any camera's photo; prompts are computed from a 224-448 px view anyway.
MAX_PIXELS = 2**27
# How far a float tensor may stray outside 0..1 (filters and upscalers overshoot a little) before it is taken for
# another layout (0..255, -1..1) and refused.
TENSOR_SLACK = 0.5
_EXIF_ORIENTATION = 0x0112
# The high-bit-depth modes, by the range their values span: convert("RGB") would clip them (16-bit to white,
# float 0..1 to black).
_RANGES = {"I;16": 65535.0, "I;16L": 65535.0, "I;16B": 65535.0, "I;16N": 65535.0, "I": 65535.0, "F": 1.0}


def _check_size(image: Image.Image, what: str) -> None:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{what} is empty ({image.width}x{image.height} pixels); pass an image with content.")


def to_rgb(image: Image.Image) -> Image.Image:
    """The RGB image a viewer shows: EXIF orientation applied, 16-bit and float pixels scaled to 8 bits."""
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        image = ImageOps.exif_transpose(image)
    if image.mode == "RGB":
        return image
    if image.mode in _RANGES:
        pixels = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)  # "I" (32-bit) holds 16-bit files
        scaled = np.clip(np.rint(pixels * (255.0 / _RANGES[image.mode])), 0, 255).astype(np.uint8)
        return Image.fromarray(scaled, "L").convert("RGB")
    for route in (("RGB",), ("LA", "RGB")):  # premultiplied "La" converts only to "LA"
        try:
            for mode in route:
                image = image.convert(mode)
            return image
        except ValueError:
            continue
    raise ImageError(f"cannot convert an image of PIL mode {image.mode} to RGB; save it as an RGB PNG.")


def tensor_to_pil(tensor) -> List[Image.Image]:
    """A ComfyUI IMAGE ``[B,H,W,C]`` (or ``[H,W,C]``) float tensor in 0..1 becomes B RGB images.

    Rounding (not truncation) recovers the exact 8-bit pixels ComfyUI's loader divided by 255, so a tensor
    and the PIL image it came from give the same prompt. Integer tensors, NaN, and floats far outside 0..1 are
    refused (they would silently become white or black images).
    """
    dtype = str(getattr(tensor, "dtype", "")).replace("torch.", "")
    if "float" not in dtype:
        raise ImageError(f"expected an image tensor of floats in 0..1 (ComfyUI's IMAGE), got {dtype or 'no dtype'}"
                         + ("; divide 8-bit pixels by 255." if "int" in dtype else "."))
    array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"expected an image tensor shaped [batch, height, width, channels] with 1, 3 or 4 "
                         f"channels, got shape {list(array.shape)}.")
    if 0 in array.shape:
        raise ImageError(f"the image batch is empty (shape {list(array.shape)}); connect an image with content.")
    if not np.isfinite(array).all():
        raise ImageError(f"the image tensor holds NaN or infinite values ({int((~np.isfinite(array)).sum())} of "
                         f"{array.size}); the node that made it failed.")
    low, high = float(array.min()), float(array.max())
    if low < -TENSOR_SLACK or high > 1 + TENSOR_SLACK:
        hint = "divide by 255" if high > 1 + TENSOR_SLACK and low >= 0 else "map it to 0..1 first"
        raise ImageError(f"image tensor values span {low:g}..{high:g}, but an IMAGE holds 0..1; {hint}.")
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    images = []
    for item in pixels:
        if item.shape[-1] == 1:
            images.append(Image.fromarray(item[..., 0], "L"))
        else:
            images.append(Image.fromarray(item, "RGBA" if item.shape[-1] == 4 else "RGB"))
    return [to_rgb(image) for image in images]


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file as RGB, with an error that names the file; its size is checked before decoding."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit applies, below
            with Image.open(path) as image:
                if image.width * image.height > MAX_PIXELS:
                    raise ImageError(_too_large(path, image.width, image.height))
                image.load()
                _check_size(image, f"image {path}")
                return to_rgb(image)
    except Image.DecompressionBombError:
        raise ImageError(_too_large(path)) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"cannot read image {path}: {error}. Is it a PNG/JPEG/WebP file?") from error


def _too_large(path: str, width: int = 0, height: int = 0) -> str:
    size = f" ({width}x{height} pixels)" if width else ""
    return (f"image {path}{size} is larger than {MAX_PIXELS // 2**20} megapixels, the limit for one image "
            f"(a small file that claims a huge size is a decompression bomb); scale it down first.")


def iter_images(paths: Iterable[Union[str, os.PathLike]]) -> Iterator[Tuple[str, Union[Image.Image, ImageError]]]:
    """``(path, image)`` per file, opened one at a time as the caller asks; an unreadable file gives
    ``(path, ImageError)`` instead, so one bad file in a folder stops nothing."""
    for path in map(os.fspath, paths):
        try:
            yield path, open_image(path)
        except ImageError as error:
            yield path, error


def as_pil_list(images) -> List[Image.Image]:
    """Accept one PIL image, a list of them, a file path, or an IMAGE tensor; return RGB PIL images."""
    if isinstance(images, Image.Image):
        images = [images]
    elif isinstance(images, (str, os.PathLike)):
        return [open_image(images)]
    elif hasattr(images, "shape"):
        return tensor_to_pil(images)
    elif isinstance(images, (bytes, dict)) or not hasattr(images, "__iter__"):
        raise ImageError(f"expected a PIL image, a file path, an image tensor or a list of them, got "
                         f"{type(images).__name__}.")
    result = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            result.append(open_image(image))
            continue
        if not isinstance(image, Image.Image):
            raise ImageError(f"expected a PIL image, a file path or an image tensor, got {type(image).__name__}.")
        _check_size(image, "the image")
        result.append(to_rgb(image))
    if not result:
        raise ImageError("no images were given.")
    return result


def find_images(paths: Iterable[Union[str, os.PathLike]]) -> List[str]:
    """Expand files and folders (walked recursively, sorted) into image file paths."""
    found: List[str] = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            for root, dirs, files in os.walk(path):
                dirs.sort()
                found.extend(os.path.join(root, f) for f in sorted(files) if f.lower().endswith(IMAGE_EXTENSIONS))
        elif os.path.exists(path):
            found.append(path)
        else:
            raise ImageError(f"no such file or folder: {path}")
    return found


def detail_crops(image: Image.Image) -> List[Image.Image]:
    """The four quarters and the centre half of an image: where a small detail is seen at twice the size."""
    w, h = image.size
    boxes = [(0, 0, w // 2, h // 2), (w // 2, 0, w, h // 2), (0, h // 2, w // 2, h), (w // 2, h // 2, w, h),
             (w // 4, h // 4, w // 4 + w // 2, h // 4 + h // 2)]
    return [image.crop(box) for box in boxes]
