"""Test-wide settings: never reach a model hub, keep CPU threads modest."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402


@pytest.fixture
def seed_and_one_thread():
    """Seed 0 and one intra-op thread: tiny models gain nothing from more, which thrash on a loaded shared CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def restore_the_ncl_ext_logger():
    """``ncl-ext`` commands run in-process set up the command line's logging; undo it after each test."""
    import logging

    from ncl_ext import log

    logger = logging.getLogger("ncl_ext")
    level, propagate, handlers = logger.level, logger.propagate, list(logger.handlers)
    yield
    logger.setLevel(level)
    logger.propagate = propagate
    logger.handlers[:] = handlers
    log._cli_handler = None
