"""Fixtures of the sentence-transformers tests: a tiny real model, built offline."""

import pytest
from sentence_transformers import SentenceTransformer

from tests._tiny_models import save_tiny_sentence_transformer


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    """A tiny BERT + word-level tokenizer, saved as a SentenceTransformer folder."""
    return save_tiny_sentence_transformer(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture
def model(tiny_path):
    return SentenceTransformer(str(tiny_path), device="cpu")
