"""Tiny vision-language models built in code with the real transformers classes (no downloads).

Each builder writes a complete transformers-format folder (config, safetensors weights, processor
and tokenizer files, as ``save_pretrained`` writes them) that the real loader then reads back.
Weights are random, so captions are gibberish: tests check behaviour, not wording.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

# Remote-code modules are copied here instead of ~/.cache (effective when transformers is imported later).
os.environ.setdefault("HF_MODULES_CACHE", os.path.join(tempfile.gettempdir(), "backdrop-test-hf-modules"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

WORDS = ("a", "photo", "of", "the", "product", "background", "scene", "on", "table", "with", "soft", "light",
         "white", "wooden", "marble", "red", "blue", "green", "bottle", "cup", "studio", "wall", "floor", "plant",
         "window", "shadow", "bright", "dark", "grey", "pink", "gold", "linen", "and", "in")
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                 "<|image_pad|>", "<|video_pad|>"]
QWEN_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for c in message['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "Describe the scene around the product, not the product itself: the setting, the surface it stands on, "
    "the lighting, the props and the colours. Answer in one or two sentences.",
    "Describe the product in this photo in one short sentence: what it is, its material and its colour.",
    "Describe with a paragraph what is shown in the image. What does the image describe?",
    "a red bottle on a wooden table with soft light near a window",
]


def _bpe_tokenizer(specials: list[str], **tokens):
    """A byte-level BPE tokenizer trained on a few sentences, wrapped for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE(unk_token=tokens.get("unk_token")))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tokens)


def _save_seeded(folder: Path, model_class, config, processor, seed: int) -> Path:
    """Build ``model_class(config)`` under ``seed`` (global RNG untouched), save it with its processor."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = model_class(config).eval()
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_blip(folder: Path, seed: int = 0) -> Path:
    """BlipForConditionalGeneration (2 layers, width 32, 32 px images) + BertTokenizer + BlipProcessor."""
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipImageProcessor, BlipProcessor

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "[DEC]", *dict.fromkeys(WORDS),
             *[c for c in "bcdefghijklmnopqrstuvwxyz" if c not in WORDS], ",", ".", ":"]
    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(vocab)}, do_lower_case=True)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    processor = BlipProcessor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                              tokenizer=tokenizer)
    config = BlipConfig(
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=128, bos_token_id=5, pad_token_id=0,
                         sep_token_id=3, eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8),
        projection_dim=32,
    )
    return _save_seeded(folder, BlipForConditionalGeneration, config, processor, seed)


def build_tiny_blip2(folder: Path, seed: int = 0) -> Path:
    """Blip2ForConditionalGeneration (ViT + Q-Former with 4 queries + a 2-layer OPT) + BPE tokenizer."""
    from transformers import Blip2Config, Blip2ForConditionalGeneration, Blip2Processor, BlipImageProcessor

    tokenizer = _bpe_tokenizer(["</s>", "<pad>", "<unk>"], bos_token="</s>", eos_token="</s>", pad_token="<pad>",
                               unk_token="<unk>")
    processor = Blip2Processor(image_processor=BlipImageProcessor(size={"height": 32, "width": 32}),
                               tokenizer=tokenizer, num_query_tokens=4)  # adds the <image> token
    config = Blip2Config(
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                           image_size=32, patch_size=8),
        qformer_config=dict(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=64, encoder_hidden_size=32),
        text_config=dict(model_type="opt", vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2,
                         ffn_dim=64, num_attention_heads=2, word_embed_proj_dim=32, max_position_embeddings=128,
                         bos_token_id=0, eos_token_id=0, pad_token_id=1),
        num_query_tokens=4, image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
    )
    return _save_seeded(folder, Blip2ForConditionalGeneration, config, processor, seed)


def build_tiny_qwen2_vl(folder: Path, seed: int = 0, version: str = "2") -> Path:
    """Qwen2-VL (``version="2"``) or Qwen2.5-VL (``"2.5"``): 2 layers, width 32, at most 56x56 px per
    image, a byte-level BPE tokenizer with Qwen's special tokens and a chat template."""
    import transformers
    from transformers import Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    prefix = {"2": "Qwen2VL", "2.5": "Qwen2_5_VL"}[version]
    tokenizer = _bpe_tokenizer(CHAT_SPECIALS, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    ids = {token: tokenizer.convert_tokens_to_ids(token) for token in CHAT_SPECIALS}
    image_processor = Qwen2VLImageProcessor(min_pixels=28 * 28 * 4, max_pixels=56 * 56, patch_size=14,
                                            merge_size=2, temporal_patch_size=2)
    processor = getattr(transformers, f"{prefix}Processor")(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=Qwen2VLVideoProcessor(),
        chat_template=QWEN_TEMPLATE)
    vision = dict(depth=2, hidden_size=32, num_heads=2, patch_size=14, spatial_merge_size=2, temporal_patch_size=2)
    if version == "2":
        vision.update(embed_dim=32, mlp_ratio=2)
    else:
        vision.update(intermediate_size=64, out_hidden_size=32, window_size=56, fullatt_block_indexes=[1])
    config = getattr(transformers, f"{prefix}Config")(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=512,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4},
                         bos_token_id=ids["<|endoftext|>"], eos_token_id=ids["<|im_end|>"],
                         pad_token_id=ids["<|endoftext|>"]),
        vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
    )
    return _save_seeded(folder, getattr(transformers, f"{prefix}ForConditionalGeneration"), config, processor, seed)


def build_tiny_florence2(folder: Path, seed: int = 0) -> Path:
    """Native Florence2ForConditionalGeneration (DaViT 4 stages of depth 1, BART 1+1 layers, 64 px)."""
    from transformers import CLIPImageProcessor, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor

    tokenizer = _bpe_tokenizer(["<s>", "<pad>", "</s>", "<unk>", "<image>"], bos_token="<s>", eos_token="</s>",
                               pad_token="<pad>", unk_token="<unk>", extra_special_tokens={"image_token": "<image>"})
    image_processor = CLIPImageProcessor(size={"height": 64, "width": 64}, crop_size={"height": 64, "width": 64},
                                         do_center_crop=False, image_seq_length=5)  # (64/32)^2 + 1
    processor = Florence2Processor(image_processor=image_processor, tokenizer=tokenizer)
    config = Florence2Config(
        text_config=dict(vocab_size=len(tokenizer), d_model=32, encoder_layers=1, decoder_layers=1,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
                         decoder_ffn_dim=64, max_position_embeddings=128, bos_token_id=0, pad_token_id=1,
                         eos_token_id=2, decoder_start_token_id=2, forced_bos_token_id=0),
        vision_config=dict(depths=(1, 1, 1, 1), embed_dim=(8, 16, 16, 32), num_heads=(1, 1, 1, 2),
                           num_groups=(1, 1, 1, 2), window_size=2, projection_dim=32, drop_path_rate=0.0),
        image_token_id=tokenizer.image_token_id,
    )
    return _save_seeded(folder, Florence2ForConditionalGeneration, config, processor, seed)


REMOTE_CONFIG_PY = '''from transformers import BlipConfig


class TinyRemoteConfig(BlipConfig):
    model_type = "tiny_remote_vlm"
'''
REMOTE_MODELING_PY = '''from transformers import BlipForConditionalGeneration

from .configuration_tiny_remote import TinyRemoteConfig


class TinyRemoteForCaptioning(BlipForConditionalGeneration):
    config_class = TinyRemoteConfig
'''


def build_tiny_remote_code_vlm(folder: Path) -> Path:
    """A BLIP whose config.json points (auto_map) at model code shipped inside the folder."""
    build_tiny_blip(folder, seed=1)
    (folder / "configuration_tiny_remote.py").write_text(REMOTE_CONFIG_PY, encoding="utf-8")
    (folder / "modeling_tiny_remote.py").write_text(REMOTE_MODELING_PY, encoding="utf-8")
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    config["model_type"] = "tiny_remote_vlm"
    config["architectures"] = ["TinyRemoteForCaptioning"]
    config["auto_map"] = {"AutoConfig": "configuration_tiny_remote.TinyRemoteConfig",
                          "AutoModelForImageTextToText": "modeling_tiny_remote.TinyRemoteForCaptioning"}
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


def build_text_only_model(folder: Path) -> Path:
    """A tiny BERT: a valid transformers folder that is not a vision-language model."""
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32)).save_pretrained(folder)
    return folder


def build_llm_dir(models_root: Path) -> Path:
    """models/LLM with tiny-blip, tiny-blip2, tiny-qwen2-vl, tiny-qwen2.5-vl and tiny-florence2; returns
    models_root."""
    llm = models_root / "LLM"
    llm.mkdir(parents=True, exist_ok=True)
    build_tiny_blip(llm / "tiny-blip")
    build_tiny_blip2(llm / "tiny-blip2")
    build_tiny_qwen2_vl(llm / "tiny-qwen2-vl")
    build_tiny_qwen2_vl(llm / "tiny-qwen2.5-vl", version="2.5")
    build_tiny_florence2(llm / "tiny-florence2")
    return models_root


def write_clip_tokenizer(folder: Path) -> Path:
    """A CLIP tokenizer folder (vocab.json + merges.txt) with characters only and no merges, so every
    non-space character is exactly one token."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_level_alphabet()
    vocab = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(vocab)}), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    return folder


def _byte_level_alphabet() -> list[str]:
    """The 256 printable stand-ins GPT-2/CLIP byte-level BPE uses for bytes."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
