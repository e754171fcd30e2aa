"""Text embeddings of term lists: computed once per (CLIP weights, list content), cached on disk.

A cache file holds one list's unit-length embeddings in fp16 (as the reference stores them, so rankings match it)
plus what they were made from. Files are written to a unique temp name and renamed, so a crash or a cancel never
leaves a half-written cache; a corrupt, truncated or stale file, or one of the wrong shape or holding NaN, is rebuilt
with a warning.
"""

import hashlib
import os
import re
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from .files import atomic_path
from .progress import ProgressHook
from .vocab import Vocabulary

FORMAT = "1"
KEEP_VARIANTS = 3  # cache files kept per (model, list): switching a ban list back and forth re-embeds nothing


def labels_hash(labels: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(labels).encode("utf-8")).hexdigest()


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")


def _slug(text: str) -> str:
    """A file-name-safe form of a list name, distinct for distinct names: a name that needs changing ("日本",
    "a b", "a/b") keeps its ASCII letters plus a short hash of the whole name."""
    safe = _safe(text)
    if safe == text:
        return safe
    return f"{safe[:40] or 'x'}~{hashlib.sha256(text.encode('utf-8')).hexdigest()[:8]}"


class EmbeddingCache:
    """Safetensors files under ``root/<model>/<list>-<content hash>.safetensors``; ``root=None`` keeps nothing."""

    def __init__(self, root: Optional[str]):
        self.root = root

    def path(self, model_name: str, model_key: str, list_name: str, content_hash: str) -> Optional[str]:
        if not self.root:
            return None
        return os.path.join(self.root, f"{_safe(model_name) or 'model'}_{model_key}",  # the key makes it unique
                            f"{_slug(list_name)}-{content_hash[:16]}.safetensors")

    def load(self, path: Optional[str], meta: Dict[str, str], dim: int) -> Optional[torch.Tensor]:
        """The cached ``[count, dim]`` fp16 embeddings, or None (with a warning) when the file is missing,
        unreadable, made from other labels or weights, of another shape, or holds NaN/infinity."""
        if not path or not os.path.exists(path):
            return None
        from safetensors import SafetensorError, safe_open

        try:
            with safe_open(path, framework="pt") as file:
                stored = file.metadata() or {}
                embeds = file.get_tensor("embeds")
        except (OSError, SafetensorError) as error:
            warnings.warn(f"embedding cache {path} is unreadable ({error}); rebuilding it.")
            return None
        problem = _mismatch(stored, embeds, meta, dim)
        if problem:
            warnings.warn(f"embedding cache {path} {problem}; rebuilding it.")
            return None
        return embeds

    def save(self, path: Optional[str], embeds: torch.Tensor, meta: Dict[str, str]) -> None:
        if not path:
            return
        from safetensors.torch import save_file

        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"embeds": embeds.contiguous()}, tmp, metadata=meta)
            self._prune(path)
        except OSError as error:
            warnings.warn(f"cannot write embedding cache {path} ({error}); embeddings are kept in memory only.")

    @staticmethod
    def _prune(path: str) -> None:
        """Keep the newest few content variants of one list, so edited lists don't pile up files forever."""
        folder, name = os.path.split(path)
        variant = re.compile(re.escape(name.rsplit("-", 1)[0]) + r"-[0-9a-f]{16}\.safetensors")
        variants = sorted((os.path.join(folder, f) for f in os.listdir(folder) if variant.fullmatch(f) and f != name),
                          key=os.path.getmtime, reverse=True)
        for old in variants[KEEP_VARIANTS - 1:]:
            os.remove(old)


def _mismatch(stored: Dict[str, str], embeds: torch.Tensor, meta: Dict[str, str], dim: int) -> Optional[str]:
    """What makes a readable cache file unusable, if anything."""
    if any(stored.get(k) != v for k, v in meta.items()):
        return "was made from other labels or weights"
    if tuple(embeds.shape) != (int(meta["count"]), dim) or embeds.dtype != torch.float16:
        return f"holds a {list(embeds.shape)} {embeds.dtype} matrix, not [{meta['count']}, {dim}] float16"
    if not bool(torch.isfinite(embeds).all()):
        return "holds NaN or infinite values"
    return None


def embed_labels(encoder, labels: List[str], cache: EmbeddingCache, list_name: str,
                 hook: Optional[ProgressHook] = None) -> torch.Tensor:
    """fp16 unit-length embeddings of ``labels`` on the CPU, from the cache when it matches."""
    clip = encoder.clip
    content = labels_hash(labels)
    meta = {"format": FORMAT, "model": clip.name, "model_key": clip.key, "dtype": str(clip.dtype),
            "labels_sha256": content, "count": str(len(labels))}
    path = cache.path(clip.name, f"{clip.key}_{str(clip.dtype).replace('torch.', '')}", list_name, content)
    embeds = cache.load(path, meta, encoder.output_dim())
    if embeds is None:
        embeds = encoder.encode(labels, hook, f"Embedding {list_name}").half().cpu()
        cache.save(path, embeds, meta)
    return embeds


class LabelIndex:
    """Every label of a vocabulary, embedded by one CLIP model, as one matrix with a row range per list.

    Pool lists come first and negative lists last, so the pool the fast and best modes rank is one contiguous
    block, scored with one matrix product exactly as the reference scores its merged table.
    """

    def __init__(self, vocab: Vocabulary, encoder, cache: EmbeddingCache, hook: Optional[ProgressHook] = None):
        ordered = [tl for tl in vocab.lists if tl.role != "negative"] + vocab.by_role("negative")
        self.labels: List[str] = []
        self.spans: Dict[str, Tuple[int, int]] = {}
        blocks = []
        for term_list in ordered:
            labels = term_list.labels
            self.spans[term_list.name] = (len(self.labels), len(self.labels) + len(labels))
            self.labels.extend(labels)
            blocks.append(embed_labels(encoder, labels, cache, term_list.name, hook))
        self.embeds = torch.cat(blocks) if blocks else torch.empty(0, encoder.output_dim(), dtype=torch.float16)
        self._whole: Dict[str, torch.Tensor] = {}
        self._gathered: Dict[Tuple, torch.Tensor] = {}

    def device_nbytes(self, device) -> int:
        """Memory the full scoring matrix takes on ``device`` (float32 on the CPU, fp16 elsewhere)."""
        return self.embeds.numel() * (4 if torch.device(device).type == "cpu" else 2)

    @property
    def on_device(self) -> bool:
        return bool(self._whole or self._gathered)

    def rows(self, names: Sequence[str], device: torch.device) -> Tuple[List[str], torch.Tensor]:
        """Labels and scoring matrix of some lists: a view when they are adjacent, else a gathered copy.

        Scores are float32 on the CPU (as the reference ranks there) and fp16 on accelerators (half the memory).
        """
        spans = sorted(self.spans[n] for n in names if n in self.spans)
        index = [i for a, b in spans for i in range(a, b)]
        labels = [self.labels[i] for i in index]
        if not index:
            return labels, self._matrix(device)[:0]
        if index == list(range(index[0], index[-1] + 1)):
            return labels, self._matrix(device)[index[0]:index[-1] + 1]
        key = (str(device), tuple(spans))
        if key not in self._gathered:
            self._gathered[key] = self._matrix(device)[index]
        return labels, self._gathered[key]

    def _matrix(self, device) -> torch.Tensor:
        key = str(device)
        if key not in self._whole:
            dtype = torch.float32 if torch.device(device).type == "cpu" else torch.float16
            self._whole[key] = self.embeds.to(device, dtype)
        return self._whole[key]

    def release(self) -> None:
        """Drop the scoring matrices; the CPU fp16 copy stays, and they are rebuilt on next use."""
        self._whole, self._gathered = {}, {}
