"""Model files in the host's model folders: what Load Interrogator lists, and where a chosen name is loaded from.

Besides open_clip models, Load Interrogator lists CLIP pairs made of files ComfyUI users already have: a checkpoint
or text-encoder file whose text encoder matches a CLIP Vision file (``checkpoints/sd_xl_base_1.0.safetensors
[clip_g] + clip_vision/CLIP-ViT-bigG-14-laion2B-39B-b160k.safetensors``). Only safetensors headers are read to find
them, once per file version.
"""

import os
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple, Union

from ..core import (CAPTION_MODELS, DEFAULT_CAPTION_MODEL, NO_CAPTION, PRESETS, InterrogatorError, ModelNotFoundError,
                    VocabError)
from ..core.caption import caption_model_folder
from ..core.clip_model import preset_filename
from ..core.files import inside
from ..core.clip_pair import load_clip_pair, pick_text, plan_pair, text_towers, vision_tower
from ..core.tensors import SafetensorsFiles

CAPTION_PRESETS = (DEFAULT_CAPTION_MODEL, *[n for n in CAPTION_MODELS if n != DEFAULT_CAPTION_MODEL], NO_CAPTION)
CACHE_FOLDER = "cache"
VOCABULARIES = ("builtin", "reference")
VOCABULARY_FOLDER = "vocabularies"  # whole term-list sets (a folder with a manifest.json each), beside vocab/
PAIR_TEXT_KINDS = ("checkpoints", "text_encoders")
PAIR = re.compile(r"(checkpoints|text_encoders)/(.+) \[([^\]]+)\] \+ clip_vision/(.+)")


@dataclass(frozen=True)
class FilePair:
    """A text encoder inside a checkpoint or text-encoder file, and a CLIP Vision file: one CLIP once converted."""

    text_path: str
    text_encoder: str  # clip_l, clip_g, clip_h
    vision_path: str

    @property
    def key(self) -> tuple:
        """Identifies the files' current versions: a replaced file is converted again."""
        return ("pair", self.text_path, self.text_encoder, self.vision_path, _stamp(self.text_path),
                _stamp(self.vision_path))

    def load(self, dtype, progress=None):
        return load_clip_pair(self.text_path, self.vision_path, text_encoder=self.text_encoder, dtype=dtype,
                              progress=progress)


def pair_name(text_kind: str, text_name: str, text_encoder: str, vision_name: str) -> str:
    return f"{text_kind}/{text_name} [{text_encoder}] + clip_vision/{vision_name}"


def _stamp(path: str) -> Tuple[int, int]:
    stat = os.stat(path)
    return stat.st_size, stat.st_mtime_ns


class ModelFiles:
    """The model files of one environment (see :mod:`.environment`)."""

    def __init__(self, env):
        self.env = env
        self._towers: Dict[tuple, object] = {}  # (kind, path, stamp) -> towers found in that file version

    @property
    def cache_dir(self) -> str:
        return os.path.join(self.env.model_folders()[0], CACHE_FOLDER)

    @property
    def user_vocab_dir(self) -> str:
        return os.path.join(self.env.model_folders()[0], "vocab")

    # -- choices ----------------------------------------------------------------------------------------------------
    def clip_choices(self) -> List[str]:
        presets = list(PRESETS)
        preset_files = {preset_filename(p) for p in presets}
        local = [f for f in self.env.list_files() if f.endswith(".safetensors") and not self._is_managed_file(f)
                 and f not in preset_files]
        return presets + self.pair_choices() + local

    def pair_choices(self) -> List[str]:
        """Every checkpoint / text-encoder file + CLIP Vision file of the host that make one CLIP."""
        visions = [(name, tower) for name, path in self.env.host_files("clip_vision")
                   for tower in [self._read("vision", path)] if tower is not None]
        choices = []
        for kind in PAIR_TEXT_KINDS:
            for name, path in self.env.host_files(kind):
                towers = self._read("text", path)
                for vision_name, vision in visions if towers else ():
                    try:
                        text = plan_pair(pick_text(towers, vision), vision).text
                    except InterrogatorError:
                        continue
                    choices.append(pair_name(kind, name, text.name, vision_name))
        return choices

    def _read(self, kind: str, path: str):
        """The vision tower (or None) or text towers (a list) of a file, from its header; unreadable: none."""
        try:
            key = (kind, path, _stamp(path))
        except OSError:
            return None
        if key not in self._towers:
            try:
                source = SafetensorsFiles(path)
                self._towers[key] = vision_tower(source) if kind == "vision" else text_towers(source)
            except InterrogatorError:
                self._towers[key] = None
        return self._towers[key]

    def vocabulary_choices(self) -> List[str]:
        """The shipped vocabularies and the user's own (folders with a manifest.json in ``vocabularies/``)."""
        return list(VOCABULARIES) + sorted(self._vocabulary_folders())

    def vocabulary_folder(self, name: str) -> Optional[str]:
        """The folder of a user vocabulary, or None for a shipped one."""
        if name in VOCABULARIES:
            return None
        folder = self._vocabulary_folders().get(name)
        if folder is None:
            raise VocabError(f"vocabulary {name!r} is not a shipped one ({', '.join(VOCABULARIES)}) nor a "
                                     f"folder with a manifest.json in {self._folders_text(VOCABULARY_FOLDER)}.")
        return folder

    def _vocabulary_folders(self) -> Dict[str, str]:
        found = {}
        for root in self.env.model_folders():
            parent = os.path.join(root, VOCABULARY_FOLDER)
            for name in sorted(os.listdir(parent)) if os.path.isdir(parent) else ():
                if os.path.isfile(os.path.join(parent, name, "manifest.json")) and name not in VOCABULARIES:
                    found.setdefault(name, os.path.join(parent, name))
        return found

    def caption_choices(self) -> List[str]:
        preset_folders = {CAPTION_MODELS[n].split("/")[-1] for n in CAPTION_MODELS} | set(CAPTION_MODELS)
        local = []
        for folder in self.env.model_folders():
            if not os.path.isdir(folder):
                continue
            for name in sorted(os.listdir(folder)):
                if name in preset_folders or name == CACHE_FOLDER:
                    continue
                if os.path.isfile(os.path.join(folder, name, "config.json")) and name not in local:
                    local.append(name)
        return list(CAPTION_PRESETS) + local

    def _is_managed_file(self, relative: str) -> bool:
        """Files that are not CLIP choices: our embedding cache and the weights inside caption model folders."""
        parts = relative.replace("\\", "/").split("/")
        if parts[0] == CACHE_FOLDER:
            return True
        for folder in self.env.model_folders():
            if len(parts) > 1 and os.path.isfile(os.path.join(folder, *parts[:-1], "config.json")):
                return True
        return False

    # -- sources ----------------------------------------------------------------------------------------------------
    def _folders_text(self, sub: str = "") -> str:
        return " or ".join(os.path.join(f, sub) if sub else f for f in self.env.model_folders())

    def clip_source(self, name: str) -> Union[Tuple[str, Optional[str]], FilePair]:
        """(name to load, models folder): a preset from the folder that holds its file, or a file inside one of
        the model folders (a name that leads outside them is refused); or the files of a pair."""
        if not isinstance(name, str) or not name:
            raise ModelNotFoundError(f"a CLIP model is a preset or file name, not {name!r:.40}.")
        pair = PAIR.fullmatch(name)
        if pair:
            return self._pair_source(*pair.groups())
        folders = self.env.model_folders()
        if name in PRESETS or ("/" in name and not name.endswith(".safetensors")):
            for folder in folders:
                if os.path.isfile(os.path.join(folder, preset_filename(name))):
                    return name, folder
            return name, folders[0]
        for folder in folders:
            path = inside(folder, name, "CLIP model file", ModelNotFoundError)
            if os.path.isfile(path):
                return path, None
        raise ModelNotFoundError(f"CLIP model file {name} is not in {self._folders_text()}; put the .safetensors "
                                 f"file (and a .json config for a custom architecture) there, or pick a preset.")

    def host_path(self, folder: str, name: str) -> Optional[str]:
        """The path of one of the host's model files (``checkpoints``, ``text_encoders``, ``clip_vision``)."""
        return dict(self.env.host_files(folder)).get(name)

    def _pair_source(self, kind: str, text_name: str, text_encoder: str, vision_name: str) -> FilePair:
        paths = {}
        for folder, name in ((kind, text_name), ("clip_vision", vision_name)):
            paths[folder] = self.host_path(folder, name)
            if not paths[folder]:
                raise ModelNotFoundError(f"{name} is not in ComfyUI's models/{folder} any more; pick another CLIP.")
        return FilePair(paths[kind], text_encoder, paths["clip_vision"])

    def caption_source(self, name: str) -> Tuple[str, Optional[str]]:
        """(name or folder to load, models folder) of a caption model; ``none`` stays ``none``; a folder must be
        inside one of the model folders."""
        if name is not None and not isinstance(name, str):
            raise ModelNotFoundError(f"a caption model is a preset or folder name, not {name!r:.40}.")
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
            path = inside(folder, name, "caption model folder", ModelNotFoundError)
            if os.path.isfile(os.path.join(path, "config.json")):
                return path, None
        raise ModelNotFoundError(f"caption model folder {name} is not in {self._folders_text()} (it needs a "
                                 f"config.json); put the model's files there, or pick '{NO_CAPTION}'.")

