"""Tiny Hugging Face and sentence-transformers models built offline from configs, shared by the tests."""

import torch


def tiny_hf(kind: str) -> torch.nn.Module:
    from transformers import CLIPConfig, CLIPModel, SiglipConfig, SiglipModel

    tiny = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=37)
    text = dict(tiny, vocab_size=80, max_position_embeddings=16, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    vision = dict(tiny, image_size=16, patch_size=8)
    if kind == "clip":
        return CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    return SiglipModel(SiglipConfig(text_config=text, vision_config=vision)).eval()


WORDS = [
    "a", "the", "man", "woman", "child", "dog", "cat", "horse", "plays", "runs", "eats", "rides", "sings", "guitar",
    "piano", "flute", "food", "bread", "ball", "park", "street", "river", "is", "on", "in", "with", "and", "small",
    "big", "red", "green",
]
SENTENCES = [
    "a man plays guitar",
    "a woman plays piano",
    "the dog runs in the park",
    "a cat eats food",
    "a child rides a horse",
    "the woman sings",
    "a big red ball",
    "the small green river",
]
HIDDEN = 32


def save_tiny_sentence_transformer(path):
    """Save a tiny BERT + word-level tokenizer as a SentenceTransformer folder under ``path``; return that folder."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    (path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]))
    BertTokenizerFast.from_pretrained(path).save_pretrained(path)  # reads vocab.txt: one token per word
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(WORDS) + 5, hidden_size=HIDDEN, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=48, max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
    )
    BertModel(config).save_pretrained(path)
    transformer = Transformer(str(path))
    model = SentenceTransformer(modules=[transformer, Pooling(HIDDEN, "mean"), Normalize()], device="cpu")
    model.save(str(path / "st"))
    return path / "st"
