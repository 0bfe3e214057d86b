import json

import numpy as np
import pyro
import pytest
import torch
from sklearn.svm import SVC

from pyrovae import DataConfig, ModelConfig, build_vae, load_dataset
from pyrovae.cli import main
from pyrovae.inference.evaluate import class_log_prior, class_scores, classify, negative_elbo


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    """A class-means conditional VAE trained on the digits with the default settings (about 10 s)."""
    out = tmp_path_factory.mktemp("cvae")
    assert main(["train", "--conditional", "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig(binarize="none"))


def test_conditional_run_saves_its_prior_and_classes(conditional_run):
    config = json.loads((conditional_run / "config.json").read_text())
    assert config["model"]["prior"] == "class-means" and config["model"]["num_classes"] == 10


def test_samples_of_each_class_are_recognized_as_that_class(conditional_run, digits):
    """A classifier trained on the real digits labels the generated images as the class asked for."""
    classifier = SVC().fit(digits.train.x.numpy(), digits.train.y.numpy())
    correct = 0
    for label in range(10):
        out = conditional_run / f"class{label}.npy"
        assert main(["sample", str(conditional_run), "--class", str(label), "--n", "30", "--out", str(out)]) == 0
        images = np.load(out)
        assert images.shape == (30, 64)
        correct += (classifier.predict(images) == label).sum()
    assert correct / 300 >= 0.8


def test_classification_by_likelihood_beats_80_percent(conditional_run):
    assert main(["evaluate", str(conditional_run), "--num-samples", "500", "--no-progress"]) == 0
    result = json.loads((conditional_run / "eval.json").read_text())
    assert result["accuracy"] > 0.8


def test_sample_png_of_one_class(conditional_run):
    out = conditional_run / "sevens.png"
    assert main(["sample", str(conditional_run), "--class", "7", "--n", "16", "--out", str(out)]) == 0
    assert out.stat().st_size > 1000


@pytest.mark.parametrize("label", ["10", "-1"])
def test_unknown_class_is_refused(conditional_run, capsys, label):
    assert main(["sample", str(conditional_run), "--class", label, "--out", "x.png"]) == 2
    assert "choose 0 to 9" in capsys.readouterr().err


def test_class_scores_use_common_random_numbers():
    """With a guide that ignores y, the reconstruction term cancels between classes."""
    pyro.set_rng_seed(0)
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,), prior="class-means", num_classes=3))
    vae.prior.means.data.zero_()  # every class has the same prior: their scores must tie exactly
    x = torch.bernoulli(torch.full((6, 16), 0.5))
    scores = class_scores(lambda x, y: -negative_elbo(vae, x, y), x, 3)
    assert scores.shape == (6, 3)
    assert torch.equal(scores[:, 0], scores[:, 1]) and torch.equal(scores[:, 1], scores[:, 2])


def test_classify_adds_the_class_prior():
    log_px_given_y = torch.tensor([[-10.0, -10.5], [-3.0, -1.0]])
    assert classify(log_px_given_y).tolist() == [0, 1]
    log_py = class_log_prior(torch.tensor([1] * 9 + [0]), 2)  # p(y=1) = 0.9
    assert classify(log_px_given_y, log_py).tolist() == [1, 1]


def test_decoder_conditioning_feeds_one_hot_labels():
    vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=3, hidden=(8,), num_classes=4,
                                decoder_conditioning=True))
    assert vae.conditional and vae.decoder.net[0].in_features == 3 + 4
    z = torch.zeros(2, 5, 3)  # (particles, data, Z): the labels broadcast over the particles
    means = vae.decode(z, torch.tensor([0, 1, 2, 3, 0]))
    assert means.shape == (2, 5, 16)
    assert torch.equal(means[:, 0], means[:, 4]) and not torch.equal(means[:, 0], means[:, 1])
    with pytest.raises(ValueError, match="pass y"):
        vae.decode(z)
