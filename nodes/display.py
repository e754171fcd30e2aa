"""Text the nodes show: Analyze Image's results as readable text and as JSON, prompts with their warnings."""

import json
from typing import Dict, List, Sequence, Tuple

from ..core import Prompt
from ..core.confidence import Confidence
from ..core.interrogator import GAP_WARNING

Analysis = Dict[str, List[Tuple[str, float]]]


def analysis_text(results: Sequence[Analysis], confidences: Sequence[Confidence]) -> List[str]:
    """Readable text, one per image: each list with its best terms and CLIP scores, the chance CLIP gives the best
    term among the list's terms ("confident" where precise mode takes it) and, for a list every image has a value
    of, how well that term fits the image; then the lists with no good term."""
    texts = []
    for result, confidence in zip(results, confidences):
        lines = []
        for name, ranked in result.items():
            terms = ", ".join(f"{label} ({score:.3f})" for label, score in ranked)
            reading = confidence.lists.get(name)
            sure = "" if reading is None else \
                f" | chance {reading.chance:.0%}{', confident' if name in confidence.confident else ''}" \
                f"{'' if reading.fit is None else f', fit {reading.fit:.2f}'}"
            lines.append(f"{name}: {terms}{sure}")
        lines.extend(GAP_WARNING.format(name) for name in confidence.gaps)
        texts.append("\n".join(lines))
    return texts


def prompt_text(prompt: Prompt) -> str:
    """A prompt as a node shows it: the prompt, then its warnings."""
    return "\n".join([prompt.text, *prompt.warnings])


def analysis_json(results: Sequence[Analysis]) -> List[str]:
    return [json.dumps({name: [{"term": label, "score": round(score, 4)} for label, score in ranked]
                        for name, ranked in result.items()}, ensure_ascii=False) for result in results]
