"""Everything this pack takes from ComfyUI, in one place: model folders, memory management, progress, cancel.

``comfy`` and ``folder_paths`` are imported only when :func:`environment` is first called inside ComfyUI, so the
pack also imports (for tests, or as a library) where ComfyUI is absent; :mod:`.runtime` then uses its plain
environment instead.

Memory: each model (the CLIP ``nn.Module``, the caption ``nn.Module``) is wrapped in a ``ModelPatcher`` and
loaded with ``load_models_gpu`` right before use, so ComfyUI counts it, evicts it when a diffusion model needs the
memory (``/free`` included), and it comes back on next use. The patcher's size includes the label-embedding
matrices that live beside the CLIP weights, and an ON_DETACH callback drops those matrices whenever ComfyUI moves
the model off the device. Our modules have no ComfyUI cast layers, so they are always loaded whole (a partial
load would leave layers on the CPU); under ``--lowvram`` the caption model and CLIP take turns on the GPU, and
under ``--novram`` / ``--cpu`` they run on the CPU.
"""

import logging
import os
from typing import List, Optional, Tuple

import torch

from .model_cache import Resident

FOLDER = "clip_interrogator"
log = logging.getLogger("clip_interrogator")

_environment = None
_checked = False


def environment() -> Optional["ComfyEnvironment"]:
    """The ComfyUI environment, or None outside ComfyUI."""
    global _environment, _checked
    if not _checked:
        _checked = True
        try:
            import comfy.model_management  # noqa: F401
            import folder_paths  # noqa: F401
        except ImportError:
            _environment = None
        else:
            _environment = ComfyEnvironment()
    return _environment


class _Holder(torch.nn.Module):
    """What ComfyUI's ModelPatcher manages: a plain container, so ComfyUI's bookkeeping attributes (``device``,
    ``model_loaded_weight_memory``...) land on it and never on the Hugging Face / open_clip model itself."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner


class ComfyEnvironment:
    """Model folders, devices, dtypes, memory, progress and cancel as ComfyUI defines them."""

    name = "ComfyUI"

    def __init__(self):
        import comfy.model_management as mm
        import folder_paths

        self.mm = mm
        self.folder_paths = folder_paths
        register_folder()

    # -- folders -------------------------------------------------------------------------------------------------
    def model_folders(self) -> List[str]:
        return list(self.folder_paths.get_folder_paths(FOLDER))

    def list_files(self) -> List[str]:
        return list(self.folder_paths.get_filename_list(FOLDER))

    def host_files(self, kind: str) -> List[Tuple[str, str]]:
        if kind not in self.folder_paths.folder_names_and_paths:
            return []
        found = ((name, self.folder_paths.get_full_path(kind, name))
                 for name in self.folder_paths.get_filename_list(kind) if name.endswith(".safetensors"))
        return [(name, path) for name, path in found if path]

    # -- devices and precision ------------------------------------------------------------------------------------
    def devices(self, choice: str):
        """(load device, offload device) for our models under ComfyUI's flags."""
        mm = self.mm
        cpu = torch.device("cpu")
        if choice == "cpu" or mm.vram_state == mm.VRAMState.NO_VRAM:
            return cpu, cpu
        load = mm.get_torch_device()
        offload = mm.text_encoder_offload_device()  # the GPU under --gpu-only, else the CPU
        return load, (offload if not mm.is_device_cpu(load) else cpu)

    def auto_dtype(self, device: torch.device) -> torch.dtype:
        mm = self.mm
        if mm.is_device_cpu(device):
            return torch.float32
        if mm.should_use_fp16(device, prioritize_performance=False):
            return torch.float16
        if mm.should_use_bf16(device, prioritize_performance=False):
            return torch.bfloat16
        return torch.float32

    # -- memory --------------------------------------------------------------------------------------------------
    def memory(self) -> "ComfyMemory":
        return ComfyMemory(self.mm)

    # -- progress and cancel -------------------------------------------------------------------------------------
    def progress(self):
        """A progress hook for the engine: one ComfyUI progress bar per piece of work; Cancel stops the work."""
        from comfy.utils import ProgressBar

        bars = {}  # one bar per piece of work (label embedding, captioning, chain, images): [bar, last done]

        def hook(done: int, total: int, desc: str) -> None:
            self.mm.throw_exception_if_processing_interrupted()
            if desc not in bars or done < bars[desc][1]:  # new work; a repeated position is a tick, same bar
                bars[desc] = [ProgressBar(total), done]
            bars[desc][0].update_absolute(done, total)
            bars[desc][1] = done

        return hook

    def check_interrupt(self) -> None:
        self.mm.throw_exception_if_processing_interrupted()

    # -- tokenizers ------------------------------------------------------------------------------------------------
    def t5_tokenizer_folder(self) -> Optional[str]:
        """The T5 tokenizer ComfyUI's own T5-XXL encoders use (comfy/text_encoders/t5_tokenizer), read in place."""
        import comfy

        # comfy is a namespace package in ComfyUI (no __init__.py): its folder is on __path__
        roots = list(getattr(comfy, "__path__", None) or [])
        roots += [os.path.dirname(comfy.__file__)] if getattr(comfy, "__file__", None) else []
        for root in roots:
            folder = os.path.join(root, "text_encoders", "t5_tokenizer")
            if os.path.isfile(os.path.join(folder, "tokenizer.json")):
                return folder
        return None


def register_folder() -> None:
    """Register ``models/clip_interrogator`` with folder_paths, keeping paths extra_model_paths.yaml added."""
    import folder_paths

    default = os.path.join(folder_paths.models_dir, FOLDER)
    if FOLDER in folder_paths.folder_names_and_paths:
        paths, extensions = folder_paths.folder_names_and_paths[FOLDER]
        if default not in paths:
            paths.append(default)
        if isinstance(extensions, set) and extensions:
            extensions.add(".safetensors")
    else:
        folder_paths.folder_names_and_paths[FOLDER] = ([default], {".safetensors"})


class ComfyMemory:
    """Hands our models to ComfyUI's model management (same methods as .model_cache.SimpleMemory)."""

    def __init__(self, mm):
        self.mm = mm

    def register(self, resident: Resident) -> None:
        from comfy.model_patcher import ModelPatcher
        from comfy.patcher_extension import CallbacksMP

        patcher = ModelPatcher(_Holder(resident.module), load_device=resident.load_device,
                               offload_device=resident.offload_device, size=resident.nbytes)
        patcher.add_callback(CallbacksMP.ON_DETACH, lambda _patcher, unpatch_all=True: _on_detach(resident, unpatch_all))
        resident.handle = patcher

    def prepare(self, residents) -> None:
        residents = list(residents)
        for resident in residents:
            resident.handle.size = resident.nbytes  # label matrices count in ComfyUI's budget
        if self.mm.vram_state in (self.mm.VRAMState.LOW_VRAM, self.mm.VRAMState.NO_VRAM):
            wanted = {id(r.handle) for r in residents}
            for loaded in list(self.mm.current_loaded_models):
                if getattr(loaded.model, "_clip_interrogator", False) and id(loaded.model) not in wanted:
                    self._unload(loaded)
        for resident in residents:
            resident.handle._clip_interrogator = True
        self.mm.load_models_gpu([r.handle for r in residents], force_full_load=True)

    def offload(self, resident: Resident) -> None:
        for loaded in list(self.mm.current_loaded_models):
            if loaded.model is resident.handle:
                self._unload(loaded)
                return
        _released(resident)  # not loaded: still drop any device copies of its label matrices

    def _unload(self, loaded) -> None:
        loaded.model_unload()
        if loaded in self.mm.current_loaded_models:
            self.mm.current_loaded_models.remove(loaded)
        self.mm.soft_empty_cache()


def _on_detach(resident: Resident, unpatch_all: bool) -> None:
    """ComfyUI also detaches (without moving weights) when it re-registers a loaded model; only a real unload
    (weights moved to the offload device) releases the label matrices."""
    if unpatch_all:
        _released(resident)


def _released(resident: Resident) -> None:
    log.info("CLIP Interrogator: released %s from %s", resident.key[1] if isinstance(resident.key, tuple)
             else resident.key, resident.load_device)
    resident.released()
