"""What turning ComfyUI's CLIP + CLIP Vision into one open_clip model costs, in time and RAM.

The towers are filled as ComfyUI holds them (Hugging Face layout, fp16, the vision tower's norms and projection in
fp32), at real sizes, with constant weights (cost does not depend on values). For each architecture and precision:
the time to check the pair (shapes only), to convert it (including hashing the text tower for the label cache), the
bytes the model shares with ComfyUI's tensors and the bytes it owns, and the process's resident memory growth.

    python bench/pair_conversion.py --arch ViT-L-14 ViT-bigG-14 --dtype fp16 fp32
"""

import argparse
import gc
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core.clip_layout import LAYOUTS, Transposed  # noqa: E402
from core.clip_pair import load_pair, pair_from_sources, text_key  # noqa: E402
from core.tensors import MemoryTensors  # noqa: E402

DTYPES = {"fp16": torch.float16, "fp32": torch.float32, "bf16": torch.bfloat16}


def comfy_towers(arch: str):
    """Text and vision tensors of ``arch`` in ComfyUI's layout and dtypes."""
    import open_clip

    with torch.device("meta"):
        model = open_clip.CLIP(**open_clip.get_model_config(arch))
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    layers = {"text": model.transformer.layers, "vision": model.visual.transformer.layers}
    towers = {}
    for layout in (l for l in LAYOUTS if l.name == "Hugging Face"):
        tensors = {}
        for key, origin in layout.origins(layers[layout.kind], layout.projection[0][1]).items():
            shape = shapes[key]
            fp32 = layout.kind == "vision" and ("ln_" in key or key == "visual.proj")  # as ComfyUI builds them
            dtype = torch.float32 if fp32 else torch.float16
            if isinstance(origin, str):
                tensors[origin] = torch.full(shape, 0.01, dtype=dtype)
            elif isinstance(origin, Transposed):
                tensors[origin.key] = torch.full(tuple(reversed(shape)), 0.01, dtype=dtype)
            else:
                for part in origin.keys:
                    tensors[part] = torch.full((shape[0] // len(origin.keys), *shape[1:]), 0.01, dtype=dtype)
        towers[layout.kind] = MemoryTensors(tensors, f"{arch} {layout.kind}")
    return towers["text"], towers["vision"]


def resident_bytes() -> int:
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError):
        return 0


def storage_bytes(tensors) -> int:
    seen = {}
    for t in tensors:
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
    return sum(seen.values())


def run(arch: str, dtype_name: str):
    text, vision = comfy_towers(arch)
    given = {t.untyped_storage().data_ptr() for s in (text, vision) for t in s.tensors.values()}
    held = storage_bytes(t for s in (text, vision) for t in s.tensors.values())
    gc.collect()
    before = resident_bytes()
    start = time.perf_counter()
    pair = pair_from_sources(text, vision)
    checked = time.perf_counter()
    clip = load_pair(pair, dtype=DTYPES[dtype_name])
    done = time.perf_counter()
    tensors = list(clip.model.state_dict().values())
    shared = storage_bytes(t for t in tensors if t.untyped_storage().data_ptr() in given)
    owned = storage_bytes(t for t in tensors if t.untyped_storage().data_ptr() not in given)
    grown = resident_bytes() - before
    hash_start = time.perf_counter()
    text_key(clip.model, pair)
    hashed = time.perf_counter() - hash_start
    row = (arch, dtype_name, held, checked - start, done - checked, hashed, shared, owned, grown)
    del clip, pair, text, vision, tensors
    gc.collect()
    return row


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", nargs="+", default=["ViT-L-14", "ViT-bigG-14"])
    parser.add_argument("--dtype", nargs="+", default=["fp16", "fp32"], choices=list(DTYPES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    gib = 2 ** 30
    print("| pair | precision | ComfyUI holds GiB | check s | convert s | of which hashing s | shared GiB | new GiB "
          "| RSS growth GiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for arch in args.arch:
        for dtype_name in args.dtype:
            arch_, dt, held, check, convert, hashed, shared, owned, grown = run(arch, dtype_name)
            print(f"| {arch_} | {dt} | {held / gib:.2f} | {check:.3f} | {convert:.1f} | {hashed:.1f} | "
                  f"{shared / gib:.2f} | {owned / gib:.2f} | {grown / gib:.2f} |", flush=True)


if __name__ == "__main__":
    main()
