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
