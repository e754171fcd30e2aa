"""Reference (clip-interrogator 0.6.0) vs this engine: same random-weight CLIP, same lists, same image, one run.

Prints a markdown table: median seconds per piece of work, ours/reference ratio, peak GPU memory, and whether the
prompts are identical. Speed depends on the architecture, not the weights, so random weights measure real speed.

    python bench/benchmark.py --arch ViT-B-32 --device cpu --labels 5000 --intermediate 256     # CI-sized
    python bench/benchmark.py --arch ViT-L-14 --device cuda --vocab reference                  # 111,908 labels
    python bench/benchmark.py --arch ViT-B-32 --device cpu --labels 2000 --intermediate 128 --contention 2

``--contention N`` runs N CPU-bound processes at the lowest priority (nice 19) for the whole run: a user's CPU is
rarely idle, and this makes that case reproducible on any machine.
"""

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from core import MODES, Interrogator, Settings, Vocabulary  # noqa: E402
from core.clip_model import ClipModel  # noqa: E402

CAPTION = "a painting of a woman standing in a garden with flowers"
REFERENCE_MODES = [m.name for m in MODES.values() if m.reference]


def random_clip(arch: str, device: str, dtype: torch.dtype) -> ClipModel:
    """An open_clip architecture by name, or an open_clip model config file (``.json``), with random weights."""
    import json

    import open_clip

    torch.manual_seed(0)
    precision = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[dtype]
    if not arch.endswith(".json"):
        model, _, preprocess = open_clip.create_model_and_transforms(arch, precision=precision, device=device)
        return ClipModel(model, preprocess, open_clip.get_tokenizer(arch), f"{arch}/random")
    with open(arch, encoding="utf-8") as file:
        model = open_clip.CLIP(**json.load(file)).to(device)
    if dtype != torch.float32:
        open_clip.convert_weights_to_lp(model, dtype=dtype)
    preprocess = open_clip.image_transform(model.visual.image_size, is_train=False)
    return ClipModel(model, preprocess, open_clip.SimpleTokenizer(context_length=model.context_length), "custom/random")


def write_lists(folder: str, source: Vocabulary, labels: int) -> int:
    """Our lists in the reference's layout, artists and flavors cut so the ranked pool has about ``labels``."""
    terms = {role: [t for tl in source.by_role(role) for t in tl.terms]
             for role in ("artist", "flavor", "medium", "movement", "negative")}
    fixed = len(terms["medium"]) + len(terms["movement"]) + 72
    room = max(labels - fixed, 2)
    artists = max(1, min(len(terms["artist"]), room // 6))  # each artist gives two labels; never an empty file
    terms["artist"] = terms["artist"][:artists]
    terms["flavor"] = terms["flavor"][:room - 2 * artists]
    names = {"artist": "artists", "flavor": "flavors", "medium": "mediums", "movement": "movements",
             "negative": "negative"}
    for role, name in names.items():
        with open(os.path.join(folder, f"{name}.txt"), "w", encoding="utf-8") as file:
            file.write("\n".join(terms[role]) + "\n")
    return fixed + 2 * artists + len(terms["flavor"])


# Spins at the lowest priority until killed, or until its parent is gone (even a SIGKILLed benchmark leaves nothing).
_SPIN = """
import os, sys
parent = int(sys.argv[1])
if hasattr(os, "nice"):
    os.nice(19)
while os.getppid() == parent:
    for _ in range(1000000):
        pass
"""


@contextlib.contextmanager
def competing_load(count: int):
    """``count`` CPU-bound processes at nice 19 (idle priority on Windows) while the block runs; always stopped.

    Each runs in a session of its own, as other programs do. Linux's autogroup scheduling (on by default) shares
    the CPU between sessions first and applies nice only inside one, so there they compete like any busy program;
    spinners in the benchmark's own session would get about 2% of a core each and measure nothing.
    """
    flags = getattr(subprocess, "IDLE_PRIORITY_CLASS", 0)
    spinners = []
    try:
        for _ in range(count):
            spinners.append(subprocess.Popen([sys.executable, "-c", _SPIN, str(os.getpid())], creationflags=flags,
                                             stdin=subprocess.DEVNULL, start_new_session=True))
        yield [p.pid for p in spinners]
    finally:
        for process in spinners:
            process.kill()
        for process in spinners:
            process.wait()


def timed(fn, device: str):
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = fn()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None
    return time.perf_counter() - start, peak, result


def run(args, table: "Table") -> list:
    import clip_interrogator as ci

    dtype = {"fp32": torch.float32, "fp16": torch.float16}[args.dtype]
    clip = random_clip(args.arch, args.device, dtype)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    work = tempfile.mkdtemp(prefix="ci-bench-")
    if args.vocab == "reference":
        data = Vocabulary.reference().source
        n_labels = sum(len(tl.labels) for tl in Vocabulary.reference().pool)
    else:
        data = work
        n_labels = write_lists(work, Vocabulary.builtin(), args.labels)

    # the reference only uses this name to pick its tokenizer: a config file's model uses CLIP's plain BPE one
    tokenizer_arch = "ViT-B-32" if args.arch.endswith(".json") else args.arch
    config = ci.Config(clip_model_name=f"{tokenizer_arch}/random", caption_model_name=None, device=args.device,
                       data_path=data, cache_path=None, download_cache=False, chunk_size=args.chunk_size,
                       flavor_intermediate_count=args.intermediate, quiet=True)
    config.clip_model, config.clip_preprocess = clip.model, clip.preprocess
    settings = Settings.reference(flavor_intermediate_count=args.intermediate, approx_topk_chunk=args.chunk_size)
    vocab = Vocabulary.from_folder(data)
    table.header(n_labels)

    rows = []
    ref_s, ref_mem, reference = timed(lambda: ci.Interrogator(config), args.device)
    cache = os.path.join(work, "cache")
    our_s, our_mem, _ = timed(
        lambda: Interrogator(clip, None, vocab, cache_dir=cache, settings=settings).label_index(), args.device)
    rows.append(("embed all labels (first run)", [ref_s], [our_s], ref_mem, our_mem, None))
    table.row(*rows[-1])
    reload_s, _, _ = timed(
        lambda: Interrogator(clip, None, vocab, cache_dir=cache, settings=settings).label_index(), args.device)
    rows.append(("reload embeddings from cache", [float("nan")], [reload_s], None, None, None))
    table.row(*rows[-1])

    ours = Interrogator(clip, None, vocab, cache_dir=cache, settings=settings)
    ours.label_index()  # load the cached embeddings now, so the mode timings below exclude it
    for mode in args.modes:
        ref_call, our_call = _calls(reference, ours, image, MODES[mode])
        ref_times, our_times, ref_peak, our_peak = [], [], 0.0, 0.0
        for _ in range(args.repeats):
            t, m, expected = timed(ref_call, args.device)
            ref_times.append(t)
            ref_peak = max(ref_peak, m or 0)
            t, m, got = timed(our_call, args.device)
            our_times.append(t)
            our_peak = max(our_peak, m or 0)
        rows.append((f"{mode} mode", ref_times, our_times, ref_peak or None, our_peak or None, got == expected))
        table.row(*rows[-1])
    return rows, n_labels, clip


def _calls(reference, ours, image, mode):
    """The reference's call and ours for one mode, on the same image and caption."""
    caption = {"caption": CAPTION} if mode.captioned else {}
    return (lambda: getattr(reference, mode.reference)(image, **caption),
            lambda: ours.interrogate(image, mode.name, captions=caption.get("caption"))[0])


class Table:
    """The markdown table, printed a row at a time: a long run shows its results as they come."""

    def __init__(self, args, load: str):
        self.args, self.load = args, load

    def header(self, n_labels: int) -> None:
        args = self.args
        device = torch.cuda.get_device_name() if args.device.startswith("cuda") else \
            f"CPU, {torch.get_num_threads()} threads"
        print(f"\n{os.path.basename(args.arch)}, {args.dtype}, {device}, {n_labels:,} labels, "
              f"flavor_intermediate_count {args.intermediate}, {args.repeats} runs per mode (median), "
              f"{args.contention} competing nice-19 processes; load average before the run: {self.load}\n")
        print("| work | reference s | ours s | speed-up | peak GPU GiB ref / ours | identical prompt |")
        print("|---|---|---|---|---|---|", flush=True)

    @staticmethod
    def row(name, ref_t, our_t, ref_m, our_m, same) -> None:
        r, o = statistics.median(ref_t), statistics.median(our_t)
        speedup = "" if r != r else f"{r / o:.1f}x"
        memory = f"{ref_m:.2f} / {our_m:.2f}" if ref_m is not None and our_m is not None else "n/a"
        ref_text = "" if r != r else f"{r:.3f}"
        print(f"| {name} | {ref_text} | {o:.3f} | {speedup} | {memory} | "
              f"{'' if same is None else ('yes' if same else 'NO')} |", flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arch", default="ViT-B-32", help="open_clip architecture, or an open_clip model config .json")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["fp32", "fp16"], default=None)
    parser.add_argument("--labels", type=int, default=5000, help="approximate size of the ranked pool")
    parser.add_argument("--vocab", choices=["ours", "reference"], default="ours",
                        help="'reference' uses the installed clip-interrogator's own lists (111,908 labels)")
    parser.add_argument("--intermediate", type=int, default=2048, help="flavor_intermediate_count (chain width)")
    parser.add_argument("--chunk-size", type=int, default=2048, help="the reference's chunk_size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--modes", default=",".join(REFERENCE_MODES))
    parser.add_argument("--contention", type=int, default=0, metavar="N",
                        help="run N CPU-bound processes at nice 19 during the benchmark (a busy machine)")
    args = parser.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    unknown = set(args.modes) - set(REFERENCE_MODES)
    if unknown:
        parser.error(f"no reference to compare for {', '.join(sorted(unknown))}; use {', '.join(REFERENCE_MODES)}")
    args.dtype = args.dtype or ("fp16" if args.device.startswith("cuda") else "fp32")
    warnings.filterwarnings("ignore")
    load = " ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    if os.path.exists("/proc/sys/kernel/sched_autogroup_enabled"):
        with open("/proc/sys/kernel/sched_autogroup_enabled") as file:
            load += f", autogroup {'on' if file.read().strip() == '1' else 'off'}"
    with competing_load(args.contention), torch.no_grad():
        rows, _, _ = run(args, Table(args, load))
    return 0 if all(row[5] is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
