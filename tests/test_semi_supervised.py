"""Few labels: exact enumeration of hidden labels, the labelled draw, mixed batches, and short runs of each mode."""

import json
import math

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO

from pyrovae import ModelConfig, TrainConfig, build_vae, fit
from pyrovae.cli import main
from pyrovae.data.datasets import HIDDEN, DataConfig, Split, from_arrays, hide_labels, load_dataset
from pyrovae.data.label_mix import LABELED_PASSES, LabelMix, default_labeled_fraction, visible_labels
from pyrovae.inference.evaluate import accuracy
from pyrovae.inference.semi_supervised import place_class_means
from pyrovae.model.config import CONV_CLASSIFIER_BELOW, default_classifier_net, few_label_defaults
from pyrovae.model.nets import ConvClassifier, MLPClassifier, inverse_softplus
from pyrovae.model.priors import ClassMeansPrior

C = 3


def tiny_vae(label_guide: str, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(image_shape=(1, 2, 3), z_dim=2, hidden=(5,), prior="class-means", num_classes=C,
                         label_guide=label_guide)
    return build_vae(config).double()


def per_example_elbo(vae, x, y, z=None):
    """log p(x, z | y) - log q(z | x, y) per example, z drawn by the guide or given."""
    if z is None:
        guide_trace = poutine.trace(vae.guide).get_trace(x, y)
        model = poutine.replay(vae.model, trace=guide_trace)
    else:
        guide_trace = poutine.trace(poutine.condition(vae.guide, data={"z": z})).get_trace(x, y)
        model = poutine.condition(vae.model, data={"z": z})
    model_trace = poutine.trace(model).get_trace(x, y)
    log_p = sum(site["fn"].log_prob(site["value"]) for site in model_trace.nodes.values() if site["type"] == "sample")
    log_q = guide_trace.nodes["z"]["fn"].log_prob(guide_trace.nodes["z"]["value"])
    return log_p - log_q


@pytest.fixture
def images():
    return torch.bernoulli(torch.full((4, 6), 0.4, dtype=torch.float64), generator=torch.Generator().manual_seed(1))


def test_enumerated_elbo_of_an_unlabelled_image_is_the_logsumexp_over_its_labels(images):
    """label_guide='none': ELBO(x) = logsumexp_y [ELBO(x, y) + log pi_y] at the same draw of z ~ q(z|x)."""
    vae = tiny_vae("none")
    pyro.set_rng_seed(3)
    enumerated = -TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, images)
    explicit = []
    for label in range(C):
        pyro.set_rng_seed(3)  # the guide ignores y: the same z for every class
        explicit.append(per_example_elbo(vae, images, torch.full((len(images),), label)) - math.log(C))
    expected = torch.stack(explicit).logsumexp(0).sum().item()
    assert enumerated == pytest.approx(expected, abs=1e-5)


def test_enumerated_elbo_with_the_classifier_guide_is_the_expectation_over_q_y(images):
    """label_guide='classifier': ELBO(x) = sum_y q(y|x) [ELBO(x, y) + log pi_y - log q(y|x)], z_y ~ q(z|x, y)."""
    vae = tiny_vae("classifier")
    pyro.set_rng_seed(3)
    enumerated = -TraceEnum_ELBO(max_plate_nesting=1).loss(vae.model, vae.guide, images)
    pyro.set_rng_seed(3)  # the same draws of z, for every class at once
    guide_trace = poutine.trace(poutine.enum(vae.guide, first_available_dim=-2)).get_trace(images)
    z = guide_trace.nodes["z"]["value"]  # (C, B, Z)
    q_y = vae.classifier(images).log_softmax(-1).T  # (C, B)
    explicit = torch.stack([per_example_elbo(vae, images, torch.full((len(images),), label), z[label])
                            for label in range(C)])
    expected = (q_y.exp() * (explicit - math.log(C) - q_y)).sum().item()
    assert enumerated == pytest.approx(expected, abs=1e-5)


def test_training_never_samples_a_label(monkeypatch):
    """Hidden labels are enumerated in model and guide alike: no Categorical draw, so no REINFORCE term."""
    def no_draws(*args, **kwargs):
        raise AssertionError("a discrete label was sampled during training")

    monkeypatch.setattr(torch.distributions.Categorical, "sample", no_draws)
    rng = np.random.default_rng(0)
    x = rng.random((60, 4, 4)).astype(np.float32)
    y = np.arange(60) % C
    for label_guide in ("classifier", "none"):
        data = from_arrays(x, y, binarize="dynamic", labeled=6)
        vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior="class-means",
                                    num_classes=C, label_guide=label_guide))
        history = fit(vae, data, TrainConfig(epochs=1, batch_size=16), progress=False, verbose=False)
        assert {"loss_labeled", "loss_unlabeled"} <= history[0].keys()
        assert ("loss_aux" in history[0]) == (label_guide == "classifier")


def test_the_guide_enumerates_every_class_of_an_unlabelled_image(images):
    vae = tiny_vae("classifier")
    trace = poutine.trace(poutine.enum(vae.guide, first_available_dim=-2)).get_trace(images)
    assert trace.nodes["y"]["value"].tolist() == [[0], [1], [2]]
    assert trace.nodes["z"]["value"].shape == (C, len(images), 2)


def test_labels_are_hidden_balanced_and_reproducibly():
    split = Split(torch.rand(100, 4), torch.arange(100) % 4)
    first, again = hide_labels(split, 20, 4, seed=7), hide_labels(split, 20, 4, seed=7)
    assert torch.equal(first.y, again.y)
    assert torch.bincount(visible_labels(first)).tolist() == [5, 5, 5, 5]
    assert (first.y[first.y != HIDDEN] == split.y[first.y != HIDDEN]).all()
    assert not torch.equal(first.y, hide_labels(split, 20, 4, seed=8).y)


def test_the_labelled_draw_comes_from_the_training_split_only():
    data = load_dataset(DataConfig(labeled=50, label_seed=3))
    assert len(visible_labels(data.train)) == 50
    assert (data.val.y != HIDDEN).all() and (data.test.y != HIDDEN).all()
    full = load_dataset(DataConfig())
    assert torch.equal(data.val.x, full.val.x)  # the validation split is held out before any label is hidden
    kept = data.train.y != HIDDEN
    assert torch.equal(data.train.y[kept], full.train.y[kept])


@pytest.mark.parametrize("labeled, message", [
    (2000, "more labels than the 1347 training images"),
    (55, "multiple of 10, e.g. 50 or 60"),
])
def test_impossible_label_counts_are_refused(labeled, message):
    with pytest.raises(ValueError, match=message):
        load_dataset(DataConfig(labeled=labeled))


def test_a_class_too_small_for_a_balanced_draw_is_named():
    split = Split(torch.rand(12, 4), torch.tensor([0] * 10 + [1] * 2))
    with pytest.raises(ValueError, match="class 1 has only 2 training images; choose at most labeled=4"):
        hide_labels(split, 6, 2, seed=0)


def test_every_batch_mixes_in_labelled_images_and_an_epoch_passes_over_the_unlabelled_once():
    data = from_arrays(torch.rand(111, 9), torch.arange(111) % 5, val_fraction=0.1)
    data.train = Split(data.train.x, torch.cat([torch.arange(5), torch.full((len(data.train) - 5,), HIDDEN)]))
    mix = LabelMix.of(data.train, batch_size=20, labeled_fraction=0.1)
    assert (mix.labeled_per_batch, mix.unlabeled_per_batch) == (2, 18)
    order = mix.epoch_order(torch.Generator().manual_seed(0))
    batches = list(mix.batches(data, order))
    assert len(batches) == mix.steps == math.ceil(len(mix.unlabeled) / 18)
    assert all(len(x_l) == 2 and (y_l != HIDDEN).all() for x_l, y_l, _ in batches)
    unlabeled = torch.cat([x_u for _, _, x_u in batches])
    assert len(unlabeled) == len(mix.unlabeled)
    assert torch.equal(unlabeled.sort(0).values, data.train.x[mix.unlabeled].sort(0).values)
    resumed = list(mix.batches(data, order, first=3))
    assert all(torch.equal(a[2], b[2]) for a, b in zip(batches[3:], resumed))


def test_a_larger_share_of_labels_raises_the_labelled_part_of_each_batch():
    y = torch.cat([torch.arange(50) % 5, torch.full((50,), HIDDEN)])
    mix = LabelMix.of(Split(torch.rand(100, 4), y), batch_size=20, labeled_fraction=0.1)
    assert mix.labeled_per_batch == 10  # half the images are labelled: half of each batch


def test_the_default_labelled_share_cycles_the_labels_a_fixed_number_of_times_an_epoch():
    y = torch.cat([torch.arange(30) % 10, torch.full((5370,), HIDDEN)])
    mix = LabelMix.of(Split(torch.rand(len(y), 4), y), batch_size=128)
    passes = mix.steps * mix.labeled_per_batch / len(mix.labeled)
    assert passes == pytest.approx(LABELED_PASSES, rel=0.05)
    assert default_labeled_fraction(1000, 53000) == 0.5  # capped: many labels
    assert default_labeled_fraction(10, 53990) == 0.1  # floored: a tenth of every batch is labelled


def test_cluster_accuracy_matches_clusters_to_classes():
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    assert accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), labels, clusters=True) == 1.0
    assert accuracy(torch.tensor([2, 2, 0, 0, 1, 1]), labels) == 0.0
    assert accuracy(torch.tensor([1, 1, 1, 0, 2, 2]), labels, clusters=True) == pytest.approx(5 / 6)


@pytest.mark.parametrize("flags, message", [
    (["--labeled", "10"], "--labeled 10 hides labels from a model that reads them; add --conditional"),
    (["--conditional", "--labeled", "15"], "--labeled 15 cannot be drawn balanced over 10 classes"),
    (["--conditional", "--labeled", "5000"], "more labels than the 1347 training images"),
    (["--conditional", "--labeled", "10", "--elbo", "iwae"], "--elbo trace"),
    (["--conditional", "--labeled", "10", "--labeled-fraction", "1.5"], "strictly between 0 and 1"),
])
def test_bad_label_settings_are_one_line_errors(tmp_path, capsys, flags, message):
    assert main(["train", *flags, "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not (tmp_path / "run").exists()


def test_a_dataset_without_labels_cannot_hide_labels():
    with pytest.raises(ValueError, match="has no labels"):
        from_arrays(np.random.default_rng(0).random((40, 4, 4)), labeled=0)


@pytest.fixture(scope="module")
def semi_supervised_run(tmp_path_factory):
    """The classifier guide trained on the digits with 50 labels (grayscale pixels; about 30 s)."""
    out = tmp_path_factory.mktemp("semi") / "run"
    assert main(["train", "--conditional", "--labeled", "50", "--binarize", "none", "--epochs", "200",
                 "--out", str(out), "--no-progress"]) == 0
    return out


@pytest.mark.slow
def test_fifty_labels_beat_logistic_regression_on_the_same_labels(semi_supervised_run):
    from sklearn.linear_model import LogisticRegression

    config = json.loads((semi_supervised_run / "config.json").read_text())
    assert config["data"]["labeled"] == 50 and config["model"]["label_guide"] == "classifier"
    assert config["model"]["classifier_net"] == "conv"  # the default with 5 labels per class
    assert not config["model"]["class_scales"]  # learned scales are the clustering default only
    data = load_dataset(DataConfig(**config["data"]))
    kept = data.train.y != HIDDEN
    baseline = LogisticRegression(max_iter=5000).fit(data.train.x[kept].numpy(), data.train.y[kept].numpy())
    baseline_accuracy = baseline.score(data.test.x.numpy(), data.test.y.numpy())
    assert main(["evaluate", str(semi_supervised_run), "--num-samples", "100", "--no-progress"]) == 0
    result = json.loads((semi_supervised_run / "eval.json").read_text())
    assert result["accuracy_guide"] > baseline_accuracy
    assert result["accuracy"] > baseline_accuracy - 0.05
    metrics = [json.loads(line) for line in (semi_supervised_run / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["loss_aux"] < metrics[0]["loss_aux"] / 3


@pytest.mark.slow
def test_sampling_a_class_of_the_semi_supervised_model(semi_supervised_run, tmp_path):
    out = tmp_path / "threes.npy"
    assert main(["sample", str(semi_supervised_run), "--class", "3", "--n", "20", "--out", str(out)]) == 0
    assert np.load(out).shape == (20, 64)
    assert (semi_supervised_run / "class_samples.png").is_file()


def test_clustering_without_labels_is_scored_by_matched_clusters(tmp_path, monkeypatch):
    out = tmp_path / "clusters"
    scored = []  # what evaluate's cluster accuracy was computed from, and what it gave

    def recorded(predicted, labels, clusters=False):
        scored.append((predicted.clone(), labels.clone(), clusters, accuracy(predicted, labels, clusters)))
        return scored[-1][-1]

    monkeypatch.setattr("pyrovae.inference.evaluate.accuracy", recorded)
    assert main(["train", "--conditional", "--labeled", "0", "--epochs", "2", "--out", str(out), "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["labeled"] == 0  # clustering: y left to the model, the means started close, scales learned
    assert config["model"]["label_guide"] == "none" and config["model"]["class_means_init"] == 0.3
    assert config["model"]["class_scales"]
    metrics = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert "loss_unlabeled" in metrics and "loss_labeled" not in metrics
    assert main(["evaluate", str(out), "--num-samples", "5", "--limit", "60", "--no-progress"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert {"accuracy", "nll"} <= result.keys()
    assert "neg_elbo" not in result and "nll_given_label" not in result  # they need the true label
    (predicted, labels, clusters, matched), = scored
    assert clusters and result["accuracy"] == matched
    # the Hungarian matching is the best one-to-one matching: no other matching of the same predictions beats it
    num_classes = int(max(predicted.max(), labels.max())) + 1
    generator = torch.Generator().manual_seed(0)
    matchings = [torch.arange(num_classes)] + [torch.randperm(num_classes, generator=generator) for _ in range(50)]
    others = [(matching[predicted] == labels).float().mean().item() for matching in matchings]
    assert matched >= max(others) - 1e-12
    # and no better than giving each cluster its most frequent class, which may give two clusters one class
    majority = sum(torch.bincount(labels[predicted == c]).max().item() for c in predicted.unique())
    assert matched <= majority / len(labels) + 1e-12


def test_the_classifier_guide_needs_a_model_that_reads_labels():
    with pytest.raises(ValueError, match="label_guide='classifier' guesses the labels of a conditional model"):
        ModelConfig(label_guide="classifier")
    with pytest.raises(ValueError, match="vamp prior runs the encoder on pseudo-inputs without labels"):
        ModelConfig(prior="vamp", decoder_conditioning=True, num_classes=3, label_guide="classifier")


@pytest.mark.parametrize("image_shape", [(1, 28, 28), (1, 8, 8), (3, 7, 13), (1, 1, 5)])
def test_the_conv_classifier_takes_images_of_any_size_and_channels(image_shape):
    config = ModelConfig(image_shape=image_shape, z_dim=2, hidden=(8,), prior="class-means", num_classes=C,
                         label_guide="classifier", classifier_net="conv")
    vae = build_vae(config)
    assert isinstance(vae.classifier, ConvClassifier)
    x = torch.rand(2, 4, math.prod(image_shape))
    assert vae.classifier(x).shape == (2, 4, C)  # leading dimensions kept, as for the encoders
    assert vae.classify(x[0]).shape == (4,)


def test_the_classifier_is_convolutional_by_default_while_labels_per_class_are_few():
    assert default_classifier_net(num_labeled=100, num_classes=10) == "conv"  # 10 per class
    assert default_classifier_net(num_labeled=10 * CONV_CLASSIFIER_BELOW - 1, num_classes=10) == "conv"
    assert default_classifier_net(num_labeled=10 * CONV_CLASSIFIER_BELOW, num_classes=10) == "mlp"
    assert default_classifier_net(num_labeled=1000, num_classes=10) == "mlp"


def test_python_users_get_the_few_label_defaults_of_the_cli():
    assert few_label_defaults(100, 10) == {"label_guide": "classifier", "classifier_net": "conv",
                                           "class_means_init": 3.0, "class_scales": False}
    assert few_label_defaults(1000, 10)["classifier_net"] == "mlp"
    assert few_label_defaults(0, 10) == {"label_guide": "none", "classifier_net": "mlp", "class_means_init": 0.3,
                                         "class_scales": True}
    assert few_label_defaults(0, 10, prior="standard")["class_scales"] is False  # only the class means learn scales
    assert few_label_defaults(None, 10)["label_guide"] == "none"  # every label kept: nothing to guess
    assert few_label_defaults(100, 10, label_guide="none")["classifier_net"] == "mlp"  # no classifier to build
    config = ModelConfig(prior="class-means", num_classes=10, **few_label_defaults(100, 10))
    assert isinstance(build_vae(config).classifier, ConvClassifier)


@pytest.mark.parametrize("labeled,net", [(50, "conv"), (500, "mlp")])
def test_the_cli_picks_the_classifier_net_by_the_labels_per_class(tmp_path, labeled, net):
    out = tmp_path / "run"
    assert main(["train", "--conditional", "--labeled", str(labeled), "--epochs", "1", "--out", str(out),
                 "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["model"]["classifier_net"] == net


def test_the_classifier_net_belongs_to_the_classifier_guide():
    with pytest.raises(ValueError, match="classifier_net='conv' builds the classifier q\\(y\\|x\\), which only "
                                         "label_guide='classifier' has"):
        ModelConfig(prior="class-means", num_classes=C, classifier_net="conv")
    saved_before = ModelConfig(prior="class-means", num_classes=C, label_guide="classifier")  # no classifier_net
    assert isinstance(build_vae(saved_before).classifier, MLPClassifier)


def test_reconstructions_of_a_model_with_a_classifier_use_its_own_labels(images):
    vae = tiny_vae("classifier")
    guessed = vae.classify(images)
    assert torch.equal(vae.reconstruct(images), vae.reconstruct(images, guessed))


def test_k_means_places_one_class_mean_on_each_group_of_encoded_images():
    vae = tiny_vae("none")
    groups = torch.arange(12) % C
    x = torch.nn.functional.one_hot(groups, C).double().repeat_interleave(2, dim=1)  # group g lights pixels 2g, 2g+1
    place_class_means(vae, x, seed=0)
    loc = vae.encode(x)[0]
    distances = torch.cdist(loc, vae.prior.means)
    assert torch.allclose(distances.min(1).values, torch.zeros(len(x), dtype=x.dtype), atol=1e-6)
    assert accuracy(distances.argmin(1), groups, clusters=True) == 1.0


def test_clustering_places_the_class_means_after_the_first_epoch_only(monkeypatch):
    import pyrovae.training.callbacks

    placed = []
    monkeypatch.setattr(pyrovae.training.callbacks, "place_class_means", lambda vae, x, seed: placed.append(len(x)))
    x, y = np.random.default_rng(0).random((60, 4, 4)).astype(np.float32), np.arange(60) % C
    for labeled, calls in ((0, [54]), (6, [])):
        placed.clear()
        vae = build_vae(ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,), prior="class-means", num_classes=C))
        data = from_arrays(x, y, binarize="dynamic", labeled=labeled)
        fit(vae, data, TrainConfig(epochs=2, batch_size=16), progress=False, verbose=False)
        assert placed == calls


def test_the_class_means_prior_can_learn_a_scale_per_class():
    prior = ClassMeansPrior(z_dim=2, num_classes=C, learn_scales=True)
    assert torch.allclose(prior(torch.tensor([0, 2])).base_dist.scale, torch.ones(2, 2))
    with torch.no_grad():
        prior.raw_scales[2] = inverse_softplus(0.5)
    assert torch.allclose(prior(torch.tensor([0, 2])).base_dist.scale, torch.tensor([[1.0, 1.0], [0.5, 0.5]]))
    assert ClassMeansPrior(z_dim=2, num_classes=C).raw_scales is None  # the unit scale, as before
    with pytest.raises(ValueError, match="class_scales learns the scales of prior='class-means'"):
        ModelConfig(decoder_conditioning=True, num_classes=C, class_scales=True)

