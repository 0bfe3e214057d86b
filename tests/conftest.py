import pyro
import pytest
import torch

from pyrovae import ModelConfig, build_vae


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="slow: run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def fresh_pyro_state():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield


@pytest.fixture
def small_vae():
    """An MLP VAE for 4x4 binary images with a 3-dimensional latent."""
    return build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,)))


@pytest.fixture
def binary_batch():
    return torch.bernoulli(torch.full((5, 16), 0.4))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run directory of one tiny epoch on the bundled digits, trained once per test module that asks for it."""
    from cli_helpers import TINY

    from pyrovae.cli import main

    out = tmp_path_factory.mktemp("tiny") / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    return out
