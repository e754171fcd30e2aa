"""Files users hand us and files we write, each handled in one place.

- ``read_json`` / ``get``: a JSON config read with its shape checked, so a malformed file is an error naming it;
- ``inside``: a name from a workflow or a manifest resolved inside its folder, never outside it;
- ``safetensors_header`` / ``check_safetensors``: a weights file's header read and checked, so a damaged download
  is named before a loader chokes;
- ``atomic_path`` / ``new_temp`` / ``check_writable``: results written to a unique temp file renamed over the
  target, so a crash or a cancel never leaves half a file and no other file (a user's ``out.tmp``) is touched on
  the way.
"""

import json
import math
import os
import secrets
from contextlib import contextmanager
from typing import Dict, Iterator, Tuple, Type

from .errors import InterrogatorError

MAX_JSON_BYTES = 64 * 2**20  # configs and manifests are kilobytes; a manifest with inline terms a few megabytes
_REQUIRED = object()
_KINDS = {dict: "an object", list: "an array", str: "a string", int: "a whole number", float: "a number",
          bool: "true or false", type(None): "null"}


def json_kind(value) -> str:
    """What a JSON value is, in JSON's words ("an array", "null"...)."""
    for kind, text in _KINDS.items():
        if type(value) is kind:
            return text
    return type(value).__name__


def read_json(path: str, error: Type[InterrogatorError], expected: str) -> dict:
    """The JSON object in ``path``. Anything else (missing, unreadable, too large, not JSON, not an object) raises
    ``error`` naming the file and ``expected`` (what it should hold)."""
    hint = f"it should be {expected}."
    try:
        if os.path.getsize(path) > MAX_JSON_BYTES:
            raise error(f"{path} is {os.path.getsize(path) // 2**20} MiB, too large for a config; {hint}")
        with open(path, "r", encoding="utf-8-sig") as file:
            data = json.load(file)
    except FileNotFoundError:
        raise error(f"{path} not found; {hint}") from None
    except IsADirectoryError:
        raise error(f"{path} is a folder, not a file; {hint}") from None
    except OSError as failure:
        raise error(f"cannot read {path} ({failure.strerror or failure}); {hint}") from None
    except UnicodeDecodeError as failure:
        raise error(f"{path} is not UTF-8 text ({failure.reason} at byte {failure.start}); {hint}") from None
    except (ValueError, RecursionError) as failure:
        raise error(f"{path} is not valid JSON ({failure}); {hint}") from None
    if not isinstance(data, dict):
        raise error(f"{path} holds {json_kind(data)}, not a JSON object; {hint}")
    return data


def get(obj: dict, key: str, kind, where: str, error: Type[InterrogatorError], default=_REQUIRED):
    """``obj[key]`` if it is a ``kind`` (a type or a tuple of types; ``int`` never accepts true/false)."""
    if key not in obj:
        if default is _REQUIRED:
            raise error(f"{where} has no {key!r}.")
        return default
    value = obj[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        wanted = " or ".join(_KINDS.get(k, k.__name__) for k in kinds)
        raise error(f"{where}: {key!r} must be {wanted}, not {json_kind(value)} ({_short(value)}).")
    return value


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def inside(folder: str, name: str, what: str, error: Type[InterrogatorError]) -> str:
    """``folder/name`` for a name that stays inside ``folder``: relative, no ``..``. (Symlinks a user placed in the
    folder are followed as usual: the check is on the name given, not on where the user's links point.)"""
    if not isinstance(name, str) or not name.strip() or "\x00" in name:
        raise error(f"{what} must be a file name inside {folder}, got {_short(name)}.")
    parts = name.replace("\\", "/").split("/")
    if os.path.isabs(name) or name[:1] in "/\\" or os.path.splitdrive(name)[0] or ".." in parts:
        raise error(f"{what} {name!r} is outside {folder}: give a name inside that folder (no absolute path, "
                    f"no '..').")
    return os.path.join(folder, *[p for p in parts if p not in ("", ".")])


def safetensors_header(path: str, error: Type[InterrogatorError]) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """``{name: (dtype, shape)}`` of the safetensors file ``path``, without reading tensor data; ``error`` if it is
    damaged, truncated or empty (safetensors checks that the header's offsets cover the file exactly)."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as file:
            slices = {key: file.get_slice(key) for key in file.keys()}
            header = {key: (part.get_dtype(), tuple(part.get_shape())) for key, part in slices.items()}
    except OSError as failure:
        raise error(f"cannot read {path} ({failure.strerror or failure}).") from None
    except SafetensorError as failure:
        raise error(f"{path} is damaged or not a safetensors file ({failure}); download it again.") from None
    if not header:
        raise error(f"{path} holds no tensors; download it again.")
    return header


def check_safetensors(path: str, error: Type[InterrogatorError]) -> int:
    """How many numbers the safetensors file ``path`` holds; ``error`` if it is damaged, truncated or empty."""
    return sum(math.prod(shape) for _, shape in safetensors_header(path, error).values())


def check_writable(path: str, what: str = "output file") -> None:
    """Raise InterrogatorError unless a file can be written at ``path`` (its folder exists; it is no folder)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise InterrogatorError(f"{what} {path} is a folder; give a file name, e.g. "
                                f"{os.path.join(path, 'prompts.txt')}.")
    existing = _existing_ancestor(folder)
    if not os.path.isdir(existing):
        raise InterrogatorError(f"cannot write {what} {path}: {existing} is a file, not a folder.")
    if existing != folder:
        raise InterrogatorError(f"cannot write {what} {path}: the folder {folder} does not exist; create it first.")
    if not os.access(folder, os.W_OK):
        raise InterrogatorError(f"cannot write {what} {path}: no permission to write in {folder}.")


def _existing_ancestor(path: str) -> str:
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """A fresh temp file beside ``path`` to write; renamed onto ``path`` when the block ends, removed if it fails.

    The temp name is unique (never an existing file such as a user's ``<path>.tmp``) and created with the usual
    permissions; a reader of ``path`` sees the old file or the new one, never half of one.
    """
    folder, base = os.path.split(os.path.abspath(path))
    tmp = new_temp(folder, base)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def new_temp(folder: str, base: str, suffix: str = ".tmp") -> str:
    """A new empty file in ``folder`` for writing ``base`` through: a hidden name nobody else uses (created
    exclusively, so never someone's existing file), short enough for any file system whatever ``base``'s length."""
    while True:
        tmp = os.path.join(folder, f".{base[:80]}.{secrets.token_hex(6)}{suffix}")
        try:
            with open(tmp, "x"):
                return tmp
        except FileExistsError:
            continue
