"""The pack's shared state: one model cache for all nodes, INTERROGATOR handles, and running the engine.

Nothing here imports ComfyUI: the host comes in as an environment (see :mod:`.environment`).
"""

import logging
import os
import threading
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Tuple, Union

import torch

from ..core import (DEFAULT_CAPTION_MODEL, NO_CAPTION, ImageError, Interrogator, InterrogatorError, Prompt,
                    VocabError, Vocabulary, caption_needed, load_captioner, load_clip)
from ..core.caption import CaptionOptions
from ..core.confidence import Confidence
from ..core.dataset import DatasetOptions, Item, Summary, caption_dataset, find_dataset
from ..core.encoder_prompts import PromptParts, get_target, write
from ..core.images import as_pil_list
from ..core.modes import get_mode
from ..core.token_count import clip_counter, t5_counter
from .comfy_graph import input_files
from .comfy_models import ComfyPair
from .display import Analysis
from .environment import current_environment
from .model_cache import ModelCache, Resident
from .model_files import FilePair, ModelFiles

PRECISIONS = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
DEVICES = ("auto", "cpu")
log = logging.getLogger("clip_interrogator")


class NodeError(RuntimeError):
    """A problem the user can fix, with the message saying how (what ComfyUI shows on the node)."""


def user_error(error: InterrogatorError) -> Exception:
    """The engine's error as the exception a node raises: ValueError for bad input, NodeError otherwise."""
    kind = ValueError if isinstance(error, (ImageError, VocabError)) else NodeError
    return kind(f"CLIP Interrogator: {error}")


@dataclass(frozen=True)
class InterrogatorSpec:
    """What ``Load Interrogator`` outputs: which models and vocabulary to use. A handle, never weights: ``clip`` is
    a model or pair name, or the CLIP + CLIP Vision taken from ComfyUI's loaders."""

    clip: Union[str, ComfyPair]
    caption: str = DEFAULT_CAPTION_MODEL
    precision: str = "auto"
    device: str = "auto"
    vocabulary: str = "builtin"
    artists: bool = True
    ban: Tuple[str, ...] = ()
    caption_detail: str = "short"  # Florence-2's task, or a vision-language model's default instruction
    caption_instruction: str = ""  # a vision-language model's own instruction
    caption_max_tokens: int = 0  # 0: the caption model's default

    def caption_options(self) -> CaptionOptions:
        return CaptionOptions(self.caption_detail, self.caption_instruction, self.caption_max_tokens)


class Runtime:
    """Everything the nodes share: the environment, the model cache, vocabularies and engines."""

    def __init__(self, env=None):
        self.env = env or current_environment()
        self.files = ModelFiles(self.env)
        self.cache = ModelCache(self.env.memory())
        self._vocabs: Dict[tuple, Vocabulary] = {}
        self._engines: Dict[tuple, Interrogator] = {}
        self._indexed: Dict[tuple, set] = {}  # CLIP key -> keys of engines whose label index is built
        self._pair_refs: Dict[tuple, tuple] = {}  # CLIP key of a converted ComfyUI pair -> its models' weakrefs
        self._t5 = None  # the T5 token counter, read once
        self._lock = threading.RLock()

    def validate(self, spec: InterrogatorSpec) -> None:
        """Cheap checks for Load Interrogator, so a wrong choice fails there and not later."""
        if spec.precision not in PRECISIONS:
            raise ValueError(f"CLIP Interrogator: unknown precision {spec.precision!r}; use {', '.join(PRECISIONS)}.")
        if spec.device not in DEVICES:
            raise ValueError(f"CLIP Interrogator: unknown device {spec.device!r}; use {', '.join(DEVICES)}.")
        try:
            if not isinstance(spec.clip, ComfyPair):  # a pair from ComfyUI's loaders was checked when made
                self.files.clip_source(spec.clip)
            self.files.caption_source(spec.caption)
            spec.caption_options()
            self.vocabulary(spec)
        except InterrogatorError as error:
            raise user_error(error) from error

    def comfy_pair(self, clip, clip_vision, text_encoder: str = "auto", prompt=None, node_id=None) -> ComfyPair:
        """ComfyUI's CLIP + CLIP Vision as one interrogator CLIP, checked now from shapes (converted on first use).
        ``prompt`` and ``node_id`` (the graph and the asking node) tell which files the two came from."""
        find = self.files.host_path
        try:
            return ComfyPair(clip, clip_vision, text_encoder, input_files(prompt, node_id, "clip", find),
                             input_files(prompt, node_id, "clip_vision", find))
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
        load_device, offload, dtype = self._device_dtype(spec)
        source = spec.clip if isinstance(spec.clip, ComfyPair) else self.files.clip_source(spec.clip)
        if isinstance(source, (ComfyPair, FilePair)):
            return self._pair(source, load_device, offload, dtype)
        source, models_dir = source
        key = ("clip", source, str(dtype), str(load_device))
        return self._resident(key, lambda: load_clip(source, models_dir=models_dir, device=offload, dtype=dtype),
                              load_device, offload)

    def _pair(self, pair: Union[ComfyPair, FilePair], load_device, offload, dtype) -> Resident:
        """A text encoder + CLIP Vision converted once (on the CPU) into one CLIP, then cached like any model."""
        self._forget_dropped_pairs()
        key = (*pair.key, str(dtype), str(load_device))
        if isinstance(pair, ComfyPair):
            self._pair_refs[key] = pair.refs

        def load():
            clip = pair.load(dtype, self.env.progress())
            clip.model.to(offload)
            return clip

        return self._resident(key, load, load_device, offload)

    def _forget_dropped_pairs(self) -> None:
        """A pair converted from ComfyUI's models shares their tensors: once ComfyUI drops the models, drop it too."""
        with self._lock:
            for key, refs in list(self._pair_refs.items()):
                if all(ref() is not None for ref in refs):
                    continue
                del self._pair_refs[key]
                self.cache.drop(key)
                for engine_key in [k for k in self._engines if k[0] == key]:
                    del self._engines[engine_key]
                self._indexed.pop(key, None)

    def captioner(self, spec: InterrogatorSpec) -> Optional[Resident]:
        source, models_dir = self.files.caption_source(spec.caption)
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
                folder = self.files.vocabulary_folder(spec.vocabulary)
                vocab = Vocabulary.from_folder(folder) if folder else \
                    Vocabulary.builtin() if spec.vocabulary == "builtin" else Vocabulary.reference()
                vocab = vocab.with_user_lists(self.files.user_vocab_dir)
                if not spec.artists:
                    vocab = vocab.without(roles=["artist"])
                self._vocabs[key] = vocab.banning(spec.ban)
            return self._vocabs[key]

    def engine(self, spec: InterrogatorSpec, clip: Resident) -> Tuple[tuple, Interrogator]:
        """One engine (and so one label index) per CLIP model and vocabulary, whatever the caption model."""
        key = (clip.key, spec.vocabulary, spec.artists, spec.ban)
        with self._lock:
            if key not in self._engines:
                engine = Interrogator(clip.value, None, self.vocabulary(spec), cache_dir=self.files.cache_dir)
                self._engines[key] = engine
                clip.on_release(engine.release)
            return key, self._engines[key]

    def _account_index(self, clip: Resident, key: tuple, engine: Interrogator) -> None:
        """Count the label matrices the engine keeps beside the CLIP weights on the device."""
        with self._lock:
            built = self._indexed.setdefault(clip.key, set())
            built.add(key)
            clip.extra_bytes = sum(self._engines[k].label_index().device_nbytes(clip.load_device) for k in built)

    # -- running --------------------------------------------------------------------------------------------------
    def run(self, spec: InterrogatorSpec, images, mode: str, caption: Optional[str] = None,
            max_terms: Optional[int] = None, detail: bool = False) -> List[Prompt]:
        """One prompt per image, with its whole caption and its warnings."""
        return self._interrogate(spec, images, mode, caption, lambda engine, images, captions, hook: engine.prompts(
            images, mode, captions=captions, max_terms=max_terms or None, progress=hook, detail=detail))

    def prompt_parts(self, spec: InterrogatorSpec, images, mode: str, caption: Optional[str] = None,
                     max_terms: Optional[int] = None, negative: bool = False) -> List[PromptParts]:
        """Each image's prompt as caption and terms (and its negative terms, with ``negative``)."""
        return self._interrogate(spec, images, mode, caption, lambda engine, images, captions, hook:
                                 engine.prompt_parts(images, mode, captions=captions, max_terms=max_terms or None,
                                                     progress=hook, negative=negative))

    def _interrogate(self, spec: InterrogatorSpec, images, mode: str, caption: Optional[str], call):
        """Captions all images first, then runs ``call(engine, images, captions, hook)`` with CLIP, so the two
        models take turns on the device."""
        try:
            with self._lock:
                images = as_pil_list(images)
                hook = self.env.progress()
                clip = self.clip(spec)
                key, engine = self.engine(spec, clip)
                given = (caption or "").strip() or None
                captioner = self.captioner(spec) if caption_needed(mode, given) else None
                if captioner is not None:
                    self.cache.use([captioner])
                    self.env.check_interrupt()
                captions = engine.captions(images, mode, given, captioner.value.using(spec.caption_options())
                                           if captioner else None, hook)
                self.cache.use([clip])
                self.env.check_interrupt()
                result = call(engine, images, captions, hook)
                self._account_index(clip, key, engine)
                return result
        except InterrogatorError as error:
            raise user_error(error) from error

    def encoder_prompts(self, spec: InterrogatorSpec, images, target: str, mode: str, caption: Optional[str] = None,
                        max_terms: Optional[int] = None, contents: Optional[Dict[str, str]] = None
                        ) -> Tuple[Dict[str, List[str]], List[str], List[Tuple[str, ...]]]:
        """Per output of ``target`` (see core.encoder_prompts), one text per image; the captions used; and each
        image's warnings (the lists precise mode found no good term in)."""
        try:
            row = get_target(target)
            counters = {"clip": clip_counter(), "t5": self._t5_counter() if row.needs_t5 else None}
        except InterrogatorError as error:
            raise user_error(error) from error
        parts = self.prompt_parts(spec, images, mode, caption, max_terms, row.needs_negative)
        try:
            texts = [write(row, p, counters, contents) for p in parts]
        except InterrogatorError as error:
            raise user_error(error) from error
        return ({name: [t[name] for t in texts] for name in row.names}, [p.caption for p in parts],
                [p.warnings for p in parts])

    def _t5_counter(self):
        with self._lock:
            if self._t5 is None:
                self._t5 = t5_counter(self.env.t5_tokenizer_folder())
            return self._t5

    def analyze(self, spec: InterrogatorSpec, images, top: int = 5) -> Tuple[List[Analysis], List[Confidence]]:
        """Each list's ``top`` terms with their scores, and how confident CLIP is of each list, per image."""
        try:
            with self._lock:
                images = as_pil_list(images)
                clip = self.clip(spec)
                key, engine = self.engine(spec, clip)
                self.cache.use([clip])
                self.env.check_interrupt()
                hook = self.env.progress()
                result = engine.inspect(images, top, hook)
                self._account_index(clip, key, engine)
                return result
        except InterrogatorError as error:
            raise user_error(error) from error

    def backbone(self, spec: InterrogatorSpec) -> str:
        """Which CLIP weights the interrogator runs, in what precision and where (with any warning about them)."""
        try:
            with self._lock:
                clip = self.clip(spec)
        except InterrogatorError as error:
            raise user_error(error) from error
        model = clip.value
        dtype = str(model.dtype).replace("torch.", "")
        return "\n".join([f"CLIP: {model.description} ({dtype} on {clip.load_device})",
                          *(f"warning: {note}" for note in model.notes)])

    def caption_folder(self, spec: InterrogatorSpec, items, options: DatasetOptions,
                       summary: Optional[Summary] = None) -> Summary:
        """Caption a dataset (see core/dataset.py) with the models of ``spec`` from the shared cache; the options'
        exclusions and artist switch become the vocabulary's, so they are the bans every other node uses."""
        spec = replace(spec, artists=spec.artists and options.artists,
                       ban=tuple(sorted(set(spec.ban) | {b.strip() for b in options.exclude if b.strip()})))
        summary = summary if summary is not None else Summary()
        try:
            with self._lock:
                clip = self.clip(spec)
                key, engine = self.engine(spec, clip)
                captioner = self.captioner(spec) if get_mode(options.mode).captioned else None

                def before(stage: str) -> None:
                    self.cache.use([captioner] if stage == "caption" else [clip])
                    self.env.check_interrupt()

                caption_dataset(engine, items, options,
                                captioner=captioner.value.using(spec.caption_options()) if captioner else None,
                                progress=self.env.progress(), report=log.warning, before=before, summary=summary)
                self._account_index(clip, key, engine)
                return summary
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
                self._pair_refs.clear()
            else:
                self.cache.unload()
            return count


def dataset_items(folder: str, recursive: bool, output_folder: str = "") -> Tuple[List[Item], Optional[str]]:
    """Caption Folder's paths checked: the images of ``folder`` and the output folder (None: beside them)."""
    if not folder.strip():
        raise ValueError("CLIP Interrogator: Caption Folder needs the full path of a dataset folder.")
    path = os.path.abspath(os.path.expanduser(folder.strip()))
    if not os.path.exists(path):
        raise ValueError(f"CLIP Interrogator: the folder {path} does not exist; give the full path of the dataset "
                         f"folder.")
    if not os.path.isdir(path):
        raise ValueError(f"CLIP Interrogator: {path} is a file, not a folder; give the folder that holds the "
                         f"images.")
    items = find_dataset([path], recursive)
    if not items:
        raise ValueError(f"CLIP Interrogator: no images in {path}" +
                         ("." if recursive else " (turn recursive on to caption subfolders)."))
    output = os.path.abspath(os.path.expanduser(output_folder.strip())) if output_folder.strip() else None
    if output and os.path.exists(output) and not os.path.isdir(output):
        raise ValueError(f"CLIP Interrogator: the output folder {output} is a file; give a folder (it is made if "
                         f"missing), or leave it empty to write captions beside the images.")
    return items, output


def replace_pairs(text: str) -> Tuple[Tuple[str, str], ...]:
    """'old = new' lines as pairs."""
    pairs = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        old, sep, new = line.partition("=")
        if not sep or not old.strip():
            raise ValueError(f"CLIP Interrogator: replace line {number} ({line.strip()!r}) is not 'old = new'.")
        pairs.append((old.strip(), new.strip()))
    return tuple(pairs)


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
