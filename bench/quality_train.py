"""Train the quality harness's tiny CLIP on the synthetic world, on a CPU.

    nice -n 5 python bench/quality_train.py --threads 2         # writes bench/quality_model/synthetic-clip.*

A contrastive (CLIP) objective on rendered scenes and their alt-text, with the real BPE tokenizer and open_clip's
own CLIP class, so the result loads through the product's normal path (a .safetensors file + its model config).
Two image-text contrasts are summed: each picture against the batch's captions (CLIP's loss), and each picture
against every value of each attribute ("circle", "square", ...), the zero-shot ranking the interrogator relies on.
The second one is what makes a tiny model learn shapes, materials and corner details in minutes of CPU instead of
hours: with captions alone, background, lighting and color already tell most pictures apart.
Only the token rows the world's words use are trained (a compact table, written back at the end); the other
rows are zero, which keeps the committed file compressible and says honestly that the model knows no other word.
"""

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import quality_world as world  # noqa: E402
from core.files import atomic_path  # noqa: E402

CONFIG = {
    "embed_dim": 64,
    # a small ResNet: with the locality of convolutions it learns shapes in hundreds of steps where a ViT of the
    # same cost is still at chance; at width 8 it named only a quarter of the shapes after 1,800 steps
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 3},
}
MODEL_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "quality_model")
STEM = "synthetic-clip"
GROUP = 4  # pictures per variant group (see quality_world.variant_group); a batch holds whole groups
TRAIN_SEED = 1000  # pictures for training; the harness calibrates on seed 2000 and evaluates on seed 3000


def render_pool(count: int, seed: int, preprocess, cache: str):
    """``count`` training scenes and their pictures at the model's input size (uint8), cached on disk."""
    rng = np.random.default_rng(seed)
    scenes = [scene for _ in range(count // GROUP) for scene in world.variant_group(rng, GROUP)]
    count = len(scenes)
    if cache and os.path.exists(cache):
        pixels = np.load(cache)
        if pixels.shape[0] == count:
            return scenes, pixels
    resize = preprocess.transforms[:2]  # Resize + CenterCrop: exactly what the product does before ToTensor
    pixels = np.empty((count, *[CONFIG["vision_cfg"]["image_size"]] * 2, 3), np.uint8)
    start = time.time()
    for i, scene in enumerate(scenes):
        image = world.render(scene)
        for t in resize:
            image = t(image)
        pixels[i] = np.asarray(image)
        if i % 5000 == 4999:
            print(f"rendered {i + 1}/{count} ({time.time() - start:.0f}s)", flush=True)
    if cache:
        np.save(cache, pixels)
    return scenes, pixels


def token_table(tokenizer, texts):
    """The token ids the world's words use, and a lookup from full ids to rows of a compact table."""
    ids = {tokenizer.sot_token_id, tokenizer.eot_token_id, 0}
    for text in texts:
        ids.update(tokenizer.encode(text))
    ids = sorted(ids)
    lookup = torch.full((CONFIG["text_cfg"]["vocab_size"],), -1, dtype=torch.long)
    lookup[ids] = torch.arange(len(ids))
    return ids, lookup


def world_texts():
    from core.vocab import REFERENCE_SITES, label_forms

    values = [v for c in world.CATEGORIES.values() for v in c] + [v for g in world.GAP.values() for v in g]
    noise = [t for pool in world._noise_pools() for t in pool]
    glue = [world.PICTURE, "a", "on", "in", "with a", "in the corner", "something", ", "]
    extra = list(world.NEGATIVE) + label_forms("site", REFERENCE_SITES) + list(REFERENCE_SITES)
    return values + noise + glue + extra


def encode_text(model, table, lookup, tokens):
    """open_clip's encode_text on the compact table, computed only up to the batch's longest caption."""
    ends = tokens.argmax(dim=-1)  # the end token has the largest id
    length = int(ends.max()) + 1
    tokens = tokens[:, :length]
    rows = lookup[tokens]
    assert (rows >= 0).all(), "a caption uses a word outside the world's token table"
    x = F.embedding(rows, table) + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)[torch.arange(len(x)), ends]
    return x @ model.text_projection


def attribute_texts(tokenizer):
    """Each category's values (gap values included: the model knows them) and their tokens, made once."""
    texts = {}
    for category, values in world.CATEGORIES.items():
        values = values + world.GAP.get(category, ())
        texts[category] = (values, tokenizer(list(values)))
    return texts


def attribute_loss(model, table, lookup, texts, scenes, image_features, scale) -> torch.Tensor:
    """Each picture against every value of each attribute, as text: cross-entropy towards its true value, summed
    over the categories so that, together, they weigh more than the caption contrast (which background and
    lighting alone already solve)."""
    losses = []
    for category, (values, tokens) in texts.items():
        truth = torch.tensor([values.index(s.value(category)) if s.value(category) else -1 for s in scenes])
        known = truth >= 0
        if not known.any():
            continue
        text = F.normalize(encode_text(model, table, lookup, tokens), dim=-1)
        losses.append(F.cross_entropy(scale * image_features[known] @ text.T, truth[known]))
    return torch.stack(losses).sum()


def to_pixels(batch: np.ndarray, mean, std, flip) -> torch.Tensor:
    x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255.0
    x = torch.where(flip[:, None, None, None], x.flip(-1), x)
    return (x - mean) / std


def save(model, table, ids, folder: str) -> str:
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    embedding = torch.zeros_like(state["token_embedding.weight"])
    embedding[ids] = table.detach()
    state["token_embedding.weight"] = embedding
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in state.items()}
    path = os.path.join(folder, f"{STEM}.safetensors")
    with atomic_path(path) as tmp:
        save_file(state, tmp, metadata={"trained_by": "bench/quality_train.py", "seed": str(TRAIN_SEED)})
    with open(os.path.join(folder, f"{STEM}.json"), "w", encoding="utf-8") as file:
        json.dump(CONFIG, file, indent=1)
    return path


@torch.no_grad()
def probe(model, table, lookup, tokenizer, pixels, scenes, mean, std) -> str:
    """Top-1 accuracy of each category's single-term ranking on some training-distribution pictures."""
    model.eval()
    image = F.normalize(model.encode_image(to_pixels(pixels, mean, std, torch.zeros(len(pixels), dtype=torch.bool))))
    parts = []
    for category, values in world.CATEGORIES.items():
        text = F.normalize(encode_text(model, table, lookup, tokenizer(list(values))))
        top = (image @ text.T).argmax(-1)
        truth = [values.index(s.value(category)) if s.value(category) in values else -1 for s in scenes]
        known = [i for i, t in enumerate(truth) if t >= 0]
        acc = float(np.mean([int(top[i]) == truth[i] for i in known])) if known else float("nan")
        parts.append(f"{category} {acc:.2f}")
    model.train()
    return ", ".join(parts)


def main(argv=None) -> int:
    import open_clip

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pool", type=int, default=30000, help="distinct training pictures")
    parser.add_argument("--steps", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=192)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--threads", type=int, default=1, help="one thread is fastest on a busy shared CPU")
    parser.add_argument("--out", default=MODEL_DIR)
    parser.add_argument("--pixel-cache", default=os.path.join("/tmp", "quality_pool_v3.npy"))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = np.random.default_rng(TRAIN_SEED + 1)

    model = open_clip.CLIP(**CONFIG)
    preprocess = open_clip.image_transform(CONFIG["vision_cfg"]["image_size"], is_train=False)
    normalize = preprocess.transforms[-1]
    mean = torch.tensor(normalize.mean).view(1, 3, 1, 1)
    std = torch.tensor(normalize.std).view(1, 3, 1, 1)
    tokenizer = open_clip.SimpleTokenizer(context_length=CONFIG["text_cfg"]["context_length"])
    ids, lookup = token_table(tokenizer, world_texts())
    table = torch.nn.Parameter(torch.randn(len(ids), CONFIG["text_cfg"]["width"]) * 0.02)
    model.token_embedding.requires_grad_(False)
    texts = attribute_texts(tokenizer)
    print(f"{len(ids)} token rows trained of {CONFIG['text_cfg']['vocab_size']}", flush=True)

    scenes, pixels = render_pool(args.pool, TRAIN_SEED, preprocess, args.pixel_cache)
    probe_rng = np.random.default_rng(TRAIN_SEED + 7)
    probe_scenes = [world.sample_scene(probe_rng) for _ in range(256)]
    probe_pixels = np.stack([np.asarray(preprocess.transforms[1](preprocess.transforms[0](world.render(s))))
                             for s in probe_scenes])

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": rest + [table],
                                                                            "weight_decay": 0.0}],
                                  lr=args.lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, args.steps // 25)
    schedule = lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(step / args.steps, 1)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    start = time.time()
    model.train()
    for step in range(args.steps):
        groups = rng.integers(0, len(scenes) // GROUP, args.batch // GROUP)
        index = (groups[:, None] * GROUP + np.arange(GROUP)).ravel()
        images = to_pixels(pixels[index], mean, std, torch.from_numpy(rng.random(len(index)) < 0.5))
        tokens = tokenizer([world.caption(scenes[i], rng) for i in index])
        image_features = F.normalize(model.encode_image(images), dim=-1)
        text_features = F.normalize(encode_text(model, table, lookup, tokens), dim=-1)
        scale = model.logit_scale.exp().clamp(max=100)
        logits = scale * image_features @ text_features.T
        labels = torch.arange(len(index))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        loss = loss + attribute_loss(model, table, lookup, texts, [scenes[i] for i in index], image_features, scale)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        if step % 50 == 0 or step == args.steps - 1:
            print(f"step {step} loss {loss.item():.3f} scale {model.logit_scale.exp().item():.1f} "
                  f"{time.time() - start:.0f}s", flush=True)
        if step % 300 == 299 or step == args.steps - 1:
            print("probe:", probe(model, table, lookup, tokenizer, probe_pixels, probe_scenes, mean, std),
                  flush=True)
            save(model, table, ids, args.out)
    print(f"saved {save(model, table, ids, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
