"""Devices as users name them ("auto", "cpu", "cuda", "cuda:1", "mps"), checked against what this machine has."""

from typing import Union

import torch

from .errors import InterrogatorError

DeviceChoice = Union[str, torch.device, None]
_HINT = "use auto, cpu, cuda, cuda:N or mps"


def default_device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def parse_device(choice: DeviceChoice) -> torch.device:
    """The device ``choice`` names ("auto" or None: the best one here); an unknown name or a device this machine
    lacks raises InterrogatorError saying what is available."""
    if choice is None or (isinstance(choice, str) and choice.strip().lower() == "auto"):
        return default_device()
    if isinstance(choice, torch.device):
        device = choice
    elif isinstance(choice, str):
        try:
            device = torch.device(choice.strip().lower())
        except (RuntimeError, ValueError):
            raise InterrogatorError(f"unknown device {choice!r}; {_HINT}.") from None
    else:
        raise InterrogatorError(f"a device is a name such as 'cpu' or 'cuda', not {type(choice).__name__}; {_HINT}.")
    if device.type == "cpu":
        return device
    if device.type not in ("cuda", "mps", "xpu"):
        raise InterrogatorError(f"device {choice!r} cannot run models here; {_HINT}.")
    backend = torch.backends.mps if device.type == "mps" else getattr(torch, device.type, None)
    if backend is None or not backend.is_available():
        raise InterrogatorError(f"device {choice!r} is not available on this machine (torch {torch.__version__} "
                                f"finds no {device.type.upper()} device); use cpu or auto.")
    count = backend.device_count() if hasattr(backend, "device_count") else 1
    if device.index is not None and device.index >= count:
        raise InterrogatorError(f"device {choice!r} does not exist: this machine has {count} {device.type} "
                                f"device(s), numbered from 0.")
    return device
