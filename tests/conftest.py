import os
import sys

import pytest

# No hub can be reached from tests: fail fast instead of waiting on network timeouts. Must be set before
# huggingface_hub is imported, which reads it once.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from tests.tiny_models import sample_images, write_tiny_blip, write_tiny_clip  # noqa: E402



@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    """A models folder as users fill it: a CLIP file with its config, BLIP-large's folder (tiny stand-ins)."""
    folder = str(tmp_path_factory.mktemp("models"))
    write_tiny_clip(folder)
    write_tiny_blip(os.path.join(folder, "blip-image-captioning-large"))
    return folder


@pytest.fixture(scope="session")
def clip(models_dir):
    from core import load_clip

    return load_clip(weights=os.path.join(models_dir, "tiny-clip.safetensors"))


@pytest.fixture(scope="session")
def captioner(models_dir):
    from core import load_captioner

    return load_captioner("blip-large", models_dir=models_dir)


@pytest.fixture(scope="session")
def reference_vocab_dir(tmp_path_factory):
    """Our own lists, laid out as clip-interrogator's data folder so the reference can read them too.

    Every flavor-role list goes into flavors.txt, so the reference ranks our whole general pool.
    """
    from core import Vocabulary

    vocab = Vocabulary.builtin()
    folder = tmp_path_factory.mktemp("reference_layout")
    files = {"artist": "artists.txt", "flavor": "flavors.txt", "medium": "mediums.txt", "movement": "movements.txt",
             "negative": "negative.txt"}
    for role, name in files.items():
        terms = [t for term_list in vocab.by_role(role) for t in term_list.terms]
        (folder / name).write_text("\n".join(terms) + "\n", encoding="utf-8")
    return str(folder)


@pytest.fixture(scope="session")
def images():
    return sample_images()
