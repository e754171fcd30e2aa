"""Errors the engine raises for bad input.

Every message names the problem and the fix, because users see them verbatim as a node error or a CLI line.
"""


class InterrogatorError(Exception):
    """Base class: a problem the user can fix (missing file, bad image, bad option)."""


class ModelNotFoundError(InterrogatorError):
    """A model is neither in the models folder nor in the hub cache, and cannot be downloaded."""


class ModelLoadError(InterrogatorError):
    """A model file exists but cannot be loaded (wrong architecture, corrupt file)."""


class ImageError(InterrogatorError):
    """An image cannot be read or is empty."""


class VocabError(InterrogatorError):
    """A term list or vocabulary manifest is missing or malformed."""


class Cancelled(InterrogatorError):
    """Long work was cancelled through the progress hook."""


def out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` is an allocation failure (GPU, MPS or CPU): loaders let these through instead of
    reporting a missing or damaged model."""
    if isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError":
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def first_line(error: BaseException) -> str:
    """An exception's message cut to one line, for errors that quote a library's."""
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:300]
