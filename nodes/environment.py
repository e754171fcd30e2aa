"""Where the nodes run: what they need from their host (ComfyUI, or nothing), as one small protocol.

:mod:`.comfy_adapter` implements it inside ComfyUI; :class:`PlainEnvironment` stands in elsewhere (tests, scripts):
one models folder from ``CLIP_INTERROGATOR_MODELS``, the best local device, a simple memory budget, no cancel, and
the T5 tokenizer folder ``CLIP_INTERROGATOR_T5_TOKENIZER`` when set.
"""

import os
from typing import List, Optional, Protocol, Tuple

import torch

from ..core.progress import ProgressHook
from . import comfy_adapter
from .model_cache import SimpleMemory


class Environment(Protocol):
    name: str

    def model_folders(self) -> List[str]:
        """Folders models are looked for in, the first one also holding caches and user term lists."""

    def list_files(self) -> List[str]:
        """``.safetensors`` files in those folders, relative to them."""

    def host_files(self, kind: str) -> List[Tuple[str, str]]:
        """(name, path) of the host's own ``.safetensors`` model files of a kind: ``checkpoints``,
        ``text_encoders`` or ``clip_vision`` (ComfyUI's folders), which CLIP pairs are made from."""

    def devices(self, choice: str) -> Tuple[torch.device, torch.device]:
        """(where models run, where they wait) for a device choice of Load Interrogator."""

    def auto_dtype(self, device: torch.device) -> torch.dtype: ...

    def memory(self):
        """The memory manager of the model cache (see :mod:`.model_cache`)."""

    def progress(self) -> Optional[ProgressHook]:
        """A fresh progress hook for one node run; it raises to cancel."""

    def check_interrupt(self) -> None: ...

    def t5_tokenizer_folder(self) -> Optional[str]:
        """A folder with a T5 tokenizer.json to count t5xxl prompts with, or None."""


class PlainEnvironment:
    name = "plain"

    def __init__(self, models_dir: Optional[str] = None, budget_bytes: Optional[int] = None,
                 host_models_dir: Optional[str] = None):
        self.models_dir = models_dir or os.environ.get("CLIP_INTERROGATOR_MODELS") or \
            os.path.join(os.path.expanduser("~"), ".cache", "clip_interrogator_nodes")
        self.budget_bytes = budget_bytes
        self.host_models_dir = host_models_dir  # a ComfyUI-style models folder (checkpoints/, clip_vision/ ...)

    def model_folders(self) -> List[str]:
        return [self.models_dir]

    def list_files(self) -> List[str]:
        found = []
        for root, dirs, files in os.walk(self.models_dir):
            dirs.sort()
            rel = os.path.relpath(root, self.models_dir)
            found.extend(f if rel == "." else os.path.join(rel, f).replace(os.sep, "/")
                         for f in sorted(files) if f.endswith(".safetensors"))
        return found

    def host_files(self, kind: str) -> List[Tuple[str, str]]:
        folder = os.path.join(self.host_models_dir, kind) if self.host_models_dir else None
        if not folder or not os.path.isdir(folder):
            return []
        return [(name, os.path.join(folder, name)) for name in sorted(os.listdir(folder))
                if name.endswith(".safetensors")]

    def devices(self, choice: str) -> Tuple[torch.device, torch.device]:
        cpu = torch.device("cpu")
        if choice == "cpu" or not torch.cuda.is_available():
            return cpu, cpu
        return torch.device("cuda"), cpu

    def auto_dtype(self, device: torch.device) -> torch.dtype:
        return torch.float16 if device.type == "cuda" else torch.float32

    def memory(self) -> SimpleMemory:
        budget = self.budget_bytes
        if budget is None and torch.cuda.is_available():
            budget = int(torch.cuda.get_device_properties(0).total_memory * 0.8)
        return SimpleMemory(budget)

    def progress(self) -> Optional[ProgressHook]:
        return None

    def check_interrupt(self) -> None:
        pass

    def t5_tokenizer_folder(self) -> Optional[str]:
        return os.environ.get("CLIP_INTERROGATOR_T5_TOKENIZER") or None


def current_environment() -> Environment:
    """ComfyUI's environment when running inside it, else the plain one."""
    return comfy_adapter.environment() or PlainEnvironment()
