"""ComfyUI nodes of the CLIP Interrogator pack."""

from . import comfy_adapter
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

comfy_adapter.environment()  # inside ComfyUI: registers models/clip_interrogator with folder_paths now

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
