"""Tiny Hugging Face models built offline from configs, shared by the adapter and recipe tests."""

import torch


def tiny_hf(kind: str) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    text = dict(tiny, vocab_size=80, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tiny, image_size=16, patch_size=8)
    if kind == "clip":
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()
