"""CLIP Interrogator engine: image -> Stable Diffusion prompt. Plain Python; knows nothing of ComfyUI."""

from .caption import CAPTION_MODELS, DEFAULT_CAPTION_MODEL, NO_CAPTION, Captioner, load_captioner
from .clip_model import DEFAULT_CLIP, PRESETS, ClipModel, load_clip
from .clip_pair import load_clip_pair
from .errors import (Cancelled, ImageError, InterrogatorError, ModelLoadError, ModelNotFoundError, VocabError)
from .interrogator import Interrogator, Settings, caption_needed
from .modes import MODES, Mode, get_mode
from .vocab import TermList, Vocabulary

__all__ = [
    "CAPTION_MODELS", "DEFAULT_CAPTION_MODEL", "NO_CAPTION", "Captioner", "load_captioner",
    "DEFAULT_CLIP", "PRESETS", "ClipModel", "load_clip", "load_clip_pair",
    "Cancelled", "ImageError", "InterrogatorError", "ModelLoadError", "ModelNotFoundError", "VocabError",
    "MODES", "Mode", "get_mode", "Interrogator", "Settings", "caption_needed", "TermList", "Vocabulary",
]
