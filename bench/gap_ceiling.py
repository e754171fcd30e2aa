"""Is a vocabulary gap visible in the term scores at all? A detector that is shown the answers, against the product's
rule, which is not.

The product's gap warning (``core/confidence.py``: a list whose best term fits the image poorly) knows nothing of
the values a list lacks. This script trains a small network on every term's score for pictures of the quality
harness, with labels saying which pictures show a value missing from the lists, and reports how many held-out gap
pictures each flags at the same share of false alarms on the other pictures. The network learns what the missing
values look like, which no real vocabulary can know in advance: it is a ceiling on what the scores hold, not a
method to ship.

    python bench/gap_ceiling.py          # about a minute on one CPU thread
"""

import argparse
import os
import sys
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
sys.path.insert(0, HERE)

import quality  # noqa: E402
import quality_world as world  # noqa: E402
from core import Interrogator  # noqa: E402
from core.confidence import CALIBRATION  # noqa: E402

TRAIN_SEED = 2001  # neither training (1000), calibration (2000) nor evaluation (3000) pictures


def pictures(engine: Interrogator, seed: int, ordinary: int, small_detail: int, gap: int):
    """Every picture's scores against all pool terms, whether it is a gap picture, and its missing value."""
    examples = world.examples(seed, ordinary, small_detail, gap)
    with torch.no_grad():
        features = engine.clip.encode_images([e.image for e in examples])
        labels, matrix = engine.label_index().rows([tl.name for tl in engine.vocab.pool], torch.device("cpu"))
        scores = features.float() @ matrix.float().T
    missing = [e.scene.value(e.scene.gap_category) if e.kind == "gap" else None for e in examples]
    return scores, torch.tensor([m is not None for m in missing]), missing, examples


def train(scores: torch.Tensor, is_gap: torch.Tensor, epochs: int) -> torch.nn.Module:
    torch.manual_seed(0)
    mean, std = scores.mean(0), scores.std(0) + 1e-6
    net = torch.nn.Sequential(torch.nn.Linear(scores.shape[1], 128), torch.nn.ReLU(), torch.nn.Linear(128, 128),
                              torch.nn.ReLU(), torch.nn.Linear(128, 1))
    optimizer = torch.optim.AdamW(net.parameters(), 1e-3, weight_decay=1e-3)
    inputs, targets = (scores - mean) / std, is_gap.float()
    for _ in range(epochs):
        for batch in torch.randperm(len(inputs)).split(256):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(net(inputs[batch])[:, 0], targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return lambda x: net((x - mean) / std)[:, 0]


def flagged(values: np.ndarray, is_gap: np.ndarray, false_alarms: float) -> np.ndarray:
    """Which pictures a score flags when its threshold lets ``false_alarms`` of the other pictures through."""
    return values > np.quantile(values[~is_gap], 1 - false_alarms)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=quality.MODEL, help="CLIP weights (.safetensors with its .json config)")
    parser.add_argument("--calibration", default=CALIBRATION, help="precise mode's thresholds")
    parser.add_argument("--train", type=int, default=2000, help="training pictures of each kind")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--threads", type=int, default=1, help="1: the same numbers on every run")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    _, _, engine = quality.load(args)
    scores, is_gap, _, _ = pictures(engine, TRAIN_SEED, args.train, 0, args.train)
    detector = train(scores, is_gap, args.epochs)
    scores, is_gap, missing, examples = pictures(engine, quality.EVAL_SEED, 200, 60, 60)
    with torch.no_grad():
        shown = flagged(detector(scores).numpy(), is_gap.numpy(), 0.10)
    # precise mode must also name the missing list; any warning on another picture is a false alarm
    warned = np.array([e.scene.gap_category in c.gaps if e.kind == "gap" else bool(c.gaps)
                       for c, e in zip(engine.confidence([e.image for e in examples]), examples)])
    values = sorted({m for m in missing if m})
    print(f"{int(is_gap.sum())} gap and {int((~is_gap).sum())} other pictures of seed {quality.EVAL_SEED}; "
          f"share of gap pictures flagged, by missing value\n")
    print("| detector | false alarms | all | " + " | ".join(values) + " |")
    print("|---|---|---|" + "---|" * len(values))
    rows = [("trained with the answers (all term scores)", shown), ("precise mode's fit, naming the missing list", warned)]
    for name, hits in rows:
        share = lambda value: np.mean([hits[i] for i, m in enumerate(missing) if m == value])
        print(f"| {name} | {np.mean(hits[~is_gap.numpy()]):.0%} | {np.mean(hits[is_gap.numpy()]):.0%} | "
              + " | ".join(f"{share(v):.0%}" for v in values) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
