"""The pack's shared state: one model cache for all nodes, INTERROGATOR handles, and running the engine.

Nothing here imports ComfyUI: its specifics come from :mod:`.comfy_adapter`; outside ComfyUI a plain environment
(a models folder from ``CLIP_INTERROGATOR_MODELS``, :class:`~core.model_cache.SimpleMemory`) takes its place.
"""

import json
import os
import threading
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..core import (CAPTION_MODELS, DEFAULT_CAPTION_MODEL, NO_CAPTION, PRESETS, ImageError, Interrogator,
                    InterrogatorError, ModelNotFoundError, VocabError, Vocabulary, load_captioner, load_clip)
from ..core.caption import caption_model_folder
from ..core.clip_model import preset_filename
from ..core.images import as_pil_list
from ..core.model_cache import ModelCache, Resident, SimpleMemory
from . import comfy_adapter

FOLDER = comfy_adapter.FOLDER
PRECISIONS = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEVICES = ("auto", "cpu")
VOCABULARIES = ("builtin", "reference")
CAPTION_PRESETS = (DEFAULT_CAPTION_MODEL, *[n for n in CAPTION_MODELS if n != DEFAULT_CAPTION_MODEL], NO_CAPTION)
CAPTIONED_MODES = ("fast", "classic", "best")


class NodeError(RuntimeError):
    """A problem the user can fix, with the message saying how (what ComfyUI shows on the node)."""


def user_error(error: InterrogatorError) -> Exception:
    """The engine's error as the exception a node raises: ValueError for bad input, NodeError otherwise."""
    kind = ValueError if isinstance(error, (ImageError, VocabError)) else NodeError
    return kind(f"CLIP Interrogator: {error}")


@dataclass(frozen=True)
class InterrogatorSpec:
    """What ``Load Interrogator`` outputs: which models and vocabulary to use. A handle, never weights."""

    clip: str
    caption: str = DEFAULT_CAPTION_MODEL
    precision: str = "auto"
    device: str = "auto"
    vocabulary: str = "builtin"
    artists: bool = True
    ban: Tuple[str, ...] = ()

    def describe(self) -> str:
        return f"{self.clip} + {self.caption} ({self.precision}, {self.device})"


class PlainEnvironment:
    """Outside ComfyUI: one models folder, the best local device, a simple memory budget, no cancel."""

    name = "plain"

    def __init__(self, models_dir: Optional[str] = None, budget_bytes: Optional[int] = None):
        self.models_dir = models_dir or os.environ.get("CLIP_INTERROGATOR_MODELS") or \
            os.path.join(os.path.expanduser("~"), ".cache", "clip_interrogator_nodes")
        self.budget_bytes = budget_bytes

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

    def devices(self, choice: str):
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

    def progress(self):
        return None

    def check_interrupt(self) -> None:
        pass


class Runtime:
    """Everything the nodes share: the environment, the model cache, vocabularies and engines."""

    def __init__(self, env=None):
        self.env = env or comfy_adapter.environment() or PlainEnvironment()
        self.cache = ModelCache(self.env.memory())
        self._vocabs: Dict[tuple, Vocabulary] = {}
        self._engines: Dict[tuple, Interrogator] = {}
        self._indexed: Dict[tuple, set] = {}  # CLIP key -> keys of engines whose label index is built
        self._lock = threading.RLock()

    # -- choices shown in the Load Interrogator node --------------------------------------------------------------
    def clip_choices(self) -> List[str]:
        presets = list(PRESETS)
        preset_files = {preset_filename(p) for p in presets}
        local = [f for f in self.env.list_files() if f.endswith(".safetensors") and not self._is_managed_file(f)
                 and f not in preset_files]
        return presets + local

    def caption_choices(self) -> List[str]:
        known = {caption_model_folder(n, None) for n in CAPTION_MODELS}  # None: never a folder
        preset_folders = {CAPTION_MODELS[n].split("/")[-1] for n in CAPTION_MODELS} | set(CAPTION_MODELS)
        local = []
        for folder in self.env.model_folders():
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name in preset_folders or name in known or name == "cache":
                    continue
                if os.path.isfile(os.path.join(folder, name, "config.json")) and name not in local:
                    local.append(name)
        return list(CAPTION_PRESETS) + local

    def _is_managed_file(self, relative: str) -> bool:
        """Files that are not CLIP choices: our embedding cache and the weights inside caption model folders."""
        parts = relative.replace("\\", "/").split("/")
        if parts[0] == "cache":
            return True
        for folder in self.env.model_folders():
            if len(parts) > 1 and os.path.isfile(os.path.join(folder, *parts[:-1], "config.json")):
                return True
        return False

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.env.model_folders()[0], "cache")

    # -- resolving a spec -----------------------------------------------------------------------------------------
    def _folders_text(self) -> str:
        return " or ".join(self.env.model_folders())

    def clip_source(self, name: str) -> Tuple[str, Optional[str]]:
        """(name to load, models folder): a preset from the folder that holds its file, or a local file."""
        folders = self.env.model_folders()
        if name in PRESETS or ("/" in name and not name.endswith(".safetensors")):
            for folder in folders:
                if os.path.isfile(os.path.join(folder, preset_filename(name))):
                    return name, folder
            return name, folders[0]
        for folder in folders:
            path = os.path.join(folder, name)
            if os.path.isfile(path):
                return path, None
        raise ModelNotFoundError(f"CLIP model file {name} is not in {self._folders_text()}; put the .safetensors "
                                 f"file (and a .json config for a custom architecture) there, or pick a preset.")

    def caption_source(self, name: str) -> Tuple[str, Optional[str]]:
        folders = self.env.model_folders()
        if not name or name == NO_CAPTION:
            return NO_CAPTION, None
        if name in CAPTION_MODELS:
            for folder in folders:
                local = caption_model_folder(name, folder)
                if local and os.path.isfile(os.path.join(local, "config.json")):
                    return name, folder
            return name, folders[0]
        for folder in folders:
            path = os.path.join(folder, name)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path, None
        raise ModelNotFoundError(f"caption model folder {name} is not in {self._folders_text()} (it needs a "
                                 f"config.json); put the model's files there, or pick '{NO_CAPTION}'.")

    def validate(self, spec: InterrogatorSpec) -> None:
        """Cheap checks for Load Interrogator, so a wrong choice fails there and not later."""
        if spec.precision not in PRECISIONS:
            raise ValueError(f"CLIP Interrogator: unknown precision {spec.precision!r}; use {', '.join(PRECISIONS)}.")
        if spec.device not in DEVICES:
            raise ValueError(f"CLIP Interrogator: unknown device {spec.device!r}; use {', '.join(DEVICES)}.")
        try:
            self.clip_source(spec.clip)
            self.caption_source(spec.caption)
            self.vocabulary(spec)
        except InterrogatorError as error:
            raise user_error(error) from error

    def _device_dtype(self, spec: InterrogatorSpec):
        load, offload = self.env.devices(spec.device)
        dtype = PRECISIONS[spec.precision] or self.env.auto_dtype(load)
        return load, offload, dtype

    # -- loading (once per key, shared by every node) -------------------------------------------------------------
    def _resident(self, key, load, load_device, offload) -> Resident:
        def loader():
            value = load()
            return value, value.model

        return self.cache.get(key, loader, load_device, offload)

    def clip(self, spec: InterrogatorSpec) -> Resident:
        source, models_dir = self.clip_source(spec.clip)
        load_device, offload, dtype = self._device_dtype(spec)
        key = ("clip", source, str(dtype), str(load_device))
        return self._resident(key, lambda: load_clip(source, models_dir=models_dir, device=offload, dtype=dtype),
                              load_device, offload)

    def captioner(self, spec: InterrogatorSpec) -> Optional[Resident]:
        source, models_dir = self.caption_source(spec.caption)
        if source == NO_CAPTION:
            return None
        load_device, offload, dtype = self._device_dtype(spec)
        key = ("caption", source, str(dtype), str(load_device))
        return self._resident(key, lambda: load_captioner(source, models_dir=models_dir, device=offload,
                                                          dtype=dtype), load_device, offload)

    def vocabulary(self, spec: InterrogatorSpec) -> Vocabulary:
        key = (spec.vocabulary, spec.artists, spec.ban)
        with self._lock:
            if key not in self._vocabs:
                if spec.vocabulary not in VOCABULARIES:
                    raise VocabError(f"unknown vocabulary {spec.vocabulary!r}; use {', '.join(VOCABULARIES)}.")
                vocab = Vocabulary.builtin() if spec.vocabulary == "builtin" else Vocabulary.reference()
                user_lists = os.path.join(self.env.model_folders()[0], "vocab")
                vocab = vocab.with_user_lists(user_lists)
                if not spec.artists:
                    vocab = vocab.without(roles=["artist"])
                self._vocabs[key] = vocab.banning(spec.ban)
            return self._vocabs[key]

    def engine(self, spec: InterrogatorSpec, clip: Resident) -> Tuple[tuple, Interrogator]:
        """One engine (and so one label index) per CLIP model and vocabulary, whatever the caption model."""
        key = (clip.key, spec.vocabulary, spec.artists, spec.ban)
        with self._lock:
            if key not in self._engines:
                engine = Interrogator(clip.value, None, self.vocabulary(spec), cache_dir=self.cache_dir)
                self._engines[key] = engine
                clip.on_release(engine.release)
            return key, self._engines[key]

    def _account_index(self, clip: Resident, key: tuple, engine: Interrogator) -> None:
        """Count the label matrices the engine keeps beside the CLIP weights on the device."""
        with self._lock:
            built = self._indexed.setdefault(clip.key, set())
            built.add(key)
            clip.extra_bytes = sum(self._engines[k].index.device_nbytes(clip.load_device) for k in built)

    # -- running --------------------------------------------------------------------------------------------------
    def run(self, spec: InterrogatorSpec, images, mode: str, caption: Optional[str] = None,
            max_flavors: Optional[int] = None) -> Tuple[List[str], List[str]]:
        """Prompts and the captions used, one per image. Captions all images first, then runs CLIP."""
        try:
            return self._run(spec, images, mode, caption, max_flavors)
        except InterrogatorError as error:
            raise user_error(error) from error

    def _run(self, spec, images, mode, caption, max_flavors):
        with self._lock:
            images = as_pil_list(images)
            hook = self.env.progress()
            clip = self.clip(spec)
            key, engine = self.engine(spec, clip)
            captions: List[str] = [""] * len(images)
            if mode in CAPTIONED_MODES:
                caption = (caption or "").strip()
                captioner = None if caption else self.captioner(spec)
                if caption:
                    captions = [caption] * len(images)
                elif captioner is not None:
                    self.cache.use([captioner])
                    self.env.check_interrupt()
                    captions = captioner.value.caption(images, hook)
            self.cache.use([clip])
            self.env.check_interrupt()
            engine.captioner, engine.progress = None, hook
            try:
                prompts = engine.interrogate(images, mode, captions=captions, max_flavors=max_flavors or None)
            finally:
                engine.progress = None
            self._account_index(clip, key, engine)
            return prompts, captions

    def analyze(self, spec: InterrogatorSpec, images, top: int = 5) -> List[Dict[str, List[Tuple[str, float]]]]:
        try:
            with self._lock:
                images = as_pil_list(images)
                clip = self.clip(spec)
                key, engine = self.engine(spec, clip)
                self.cache.use([clip])
                self.env.check_interrupt()
                engine.progress = self.env.progress()
                try:
                    result = engine.analyze(images, top=top)
                finally:
                    engine.progress = None
                self._account_index(clip, key, engine)
                return result
        except InterrogatorError as error:
            raise user_error(error) from error

    def unload(self, free_ram: bool = False) -> int:
        """Move every model off the accelerator; ``free_ram`` also forgets them. Returns how many were cached."""
        with self._lock:
            count = len(self.cache)
            if free_ram:
                self.cache.clear()
                self._engines.clear()
                self._indexed.clear()
            else:
                self.cache.unload()
            return count


def analysis_text(results: Sequence[Dict[str, List[Tuple[str, float]]]]) -> List[str]:
    """Readable text, one per image: each list with its best terms and CLIP scores."""
    texts = []
    for result in results:
        lines = []
        for name, ranked in result.items():
            terms = ", ".join(f"{label} ({score:.3f})" for label, score in ranked)
            lines.append(f"{name}: {terms}")
        texts.append("\n".join(lines))
    return texts


def analysis_json(results: Sequence[Dict[str, List[Tuple[str, float]]]]) -> List[str]:
    return [json.dumps({name: [{"term": label, "score": round(score, 4)} for label, score in ranked]
                        for name, ranked in result.items()}, ensure_ascii=False) for result in results]


_runtime: Optional[Runtime] = None
_runtime_lock = threading.Lock()


def runtime() -> Runtime:
    """The one runtime every node of the pack shares."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            _runtime = Runtime()
        return _runtime


def reset_runtime(env=None) -> Runtime:
    """Replace the shared runtime (tests; a changed environment). Unloads the old one's models."""
    global _runtime
    with _runtime_lock:
        if _runtime is not None:
            _runtime.unload(free_ram=True)
        _runtime = Runtime(env) if env is not None else None
        return _runtime
