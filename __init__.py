"""CLIP Interrogator nodes for ComfyUI: image -> Stable Diffusion prompt.

ComfyUI imports this folder as a package under whatever name it has on disk, so every import here is relative.
"""

# pytest, collecting a checkout whose folder name is no identifier (users clone into comfyui-clip-interrogator-nodes),
# loads this file on its own with no package to import from; ComfyUI always imports the folder as a package.
if __package__:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
