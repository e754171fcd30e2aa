"""How long Cancel can take: the longest stretch the engine runs without calling its progress hook.

The progress hook is the cancel channel (ComfyUI's raises on interrupt), so the longest gap between two calls is
the worst-case time from pressing Cancel to the work stopping. Runs label embedding and best mode with random
weights twice in one process: hook calls per finished unit only (as before polling), and with the polls inside
long units (``Steps.tick``). Prompts must be identical.

    python bench/cancel_latency.py --arch ViT-B-32 --labels 2000
"""

import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import core.progress  # noqa: E402
from benchmark import CAPTION, random_clip, write_lists  # noqa: E402
from core import Interrogator, Vocabulary  # noqa: E402
from core.images import as_pil_list  # noqa: E402


def gaps(clip, vocab, image, tick_seconds: float):
    """(label-embedding gaps, best-mode gaps, prompt) in seconds, with polls every ``tick_seconds``."""
    core.progress.TICK_SECONDS = tick_seconds
    stamps = []

    def hook(done, total, desc):
        stamps.append(time.perf_counter())

    engine = Interrogator(clip, None, vocab, cache_dir=None)  # no cache: the embedding runs every time
    stamps.append(time.perf_counter())
    engine.label_index(hook)
    embedding = [b - a for a, b in zip(stamps, stamps[1:])]
    stamps[:] = [time.perf_counter()]
    prompt = engine.interrogate(image, "best", captions=CAPTION, progress=hook)[0]
    stamps.append(time.perf_counter())
    return embedding, [b - a for a, b in zip(stamps, stamps[1:])], prompt


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="ViT-B-32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--labels", type=int, default=2000, help="approximate size of the ranked pool")
    args = parser.parse_args(argv)
    torch.set_grad_enabled(False)
    clip = random_clip(args.arch, args.device, torch.float32 if args.device == "cpu" else torch.float16)
    with tempfile.TemporaryDirectory() as folder:
        n_labels = write_lists(folder, Vocabulary.builtin(), args.labels)
        vocab = Vocabulary.from_folder(folder)
    image = as_pil_list(_image())
    default = core.progress.TICK_SECONDS
    rows, prompts = [], []
    for label, tick in (("per finished unit only", float("inf")), (f"polls every {default:g} s", default)):
        embedding, best, prompt = gaps(clip, vocab, image, tick)
        prompts.append(prompt)
        rows.append((label, max(embedding), statistics.median(embedding), len(embedding), max(best),
                     statistics.median(best), len(best)))
    print(f"\n{args.arch} on {args.device}, {n_labels} labels, torch {torch.__version__} "
          f"(wall-clock seconds; noisy on a shared machine)\n")
    print("| hook calls | embedding: longest gap | median | calls | best mode: longest gap | median | calls |")
    print("|---|---|---|---|---|---|---|")
    for label, *values in rows:
        print(f"| {label} | {values[0]:.2f} | {values[1]:.3f} | {values[2]} | {values[3]:.2f} | {values[4]:.3f} | "
              f"{values[5]} |")
    print(f"\nidentical prompt: {'yes' if prompts[0] == prompts[1] else 'NO'}")
    return 0 if prompts[0] == prompts[1] else 1


def _image():
    from PIL import Image

    image = Image.new("RGB", (256, 256), (40, 90, 160))
    image.paste((230, 200, 40), (60, 60, 180, 200))
    return image


if __name__ == "__main__":
    sys.exit(main())
