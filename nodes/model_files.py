"""Model files in the host's model folders: what Load Interrogator lists, and where a chosen name is loaded from."""

import os
from typing import List, Optional, Tuple

from ..core import CAPTION_MODELS, DEFAULT_CAPTION_MODEL, NO_CAPTION, PRESETS, ModelNotFoundError
from ..core.caption import caption_model_folder
from ..core.clip_model import preset_filename
from ..core.files import inside

CAPTION_PRESETS = (DEFAULT_CAPTION_MODEL, *[n for n in CAPTION_MODELS if n != DEFAULT_CAPTION_MODEL], NO_CAPTION)
CACHE_FOLDER = "cache"


class ModelFiles:
    """The model files of one environment (see :mod:`.environment`)."""

    def __init__(self, env):
        self.env = env

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
        return presets + local

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
    def _folders_text(self) -> str:
        return " or ".join(self.env.model_folders())

    def clip_source(self, name: str) -> Tuple[str, Optional[str]]:
        """(name to load, models folder): a preset from the folder that holds its file, or a file inside one of
        the model folders (a name that leads outside them is refused)."""
        if not isinstance(name, str) or not name:
            raise ModelNotFoundError(f"a CLIP model is a preset or file name, not {name!r:.40}.")
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

