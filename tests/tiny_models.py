"""Tiny random-weight models written to disk in the layouts real users have, for loading through the product.

No weights can be downloaded in tests, so these stand in for ViT-L-14 and BLIP: same classes, same files, same
loader code, just small and random.
"""

import json
import os

import numpy as np
import torch
from PIL import Image

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CAPTION_WORDS = ("a an the photo painting of with on in at and cat dog woman man street city night garden red blue "
                 "green tree house car sky sunset forest river mountain portrait close up view small large old "
                 "young").split()


def write_tiny_clip(folder: str, stem: str = "tiny-clip", seed: int = 0) -> str:
    """A CLIP with the real BPE tokenizer's vocabulary, as ``<stem>.safetensors`` + ``<stem>.json`` (its config)."""
    return write_random_clip(folder, TINY_CLIP_CONFIG, stem, seed)


def write_random_clip(folder: str, config: dict, stem: str, seed: int = 0) -> str:
    """An open_clip architecture with random weights, saved as a user saves a custom CLIP: ``<stem>.safetensors``
    with its config beside it as ``<stem>.json``."""
    import open_clip
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    path = os.path.join(folder, f"{stem}.safetensors")
    save_file(model.state_dict(), path)
    with open(os.path.join(folder, f"{stem}.json"), "w") as file:
        json.dump(config, file)
    return path


def write_tiny_blip(folder: str, seed: int = 0) -> str:
    """A BLIP captioner saved with ``save_pretrained``, with a small BERT tokenizer and processor."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *CAPTION_WORDS]
    with open(os.path.join(folder, "vocab.txt"), "w") as file:
        file.write("\n".join(vocab) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                              tokenizer=BertTokenizer(os.path.join(folder, "vocab.txt"), bos_token="[DEC]"))
    # a wide init makes captions depend visibly on the image, so tests can tell images apart
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3, initializer_range=0.5),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, initializer_range=0.5),
        projection_dim=32, initializer_range=0.5)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def sample_images():
    """Three different images: noise, a gradient, and shapes on a plain background."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 80, dtype=np.float32)
    gradient = Image.fromarray(np.stack([np.tile(ramp, (60, 1)), np.tile(ramp[::-1], (60, 1)),
                                         np.full((60, 80), 90.0)], -1).astype(np.uint8))
    shapes = Image.new("RGB", (64, 64), (20, 40, 200))
    shapes.paste((250, 200, 10), (10, 10, 40, 50))
    return [noise, gradient, shapes]
