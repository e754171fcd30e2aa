"""The suite runs from a checkout named as README's clone command names it (a folder name that is no identifier)."""

import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SKIP = shutil.ignore_patterns(".git", ".venv", "venv", "__pycache__", ".pytest_cache", "cache")


def test_tests_import_in_a_clone_named_comfyui_clip_interrogator_nodes(tmp_path):
    clone = tmp_path / "comfyui-clip-interrogator-nodes"
    shutil.copytree(ROOT, clone, ignore=SKIP)
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
         "tests/test_core.py::test_core_imports_nothing_from_comfyui"],
        cwd=clone, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "1 passed" in result.stdout
