"""Text the nodes show: Analyze Image's results as readable text and as JSON."""

import json
from typing import Dict, List, Sequence, Tuple

Analysis = Dict[str, List[Tuple[str, float]]]


def analysis_text(results: Sequence[Analysis]) -> List[str]:
    """Readable text, one per image: each list with its best terms and CLIP scores."""
    texts = []
    for result in results:
        lines = []
        for name, ranked in result.items():
            terms = ", ".join(f"{label} ({score:.3f})" for label, score in ranked)
            lines.append(f"{name}: {terms}")
        texts.append("\n".join(lines))
    return texts


def analysis_json(results: Sequence[Analysis]) -> List[str]:
    return [json.dumps({name: [{"term": label, "score": round(score, 4)} for label, score in ranked]
                        for name, ranked in result.items()}, ensure_ascii=False) for result in results]
