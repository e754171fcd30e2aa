"""Caption Folder's throughput: the batch path (core/dataset.py) against calling the engine one image at a time.

    python bench/dataset.py --images 200                      # the tests' tiny random CLIP and BLIP, CPU
    python bench/dataset.py --images 200 --arch ViT-B-32      # a real-sized random CLIP (image tower 88M params)

Both paths caption the same generated folder (512x384 JPEGs) into their own copy, with the same models, the
builtin vocabulary and the same mode, and must write identical caption files. Each runs in its own process, so its
peak RAM is its own; RAM is also sampled after every image, to show whether it grows with the number of images.
Model loading and the label embeddings (cached on disk by a warm-up) are outside the timed part. Prints a markdown
table. The caption model is always the tiny BLIP (no caption weights can be downloaded here), so on a real BLIP the
share of time spent captioning, which batching speeds up, is larger than measured here.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from core import Interrogator, Vocabulary, load_captioner, load_clip  # noqa: E402
from core.dataset import DatasetOptions, caption_dataset, find_dataset, write_caption  # noqa: E402
from core.images import open_image  # noqa: E402
from tests.tiny_models import write_random_clip, write_tiny_blip, write_tiny_clip  # noqa: E402

PATHS = ("batch", "one at a time")


def rss_mib() -> float:
    """This process's resident memory now (Linux /proc; elsewhere psutil)."""
    try:
        with open("/proc/self/statm") as file:
            return int(file.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import psutil

        return psutil.Process().memory_info().rss / 2**20


def write_models(folder: str, arch: str) -> str:
    """The CLIP weights file the engine loads (with its config beside it) and the tiny BLIP folder."""
    write_tiny_blip(os.path.join(folder, "blip-image-captioning-large"))
    if arch == "tiny":
        return write_tiny_clip(folder)
    import open_clip

    return write_random_clip(folder, open_clip.get_model_config(arch), f"random-{arch}")


def write_images(folder: str, count: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(count):
        base = rng.integers(0, 256, (3,))
        pixels = np.clip(base + rng.normal(0, 40, (384, 512, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, f"{i:05d}.jpg"), quality=90)


def engine(args) -> Interrogator:
    clip = load_clip(weights=args.weights, device="cpu")
    captioner = load_captioner("blip-large", models_dir=args.models, device="cpu")
    return Interrogator(clip, captioner, Vocabulary.builtin(), cache_dir=os.path.join(args.models, "cache"))


def peak_rss_mib(samples) -> float:
    """The process's peak resident memory so far (getrusage where it exists, else the highest sample)."""
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
    except ImportError:
        return max(samples)


def child(args) -> None:
    """One path, in this process: prints its numbers as one JSON line."""
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    interrogator = engine(args)
    interrogator.label_index()
    samples = []
    sample = lambda *_: samples.append(rss_mib())
    start = time.perf_counter()
    if args.child == "batch":
        options = DatasetOptions(mode=args.mode, batch_size=args.batch_size)
        summary = caption_dataset(interrogator, find_dataset([args.folder]), options, progress=sample)
        assert summary.done == args.images and not summary.failed, summary.text()
    else:
        for item in find_dataset([args.folder]):
            prompt = interrogator.interrogate(open_image(item.path), args.mode)[0]
            write_caption(os.path.splitext(item.path)[0] + ".txt", prompt, overwrite=False)
            sample()
    seconds = time.perf_counter() - start
    settled = samples[min(len(samples) - 1, max(1, len(samples) // 10))]
    print(json.dumps({"seconds": seconds, "peak": peak_rss_mib(samples), "settled": settled, "end": samples[-1]}))


def captions(folder: str) -> dict:
    return {n: open(os.path.join(folder, n), encoding="utf-8").read() for n in os.listdir(folder) if n.endswith(".txt")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--arch", default="tiny", help="'tiny' (the tests' CLIP) or an open_clip architecture name")
    parser.add_argument("--mode", default="fast")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run (0: torch's default); on a "
                        "busy machine 1 avoids threads waiting on each other")
    parser.add_argument("--child", choices=["batch", "single"], help=argparse.SUPPRESS)
    parser.add_argument("--folder", help=argparse.SUPPRESS)
    parser.add_argument("--models", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    import torch

    load_at_start = os.getloadavg()[0]
    work = tempfile.mkdtemp(prefix="bench-dataset-")
    try:
        models = os.path.join(work, "models")
        weights = write_models(models, args.arch)
        images = os.path.join(work, "images")
        os.makedirs(images)
        write_images(images, args.images)
        warm = argparse.Namespace(weights=weights, models=models)
        engine(warm).label_index()  # the embedding cache both paths then read
        rows = {}
        for path, name in zip(("batch", "single"), PATHS):
            folder = os.path.join(work, path)
            shutil.copytree(images, folder)
            command = [sys.executable, os.path.abspath(__file__), "--child", path, "--folder", folder, "--models",
                       models, "--weights", weights, "--images", str(args.images), "--mode", args.mode,
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode:
                sys.exit(f"{name} path failed:\n{result.stderr}")
            rows[name] = json.loads(result.stdout.strip().splitlines()[-1])
        same = captions(os.path.join(work, "batch")) == captions(os.path.join(work, "single"))
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"{args.images} images (512x384 JPEG), mode {args.mode}, CLIP {args.arch} (random weights), tiny BLIP, "
          f"builtin vocabulary, CPU ({os.cpu_count()} cores), torch {torch.__version__}, "
          f"{args.threads or torch.get_num_threads()} threads, load average {load_at_start:.1f} at the start, "
          f"{os.getloadavg()[0]:.1f} at the end")
    print()
    print("| path | seconds | images / min | peak RAM MiB | RAM after 10% of images MiB | RAM at the end MiB |")
    print("|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['seconds']:.1f} | {args.images / row['seconds'] * 60:.0f} | {row['peak']:.0f} | "
              f"{row['settled']:.0f} | {row['end']:.0f} |")
    ratio = rows[PATHS[1]]["seconds"] / rows[PATHS[0]]["seconds"]
    print()
    print(f"batch path {ratio:.2f}x the images per minute of one at a time; identical caption files: "
          f"{'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
