"""Tiny random-weight models written to disk in the layouts real users have, for loading through the product.

No weights can be downloaded in tests, so these stand in for ViT-L-14 and BLIP: same classes, same files, same
loader code, just small and random.
"""

import json
import os

import numpy as np
import torch
from PIL import Image

TINY_CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
CAPTION_WORDS = ("a an the photo painting of with on in at and cat dog woman man street city night garden red blue "
                 "green tree house car sky sunset forest river mountain portrait close up view small large old "
                 "young").split()


def write_tiny_clip(folder: str, stem: str = "tiny-clip", seed: int = 0) -> str:
    """A CLIP with the real BPE tokenizer's vocabulary, as ``<stem>.safetensors`` + ``<stem>.json`` (its config)."""
    return write_random_clip(folder, TINY_CLIP_CONFIG, stem, seed)


def write_random_clip(folder: str, config: dict, stem: str, seed: int = 0) -> str:
    """An open_clip architecture with random weights, saved as a user saves a custom CLIP: ``<stem>.safetensors``
    with its config beside it as ``<stem>.json``."""
    import open_clip
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    model = open_clip.CLIP(**config)
    path = os.path.join(folder, f"{stem}.safetensors")
    save_file(model.state_dict(), path)
    with open(os.path.join(folder, f"{stem}.json"), "w") as file:
        json.dump(config, file)
    return path


def write_tiny_blip(folder: str, seed: int = 0) -> str:
    """A BLIP captioner saved with ``save_pretrained``, with a small BERT tokenizer and processor."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, \
        BlipProcessor

    os.makedirs(folder, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *CAPTION_WORDS]
    with open(os.path.join(folder, "vocab.txt"), "w") as file:
        file.write("\n".join(vocab) + "\n")
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 64, "width": 64}),
                              tokenizer=BertTokenizer(os.path.join(folder, "vocab.txt"), bos_token="[DEC]"))
    # a wide init makes captions depend visibly on the image, so tests can tell images apart
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, encoder_hidden_size=32, max_position_embeddings=64,
                         bos_token_id=5, pad_token_id=0, sep_token_id=3, eos_token_id=3, initializer_range=0.5),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=16, initializer_range=0.5),
        projection_dim=32, initializer_range=0.5)
    torch.manual_seed(seed)
    BlipForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def sample_images():
    """Three different images: noise, a gradient, and shapes on a plain background."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8))
    ramp = np.linspace(0, 255, 80, dtype=np.float32)
    gradient = Image.fromarray(np.stack([np.tile(ramp, (60, 1)), np.tile(ramp[::-1], (60, 1)),
                                         np.full((60, 80), 90.0)], -1).astype(np.uint8))
    shapes = Image.new("RGB", (64, 64), (20, 40, 200))
    shapes.paste((250, 200, 10), (10, 10, 40, 50))
    return [noise, gradient, shapes]


def write_hf_clip(folder: str, activation: str = "quick_gelu", seed: int = 0):
    """A tiny ``transformers.CLIPModel`` saved with ``save_pretrained`` (model.safetensors + config.json)."""
    from transformers import CLIPConfig, CLIPModel

    tower = dict(hidden_size=64, intermediate_size=256, num_hidden_layers=2, hidden_act=activation)
    config = CLIPConfig(text_config=dict(tower, num_attention_heads=2),
                        vision_config=dict(tower, num_attention_heads=4, image_size=64, patch_size=16),
                        projection_dim=32)
    torch.manual_seed(seed)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    return model


def comfy_layout(model):
    """An open_clip CLIP's towers as ComfyUI and Hugging Face store them: (text state dict, vision state dict).

    Written out name by name (not with the pack's own tables), so a round trip through the pack checks its mapping.
    """
    sd = {k: v.detach() for k, v in model.state_dict().items()}

    def blocks(prefix_from, prefix_to):
        out, i = {}, 0
        while f"{prefix_from}{i}.ln_1.weight" in sd:
            a, b = f"{prefix_from}{i}.", f"{prefix_to}{i}."
            for p in ("weight", "bias"):
                q, k, v = sd[f"{a}attn.in_proj_{p}"].chunk(3)
                out.update({f"{b}self_attn.q_proj.{p}": q, f"{b}self_attn.k_proj.{p}": k,
                            f"{b}self_attn.v_proj.{p}": v,
                            f"{b}self_attn.out_proj.{p}": sd[f"{a}attn.out_proj.{p}"],
                            f"{b}layer_norm1.{p}": sd[f"{a}ln_1.{p}"], f"{b}layer_norm2.{p}": sd[f"{a}ln_2.{p}"],
                            f"{b}mlp.fc1.{p}": sd[f"{a}mlp.c_fc.{p}"], f"{b}mlp.fc2.{p}": sd[f"{a}mlp.c_proj.{p}"]})
            i += 1
        return out

    text = blocks("transformer.resblocks.", "text_model.encoder.layers.")
    text.update({"text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
                 "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
                 "text_model.final_layer_norm.weight": sd["ln_final.weight"],
                 "text_model.final_layer_norm.bias": sd["ln_final.bias"],
                 "text_projection.weight": sd["text_projection"].t()})
    vision = blocks("visual.transformer.resblocks.", "vision_model.encoder.layers.")
    vision.update({"vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
                   "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
                   "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
                   "vision_model.pre_layrnorm.weight": sd["visual.ln_pre.weight"],
                   "vision_model.pre_layrnorm.bias": sd["visual.ln_pre.bias"],
                   "vision_model.post_layernorm.weight": sd["visual.ln_post.weight"],
                   "vision_model.post_layernorm.bias": sd["visual.ln_post.bias"],
                   "visual_projection.weight": sd["visual.proj"].t()})
    return text, vision


def tiny_tower_configs(activation: str = "gelu"):
    """Hugging Face tower configs of TINY_CLIP_CONFIG (what a file's sidecar .json says about a tower)."""
    text, vision = TINY_CLIP_CONFIG["text_cfg"], TINY_CLIP_CONFIG["vision_cfg"]
    return ({"model_type": "clip_text_model", "num_attention_heads": text["heads"], "hidden_act": activation},
            {"model_type": "clip_vision_model", "num_attention_heads": vision["width"] // vision["head_width"],
             "hidden_act": activation})


def save_tensors(tensors, path: str, config=None, dtype=None) -> str:
    """A state dict as a .safetensors file (``dtype``: cast first), with an optional sidecar config."""
    from safetensors.torch import save_file

    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: (v.to(dtype) if dtype else v).contiguous() for k, v in tensors.items()}, path)
    if config is not None:
        with open(os.path.splitext(path)[0] + ".json", "w") as file:
            json.dump(config, file)
    return path


# words of the Florence-2 task prompts and of the default instructions, so prompts tokenize without <unk>
PROMPT_WORDS = ("what does image describe in detail is shown with paragraph main subject this one short sentence do "
                "not mention style medium lighting or colors scene two sentences artist everything . ? ,").split()


def _word_tokenizer(words, special, **named):
    """A fast tokenizer with one token per word (and per punctuation mark), as transformers saves any tokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(dict.fromkeys([*special, *words]))}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.add_special_tokens(list(special))  # never split, on every transformers version
    # like the Llama and BART tokenizers of real checkpoints: no token_type_ids
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>",
                                   model_input_names=["input_ids", "attention_mask"], **named)


def write_tiny_florence2(folder: str, seed: int = 3) -> str:
    """A Florence-2 (DaViT + BART) saved with ``save_pretrained``, with a word-level tokenizer and a processor."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, \
        Florence2Processor

    os.makedirs(folder, exist_ok=True)
    special = ["<s>", "<pad>", "</s>", "<unk>", "<image>"]
    words = [*CAPTION_WORDS, *PROMPT_WORDS]
    tokenizer = _word_tokenizer(words, special, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                extra_special_tokens={"image_token": "<image>"})
    # DaViT with one stage of stride 4: a 32x32 image gives 8x8 patches + 1 pooled token
    images = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False, image_seq_length=65)
    processor = Florence2Processor(image_processor=images, tokenizer=tokenizer)
    config = Florence2Config(
        text_config=dict(model_type="bart", vocab_size=len(tokenizer), max_position_embeddings=128, d_model=16,
                         encoder_layers=1, decoder_layers=1, encoder_ffn_dim=32, decoder_ffn_dim=32,
                         encoder_attention_heads=2, decoder_attention_heads=2, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2, init_std=0.5),
        vision_config=dict(depths=[1], patch_size=[7], patch_stride=[4], patch_padding=[3], patch_prenorm=[False],
                           embed_dim=[16], num_heads=[2], num_groups=[2], window_size=4, projection_dim=16),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"), initializer_range=0.5)
    torch.manual_seed(seed)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image> {% else %}{{ c['text'] }} {% endif %}{% endfor %}{% endif %}"
                 "{% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")


def write_tiny_llava(folder: str, seed: int = 0) -> str:
    """A LLaVA (CLIP vision tower + Llama), the architecture of JoyCaption, loaded by AutoModelForImageTextToText;
    saved with ``save_pretrained`` with a word-level tokenizer, a chat template and a processor."""
    from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor

    os.makedirs(folder, exist_ok=True)
    special = ["<pad>", "<s>", "</s>", "<unk>", "<image>", "USER:", "ASSISTANT:"]
    words = [*CAPTION_WORDS, *PROMPT_WORDS]
    tokenizer = _word_tokenizer(words, special, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                extra_special_tokens={"image_token": "<image>"})
    images = CLIPImageProcessor(size={"height": 32, "width": 32}, do_center_crop=False)
    processor = LlavaProcessor(image_processor=images, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHAT_TEMPLATE)
    config = LlavaConfig(
        vision_config=dict(model_type="clip_vision_model", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8, projection_dim=16,
                           initializer_range=0.5),
        text_config=dict(model_type="llama", vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=0,
                         initializer_range=0.5),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"), image_seq_length=16,
        vision_feature_select_strategy="default",
        vision_feature_layer=-1)
    torch.manual_seed(seed)
    LlavaForConditionalGeneration(config).save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def write_tiny_t5_tokenizer(folder: str, words=()) -> str:
    """A T5-style sentencepiece (unigram) tokenizer.json: "▁word" pieces for some words, single characters for
    everything else, and the end token T5 appends, laid out as ComfyUI's comfy/text_encoders/t5_tokenizer."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    os.makedirs(folder, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,;:!?'-()&/"
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(f"▁{w}", -1.0) for w in dict.fromkeys(words or CAPTION_WORDS)]
    pieces += [(c, -5.0) for c in letters] + [(f"▁{c}", -4.0) for c in letters]
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=2))
    tokenizer.normalizer = normalizers.Strip(left=False, right=True)
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tokenizer.save(os.path.join(folder, "tokenizer.json"))
    return folder
