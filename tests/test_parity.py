"""Our prompts against clip-interrogator 0.6.0's, byte for byte, on the same models, lists, images and captions.

The reference runs with chunk_size above every table's length, so its ranking is exact (its documented
approximate top-k is off), and we run with ``Settings.reference()`` so our deliberate differences are off too.
"""

import pytest

from core import MODES, Interrogator, Settings, Vocabulary

ci = pytest.importorskip("clip_interrogator", reason="the parity tests need clip-interrogator==0.6.0 (dev requirement)")

CAPTIONS = ["a painting of a woman standing in a garden", "a red car parked on a city street at night"]
CAPTIONED = [m for m in MODES.values() if m.reference and m.captioned]
UNCAPTIONED = [m for m in MODES.values() if m.reference and not m.captioned]


@pytest.fixture(scope="module")
def reference(clip, captioner, reference_vocab_dir, tmp_path_factory):
    assert ci.__version__ == "0.6.0"
    config = ci.Config(clip_model_name="ViT-L-14/openai", caption_model_name="blip-large", device="cpu",
                       data_path=reference_vocab_dir, cache_path=str(tmp_path_factory.mktemp("reference_cache")),
                       download_cache=False, chunk_size=1_000_000, quiet=True)
    config.clip_model, config.clip_preprocess = clip.model, clip.preprocess
    config.caption_model, config.caption_processor = captioner.model, captioner.processor
    return ci.Interrogator(config)


@pytest.fixture(scope="module")
def ours(clip, captioner, reference, reference_vocab_dir, tmp_path_factory):
    settings = Settings.reference(approx_topk_chunk=reference.config.chunk_size)
    return Interrogator(clip, captioner, Vocabulary.from_folder(reference_vocab_dir),
                        cache_dir=str(tmp_path_factory.mktemp("our_cache")), settings=settings)


def test_reference_ranks_exactly(reference):
    """Guard for the contract: every reference table fits in one chunk, so its top-k is exact."""
    tables = [reference.artists, reference.flavors, reference.mediums, reference.movements, reference.trendings]
    assert sum(len(t.labels) for t in tables) <= reference.config.chunk_size


@pytest.mark.parametrize("image_index", [0, 1, 2])
@pytest.mark.parametrize("caption", CAPTIONS)
def test_captioned_modes_match_reference(reference, ours, images, image_index, caption):
    image = images[image_index]
    expected = {m.name: getattr(reference, m.reference)(image, caption=caption) for m in CAPTIONED}
    got = {m.name: ours.interrogate(image, m.name, captions=caption)[0] for m in CAPTIONED}
    assert got == expected
    assert {"fast", "classic", "best"} <= set(got) and expected["fast"].startswith(caption + ", ")


@pytest.mark.parametrize("image_index", [0, 1, 2])
def test_uncaptioned_modes_match_reference(reference, ours, images, image_index):
    expected = {m.name: getattr(reference, m.reference)(images[image_index]) for m in UNCAPTIONED}
    assert {m.name: ours.interrogate(images[image_index], m.name)[0] for m in UNCAPTIONED} == expected
    assert "negative" in expected and all(expected.values())


def test_best_without_caption_argument_uses_same_caption(reference, ours, images):
    """With no caption given, both caption the image with the same BLIP and reach the same prompt."""
    assert ours.caption(images[2])[0] == reference.generate_caption(images[2])
    assert ours.interrogate(images[2], "best")[0] == reference.interrogate(images[2])


def test_batch_gives_the_single_image_prompts(ours, images):
    single = [ours.interrogate(image, "fast", captions=CAPTIONS[0])[0] for image in images]
    assert ours.interrogate(images, "fast", captions=CAPTIONS[0]) == single
    assert len(set(single)) == 3
