"""Which model files a node's CLIP and CLIP_VISION inputs were loaded from, read off ComfyUI's prompt graph.

A ComfyUI CLIP does not record its file, nor which weights the file lacked: an SD 1.x checkpoint has no clip_l
text_projection, and ComfyUI leaves that weight allocated but never written. The prompt graph does tell: following an
input back through nodes that pass the model along (LoRA loaders, CLIP Set Last Layer ...) reaches the loader and
its file names, whose headers say exactly which weights exist.
"""

from typing import Callable, Optional, Tuple

LOADERS = {  # node class -> (model folder, the inputs that name its files)
    "CheckpointLoaderSimple": ("checkpoints", ("ckpt_name",)),
    "CheckpointLoader": ("checkpoints", ("ckpt_name",)),
    "unCLIPCheckpointLoader": ("checkpoints", ("ckpt_name",)),
    "ImageOnlyCheckpointLoader": ("checkpoints", ("ckpt_name",)),
    "CLIPLoader": ("text_encoders", ("clip_name",)),
    "DualCLIPLoader": ("text_encoders", ("clip_name1", "clip_name2")),
    "TripleCLIPLoader": ("text_encoders", ("clip_name1", "clip_name2", "clip_name3")),
    "QuadrupleCLIPLoader": ("text_encoders", ("clip_name1", "clip_name2", "clip_name3", "clip_name4")),
    "CLIPVisionLoader": ("clip_vision", ("clip_name",)),
}
MAX_HOPS = 32  # a graph is untrusted input: bound the walk


def input_files(prompt, node_id, input_name: str, find: Callable[[str, str], Optional[str]]) -> Tuple[str, ...]:
    """Paths of the files the model on ``input_name`` of node ``node_id`` was loaded from, found with
    ``find(folder, name)``; empty when the graph does not tell (an unknown loader, a file name from a link)."""
    node = prompt.get(str(node_id)) if isinstance(prompt, dict) else None
    link = ((node or {}).get("inputs") or {}).get(input_name)
    for _ in range(MAX_HOPS):
        if not (isinstance(link, list) and len(link) == 2):
            return ()
        node = prompt.get(str(link[0]))
        if not isinstance(node, dict):
            return ()
        inputs = node.get("inputs") or {}
        loader = LOADERS.get(node.get("class_type"))
        if loader:
            folder, names = loader
            files = [inputs.get(name) for name in names]
            paths = [find(folder, f) for f in files if isinstance(f, str)]
            return tuple(paths) if len(paths) == len(files) and all(paths) else ()
        link = inputs.get(input_name)  # a node passing the model along takes it on an input of the same name
    return ()
