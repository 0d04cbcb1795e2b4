"""Tiny vision-language models with their processors, offline and without torchvision (test-only).

:func:`tiny_llava` (LLaVA-1.5-style: CLIP + Qwen2), and the paper's three architectures: :func:`tiny_qwen2_5_vl`,
:func:`tiny_llava_next` (CLIP + Mistral), :func:`tiny_gemma3` (SigLIP + Gemma 3); :func:`tiny_vlm_config` for their
2-layer configs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase, Qwen2Config

from ..hf.offline_tokenizers import bpe_tokenizer, qwen_tokenizer
from .tokenizers import sentencepiece_tokenizer

__all__ = [
    "GEMMA3_IMAGE_TOKENS",
    "QWEN_VL_CHAT_TEMPLATE",
    "VLM_CHAT_TEMPLATE",
    "tiny_gemma3",
    "tiny_llava",
    "tiny_llava_next",
    "tiny_qwen2_5_vl",
    "tiny_vlm_config",
]


VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llava(hidden_size: int = 32, image_size: int = 28, patch_size: int = 14, seed: int = 0):
    """A tiny LLaVA (CLIP vision tower + Qwen2 text model) and its processor, offline.

    Uses the PIL image processor (no torchvision needed). Returns ``(model, processor)``;
    each image becomes ``(image_size / patch_size) ** 2`` ``<image>`` tokens.
    """
    import copy

    from transformers import CLIPVisionConfig, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
    from transformers.models.clip import CLIPImageProcessorPil

    tokenizer = copy.deepcopy(bpe_tokenizer())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    vision = CLIPVisionConfig(
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=hidden_size,
    )
    text = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = LlavaForConditionalGeneration(config)
    return model, processor


QWEN_VL_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_vlm_config(model_type: str, vocab_size: int = 1024, hidden_size: int = 32, **text: Any) -> Any:
    """A 2-layer config of one of the paper's architectures (``qwen2_5_vl``, ``llava_next`` with a Mistral text model,
    ``gemma3``): the same model_type and parameter names as the 3-7B checkpoints, with a 28 x 28 image size.
    ``text`` goes into the text config (token ids, ...)."""
    from transformers import Gemma3Config, LlavaNextConfig, Qwen2_5_VLConfig

    head_dim = 8
    text = dict(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=2,
        num_attention_heads=hidden_size // head_dim,
        num_key_value_heads=2,
        head_dim=head_dim,
        **text,
    )
    vision = dict(hidden_size=hidden_size, intermediate_size=2 * hidden_size, num_attention_heads=2)
    if model_type == "qwen2_5_vl":
        text["rope_scaling"] = {"type": "mrope", "mrope_section": [1, 1, 2]}  # sums to head_dim / 2
        vision.pop("num_attention_heads")
        vision.update(
            depth=1,
            num_heads=2,
            out_hidden_size=hidden_size,
            fullatt_block_indexes=[0],
            window_size=28,
            patch_size=14,
        )
        return Qwen2_5_VLConfig(text_config=text, vision_config=vision)
    if model_type == "llava_next":
        vision.update(
            model_type="clip_vision_model",
            num_hidden_layers=1,
            image_size=28,
            patch_size=14,
            projection_dim=hidden_size,
        )
        return LlavaNextConfig(
            text_config={"model_type": "mistral", **text}, vision_config=vision, image_grid_pinpoints=[[28, 28]]
        )
    if model_type == "gemma3":
        vision.update(num_hidden_layers=1, image_size=28, patch_size=14)
        return Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4)
    raise ValueError(f"no tiny config for model_type {model_type!r}; known: qwen2_5_vl, llava_next, gemma3")


def _tiny_vlm(
    model_type: str, tokenizer: PreTrainedTokenizerBase, hidden_size: int, seed: int, **token_ids: int
) -> Any:
    """A random model of ``tiny_vlm_config(model_type)`` sized for ``tokenizer``, with its special-token ids and
    ``token_ids`` (image tokens) set on the config."""
    from transformers import AutoModelForImageTextToText

    config = tiny_vlm_config(
        model_type,
        -(-len(tokenizer) // 64) * 64,
        hidden_size,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    for name, value in token_ids.items():
        setattr(config, name, value)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return AutoModelForImageTextToText.from_config(config)


def tiny_qwen2_5_vl(hidden_size: int = 32, image_size: int = 56, seed: int = 0):
    """A tiny Qwen2.5-VL (its real architecture: windowed ViT, patch merger, M-RoPE) and an image-only processor.

    The tokenizer is the real Qwen2.5 BPE with its vision tokens at their real ids (``<|image_pad|>`` = 151655);
    the chat template renders an image part as ``<|vision_start|><|image_pad|><|vision_end|>``, as Qwen2.5-VL's
    does. The processor is Qwen2.5-VL's, built without its video processor, which needs torchvision (no CPU build
    on our test machines); images go through the PIL image processor. Each ``image_size`` x ``image_size`` image
    becomes ``(image_size / 28) ** 2`` ``<|image_pad|>`` tokens. Returns ``(model, processor)``.
    """
    import copy

    from transformers import Qwen2_5_VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    class ImageOnlyQwen2_5_VLProcessor(Qwen2_5_VLProcessor):
        # the processor's sub-processors are read from this signature: no video_processor
        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template, **kwargs)

    tokenizer = copy.deepcopy(qwen_tokenizer(qwen3_specials=False))
    tokenizer.chat_template = QWEN_VL_CHAT_TEMPLATE
    pixels = image_size * image_size
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=pixels, max_pixels=pixels, patch_size=14, merge_size=2, temporal_patch_size=2
    )
    processor = ImageOnlyQwen2_5_VLProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN_VL_CHAT_TEMPLATE
    )
    return _tiny_vlm("qwen2_5_vl", tokenizer, hidden_size, seed), processor


def tiny_llava_next(workdir: str | Path, hidden_size: int = 32, seed: int = 0):
    """A tiny LLaVA-NeXT (CLIP + Mistral text model, anyres grid of one 28 x 28 tile) and its processor.

    The tokenizer is Mistral-style (:func:`sentencepiece_tokenizer`, saved in ``workdir``) with ``<image>`` added,
    eos ``</s>``, pad ``<unk>``; images go through the PIL image processor (no torchvision). The processor's chat
    template is :data:`VLM_CHAT_TEMPLATE`. Each image becomes 10 ``<image>`` tokens (2 x 2 patches of the base image,
    2 x 2 of its one tile plus a newline token per row). Returns ``(model, processor)``.
    """
    from transformers import LlavaNextProcessor
    from transformers.models.llava_next.image_processing_pil_llava_next import LlavaNextImageProcessorPil

    tokenizer = sentencepiece_tokenizer(workdir)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.eos_token, tokenizer.pad_token = "</s>", "<unk>"
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}, image_grid_pinpoints=[[28, 28]]
    )
    processor = LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=VLM_CHAT_TEMPLATE,
    )
    image_token_id = tokenizer.convert_tokens_to_ids("<image>")
    return _tiny_vlm("llava_next", tokenizer, hidden_size, seed, image_token_id=image_token_id), processor


GEMMA3_IMAGE_TOKENS = {
    "boi_token": "<start_of_image>",
    "image_token": "<image_soft_token>",
    "eoi_token": "<end_of_image>",
}


def tiny_gemma3(workdir: str | Path, hidden_size: int = 32, seed: int = 0):
    """A tiny Gemma 3 (SigLIP + Gemma 3 text model, 4 soft tokens per image) and its processor.

    The tokenizer is :func:`sentencepiece_tokenizer` (saved in ``workdir``) reloaded with Gemma 3's named image tokens
    (``<start_of_image>``, ``<image_soft_token>``, ``<end_of_image>``) and turn markers (``<start_of_turn>``,
    ``<end_of_turn>``) as special tokens; images go through the PIL image processor.
    The processor's chat template is :data:`VLM_CHAT_TEMPLATE` with ``<start_of_image>`` as the image placeholder,
    which the processor expands to ``<start_of_image>`` + 4 x ``<image_soft_token>`` + ``<end_of_image>``.
    Returns ``(model, processor)``.
    """
    from transformers import AutoTokenizer, Gemma3Processor
    from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

    sentencepiece_tokenizer(workdir)
    tokenizer = AutoTokenizer.from_pretrained(str(workdir), extra_special_tokens=GEMMA3_IMAGE_TOKENS)
    tokenizer.add_tokens(["<start_of_turn>", "<end_of_turn>"], special_tokens=True)  # Gemma's turn markers
    template = VLM_CHAT_TEMPLATE.replace("<image>", GEMMA3_IMAGE_TOKENS["boi_token"])
    processor = Gemma3Processor(
        image_processor=Gemma3ImageProcessorPil(size={"height": 28, "width": 28}),
        tokenizer=tokenizer,
        chat_template=template,
        image_seq_length=4,
    )
    model = _tiny_vlm(
        "gemma3",
        tokenizer,
        hidden_size,
        seed,
        image_token_index=tokenizer.image_token_id,
        boi_token_index=tokenizer.boi_token_id,
        eoi_token_index=tokenizer.eoi_token_id,
    )
    return model, processor
