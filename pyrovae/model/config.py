"""The model's settings, :class:`ModelConfig`, and the defaults that depend on other settings."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any, Literal, get_args

from pyrovae.model.columns import parse_column
from pyrovae.model.likelihoods import LEARN_SCALE, LIKELIHOODS
from pyrovae.model.nets import ACTIVATIONS
from pyrovae.model.posteriors import GUIDES
from pyrovae.model.priors import PRIORS
from pyrovae.settings import SettingError, check_choices, setting

Net = Literal["mlp", "conv"]
NETS = get_args(Net)
# The names below are listed once, by the modules that implement them.
Activation = Literal[tuple(ACTIVATIONS)]
Prior = Literal[PRIORS]
Likelihood = Literal[LIKELIHOODS]
LearnScale = Literal[LEARN_SCALE]
LabelGuide = Literal["none", "classifier"]
Guide = Literal[GUIDES]

LABEL_PRIORS = ("class-means",)
"""Built-in priors that read the labels, p(z|y)."""
LABELLED_MEANS_INIT, CLUSTERING_MEANS_INIT = 3.0, 0.3
"""How far apart the class means start, with labels and without (see :class:`~pyrovae.model.priors.ClassMeansPrior`)."""
CONV_CLASSIFIER_BELOW = 50
"""Labels per class below which the classifier q(y|x) is convolutional by default."""


@dataclasses.dataclass
class ModelConfig:
    """Every hyperparameter needed to rebuild a :class:`VAE` (saved as ``config.json``).

    A conditional model (its prior or decoder reads labels) needs ``num_classes``. The few-label settings left
    unset (``None``) are chosen by :func:`pyrovae.configure` from the data, or by :meth:`with_label_defaults`.
    """

    image_shape: Sequence[int] = setting((1, 28, 28), "(channels, height, width) of the images", from_data=True)
    z_dim: int = setting(10, "latent size (1 and 2 give pictures of the whole latent space)")
    net: Net = setting("mlp", "mlp, or conv: two stride-2 convolutions, for images of any size and channels")
    hidden: Sequence[int] = setting((400,), "hidden layer sizes of the encoder (the decoder mirrors them)",
                                    metavar="N")
    activation: Activation = setting("relu", "the nonlinearity after every hidden layer")
    prior: Prior = setting("standard", "standard: N(0, I); class-means: N(mu_y, I), one learned mean per class; "
                                       "mixture: K learned Gaussians; vamp: VampPrior with K pseudo-inputs")
    prior_components: int = setting(10, "K, the components of prior='mixture' or pseudo-inputs of prior='vamp'",
                                    metavar="K")
    likelihood: Likelihood = setting("bernoulli", "p(x|z): bernoulli for binary pixels, continuous-bernoulli for "
                                                  "grayscale pixels in [0, 1], discretized-logistic for 8-bit "
                                                  "pixels (exact bits per dimension), gaussian or laplace for any "
                                                  "real values; table for a table, a likelihood per column type "
                                                  "(with a .csv or .parquet dataset)")
    likelihood_scale: float = setting(0.1, "scale S of the gaussian (variance S^2) or laplace likelihood (table: "
                                           "of its real and positive columns); its initial value when the scale "
                                           "is learned", metavar="S")
    learn_scale: LearnScale | None = setting(None, "learn the gaussian/laplace scale: one per pixel, or predicted "
                                                   "by the decoder for every image (discretized-logistic: always "
                                                   "learned, by default by the decoder; table: by default one per "
                                                   "column)")
    grayscale_targets: bool = setting(False, "let the Bernoulli likelihood score grayscale pixels in [0, 1] "
                                             "(then not a normalized log-likelihood)", from_data=True)
    num_classes: int | None = setting(None, "the number of labels, which a conditional model needs", from_data=True)
    columns: Sequence[str] | None = setting(None, "a table's column types, one per column: real, positive, count, "
                                                  "binary or categorical:L (L levels); a table model has "
                                                  "likelihood='table'", from_data=True)
    decoder_conditioning: bool = setting(False, "also feed one-hot y to the decoder, p(x|z, y) (the classic CVAE)")
    class_means_init: float | None = setting(None, f"standard deviation S of the draw of the initial class means "
                                                   f"of prior='class-means': apart (3) with labels, close (0.3) to "
                                                   f"cluster without them (default: {CLUSTERING_MEANS_INIT:g} with "
                                                   f"labeled=0, else {LABELLED_MEANS_INIT:g})", metavar="S")
    class_scales: bool | None = setting(None, "learn a diagonal scale per class too, p(z|y) = N(mu_y, diag(s_y^2)) "
                                              "(as VaDE, Jiang et al. 2017), not the unit scale (default: on with "
                                              "labeled=0)")
    label_guide: LabelGuide | None = setting(None, "how the guide of an image without its label treats y: none "
                                                   "leaves y to the model, summed out exactly (p(y|z) is exact); "
                                                   "classifier adds q(y|x), enumerated, and q(z|x, y) (Kingma et al. "
                                                   "2014's M2) (default: classifier with labeled=N > 0, else none)")
    classifier_net: Net | None = setting(None, f"the net of the classifier q(y|x) of label_guide='classifier': mlp, "
                                               f"or conv: two 3x3 convolutions with max pooling, which generalize "
                                               f"better from few labelled images (default: conv with labeled=N below "
                                               f"{CONV_CLASSIFIER_BELOW} per class, else mlp)")
    guide: Guide = setting("diagonal", "the posterior family q(z|x): diagonal, the encoder's Gaussian; iaf, that "
                                       "Gaussian pushed through inverse autoregressive flows (Kingma et al. 2016); "
                                       "spline, through autoregressive rational-quadratic splines (Durkan et al. "
                                       "2019); the flows read a context vector from the encoder")
    flow_layers: int = setting(2, "L, the flow transforms of guide='iaf' or guide='spline'", metavar="L")
    latent_layers: int = setting(1, "stochastic layers: 1, or 2 for p(z2) p(z1|z2) p(x|z1) and q(z1|x) q(z2|z1) "
                                    "(Burda et al. 2015); z_dim is then the top layer z2")
    z1_dim: int | None = setting(None, "with latent_layers=2, the size of the lower layer z1 (default 2 x z_dim: "
                                       "Burda et al.'s 100 for z_dim=50)", metavar="N")

    def __post_init__(self) -> None:
        check_choices(self)
        self.image_shape = tuple(self.image_shape)
        self.hidden = tuple(self.hidden)
        if len(self.image_shape) != 3 or any(side < 1 for side in self.image_shape):
            raise SettingError("image_shape", f"image_shape must be three positive sizes (channels, height, width), "
                                              f"got {list(self.image_shape)}")
        if self.z_dim < 1:
            raise SettingError("z_dim", f"z_dim must be at least 1, got {self.z_dim}")
        if self.prior_components < 1:
            raise SettingError("prior_components", f"prior_components (K of the mixture and vamp priors) must be "
                                                   f"at least 1, got {self.prior_components}")
        if self.class_means_init is not None and not self.class_means_init >= 0:
            raise SettingError("class_means_init", f"class_means_init is a standard deviation and cannot be negative, "
                                                   f"got {self.class_means_init}")
        if self.class_scales and self.prior != "class-means":
            raise SettingError("class_scales", f"class_scales learns the scales of prior='class-means', not of "
                                               f"prior={self.prior!r}")
        if not self.likelihood_scale > 0 or self.likelihood_scale == float("inf"):
            raise SettingError("likelihood_scale",
                               f"likelihood_scale must be a positive number, got {self.likelihood_scale}")
        if any(h < 1 for h in self.hidden):
            raise SettingError("hidden", f"hidden must hold positive layer sizes, got {list(self.hidden)}")
        if self.likelihood == "discretized-logistic" and self.learn_scale is None:
            self.learn_scale = "decoder"  # its scale is always learned
        self._check_table()
        if self.likelihood == "table" and self.learn_scale is None:
            self.learn_scale = "pixel"  # one per column: a fixed scale cannot suit every standardized column
        if self.learn_scale is not None and self.likelihood not in ("gaussian", "laplace", "discretized-logistic",
                                                                    "table"):
            raise ValueError(f"learn_scale={self.learn_scale!r} needs the gaussian, laplace or discretized-logistic "
                             f"likelihood, not {self.likelihood}; add likelihood='gaussian' or likelihood='laplace'")
        if self.conditional and (self.num_classes is None or self.num_classes < 2):
            raise SettingError("num_classes", f"a conditional model needs num_classes >= 2 (the number of labels), "
                                              f"got {self.num_classes}")
        if self.label_guide == "classifier" and not self.conditional:
            raise SettingError("label_guide", "label_guide='classifier' guesses the labels of a conditional model; "
                                              "this one reads none: use prior='class-means' or "
                                              "decoder_conditioning=True")
        if self.flow_layers < 1:
            raise SettingError("flow_layers", f"flow_layers counts the transforms of a flow guide and must be at "
                                              f"least 1, got {self.flow_layers}")
        if self.latent_layers not in (1, 2):
            raise SettingError("latent_layers", f"latent_layers must be 1 or 2, got {self.latent_layers}")
        if self.z1_dim is not None and self.z1_dim < 1:
            raise SettingError("z1_dim", f"z1_dim must be at least 1, got {self.z1_dim}")
        if self.prior == "vamp" and (self.guide != "diagonal" or self.latent_layers == 2):
            name = "guide" if self.guide != "diagonal" else "latent_layers"
            raise SettingError(name, f"the vamp prior mixes the encoder's Gaussians of one stochastic layer; with "
                                     f"{name}={getattr(self, name)!r} choose another prior")
        if self.classifier_net not in (None, "mlp") and self.label_guide != "classifier":
            raise SettingError("classifier_net", f"classifier_net={self.classifier_net!r} builds the classifier "
                                                 f"q(y|x), which only label_guide='classifier' has")
        if self.label_guide == "classifier" and self.latent_layers == 2:
            raise SettingError("label_guide", "label_guide='classifier' reads y in the encoder of one stochastic "
                                              "layer; with latent_layers=2 use label_guide='none'")
        if self.label_guide == "classifier" and self.prior == "vamp":
            raise SettingError("label_guide", "label_guide='classifier' makes the encoder read y, and the vamp prior "
                                              "runs the encoder on pseudo-inputs without labels; choose another prior")

    def _check_table(self) -> None:
        """Refuse ``columns`` without the table likelihood or with settings that a table model does not take yet."""
        if self.columns is None:
            if self.likelihood == "table":
                raise SettingError("likelihood", "likelihood='table' needs columns, the column types of a table (its "
                                                 "Dataset.columns); train on a .csv or .parquet table")
            return
        self.columns = tuple(self.columns)
        if not self.columns:
            raise SettingError("columns", "columns is empty; a table needs at least one column")
        for spec in self.columns:
            try:
                parse_column(spec)
            except ValueError as error:
                raise SettingError("columns", str(error)) from None
        if self.likelihood != "table":
            raise SettingError("likelihood", f"columns describe a table, whose likelihood is 'table', not "
                                             f"{self.likelihood!r}; set likelihood='table'")
        if self.image_shape != (1, 1, len(self.columns)):
            raise SettingError("image_shape", f"a table of {len(self.columns)} columns has image_shape "
                                              f"(1, 1, {len(self.columns)}), got {list(self.image_shape)}")
        unsupported = {"net": self.net != "mlp", "prior": self.prior in ("vamp", *LABEL_PRIORS),
                       "decoder_conditioning": self.decoder_conditioning, "latent_layers": self.latent_layers != 1}
        name = next((name for name, refused in unsupported.items() if refused), None)
        if name is not None:
            raise SettingError(name, f"a table model does not take {name}={getattr(self, name)!r} yet; leave "
                                     f"{name} at its default ({getattr(ModelConfig, name)!r})")

    @property
    def x_dim(self) -> int:
        return math.prod(self.image_shape)

    @property
    def conditional(self) -> bool:
        return self.prior in LABEL_PRIORS or self.decoder_conditioning

    @property
    def lower_dim(self) -> int:
        """The size of the layer the decoder reads: z1 with two stochastic layers, else z."""
        if self.latent_layers == 1:
            return self.z_dim
        return self.z1_dim if self.z1_dim is not None else 2 * self.z_dim

    def with_label_defaults(self, labeled: int | None = None) -> ModelConfig:
        """This config with its unset few-label settings from :func:`few_label_defaults` for ``labeled`` kept labels
        (``None``, or a model that reads none: every label)."""
        chosen = few_label_defaults(labeled if self.conditional else None, self.num_classes, self.prior,
                                    self.label_guide)
        return dataclasses.replace(self, **{name: value for name, value in chosen.items()
                                            if getattr(self, name) is None})


def default_classifier_net(num_labeled: int, num_classes: int) -> Net:
    """The net of q(y|x): conv with fewer than :data:`CONV_CLASSIFIER_BELOW` labels per class, where its shared
    filters generalize better, else mlp, as good at a tenth of the cost (see docs/benchmarks.md)."""
    return "conv" if num_labeled < CONV_CLASSIFIER_BELOW * num_classes else "mlp"


def few_label_defaults(num_labeled: int | None, num_classes: int | None, prior: Prior = "class-means",
                       label_guide: LabelGuide | None = None) -> dict[str, Any]:
    """The few-label settings that suit ``num_labeled`` kept labels (``None``: all of them) of ``num_classes``.

    The M2 classifier guide when there are labels to guess (unless ``label_guide`` is given); with no label kept
    (clustering), class means that start close and learn their scales.
    """
    clustering = num_labeled == 0
    label_guide = label_guide or ("classifier" if num_labeled else "none")
    guessed = label_guide == "classifier" and num_labeled is not None
    return {"label_guide": label_guide,
            "classifier_net": default_classifier_net(num_labeled, num_classes) if guessed else "mlp",
            "class_means_init": CLUSTERING_MEANS_INIT if clustering else LABELLED_MEANS_INIT,
            "class_scales": clustering and prior == "class-means"}
