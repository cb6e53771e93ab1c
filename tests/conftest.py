"""Shared pytest setup: ``@pytest.mark.slow`` tests run only with ``--runslow``; one torch thread.

The tests use tiny tensors, where a second thread costs more in synchronization than it
gains, and on a loaded machine a multi-threaded op waits for a descheduled thread.
"""
from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


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
