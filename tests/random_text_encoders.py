"""Full-size text encoders with random weights, as the files ComfyUI's CLIP loaders read (clip_l, clip_g, t5xxl).

ComfyUI builds its text encoders from fixed configs (CLIP-L, OpenCLIP bigG, T5-XXL) whatever the file holds, so an
honest run of CLIPTextEncodeSDXL / CLIPTextEncodeFlux needs full-size weights. They are random (no download),
written tensor by tensor so memory stays at one tensor, and kept in a cache folder between runs (written to a
temporary name, then renamed).
"""

import json
import os
import struct

import torch

# names and shapes as transformers' classes of the same architectures save them, which is what ComfyUI loads
ENCODERS = {
    "clip_l": ("CLIPTextModelWithProjection", "CLIPTextConfig", dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, vocab_size=49408, projection_dim=768)),
    "clip_g": ("CLIPTextModelWithProjection", "CLIPTextConfig", dict(
        hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=20,
        max_position_embeddings=77, vocab_size=49408, projection_dim=1280)),
    "t5xxl": ("T5EncoderModel", "T5Config", dict(
        d_model=4096, d_ff=10240, num_layers=24, num_heads=64, d_kv=64, vocab_size=32128,
        feed_forward_proj="gated-gelu")),
}
SAFETENSORS_DTYPES = {torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
SKIP = ("encoder.embed_tokens.weight",)  # T5's copy of shared.weight


def _shapes(kind: str):
    import transformers

    model_class, config_class, config = ENCODERS[kind]
    with torch.device("meta"):
        model = getattr(transformers, model_class)(getattr(transformers, config_class)(**config))
    prefix = "text_model." if kind.startswith("clip") else ""  # the layout of the published files
    return [(name if name.startswith(("text_model.", "text_projection")) else prefix + name, tuple(t.shape))
            for name, t in model.state_dict().items() if t.is_floating_point() and name not in SKIP]


def _random(n: int, dtype, norm: bool, generator) -> torch.Tensor:
    """``n`` random values as raw bytes of ``dtype``: about N(0, 0.02), or about 1 for norm weights (which keeps
    activations finite through 24-32 layers). fp8 values are drawn as bit patterns, ~50x faster than randn."""
    if dtype == torch.float8_e4m3fn:
        bits = torch.randint(0, 256, (n,), dtype=torch.uint8, generator=generator)
        # sign and mantissa random; exponent 7 (1.0-1.9, positive) for norms, 2 (+-0.03-0.06) otherwise
        return (bits & 0x07) | (7 << 3) if norm else (bits & 0x87) | (2 << 3)
    values = torch.randn(n, generator=generator) * 0.02
    return (values + 1.0 if norm else values).to(dtype).view(torch.uint8)


def write_random_text_encoder(folder: str, kind: str, dtype=torch.float16, seed: int = 0) -> str:
    """``<folder>/<kind>_random_<dtype>.safetensors``, written once and reused."""
    name = f"{kind}_random_{SAFETENSORS_DTYPES[dtype].lower()}.safetensors"
    path = os.path.join(folder, name)
    if os.path.isfile(path):
        return path
    os.makedirs(folder, exist_ok=True)
    shapes = _shapes(kind)
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {}, 0
    for tensor_name, shape in shapes:
        count = 1
        for n in shape:
            count *= n
        header[tensor_name] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape),
                               "data_offsets": [offset, offset + count * size]}
        offset += count * size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    generator = torch.Generator().manual_seed(seed)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "wb") as file:
        file.write(struct.pack("<Q", len(raw)))
        file.write(raw)
        for tensor_name, shape in shapes:
            rows = shape[0] if shape else 1
            width = max(1, int(torch.tensor(shape[1:]).prod().item())) if len(shape) > 1 else 1
            step = max(1, (1 << 24) // width)  # about 16M values at a time
            norm = "layer_norm" in tensor_name and tensor_name.endswith(".weight")
            for start in range(0, rows, step):
                n = min(step, rows - start) * width
                file.write(_random(n, dtype, norm, generator).numpy().tobytes())
    os.replace(tmp, path)
    return path
