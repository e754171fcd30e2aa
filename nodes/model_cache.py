"""A shared cache of loaded models that keeps accelerator memory within a budget. Plain Python: no ComfyUI import.

Each model is loaded once per key (e.g. ``("clip", file, dtype)``) and kept as a :class:`Resident`: the loaded
object, the ``nn.Module`` that holds its weights, and extra bytes that live beside the weights on the device (the
label-embedding matrices of an index). A memory manager decides where residents live:

- :class:`SimpleMemory` (outside ComfyUI): one device and a byte budget; ``prepare`` moves the residents about to be
  used onto the device and moves the least recently used others back to the offload device until they fit.
- ComfyUI's adapter (``nodes/comfy_adapter.py``) supplies a manager with the same three methods (``register``,
  ``prepare``, ``offload``) that hands the modules to ComfyUI's model management instead.

Whenever a resident leaves the device, its release hooks run (they drop device copies of label matrices), so an
unload returns all of the memory the resident used.
"""

import threading
from collections import OrderedDict
from typing import Callable, Dict, Hashable, Iterable, List, Optional, Tuple

import torch


def module_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters and buffers."""
    return sum(t.numel() * t.element_size() for t in list(module.parameters()) + list(module.buffers()))


def module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    return torch.device("cpu")


class Resident:
    """One loaded model in the cache."""

    def __init__(self, key: Hashable, value, module: torch.nn.Module, load_device="cpu", offload_device="cpu"):
        self.key = key
        self.value = value
        self.module = module
        self.weight_bytes = module_bytes(module)
        self.extra_bytes = 0  # memory beside the weights on the device (label matrices), set by the owner
        self.handle = None  # the memory manager's own record (e.g. a ComfyUI ModelPatcher)
        self.load_device = torch.device(load_device)  # where it runs
        self.offload_device = torch.device(offload_device)  # where it waits
        self._release_hooks: List[Callable[[], None]] = []

    @property
    def nbytes(self) -> int:
        return self.weight_bytes + self.extra_bytes

    @property
    def device(self) -> torch.device:
        return module_device(self.module)

    def on_release(self, hook: Callable[[], None]) -> None:
        """Call ``hook`` whenever this model leaves the device (evicted, unloaded, dropped)."""
        self._release_hooks.append(hook)

    def released(self) -> None:
        for hook in list(self._release_hooks):
            hook()

    def __repr__(self) -> str:
        return f"Resident({self.key!r}, {self.nbytes / 2**20:.1f} MiB on {self.device})"


class SimpleMemory:
    """Moves residents to their load device before use, keeping accelerator residents within ``budget_bytes``
    (None: no limit) by moving the least recently used others back to their offload device."""

    def __init__(self, budget_bytes: Optional[int] = None):
        self.budget_bytes = budget_bytes
        self._on_device: "OrderedDict[int, Resident]" = OrderedDict()  # least recently used first

    def register(self, resident: Resident) -> None:
        pass

    def prepare(self, residents: Iterable[Resident]) -> None:
        """Put ``residents`` on the device, evicting the least recently used others when over budget."""
        residents = list(residents)
        wanted = {id(r) for r in residents}
        if self.budget_bytes is not None:
            counted = lambda r: r.load_device.type != "cpu"
            need = sum(r.nbytes for r in residents if counted(r))
            for other in [r for k, r in self._on_device.items() if k not in wanted and counted(r)]:
                kept = sum(r.nbytes for r in self._on_device.values() if id(r) not in wanted and counted(r))
                if need + kept <= self.budget_bytes:
                    break
                self.offload(other)
        for resident in residents:
            if resident.device != resident.load_device:
                resident.module.to(resident.load_device)
            self._on_device.pop(id(resident), None)
            self._on_device[id(resident)] = resident

    def offload(self, resident: Resident) -> None:
        if self._on_device.pop(id(resident), None) is None:
            return  # not on its device: nothing to move or release
        if resident.load_device != resident.offload_device:
            resident.module.to(resident.offload_device)
        resident.released()
        _empty_device_cache(resident.load_device)


def _empty_device_cache(device: torch.device) -> None:
    if device.type == "cuda" and torch.cuda.is_available():
        torch.cuda.empty_cache()


class ModelCache:
    """Loaded models by key, each loaded once, shared by every caller; memory managed by ``memory``."""

    def __init__(self, memory=None):
        self.memory = memory if memory is not None else SimpleMemory()
        self._residents: Dict[Hashable, Resident] = {}
        self._lock = threading.RLock()

    def get(self, key: Hashable, load: Callable[[], Tuple[object, torch.nn.Module]], load_device="cpu",
            offload_device="cpu") -> Resident:
        """The resident for ``key``; ``load()`` returns ``(value, module)`` (weights on ``offload_device``) and
        runs only on the first request. The model runs on ``load_device``."""
        with self._lock:
            resident = self._residents.get(key)
            if resident is None:
                value, module = load()
                resident = Resident(key, value, module, load_device, offload_device)
                self.memory.register(resident)
                self._residents[key] = resident
            return resident

    def use(self, residents: Iterable[Resident]) -> None:
        """Make ``residents`` ready to run on their device (call right before using them)."""
        with self._lock:
            self.memory.prepare([r for r in residents if r is not None])

    def unload(self) -> None:
        """Move every model off the accelerator (they stay cached in RAM and come back on next use)."""
        with self._lock:
            for resident in self._residents.values():
                self.memory.offload(resident)

    def drop(self, key: Hashable) -> None:
        """Unload and forget one model."""
        with self._lock:
            resident = self._residents.pop(key, None)
            if resident is not None:
                self.memory.offload(resident)

    def clear(self) -> None:
        """Unload and forget every model (frees RAM too once nothing else holds them)."""
        with self._lock:
            self.unload()
            self._residents.clear()

    def residents(self) -> List[Resident]:
        with self._lock:
            return list(self._residents.values())

    def __contains__(self, key) -> bool:
        return key in self._residents

    def __len__(self) -> int:
        return len(self._residents)
