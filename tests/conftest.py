"""Shared pytest setup: ``@pytest.mark.slow`` tests run only with ``--runslow``; one torch thread;
derandomized hypothesis.

The tests use tiny tensors, where a second thread costs more in synchronization than it
gains, and on a loaded machine a multi-threaded op waits for a descheduled thread.
"""
from __future__ import annotations

import json
import os
import tempfile

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

# text embeddings cached by tests go to a throwaway directory, never the user's ~/.cache
os.environ["MOVIOLA_CACHE"] = tempfile.mkdtemp(prefix="moviola-test-cache-")
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a test that tried the network would fail, not hang

# Property tests draw the same examples on every run, so CI is reproducible; set
# HYPOTHESIS_PROFILE=explore to search new examples locally.
settings.register_profile("ci", derandomize=True, database=None)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: opt-in slow tests (run with --runslow)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


@pytest.fixture()
def vae_dir(tmp_path):
    """A stand-in SD VAE directory: only its config.json (8× down, 4 latent channels), no weights."""
    d = tmp_path / "vae"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "block_out_channels": [8, 8, 8, 8],
                                               "latent_channels": 4}))
    return d


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory):
    """A tiny BERT text encoder (random weights, 24-wide) with a word-level vocabulary, saved locally."""
    import transformers

    d = tmp_path_factory.mktemp("tiny_bert")
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "green", "blue", "circle", "square",
             "triangle", "moving", "left", "right", "up", "down", "the"]
    (d / "vocab.txt").write_text("\n".join(words) + "\n")
    transformers.BertTokenizer(str(d / "vocab.txt")).save_pretrained(str(d))
    torch.manual_seed(0)
    cfg = transformers.BertConfig(vocab_size=len(words), hidden_size=24, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(str(d))
    return d
