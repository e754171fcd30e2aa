"""Turn what users hand us (PIL images, ComfyUI IMAGE tensors, files) into a list of RGB PIL images."""

import os
from typing import Iterable, Iterator, List, Tuple, Union

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import ImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")


def _check_size(image: Image.Image, what: str) -> None:
    if image.width == 0 or image.height == 0:
        raise ImageError(f"{what} is empty ({image.width}x{image.height} pixels); pass an image with content.")


def _to_rgb(image: Image.Image) -> Image.Image:
    return image if image.mode == "RGB" else image.convert("RGB")


def tensor_to_pil(tensor) -> List[Image.Image]:
    """A ComfyUI IMAGE ``[B,H,W,C]`` (or ``[H,W,C]``) float tensor in 0..1 becomes B RGB images.

    Rounding (not truncation) recovers the exact 8-bit pixels ComfyUI's loader divided by 255, so a tensor
    and the PIL image it came from give the same prompt.
    """
    array = tensor.detach().float().cpu().numpy() if hasattr(tensor, "detach") else np.asarray(tensor, np.float32)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] not in (1, 3, 4):
        raise ImageError(f"expected an image tensor shaped [batch, height, width, channels] with 1, 3 or 4 "
                         f"channels, got shape {list(array.shape)}.")
    if 0 in array.shape:
        raise ImageError(f"the image batch is empty (shape {list(array.shape)}); connect an image with content.")
    pixels = np.clip(np.rint(array * 255.0), 0, 255).astype(np.uint8)
    images = []
    for item in pixels:
        if item.shape[-1] == 1:
            images.append(Image.fromarray(item[..., 0], "L"))
        else:
            images.append(Image.fromarray(item, "RGBA" if item.shape[-1] == 4 else "RGB"))
    return [_to_rgb(image) for image in images]


def open_image(path: Union[str, os.PathLike]) -> Image.Image:
    """Open an image file as RGB, with an error that names the file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise ImageError(f"image file not found: {path}")
    try:
        with Image.open(path) as image:
            image.load()
            _check_size(image, f"image {path}")
            return _to_rgb(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise ImageError(f"cannot read image {path}: {error}. Is it a PNG/JPEG/WebP file?") from error


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
    result = []
    for image in images:
        if isinstance(image, (str, os.PathLike)):
            result.append(open_image(image))
            continue
        if not isinstance(image, Image.Image):
            raise ImageError(f"expected a PIL image, a file path or an image tensor, got {type(image).__name__}.")
        _check_size(image, "the image")
        result.append(_to_rgb(image))
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
