"""Image -> prompt: the reference's modes (fast, classic, best, negative) plus style-only, precise and analysis.

Every algorithm follows clip-interrogator 0.6.0 step by step; where we deliberately differ, a ``Settings`` field
names the difference and ``Settings.reference()`` switches back to the reference's behaviour.
"""

import bisect
from dataclasses import dataclass, replace
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch

from .confidence import KEEP, Calibration, Confidence, Reading, choose, gaps, picks, read
from .embeddings import EmbeddingCache, LabelIndex
from .encoder_prompts import CAPTION_TOKENS, PromptParts
from .errors import InterrogatorError, VocabError
from .images import as_pil_list, detail_crops
from .modes import MODES, get_mode
from .progress import ProgressHook, Steps
from .result import Interrogation, Span, Term, segment
from .text_encoder import TextEncoder
from .token_count import shorten
from .vocab import Vocabulary


@dataclass(frozen=True)
class Settings:
    flavor_intermediate_count: int = 2048  # candidates the chain searches
    min_flavors: int = 8  # chain steps taken even when they lower the similarity
    # Ours: prompts never exceed the text encoder's context, so nothing the encoder drops is in the prompt.
    # Reference: its chain may append a term the encoder truncates, and its fit check ignores the ", ".
    fit_token_budget: bool = True
    # Ours: negative mode compares negated similarities throughout. Reference: its first score keeps its sign.
    fix_negative_sign: bool = True
    # Ours (None): exact top-k. Reference: ranks tables longer than its chunk_size (2048) approximately, per chunk.
    approx_topk_chunk: Optional[int] = None
    # Ours: a caption longer than this many CLIP tokens is cut at a phrase or word boundary, so terms still fit.
    # Reference (None): a long caption fills the whole context and the prompt gets no terms.
    caption_tokens: Optional[int] = CAPTION_TOKENS

    @classmethod
    def reference(cls, **overrides) -> "Settings":
        return replace(cls(fit_token_budget=False, fix_negative_sign=False, approx_topk_chunk=2048,
                           caption_tokens=None), **overrides)


Captions = Union[None, str, Sequence[Optional[str]]]
GAP_WARNING = "no good term for {}: the image may be outside the vocabulary"


@dataclass(frozen=True)
class Prompt:
    """One image's prompt, its whole caption, and the lists in which no term fits the image."""

    text: str
    caption: str
    gaps: Tuple[str, ...] = ()
    head: str = ""  # the caption as the prompt starts with it (cut to the caption budget)

    @property
    def warnings(self) -> List[str]:
        return [GAP_WARNING.format(name) for name in self.gaps]


def caption_needed(mode: str, captions: Captions) -> bool:
    """Whether a mode, given these captions (see ``Interrogator.captions``), has to run the caption model."""
    if not get_mode(mode).captioned:
        return False
    captions = _checked(captions)
    if captions is None or isinstance(captions, str):
        return not captions
    return not all(captions)


def _checked(captions: Captions) -> Captions:
    """``captions`` if they have one of the accepted shapes (see ``Interrogator.captions``)."""
    if captions is None or isinstance(captions, str):
        return captions
    if not isinstance(captions, (list, tuple)) or not all(c is None or isinstance(c, str) for c in captions):
        raise InterrogatorError(f"captions must be None, one text for every image, or a list with one text (or "
                                f"None) per image; got {type(captions).__name__} {captions!r:.60}.")
    return captions


def _check_count(value, name: str, minimum: int, default_note: str = "") -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < minimum):
        raise InterrogatorError(f"{name} must be a whole number >= {minimum}{default_note}, got {value!r}.")


class Interrogator:
    """Turns images into prompts with one CLIP model, an optional caption model and a vocabulary."""

    def __init__(self, clip, captioner=None, vocab: Optional[Vocabulary] = None, *, cache_dir: Optional[str] = None,
                 settings: Settings = Settings(), calibration: Optional[Calibration] = None):
        self.clip = clip
        self.captioner = captioner  # the default caption model; a call may pass another
        self.vocab = vocab if vocab is not None else Vocabulary.builtin()
        self.settings = settings
        self.calibration = calibration or Calibration.load()  # precise mode's thresholds
        self.encoder = TextEncoder(clip)
        self.cache = EmbeddingCache(cache_dir)
        self._index: Optional[LabelIndex] = None
        self._rows: Optional[Dict[str, Tuple[str, int]]] = None

    # -- public API ----------------------------------------------------------------------------------------------
    def label_index(self, progress: Optional[ProgressHook] = None) -> LabelIndex:
        """All labels embedded (built on first use, from the disk cache when it matches)."""
        if self._index is None:
            self._index = LabelIndex(self.vocab, self.encoder, self.cache, progress)
        return self._index

    def release(self) -> None:
        """Drop the label matrices' device copies (rebuilt on next use). The models belong to the caller."""
        if self._index is not None:
            self._index.release()

    def caption(self, images, captioner=None, progress: Optional[ProgressHook] = None) -> List[str]:
        """The caption model's caption of every image."""
        captioner = captioner or self.captioner
        if captioner is None:
            raise InterrogatorError("no caption model is loaded; load one or pass the caption text in.")
        return captioner.caption(as_pil_list(images), progress)

    def captions(self, images, mode: str = "best", captions: Captions = None, captioner=None,
                 progress: Optional[ProgressHook] = None) -> List[str]:
        """The caption each image's prompt starts with: ``captions`` is None (the caption model), one text for
        all, or one per image (an empty one is captioned); modes without a caption get "", and so does every
        image when there is no caption model. Banned words are cut out of every caption, given or generated."""
        images = as_pil_list(images)
        captions = _checked(captions)
        if captions is None or isinstance(captions, str):
            captions = [captions] * len(images)
        if len(captions) != len(images):
            raise InterrogatorError(f"{len(captions)} captions were given for {len(images)} images.")
        if not get_mode(mode).captioned:
            return [""] * len(images)
        captions = [c or "" for c in captions]
        captioner = captioner or self.captioner
        missing = [i for i, c in enumerate(captions) if not c]
        if missing and captioner is not None:
            for i, text in zip(missing, self.caption([images[i] for i in missing], captioner, progress)):
                captions[i] = text
        return [self.vocab.ban.scrub(c) for c in captions]

    def interrogate(self, images, mode: str = "best", captions: Captions = None, max_terms: Optional[int] = None,
                    captioner=None, progress: Optional[ProgressHook] = None, detail: bool = False) -> List[str]:
        """One prompt per image. ``captions`` and ``captioner``: see ``captions``; ``max_terms``: the most terms
        added (default: the mode's); ``detail``: also score crops (modes with a detail pass)."""
        return [p.text for p in self.prompts(images, mode, captions, max_terms, captioner, progress, detail)]

    def interrogations(self, images, mode: str = "best", captions: Captions = None, max_terms: Optional[int] = None,
                       captioner=None, progress: Optional[ProgressHook] = None,
                       detail: bool = False) -> Iterator[Interrogation]:
        """``interrogate``'s prompts with what each is made of: the caption the prompt starts with and every chosen
        term with its list, role and CLIP score (see :mod:`.result`). Yielded one image at a time as each is done;
        captions and image features of all ``images`` are computed first, in batches."""
        for prompt, features in self._prompts(images, mode, captions, max_terms, captioner, progress, detail):
            yield Interrogation(prompt.text, prompt.head, mode, self._spans(features, prompt.text, prompt.head),
                                prompt.gaps)

    def prompt_parts(self, images, mode: str = "best", captions: Captions = None, max_terms: Optional[int] = None,
                     captioner=None, progress: Optional[ProgressHook] = None, detail: bool = False,
                     negative: bool = False) -> List[PromptParts]:
        """Per image, the prompt ``interrogate`` gives split into its caption part and its ranked terms, with the
        whole caption: what :mod:`.encoder_prompts` writes each text encoder's prompt from. ``negative``: also the
        negative mode's terms, from the same encoding of the image (for targets with a negative output)."""
        if negative:
            self._check_terms(get_mode("negative"))
        parts = []
        for prompt, features in self._prompts(images, mode, captions, max_terms, captioner, progress, detail):
            head, terms = split_prompt(prompt.text, prompt.head)
            unlike = self._negative_terms(features, max_terms, progress) if negative else ()
            parts.append(PromptParts(prompt.caption, head, terms, unlike, prompt.text, tuple(prompt.warnings)))
        return parts

    def _negative_terms(self, features, max_terms: Optional[int], progress) -> Tuple[str, ...]:
        """The terms negative mode gives an image already encoded (as ``prompt_parts(images, "negative")``)."""
        text = self._negative(features, "", max_terms or get_mode("negative").max_terms, progress)
        return split_prompt(self.vocab.ban.scrub(text), "")[1]

    def _clip_caption(self, caption: str) -> str:
        """The caption as the prompt starts with it: cut to the caption budget (see ``Settings.caption_tokens``)."""
        budget = self.settings.caption_tokens
        if not caption or budget is None:
            return caption
        return shorten(caption, lambda text: self.encoder.token_count(text) <= budget)

    def prompts(self, images, mode: str = "best", captions: Captions = None, max_terms: Optional[int] = None,
                captioner=None, progress: Optional[ProgressHook] = None, detail: bool = False) -> List[Prompt]:
        """``interrogate``, with each prompt's whole caption, the part it starts with, and the lists the mode found
        no good term in."""
        return [prompt for prompt, _ in self._prompts(images, mode, captions, max_terms, captioner, progress, detail)]

    def _prompts(self, images, mode, captions, max_terms, captioner, progress, detail
                 ) -> Iterator[Tuple[Prompt, torch.Tensor]]:
        """(prompt, image features) per image, as each is done."""
        spec = get_mode(mode)
        _check_count(max_terms, "max_terms", 0, f" (0: the mode's default of {spec.max_terms})")
        if detail and not spec.detail_pass:
            raise InterrogatorError(f"{mode} mode has no detail pass; use it with "
                                    f"{', '.join(m.name for m in MODES.values() if m.detail_pass)} mode.")
        self._check_terms(spec)
        images = as_pil_list(images)
        texts = self.captions(images, mode, captions, captioner, progress)
        self.label_index(progress)
        steps = Steps(progress, len(images), f"Interrogating ({mode})")
        features = self.clip.encode_images(images, steps.tick)
        run = getattr(self, f"_{mode}")
        max_terms = max_terms or spec.max_terms
        for i, image in enumerate(images):
            options = {"crops": self.clip.encode_images(detail_crops(image), steps.tick)} if detail else {}
            # a mode that reports gaps chooses its terms from the same readings the report comes from
            readings = self._readings(features[i:i + 1]) if spec.gap_warnings else None
            if readings is not None:
                options["readings"] = readings
            head = self._clip_caption(texts[i])
            # banned labels were never scored; this catches a banned phrase formed where a mode joins two texts
            text = self.vocab.ban.scrub(run(features[i:i + 1], head, max_terms, progress, **options))
            found = self._gaps(readings) if readings is not None else ()
            steps.advance()
            yield Prompt(text, texts[i], tuple(found), head), features[i:i + 1]

    def analyze(self, images, top: int = 5, progress: Optional[ProgressHook] = None
                ) -> List[Dict[str, List[Tuple[str, float]]]]:
        """Per image and list, the ``top`` best labels with their cosine similarity to the image."""
        return [self._analysis(f, top) for f in self._features(images, top, progress)]

    def confidence(self, images, top: int = 5, progress: Optional[ProgressHook] = None) -> List[Confidence]:
        """Per image, every ranked list's ``top`` terms with the chance CLIP gives each among the list's terms, and
        the exhaustive lists in which no term fits (see ``confidence``)."""
        return [self._confidence(f, top) for f in self._features(images, top, progress)]

    def inspect(self, images, top: int = 5, progress: Optional[ProgressHook] = None
                ) -> Tuple[List[Dict[str, List[Tuple[str, float]]]], List[Confidence]]:
        """``analyze`` and ``confidence`` of the same images, encoding each image once (Analyze Image shows both)."""
        features = self._features(images, top, progress)
        return [self._analysis(f, top) for f in features], [self._confidence(f, top) for f in features]

    def _features(self, images, top: int, progress: Optional[ProgressHook]) -> List[torch.Tensor]:
        _check_count(top, "top", 1)
        images = as_pil_list(images)
        self.label_index(progress)
        steps = Steps(progress, len(images), "Analyzing")
        features = self.clip.encode_images(images, steps.tick)
        steps.finish()
        return [features[i:i + 1] for i in range(len(features))]

    def _analysis(self, features, top: int) -> Dict[str, List[Tuple[str, float]]]:
        return {name: self._rank(features, [name], top, scores=True) for name in self._index.spans}

    def _confidence(self, features, top: int) -> Confidence:
        readings = self._readings(features, max(top, KEEP))
        confident = tuple(name for name, reading in readings.items() if picks(reading, self.calibration))
        return Confidence(readings, confident, tuple(self._gaps(readings)))

    def _check_terms(self, spec) -> None:
        """A mode whose lists are all switched off or banned empty would return "" and look like it worked."""
        lists = getattr(self.vocab, spec.terms_from)
        if any(tl.terms for tl in lists):
            return
        why = (f"every term of its lists ({', '.join(tl.name for tl in lists)}) is banned or the lists are empty"
               if lists else "every list it draws from is switched off")
        raise VocabError(f"{spec.name} mode has no terms to choose from: {why}. Switch lists on or ban fewer terms.")

    # -- modes ---------------------------------------------------------------------------------------------------
    def _fast(self, features, caption: str, max_terms: int, progress=None) -> str:
        tops = self._rank(features, self._pool, max_terms)
        return self._fit(", ".join([caption, *tops]) if caption else ", ".join(tops))

    def _classic(self, features, caption: str, max_terms: int, progress=None) -> str:
        top = lambda role, k=1: ", ".join(self._rank(features, self._names(role), k))
        medium, artist, trending, movement = (top(r) for r in ("medium", "artist", "site", "movement"))
        flavors = top("flavor", max_terms)
        if medium and caption.startswith(medium):
            head = f"{caption} {artist}" if artist else caption
        else:
            head = ", ".join(p for p in (caption, " ".join(p for p in (medium, artist) if p)) if p)
        return self._fit(", ".join(p for p in (head, trending, movement, flavors) if p))

    def _best(self, features, caption: str, max_terms: int, progress=None) -> str:
        flavors = self._rank(features, self._pool, self.settings.flavor_intermediate_count)
        chained = self._chain(features, flavors, caption, self._similarities(features, [caption])[0],
                              self.settings.min_flavors, max_terms, "Flavor chain", progress)
        # the reference hands best's own term count to classic and fast here
        candidates = [caption, self._classic(features, caption, max_terms),
                      self._fast(features, caption, max_terms), chained]
        scores = self._similarities(features, candidates)
        return candidates[max(range(len(scores)), key=lambda i: (scores[i], -i))]

    def _negative(self, features, _caption: str, max_terms: int, progress=None) -> str:
        flavors = self._rank(features, self._names("flavor"), self.settings.flavor_intermediate_count, reverse=True)
        negatives = [label for name in self._names("negative") for label in self._list_labels(name)]
        return self._chain(features, flavors + negatives, "", 0.0, self.settings.min_flavors, max_terms,
                           "Negative chain", progress, reverse=True)

    def _style(self, features, _caption: str, max_terms: int, progress=None) -> str:
        """Medium, artist, movement and the flavors that best extend them: a look without a subject."""
        style = {tl.name for tl in self.vocab.style}
        pick = lambda role: ", ".join(self._rank(features, [n for n in self._names(role) if n in style], 1))
        medium, artist, movement = pick("medium"), pick("artist"), pick("movement")
        head = ", ".join(p for p in (" ".join(p for p in (medium, artist) if p), movement) if p)
        flavors = self._rank(features, [n for n in self._names("flavor") if n in style],
                             self.settings.flavor_intermediate_count)
        sim = self._similarities(features, [head])[0] if head else 0.0
        return self._chain(features, flavors, head, sim, 0, max_terms, "Style chain", progress)

    def _precise(self, features, caption: str, max_terms: int, progress=None, crops=None, *, readings) -> str:
        """Each list's term CLIP is confident of, list by list (see ``confidence.choose``); a list with no good
        term stays out of the prompt. ``readings``: the image's, which its gap report comes from too."""
        crop_readings = [self._readings(crops[i:i + 1]) for i in range(len(crops))] if crops is not None else []
        verdict = choose(readings, self._ranking(features), self.calibration, self._exhaustive, crop_readings)
        terms = verdict.terms[:max_terms]
        return self._fit(", ".join([caption, *terms]) if caption else ", ".join(terms))

    # -- the greedy chain ----------------------------------------------------------------------------------------
    def _chain(self, features, phrases: List[str], best_prompt: str, best_sim: float, min_count: int,
               max_count: int, desc: str, progress: Optional[ProgressHook] = None, reverse: bool = False) -> str:
        """Greedily append the phrase that most raises (``reverse``: lowers) the prompt's similarity.

        Candidates are kept in a ``set`` and visited in its order, as the reference does, so exact ties (which
        truncation produces) resolve to the same phrase.
        """
        sign = -1.0 if reverse else 1.0
        phrases = set(phrases)
        if not phrases:
            return best_prompt
        steps = Steps(progress, max_count, desc)
        if not best_prompt:
            candidates = list(phrases)
            scores = sign * self._similarities_tensor(features, candidates, steps.tick)
            best_prompt = candidates[int(scores.argmax())]
            best_sim = self._similarities(features, [best_prompt])[0]
            if reverse and self.settings.fix_negative_sign:
                best_sim = -best_sim
            phrases.remove(best_prompt)
        current, current_sim = best_prompt, best_sim
        for idx in range(max_count):
            candidates = self._chain_candidates(current, phrases)
            if not candidates:
                break
            scores = sign * self._chain_scores(features, current, candidates, steps.tick)
            best = int(scores.argmax())
            flavor, sim = candidates[best], float(scores[best])
            prompt = f"{current}, {flavor}"
            if sim > best_sim:
                best_prompt, best_sim = prompt, sim
            steps.advance()
            if not (sim > current_sim or idx < min_count):
                break
            current, current_sim = prompt, sim
            if not self.settings.fit_token_budget and self.encoder.at_max_length(current):
                break
            phrases.remove(flavor)
        steps.finish()
        return best_prompt

    def _chain_candidates(self, current: str, phrases) -> List[str]:
        candidates = list(phrases)
        if self.settings.fit_token_budget:
            room = self.encoder.context_length - self.encoder.token_count(current + ",")
            candidates = [c for c in candidates if self.encoder.token_count(c) - 2 <= room]
        return candidates

    def _chain_scores(self, features, current: str, candidates: List[str], poll=None) -> torch.Tensor:
        """Similarity of every ``"{current}, {candidate}"``, tokenising the shared prefix once.

        CLIP's tokenizer never merges tokens across a space, so the ids of ``prefix + ", " + term`` are the ids of
        ``prefix + ","`` followed by the ids of ``term``.
        """
        encoder = self.encoder
        if not encoder.fast:
            return self._similarities_tensor(features, [f"{current}, {c}" for c in candidates], poll)
        prefix = [encoder.sot, *encoder.ids(current + ",")]  # memoised: the fit check tokenised it already
        if len(prefix) >= encoder.context_length:  # the prefix alone overflows: the tokenizer's truncation decides
            sequences = [encoder.sequence(prefix[1:] + encoder.ids(c)) for c in candidates]
            text = encoder.encode_sequences(sequences, poll=poll)
        else:
            text = encoder.encode_continuations(prefix, [encoder.continuation(prefix, encoder.ids(c))
                                                         for c in candidates], poll)
        return (text @ features.T.to(encoder.clip.device))[:, 0].cpu()

    def _fit(self, text: str) -> str:
        """Keep the leading ", "-separated parts that fit the text encoder's context."""
        parts = text.split(", ")
        fitted = parts[0]
        for part in parts[1:]:
            if self.settings.fit_token_budget:
                if not self.encoder.fits(f"{fitted}, {part}"):
                    break
            elif self.encoder.at_max_length(fitted + part):  # the reference's check, without the separator
                break
            fitted += ", " + part
        return fitted

    # -- what a prompt is made of -------------------------------------------------------------------------------
    def _spans(self, features, prompt: str, caption: str) -> Tuple[Span, ...]:
        rows = self._label_rows()
        spans = []
        for text, is_label in segment(prompt, caption, rows.__contains__):
            term = None
            if is_label:
                name, offset = rows[text]
                labels, matrix = self._index.rows([name], self.clip.device)
                score = _cosine(features.to(matrix.device, matrix.dtype), matrix, offset)
                term = Term(text, name, self.vocab[name].role, score)
            spans.append(Span(text, term))
        return tuple(spans)

    def _label_rows(self) -> Dict[str, Tuple[str, int]]:
        """label -> (the first list holding it, its row in that list), in vocabulary order."""
        if self._rows is None:
            rows: Dict[str, Tuple[str, int]] = {}
            for name in (tl.name for tl in self.vocab.lists):
                for offset, label in enumerate(self._list_labels(name)):
                    rows.setdefault(label, (name, offset))
            self._rows = rows
        return self._rows

    # -- scoring helpers -----------------------------------------------------------------------------------------
    def _similarities_tensor(self, features, texts: List[str], poll=None) -> torch.Tensor:
        return (self.encoder.encode(texts, poll=poll) @ features.T.to(self.clip.device))[:, 0].cpu()

    def _similarities(self, features, texts: List[str]) -> List[float]:
        return self._similarities_tensor(features, texts).tolist()

    @property
    def _pool(self) -> List[str]:
        return [tl.name for tl in self.vocab.pool]

    @property
    def _exhaustive(self) -> List[str]:
        return [tl.name for tl in self.vocab.pool if tl.exhaustive]

    def _pool_scores(self, features) -> Tuple[List[str], torch.Tensor, Dict[str, Tuple[int, int]], torch.Tensor]:
        """The pool's labels, one image's scores against them, each list's rows among them, and their embeddings."""
        labels, matrix = self._index.rows(self._pool, self.clip.device)
        scores = (features.to(matrix.device, matrix.dtype) @ matrix.T).float().cpu()[0]
        spans, offset = {}, 0
        for (start, end), name in sorted((self._index.spans[n], n) for n in self._pool):
            spans[name] = (offset, offset + end - start)
            offset += end - start
        return labels, scores, spans, matrix

    def _readings(self, features, keep: int = KEEP) -> Dict[str, Reading]:
        labels, scores, spans, embeddings = self._pool_scores(features)
        return read(labels, scores, spans, self.clip.logit_scale, keep, embeddings, fitted=self._exhaustive)

    def _ranking(self, features, k: int = 64) -> List[Tuple[str, str]]:
        """The pool's ``k`` best labels for one image, each with the list it comes from."""
        labels, scores, spans, _ = self._pool_scores(features)
        lists = sorted((start, name) for name, (start, end) in spans.items() if end > start)
        starts = [start for start, _ in lists]
        owner = lambda i: lists[bisect.bisect_right(starts, i) - 1][1]
        return [(labels[i], owner(i)) for i in scores.topk(min(k, len(labels))).indices.tolist()]

    def _gaps(self, readings: Dict[str, Reading]) -> List[str]:
        return gaps(readings, self._exhaustive, self.calibration)

    def _names(self, role: str) -> List[str]:
        return [tl.name for tl in self.vocab.by_role(role)]

    def _list_labels(self, name: str) -> List[str]:
        start, end = self._index.spans[name]
        return self._index.labels[start:end]

    def _rank(self, features, names: List[str], k: int, reverse: bool = False, scores: bool = False):
        """The top ``k`` labels of some lists, best first (``reverse``: least similar first)."""
        labels, matrix = self._index.rows(names, self.clip.device)
        if not labels or k <= 0:
            return []
        image = features.to(matrix.device, matrix.dtype)
        chunk = self.settings.approx_topk_chunk
        if chunk and len(labels) > chunk:
            top = _approximate_top(image, matrix, k, chunk, reverse)
        else:
            sims = (image @ matrix.T).float().cpu()
            top = (-sims if reverse else sims).topk(min(k, len(labels)), dim=-1).indices[0].tolist()
        if scores:
            return [(labels[i], _cosine(image, matrix, i)) for i in top]
        return [labels[i] for i in top]


def _cosine(image: torch.Tensor, matrix: torch.Tensor, row: int) -> float:
    """One label's score: what Analyze Image shows and what a result's terms carry, computed the same way."""
    return float(image[0].float() @ matrix[row].float())


def split_prompt(prompt: str, caption: str) -> Tuple[str, Tuple[str, ...]]:
    """(caption part, terms) of a prompt that starts with ``caption``; classic mode may glue "by <artist>" to the
    caption with a space, which stays in the caption part."""
    rest = prompt
    head = ""
    if caption and prompt.startswith(caption):
        glued, _, rest = prompt[len(caption):].partition(", ")
        head = caption + glued
    return head, tuple(term for term in rest.split(", ") if term)


def _approximate_top(image, matrix, k: int, chunk: int, reverse: bool) -> List[int]:
    """The reference's two-stage top-k for long tables: keep a share per chunk, then rank the survivors.

    Like the reference, the second stage always ranks most-similar first, even when ``reverse`` is set.
    """
    n = matrix.shape[0]
    chunks = -(-n // chunk)
    keep = int(chunk / chunks)
    survivors: List[int] = []
    for c in range(chunks):
        start = c * chunk
        sims = (image @ matrix[start:start + chunk].T).float().cpu()
        sims = -sims if reverse else sims
        survivors.extend(start + i for i in sims.topk(min(keep, sims.shape[-1]), dim=-1).indices[0].tolist())
    sims = (image @ matrix[survivors].T).float().cpu()
    return [survivors[i] for i in sims.topk(min(k, len(survivors)), dim=-1).indices[0].tolist()]
