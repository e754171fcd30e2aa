"""Caption a dataset: a folder of images in, a ``name.txt`` caption beside each image (or in a mirrored output
folder) out, for LoRA and fine-tune training.

Safe to kill and run again:
- each caption file is written to a unique temp file in its folder and renamed into place, so it is whole or absent;
  without ``overwrite`` it is linked into place, which fails if the file exists: a user's file is never replaced;
- an image whose caption file exists is skipped (unless ``overwrite``), so a rerun resumes where a killed run
  stopped, losing at most the image in flight;
- ``captions.jsonl`` gets one whole line per image, written before its caption file with a single append; a line a
  kill tore is cut off by the next run, which also writes no second copy of a line already there.
Streamed: images are opened a batch at a time (captions for a batch, then CLIP image by image), so memory does not
grow with the folder; an unreadable image is reported with its reason and the run goes on.
"""

import hashlib
import json
import os
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from .ban import Ban
from .errors import ImageError, InterrogatorError
from .files import new_temp
from .images import IMAGE_EXTENSIONS, iter_images
from .modes import get_mode
from .progress import ProgressHook, Steps
from .result import Interrogation, Term
from .vocab import Vocabulary

JSONL_NAME = "captions.jsonl"
TEMP_SUFFIX = ".caption-tmp"
# Weighted output: the chosen terms of one image, weakest to strongest, are spread linearly over these weights and
# rounded to WEIGHT_STEP; a term at 1.0 is written plain. Relative within the image, because CLIP's cosine scores
# differ in scale between models while their order within one image is what they mean.
WEIGHT_RANGE = (1.0, 1.3)
WEIGHT_STEP = 0.05


@dataclass(frozen=True)
class DatasetOptions:
    mode: str = "best"
    max_terms: Optional[int] = None  # None or 0: the mode's default
    trigger: str = ""  # written first, e.g. "ohwx"
    prefix: str = ""  # written after the trigger word
    suffix: str = ""  # written last
    exclude: Tuple[str, ...] = ()  # banned in any form (core/ban.py), through the engine's vocabulary
    replace: Tuple[Tuple[str, str], ...] = ()  # (old, new): whole words, any case, in the caption and the terms
    artists: bool = True  # False: no artist list is scored
    weighted: bool = False  # "(term:1.15)" from each term's CLIP score (see WEIGHT_RANGE)
    overwrite: bool = False  # replace existing caption files instead of skipping their images
    output: Optional[str] = None  # folder mirroring the input tree; None: each caption beside its image
    jsonl: Optional[str] = None  # captions.jsonl path; None: none
    batch_size: int = 8  # images opened and captioned together

    def vocabulary(self, vocab: Vocabulary) -> Vocabulary:
        """``vocab`` as these options need it: artists off, excluded terms banned."""
        vocab = vocab if self.artists else vocab.without(roles=["artist"])
        return vocab.banning(self.exclude)

    def check(self, vocab: Vocabulary) -> None:
        """Fail before any work when the options contradict each other or the engine's vocabulary."""
        get_mode(self.mode)
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise InterrogatorError(f"batch size must be a whole number of at least 1, got {self.batch_size!r}.")
        excluded = {p.lower() for p in Ban(self.exclude).phrases}
        if not excluded <= {p.lower() for p in vocab.ban.phrases} or (not self.artists and vocab.by_role("artist")):
            raise InterrogatorError("the engine's vocabulary was not built with these options; build it with "
                                    "DatasetOptions.vocabulary().")
        for old, _ in self.replace:
            if not re.search(r"\w", old):
                raise InterrogatorError(f"replace pair {old!r}: the text to replace needs letters or digits.")
        own = [("trigger word", self.trigger), ("prefix", self.prefix), ("suffix", self.suffix)]
        own += [(f"replacement for {old!r}", new) for old, new in self.replace]
        for what, text in own:
            if vocab.ban.hits(text):
                raise InterrogatorError(f"the {what} {text!r} holds an excluded term ({', '.join(vocab.ban.phrases)}); "
                                        f"remove it from one or the other.")

    def text(self, result: Interrogation) -> str:
        """The caption file's text: trigger word, prefix, the prompt (replaced, maybe weighted), suffix."""
        weights = term_weights(result.terms, get_mode(result.mode).unlike) if self.weighted else []
        body, w = [], iter(weights)
        for span in result.spans:
            text = _replaced(span.text, self.replace)
            if self.weighted:
                text = _escaped(text)
                weight = next(w) if span.term is not None else 1.0
                if weight != 1.0:
                    text = f"({text}:{weight:g})"
            body.append(text)
        return ", ".join(part for part in (self.trigger, self.prefix, "".join(body), self.suffix) if part)


def term_weights(terms: Sequence[Term], unlike: bool = False) -> List[float]:
    """One weight per term: the image's weakest term 1.0, its strongest ``WEIGHT_RANGE[1]``, linear between, in
    steps of ``WEIGHT_STEP``; all 1.0 when the terms score alike. For a mode whose terms are chosen for being unlike
    the image, the least similar term is the strongest."""
    scores = [-t.score if unlike else t.score for t in terms]
    if not scores or max(scores) - min(scores) < 1e-9:
        return [1.0] * len(scores)
    low, high = min(scores), max(scores)
    span = WEIGHT_RANGE[1] - WEIGHT_RANGE[0]
    return [round(round((WEIGHT_RANGE[0] + span * (s - low) / (high - low)) / WEIGHT_STEP) * WEIGHT_STEP, 2)
            for s in scores]


def _replaced(text: str, pairs: Sequence[Tuple[str, str]]) -> str:
    for old, new in pairs:
        pattern = r"\s+".join(map(re.escape, old.split()))
        text = re.sub(rf"(?<!\w){pattern}(?!\w)", lambda _: new, text, flags=re.IGNORECASE)
    return text


def _escaped(text: str) -> str:
    """Literal brackets escaped, so only the weights are prompt syntax."""
    return re.sub(r"([()\\])", r"\\\1", text)


# -- what to caption ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Item:
    path: str  # the image file
    name: str  # its path below the folder it was found in (or its file name): where its caption goes in `output`


def find_dataset(inputs: Iterable[str], recursive: bool = False) -> List[Item]:
    """The images of folders (sorted; subfolders too when ``recursive``; hidden files and folders skipped) and of
    single files, in order."""
    items: List[Item] = []
    for source in map(os.fspath, inputs):
        if os.path.isdir(source):
            for root, dirs, files in os.walk(source):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
                for name in sorted(f for f in files if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")):
                    path = os.path.join(root, name)
                    items.append(Item(path, os.path.relpath(path, source)))
        elif os.path.isfile(source):
            items.append(Item(source, os.path.basename(source)))
        else:
            raise ImageError(f"no such file or folder: {source}")
    return items


def caption_path(item: Item, output: Optional[str]) -> str:
    stem = os.path.splitext(item.name if output else item.path)[0]
    return os.path.join(output, stem + ".txt") if output else stem + ".txt"


def default_jsonl(inputs: Sequence[str], output: Optional[str]) -> str:
    """``captions.jsonl`` in the output folder, else in the first input folder (or the first file's folder)."""
    root = output or next((p for p in inputs if os.path.isdir(p)), None) or os.path.dirname(os.path.abspath(inputs[0]))
    return os.path.join(root, JSONL_NAME)


# -- the run ------------------------------------------------------------------------------------------------------
@dataclass
class Summary:
    done: int = 0
    skipped: int = 0
    failed: List[Tuple[str, str]] = field(default_factory=list)  # (image, why)

    def text(self) -> str:
        lines = [f"{self.done} captioned, {self.skipped} skipped (caption file exists), {len(self.failed)} failed"]
        lines += [f"  {why}" for _, why in self.failed]
        return "\n".join(lines)


def caption_dataset(engine, items: Sequence[Item], options: DatasetOptions, *, captioner=None,
                    progress: Optional[ProgressHook] = None, report: Callable[[str], None] = lambda message: None,
                    before: Callable[[str], None] = lambda stage: None,
                    summary: Optional[Summary] = None) -> Summary:
    """Caption ``items`` with ``engine`` (its vocabulary built by ``options.vocabulary``).

    ``progress`` counts images and may raise to cancel: it is called after each image is written, so a cancel
    stops after the current image. ``report`` gets each problem as one line (an unreadable image and why).
    ``before("caption")`` / ``before("clip")`` run before each model's turn (the nodes move models onto the
    device). ``summary`` is filled as the run goes, so a caller still has it when a cancel raises.
    """
    options.check(engine.vocab)
    summary = summary if summary is not None else Summary()
    captioner = captioner or engine.captioner
    jobs = _plan(items, options, summary, report)
    _remove_stale_temps({os.path.dirname(caption_path(item, options.output)) for item in items})
    log = CaptionLog(options.jsonl, report) if options.jsonl else None
    settings = _settings(engine, captioner, options)
    try:
        engine.label_index(progress)
        steps = Steps(progress, len(jobs), "Captioning images")
        for start in range(0, len(jobs), options.batch_size):
            batch = jobs[start:start + options.batch_size]
            opened = []
            for (item, target), (_, image) in zip(batch, iter_images(item.path for item, _ in batch)):
                if isinstance(image, ImageError):
                    summary.failed.append((item.path, str(image)))
                    report(str(image))
                    steps.advance()
                else:
                    opened.append((item, target, image))
            if not opened:
                continue
            images = [image for _, _, image in opened]
            captions = None
            if get_mode(options.mode).captioned and captioner is not None:
                before("caption")
                captions = engine.captions(images, options.mode, None, captioner)
            before("clip")
            results = engine.interrogations(images, options.mode, captions, options.max_terms or None)
            for (item, target, _), result in zip(opened, results):
                text = options.text(result)
                if log is not None:
                    log.add(_record(item, target, log.path, result, text, settings))
                try:
                    written = write_caption(target, text, options.overwrite)
                except OSError as error:  # this folder is read-only, the disk is full...: say so, go on
                    why = f"{item.path}: cannot write {target} ({error.strerror or error})."
                    summary.failed.append((item.path, why))
                    report(why)
                else:
                    summary.done += written
                    summary.skipped += not written
                steps.advance()
    finally:
        if log is not None:
            log.close()
    return summary


def _plan(items: Sequence[Item], options: DatasetOptions, summary: Summary, report) -> List[Tuple[Item, str]]:
    """(image, caption file) to do: images whose caption file exists are skipped, and so is every image after the
    first that would write the same caption file (a.png and a.jpg both make a.txt)."""
    jobs, owners = [], {}
    for item in items:
        target = caption_path(item, options.output)
        key = os.path.normcase(os.path.abspath(target))
        if key in owners:
            why = (f"{item.path}: its caption file {target} is also the caption file of {owners[key]}; rename one "
                   f"of the two images.")
            summary.failed.append((item.path, why))
            report(why)
            continue
        owners[key] = item.path
        if not options.overwrite and os.path.lexists(target):
            summary.skipped += 1
        else:
            jobs.append((item, target))
    return jobs


def _settings(engine, captioner, options: DatasetOptions) -> dict:
    return {"models": {"clip": engine.clip.name, "caption": getattr(captioner, "name", None)},
            "settings": {"mode": options.mode, "max_terms": options.max_terms or get_mode(options.mode).max_terms,
                         "lists": engine.vocab.names, "exclude": list(engine.vocab.ban.phrases),
                         "trigger": options.trigger, "prefix": options.prefix, "suffix": options.suffix,
                         "replace": [list(pair) for pair in options.replace], "artists": options.artists,
                         "weighted": options.weighted}}


def _record(item: Item, target: str, log_path: str, result: Interrogation, text: str, settings: dict) -> dict:
    terms = [{"term": t.label, "list": t.list, "role": t.role, "score": t.score} for t in result.terms]
    if settings["settings"]["weighted"]:
        for term, weight in zip(terms, term_weights(result.terms, get_mode(result.mode).unlike)):
            term["weight"] = weight
    gaps = {"gaps": list(result.gaps)} if get_mode(result.mode).gap_warnings else {}
    return {"image": _relative(item.path, log_path), "caption_file": _relative(target, log_path), "text": text,
            "prompt": result.prompt, "caption": result.caption, "terms": terms, **gaps, **settings}


def _relative(path: str, log_path: str) -> str:
    """A path as seen from the JSONL's folder, with forward slashes, so the file stays valid when moved along."""
    try:
        return os.path.relpath(path, os.path.dirname(os.path.abspath(log_path))).replace(os.sep, "/")
    except ValueError:  # another drive (Windows)
        return os.path.abspath(path)


# -- files --------------------------------------------------------------------------------------------------------
def write_caption(path: str, text: str, overwrite: bool) -> bool:
    """Write ``text`` to ``path`` whole or not at all; without ``overwrite`` an existing file is kept. Returns
    whether it was written."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = new_temp(folder, os.path.basename(path), TEMP_SUFFIX)
    try:
        with open(tmp, "w", encoding="utf-8", newline="\n") as file:
            file.write(text + "\n")
        if overwrite:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)  # atomic, and refuses an existing file
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links on this file system: check, then rename
            if os.path.lexists(path):
                return False
            os.replace(tmp, path)
            return True
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def _remove_stale_temps(folders: Iterable[str]) -> None:
    """Temp files a killed run left behind (only this module's: a dot name ending in TEMP_SUFFIX)."""
    for folder in folders:
        try:
            names = os.listdir(folder or ".")
        except OSError:
            continue
        for name in names:
            if name.startswith(".") and name.endswith(TEMP_SUFFIX):
                try:
                    os.remove(os.path.join(folder, name))
                except OSError:
                    pass


class CaptionLog:
    """``captions.jsonl``: one JSON object per line, each appended with a single write.

    On opening, a last line without its newline (a kill tore it) is cut off, and lines that are not JSON are
    reported and ignored. The last line of an image is its current record; a record identical to the image's last
    one is not written again, so a resumed run gives the same file as an uninterrupted one.
    """

    def __init__(self, path: str, report: Callable[[str], None] = lambda message: None):
        self.path = path
        self._last: Dict[str, bytes] = {}  # image -> digest of its last line
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | getattr(os, "O_BINARY", 0), 0o666)
        except OSError as error:
            raise InterrogatorError(f"cannot open {path} ({error.strerror or error}); choose another JSONL "
                                    f"file.") from None
        self._read(report)

    def _read(self, report) -> None:
        good = 0
        with open(self.path, "rb") as file:
            for number, line in enumerate(file, start=1):
                if not line.endswith(b"\n"):
                    report(f"{self.path}: line {number} was cut short (a run was killed while writing it); "
                           f"removed it, its image is captioned again.")
                    break
                good += len(line)
                try:
                    image = json.loads(line)["image"]
                except (ValueError, KeyError, TypeError):
                    report(f"{self.path}: line {number} is not a caption record; ignored it.")
                    continue
                self._last[image] = hashlib.sha1(line).digest()
        if good < os.fstat(self._fd).st_size:
            os.ftruncate(self._fd, good)

    def add(self, record: dict) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        digest = hashlib.sha1(line).digest()
        if self._last.get(record["image"]) == digest:
            return
        view = memoryview(line)
        try:
            while view:
                view = view[os.write(self._fd, view):]
        except OSError as error:
            raise InterrogatorError(f"cannot append to {self.path} ({error.strerror or error}); the caption files "
                                    f"written so far are kept, run again to resume.") from None
        self._last[record["image"]] = digest

    def close(self) -> None:
        os.close(self._fd)


def read_jsonl(path: str) -> Dict[str, dict]:
    """The current record of every image in a ``captions.jsonl`` (the last whole line of each)."""
    records: Dict[str, dict] = {}
    with open(path, "rb") as file:
        for line in file:
            if line.endswith(b"\n"):
                try:
                    record = json.loads(line)
                    records[record["image"]] = record
                except (ValueError, KeyError, TypeError):
                    continue
    return records
