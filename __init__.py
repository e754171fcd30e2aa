"""CLIP Interrogator nodes for ComfyUI: image -> Stable Diffusion prompt.

ComfyUI imports this folder as a package under whatever name it has on disk, so every import here is relative.
"""

from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
