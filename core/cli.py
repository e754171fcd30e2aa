"""Command line: ``python -m core interrogate IMAGE_OR_FOLDER... [options]`` and
``python -m core caption-folder FOLDER... [options]``.

Exit status: 0 every image got a prompt or caption; 2 nothing was done (bad option, missing model, no readable
image); 3 some images could not be read (each named on stderr), the others' results were printed and written;
130 cancelled.
"""

import argparse
import csv
import itertools
import json
import os
import signal
import sys
from typing import Iterable, Iterator, List, Optional, Tuple

import torch
from PIL import Image

from .caption import CAPTION_MODELS, DEFAULT_CAPTION_MODEL, DETAILS, CaptionOptions, load_captioner
from .clip_model import DEFAULT_CLIP, PRESETS, load_clip
from .clip_pair import load_clip_pair
from .dataset import JSONL_NAME, DatasetOptions, Summary, caption_dataset, default_jsonl, find_dataset
from .devices import parse_device
from .encoder_prompts import TARGETS, get_target, write
from .errors import Cancelled, ImageError, InterrogatorError
from .files import atomic_path, check_writable
from .images import find_images, iter_images
from .interrogator import Interrogator, Settings, caption_needed
from .modes import MODES
from .token_count import clip_counter, t5_counter
from .vocab import Vocabulary

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
EXIT_OK, EXIT_ERROR, EXIT_SOME_FAILED, EXIT_CANCELLED = 0, 2, 3, 130
CHUNK = 8  # images opened and interrogated together: memory stays bounded and prompts appear as they are made


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more (0: the mode's default), got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m core", description="Turn images into Stable Diffusion prompts.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("interrogate", help="write a prompt for each image")
    run.add_argument("inputs", nargs="+", metavar="IMAGE_OR_FOLDER", help="image files or folders (walked)")
    _engine_options(run)
    run.add_argument("--caption", help="use this caption instead of running the caption model")
    run.add_argument("--detail-pass", dest="detail", action="store_true",
                     help="also score the four quarters and the centre of each image, so a small detail can enter "
                          "the prompt (modes: " + ", ".join(m.name for m in MODES.values() if m.detail_pass) + ")")
    run.add_argument("--target", choices=list(TARGETS),
                     help="write one prompt per text encoder of this model family (printed as JSON per image)")
    run.add_argument("--text-l", choices=["prompt", "terms"], default="prompt",
                     help="with --target sdxl: text_l gets the same prompt as text_g, or only the style terms")
    run.add_argument("--t5-tokenizer", metavar="DIR", default=os.environ.get("CLIP_INTERROGATOR_T5_TOKENIZER"),
                     help="folder with a T5 tokenizer.json to count t5xxl prompts (e.g. ComfyUI's "
                          "comfy/text_encoders/t5_tokenizer; env CLIP_INTERROGATOR_T5_TOKENIZER)")
    run.add_argument("--ban", action="append", default=[], metavar="TERM", help="a term that must never appear")
    run.add_argument("--out", metavar="FILE", help="also write results to FILE.txt or FILE.csv")

    folder = commands.add_parser("caption-folder", help="write name.txt beside each image of a dataset (resumable)")
    folder.add_argument("inputs", nargs="+", metavar="FOLDER_OR_IMAGE", help="dataset folders or image files")
    _engine_options(folder)
    folder.add_argument("--recursive", action="store_true", help="caption images in subfolders too")
    folder.add_argument("--output", metavar="DIR", help="write captions here, mirroring the folder tree "
                                                        "(default: beside each image)")
    folder.add_argument("--overwrite", action="store_true", help="replace existing caption files (default: skip "
                                                                 "their images, which resumes a stopped run)")
    folder.add_argument("--trigger", default="", metavar="WORD", help="written first in every caption")
    folder.add_argument("--prefix", default="", help="written after the trigger word")
    folder.add_argument("--suffix", default="", help="written last")
    folder.add_argument("--exclude", "--ban", dest="ban", action="append", default=[], metavar="TERM",
                        help="a word or phrase that must never appear, in any form")
    folder.add_argument("--replace", action="append", default=[], type=_pair, metavar="OLD=NEW",
                        help="replace a word or phrase (whole words, any case) in the caption and terms")
    folder.add_argument("--no-artists", action="store_true", help="never name an artist")
    folder.add_argument("--weighted", action="store_true", help="write (term:1.15) weights from the CLIP scores")
    folder.add_argument("--jsonl", nargs="?", const="", metavar="FILE", help="also write every result to a JSONL "
                        f"file (default FILE: {JSONL_NAME} in the output or first input folder)")
    folder.add_argument("--batch-size", type=int, default=8, metavar="N", help="images captioned together")
    return parser


def _engine_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--mode", choices=list(MODES), default="best",
                     help="; ".join(f"{m.name}: {m.description}" for m in MODES.values()))
    run.add_argument("--clip", default=None, help=f"open_clip 'arch/pretrained' (default {DEFAULT_CLIP}; presets: "
                                                  f"{', '.join(PRESETS)})")
    run.add_argument("--clip-weights", metavar="FILE", help="local CLIP .safetensors file")
    run.add_argument("--clip-config", metavar="JSON", help="open_clip model config for a custom architecture")
    run.add_argument("--clip-text", metavar="FILE", help="a checkpoint, text-encoder file or Hugging Face CLIP folder "
                                                          "whose text encoder to pair with --clip-vision")
    run.add_argument("--clip-vision", metavar="FILE", help="the CLIP Vision file of the pair (default: --clip-text)")
    run.add_argument("--text-encoder", default="auto", help="which text encoder of --clip-text (clip_l, clip_g, "
                                                             "clip_h; auto: the one matching the vision tower)")
    run.add_argument("--caption-model", default=DEFAULT_CAPTION_MODEL,
                     help=f"{', '.join(CAPTION_MODELS)}, a local folder, or 'none'")
    run.add_argument("--caption-detail", choices=DETAILS, default="short",
                     help="Florence-2 caption task, or a vision-language model's default instruction")
    run.add_argument("--caption-instruction", default="", help="a vision-language model's own instruction")
    run.add_argument("--caption-max-tokens", type=int, default=0, help="most caption tokens (0: the model's default)")
    run.add_argument("--models-dir", default=os.environ.get("CLIP_INTERROGATOR_MODELS"),
                     help="folder searched first for models (env CLIP_INTERROGATOR_MODELS)")
    run.add_argument("--cache-dir", help="embedding cache folder (default <models-dir>/cache)")
    run.add_argument("--vocab", default="builtin", help="'builtin', 'reference' (installed clip-interrogator) or a folder")
    run.add_argument("--user-vocab", metavar="DIR", help="folder of extra term lists")
    run.add_argument("--no-list", action="append", default=[], metavar="NAME", help="switch a term list off")
    run.add_argument("--max-terms", "--max-flavors", dest="max_terms", type=_count, default=None,
                     help="most terms to add (default: the mode's: " +
                          ", ".join(f"{m.name} {m.max_terms}" for m in MODES.values()) + ")")
    run.add_argument("--reference", action="store_true", help="reproduce clip-interrogator 0.6.0's quirks exactly")
    run.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, mps")
    run.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def _pair(text: str) -> Tuple[str, str]:
    old, sep, new = text.partition("=")
    if not sep or not old.strip():
        raise argparse.ArgumentTypeError(f"expected OLD=NEW, got {text!r}")
    return old.strip(), new.strip()


class _TqdmHook:
    """Shows each piece of long work as its own tqdm bar."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar, self.desc = enabled, None, None

    def __call__(self, done: int, total: int, desc: str) -> None:
        if not self.enabled:
            return
        from tqdm import tqdm

        if self.bar is None or desc != self.desc or done < self.bar.n:
            self.close()
            self.bar, self.desc = tqdm(total=total, desc=desc, leave=False, file=sys.stderr), desc
        self.bar.update(done - self.bar.n)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def say(self, message: str) -> None:
        """A line on stderr that leaves the progress bar whole."""
        if self.bar is not None:
            self.bar.write(message, file=sys.stderr)
        else:
            print(message, file=sys.stderr, flush=True)


class _StopAfterImage:
    """Ctrl-C while captioning a folder: the first lets the image in flight finish, then stops (the progress hook
    raises after each image); a second stops at once. Only the main thread can take signals; elsewhere Ctrl-C keeps
    its default."""

    def __init__(self, say):
        self.say, self.asked, self._previous = say, False, None

    def __enter__(self) -> "_StopAfterImage":
        try:
            self._previous = signal.signal(signal.SIGINT, self._interrupted)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)

    def _interrupted(self, signum, frame) -> None:
        if self.asked:
            raise KeyboardInterrupt
        self.asked = True
        self.say("stopping after the current image (Ctrl-C again to stop now)")

    def check(self) -> None:
        if self.asked:
            raise KeyboardInterrupt


def _vocabulary(args) -> Vocabulary:
    vocab = {"builtin": Vocabulary.builtin, "reference": Vocabulary.reference}.get(args.vocab)
    vocab = vocab() if vocab else Vocabulary.from_folder(args.vocab)
    vocab = vocab.with_user_lists(args.user_vocab).without(args.no_list).banning(args.ban)
    return vocab.without(roles=["artist"]) if getattr(args, "no_artists", False) else vocab


def build(args) -> Interrogator:
    device = parse_device(args.device)
    dtype = DTYPES.get(args.dtype) or (torch.float16 if device.type == "cuda" else torch.float32)
    vocab = _vocabulary(args)
    caption_name = args.caption_model if caption_needed(args.mode, getattr(args, "caption", None)) else "none"
    options = CaptionOptions(args.caption_detail, args.caption_instruction, args.caption_max_tokens)
    captioner = load_captioner(caption_name, models_dir=args.models_dir, device=device, dtype=dtype)
    if args.clip_text:
        clip = load_clip_pair(args.clip_text, args.clip_vision, text_encoder=args.text_encoder, dtype=dtype)
        clip.model.to(device)
    else:
        clip = load_clip(args.clip, weights=args.clip_weights, config=args.clip_config, models_dir=args.models_dir,
                         device=device, dtype=dtype)
    cache_dir = args.cache_dir or (os.path.join(args.models_dir, "cache") if args.models_dir else
                                   os.path.join(os.path.expanduser("~"), ".cache", "clip_interrogator_nodes"))
    settings = Settings.reference() if args.reference else Settings()
    return Interrogator(clip, captioner.using(options) if captioner else None, vocab, cache_dir=cache_dir,
                        settings=settings)


def _write(path: str, rows: List[List[str]], mode: str, columns=("prompt",)) -> None:
    try:
        with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as file:
            if path.lower().endswith(".csv"):
                writer = csv.writer(file)
                writer.writerow(["image", "mode", *columns])
                writer.writerows([image, mode, *texts] for image, *texts in rows)
            else:
                file.writelines("\t".join([image, *texts]) + "\n" for image, *texts in rows)
    except OSError as error:
        raise InterrogatorError(f"cannot write {path} ({error.strerror or error}); the prompts are printed "
                                f"above.") from None


def _encoder_prompts(args, engine: Interrogator, images, hook) -> List[Tuple[dict, Tuple[str, ...]]]:
    """Per image, each output of the target written for its encoder, and the image's warnings."""
    target = get_target(args.target)
    counters = {"clip": clip_counter(), "t5": t5_counter(args.t5_tokenizer) if target.needs_t5 else None}
    parts = engine.prompt_parts(images, args.mode, captions=args.caption, max_terms=args.max_terms, progress=hook,
                                detail=args.detail, negative=target.needs_negative)
    contents = {"text_l": "terms"} if args.text_l == "terms" else None
    return [(write(target, p, counters, contents), p.warnings) for p in parts]


def interrogate(args) -> int:
    paths = find_images(args.inputs)
    if not paths:
        raise InterrogatorError(f"no images found in {', '.join(args.inputs)}")
    if args.out:
        check_writable(args.out, "--out file")
    failed: List[str] = []
    readable = _readable(paths, failed)
    first = next(readable, None)  # models load only once an image is known to be readable
    rows = []
    if first is not None:
        hook = _TqdmHook(not args.quiet)
        engine = build(args)
        run = _encoder_rows if args.target else _prompts
        try:
            for chunk in _chunks(itertools.chain([first], readable), CHUNK):
                rows += run(engine, chunk, args, hook, single=len(paths) == 1)
        finally:
            hook.close()
    if args.out and rows:
        _write(args.out, rows, args.mode, get_target(args.target).names if args.target else ("prompt",))
    if not failed:
        return EXIT_OK
    print(f"error: {len(failed)} of {len(paths)} images could not be read" +
          ("; the others' prompts were written." if rows else "."), file=sys.stderr)
    return EXIT_SOME_FAILED if rows else EXIT_ERROR


def _readable(paths: List[str], failed: List[str]) -> Iterator[Tuple[str, Image.Image]]:
    """The images that open, one at a time; each one that does not is reported, and added to ``failed``."""
    for path, image in iter_images(paths):
        if isinstance(image, ImageError):
            failed.append(path)
            print(f"error: {image}", file=sys.stderr, flush=True)
        else:
            yield path, image


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    items = iter(items)
    while True:
        chunk = list(itertools.islice(items, size))
        if not chunk:
            return
        yield chunk


def _prompts(engine: Interrogator, chunk, args, hook, single: bool) -> List[List[str]]:
    prompts = engine.prompts([image for _, image in chunk], args.mode, captions=args.caption,
                             max_terms=args.max_terms, progress=hook, detail=args.detail)
    rows = [[path, prompt.text] for (path, _), prompt in zip(chunk, prompts)]
    for (path, text), prompt in zip(rows, prompts):
        print(text if single else f"{path}\t{text}", flush=True)
        _warn(path, prompt.warnings)
    return rows


def _warn(path: str, warnings: Iterable[str]) -> None:
    for warning in warnings:
        print(f"warning: {path}: {warning}", file=sys.stderr, flush=True)


def _encoder_rows(engine: Interrogator, chunk, args, hook, single: bool) -> List[List[str]]:
    """--target: one JSON line per image with each output of the target; rows of those outputs for --out."""
    outputs = _encoder_prompts(args, engine, [image for _, image in chunk], hook)
    names = get_target(args.target).names
    for (path, _), (texts, warnings) in zip(chunk, outputs):
        print(json.dumps({"image": path, **texts}, ensure_ascii=False), flush=True)
        _warn(path, warnings)
    return [[path, *[texts[n] for n in names]] for (path, _), (texts, _) in zip(chunk, outputs)]


def caption_folder(args) -> int:
    items = find_dataset(args.inputs, args.recursive)
    if not items:
        raise InterrogatorError(f"no images found in {', '.join(args.inputs)}" +
                                ("" if args.recursive else " (add --recursive for subfolders)"))
    jsonl = None if args.jsonl is None else (args.jsonl or default_jsonl(args.inputs, args.output))
    options = DatasetOptions(mode=args.mode, max_terms=args.max_terms, trigger=args.trigger, prefix=args.prefix,
                             suffix=args.suffix, exclude=tuple(args.ban), replace=tuple(args.replace),
                             artists=not args.no_artists, weighted=args.weighted, overwrite=args.overwrite,
                             output=args.output, jsonl=jsonl, batch_size=args.batch_size)
    hook = _TqdmHook(not args.quiet)
    engine = build(args)
    summary = Summary()
    try:
        with _StopAfterImage(hook.say) as stop:

            def progress(done: int, total: int, desc: str) -> None:
                hook(done, total, desc)
                stop.check()

            caption_dataset(engine, items, options, progress=progress, report=hook.say, summary=summary)
    finally:
        hook.close()
        print(summary.text(), flush=True)
    return EXIT_SOME_FAILED if summary.failed else EXIT_OK


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"interrogate": interrogate, "caption-folder": caption_folder}[args.command](args)
    except (KeyboardInterrupt, Cancelled):
        print("cancelled", file=sys.stderr)
        return EXIT_CANCELLED
    except InterrogatorError as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_ERROR
