"""Run by ComfyUI-Manager after it installs this pack: installs requirements.txt into ComfyUI's Python.

torch is never installed, upgraded or downgraded: pip gets a constraint that pins the torch (and torchvision)
already installed, so a dependency that asks for another torch fails loudly instead of replacing ComfyUI's.
Nothing here runs when ComfyUI imports the pack.
"""

import importlib.metadata
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
PINNED = ("torch", "torchvision")


def constraints() -> list:
    """``name==version`` for each installed package that must not change."""
    pins = []
    for name in PINNED:
        try:
            pins.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    return pins


def pip_command(requirements: str, constraint_file: str) -> list:
    return [sys.executable, "-m", "pip", "install", "-r", requirements, "-c", constraint_file]


def main() -> int:
    requirements = os.path.join(HERE, "requirements.txt")
    if not os.path.isfile(requirements):
        print(f"[clip-interrogator] {requirements} is missing; nothing to install.")
        return 0
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as file:
        file.write("\n".join(constraints()) + "\n")
        constraint_file = file.name
    try:
        command = pip_command(requirements, constraint_file)
        print("[clip-interrogator] " + " ".join(command))
        return subprocess.call(command)
    finally:
        os.remove(constraint_file)


if __name__ == "__main__":
    sys.exit(main())
