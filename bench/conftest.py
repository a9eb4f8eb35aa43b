"""pytest-benchmark over the harness registry: `pytest bench/ --benchmark-only [--bench-all]`."""

import pytest
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_addoption(parser):
    parser.addoption("--bench-all", action="store_true",
                     help="run the full sweep of every case (default: the quick subset)")


def pytest_generate_tests(metafunc):
    if "case_impl" not in metafunc.fixturenames:
        return
    from kernelsuite.harness.cases import get_cases

    kernel = metafunc.module.KERNEL
    cases = get_cases([kernel], DEVICE, quick=not metafunc.config.getoption("--bench-all"))
    pairs = [(c, impl) for c in cases for impl in c.impls]
    metafunc.parametrize("case_impl", pairs, ids=[f"{c.name}-{impl}" for c, impl in pairs])


@pytest.fixture
def device():
    return DEVICE
