"""Shared pytest setup: ``@pytest.mark.slow`` tests run only with ``--runslow``; one torch thread;
derandomized hypothesis.

The tests use tiny tensors, where a second thread costs more in synchronization than it
gains, and on a loaded machine a multi-threaded op waits for a descheduled thread.
"""
from __future__ import annotations

import json
import os

import pytest
import torch
from hypothesis import settings

torch.set_num_threads(1)

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
