"""A prompt for each text encoder of a model family: one row per target (SDXL, SD3, Flux), one entry per output.

An output is written for its encoder and cut to its encoder's limit, counted with that encoder's tokenizer (see
:mod:`.token_count`):
- ``prompt``: the caption (shortened at a phrase or word boundary so terms still fit) + the ranked terms;
- ``terms``: only the ranked terms (style, medium, artist, look), for a second CLIP that should carry the style;
- ``sentence``: the whole caption, then the terms as a sentence, for T5, which reads language rather than tags;
- ``negative``: the negative-mode terms.
Terms are kept whole or dropped, in rank order; a caption is only ever cut between phrases or words.
"""

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from .errors import InterrogatorError
from .token_count import CLIP_CONTEXT, shorten

CONTENTS = ("prompt", "terms", "sentence", "negative")
# a CLIP output keeps at most this many tokens for the caption when terms follow (the engine's Settings default)
CAPTION_TOKENS = 45


@dataclass(frozen=True)
class Output:
    name: str  # the input it feeds, e.g. CLIPTextEncodeFlux's "clip_l"
    encoder: str  # "clip" or "t5": whose tokenizer counts its length
    limit: int  # tokens, the encoder's special tokens included
    content: str  # one of CONTENTS
    tooltip: str = ""


@dataclass(frozen=True)
class Target:
    name: str
    label: str
    outputs: Tuple[Output, ...]
    encode_node: str  # the ComfyUI node the outputs are wired into

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def output(self, name: str) -> Output:
        return next(o for o in self.outputs if o.name == name)

    @property
    def needs_negative(self) -> bool:
        return any(o.content == "negative" for o in self.outputs)

    @property
    def needs_t5(self) -> bool:
        return any(o.encoder == "t5" for o in self.outputs)


# T5 limits: the sequence length SD3 and Flux schnell were trained with (Flux dev: 512). ComfyUI does not cut T5
# text, so longer text reaches the encoder, but past what these models learned to read.
T5_TOKENS = 256

T5_SENTENCE = Output("t5xxl", "t5", T5_TOKENS, "sentence", "T5-XXL text: the whole caption, then the terms as a "
                                                         "sentence.")

TARGETS: Dict[str, Target] = {t.name: t for t in (
    Target("sdxl", "SDXL", (
        Output("text_g", "clip", CLIP_CONTEXT, "prompt", "CLIP-G (OpenCLIP bigG) text: caption + terms."),
        Output("text_l", "clip", CLIP_CONTEXT, "prompt", "CLIP-L text: the same prompt, or only the style terms."),
        Output("negative", "clip", CLIP_CONTEXT, "negative", "Negative prompt for both encoders of the negative "
                                                             "CLIPTextEncodeSDXL."),
    ), "CLIPTextEncodeSDXL"),
    Target("sd3", "SD3", (
        Output("clip_l", "clip", CLIP_CONTEXT, "prompt", "CLIP-L text: caption + terms."),
        Output("clip_g", "clip", CLIP_CONTEXT, "prompt", "CLIP-G text: caption + terms."),
        T5_SENTENCE,
    ), "CLIPTextEncodeSD3"),
    Target("flux", "Flux", (
        Output("clip_l", "clip", CLIP_CONTEXT, "terms", "CLIP-L text: the CLIP-ranked terms."),
        T5_SENTENCE,
    ), "CLIPTextEncodeFlux"),
)}


def get_target(name: str) -> Target:
    target = TARGETS.get(name) if isinstance(name, str) else None
    if target is None:
        raise InterrogatorError(f"unknown target {name!r}; use one of {', '.join(TARGETS)}.")
    return target


# -- writing one output -------------------------------------------------------------------------------------------
def join_terms(head: str, terms: Sequence[str], fits) -> str:
    """``head`` followed by as many whole terms, in order, as fit; a term that does not fit is skipped."""
    text = head
    for term in terms:
        candidate = f"{text}, {term}" if text else term
        if fits(candidate):
            text = candidate
    return text


def sentence(caption: str, terms: Sequence[str], fits) -> str:
    """The caption as written, then the terms as one sentence: "A cat on a sofa. Oil painting, by X, moody."."""
    caption = caption.strip().rstrip(".")
    if caption and not fits(caption + "."):
        caption = shorten(caption, lambda c: fits(c + ".")).rstrip(".")
    lead = f"{_capital(caption)}." if caption else ""
    kept: List[str] = []
    for term in terms:
        style = ", ".join([*kept, term])
        if fits(" ".join(p for p in (lead, _capital(style) + ".") if p)):
            kept.append(term)
    style = f"{_capital(', '.join(kept))}." if kept else ""
    return " ".join(p for p in (lead, style) if p)


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def clip_prompt(head: str, terms: Sequence[str], fits, caption_fits) -> str:
    """Caption part + terms within a window; with terms to add, the caption is cut to ``caption_fits`` first so
    that it cannot take the whole window."""
    head = shorten(head, caption_fits if terms else fits) if head else ""
    return join_terms(head, terms, fits)


@dataclass(frozen=True)
class PromptParts:
    """What the engine found for one image (see ``Interrogator.prompt_parts``)."""

    caption: str  # the whole caption
    head: str  # the caption part of the CLIP prompt (shortened to leave room for terms)
    terms: Tuple[str, ...]  # the ranked terms, best first
    negative: Tuple[str, ...] = ()  # the negative-mode terms, when the target has a negative output
    prompt: str = ""  # the mode's prompt these parts were split from
    warnings: Tuple[str, ...] = ()  # the lists the mode found no good term in (precise mode), as users read them


def write(target: Target, parts: PromptParts, counters: Dict[str, object],
          contents: Optional[Dict[str, str]] = None) -> Dict[str, str]:
    """Every output of ``target`` for one image. ``counters``: ``{"clip": ..., "t5": ...}`` token counters;
    ``contents`` overrides an output's content, e.g. ``{"text_l": "terms"}``."""
    texts = {}
    for output in target.outputs:
        counter = counters[output.encoder]
        fits = lambda text, o=output, c=counter: c.count(text) <= o.limit
        content = (contents or {}).get(output.name, output.content)
        if content not in CONTENTS:
            raise InterrogatorError(f"unknown content {content!r} for {output.name}; use one of "
                                    f"{', '.join(CONTENTS)}.")
        if content == "prompt":
            caption_fits = lambda text, o=output, c=counter: c.count(text) <= min(o.limit, CAPTION_TOKENS)
            texts[output.name] = clip_prompt(parts.head, parts.terms, fits, caption_fits)
        elif content == "terms":
            texts[output.name] = join_terms("", parts.terms, fits)
        elif content == "negative":
            texts[output.name] = join_terms("", parts.negative, fits)
        else:
            texts[output.name] = sentence(parts.caption, parts.terms, fits)
    return texts
