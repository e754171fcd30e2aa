"""Named tensors, read only when needed: a model's state dict already in memory, or safetensors files on disk.

Shapes and dtypes come without reading any tensor data, so a pair of CLIP halves can be checked before anything
heavy loads; a checkpoint's diffusion weights are never read when only its text encoder is wanted.
"""

import os
from typing import Dict, Iterable, Mapping, Optional, Tuple

import torch

from .errors import ModelLoadError, ModelNotFoundError
from .files import get, inside, read_json, safetensors_header

SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
SHARD_INDEX = "model.safetensors.index.json"


class MemoryTensors:
    """Tensors already in memory (e.g. a ComfyUI model's state dict); ``get`` returns them without copying."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], label: str, config: Optional[dict] = None):
        self.tensors = dict(tensors)
        self.label = label
        self.config = config or {}

    def keys(self) -> Iterable[str]:
        return self.tensors.keys()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def shape(self, key: str) -> Tuple[int, ...]:
        return tuple(self.tensors[key].shape)

    def dtype(self, key: str) -> torch.dtype:
        return self.tensors[key].dtype

    def get(self, key: str) -> torch.Tensor:
        return self.tensors[key]

    def close(self) -> None:
        pass


class SafetensorsFiles:
    """A .safetensors file, or a Hugging Face model folder (``model.safetensors``, possibly sharded, and its
    ``config.json``). Headers are read at once; tensor data only by ``get``."""

    def __init__(self, path: str, label: Optional[str] = None):
        self.path = path
        self.label = label or os.path.basename(os.path.normpath(path))
        self.files, self.config = _locate(path)
        self._where: Dict[str, str] = {}
        self._headers: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
        for file in self.files:
            for key, (dtype, shape) in safetensors_header(file, ModelLoadError).items():
                self._where[key] = file
                self._headers[key] = (dtype, shape)
        self._open: Dict[str, object] = {}

    def keys(self) -> Iterable[str]:
        return self._headers.keys()

    def __contains__(self, key: str) -> bool:
        return key in self._headers

    def shape(self, key: str) -> Tuple[int, ...]:
        return self._headers[key][1]

    def dtype(self, key: str) -> torch.dtype:
        name = self._headers[key][0]
        dtype = SAFETENSORS_DTYPES.get(name)
        if dtype is None:
            raise ModelLoadError(f"{self.label}: tensor {key} has dtype {name}, which this pack cannot read.")
        return dtype

    def get(self, key: str) -> torch.Tensor:
        from safetensors import safe_open

        file = self._where[key]
        if file not in self._open:
            self._open[file] = safe_open(file, framework="pt", device="cpu")
        return self._open[file].get_tensor(key)

    def close(self) -> None:
        """Release the memory maps (tensors already read stay valid)."""
        self._open.clear()


def _locate(path: str) -> Tuple[Tuple[str, ...], dict]:
    """The weight files and config of a file or a model folder."""
    if os.path.isdir(path):
        config = read_json(os.path.join(path, "config.json"), ModelLoadError, "the model's config (a JSON object)")
        index = os.path.join(path, SHARD_INDEX)
        if os.path.isfile(index):
            where = read_json(index, ModelLoadError, "the index of the model's weight files (a JSON object)")
            shards = sorted(set(get(where, "weight_map", dict, index, ModelLoadError).values()), key=str)
            return tuple(inside(path, s, f"a weight file named in {index}", ModelLoadError) for s in shards), config
        single = os.path.join(path, "model.safetensors")
        if os.path.isfile(single):
            return (single,), config
        raise ModelNotFoundError(f"{path} holds no model.safetensors (only .safetensors weights are loaded).")
    sidecar = sidecar_json(safetensors_file(path))
    return (path,), (read_json(sidecar, ModelLoadError, "the model's config (a JSON object)") if sidecar else {})


def safetensors_file(path: str, what: str = "model") -> str:
    """``path``, when it is a .safetensors file; else the error that says what to do."""
    if not os.path.isfile(path):
        raise ModelNotFoundError(f"{what} file not found: {path}")
    if not path.endswith(".safetensors"):
        raise ModelLoadError(f"{path}: only .safetensors {what} files are loaded (pickled checkpoints can run code); "
                             f"convert it with safetensors first.")
    return path


def sidecar_json(path: str) -> Optional[str]:
    """The ``<name>.json`` beside ``<name>.safetensors`` (a config), if there is one."""
    sidecar = os.path.splitext(path)[0] + ".json"
    return sidecar if os.path.isfile(sidecar) else None
