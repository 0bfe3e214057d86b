"""Generate a chosen digit with the conditional VAE: p(z|y) = N(mu_y, I), one learned mean per class.

    python examples/conditional_digit.py --dataset digits --digit 9 --epochs 100
    python examples/conditional_digit.py --digit 9 --epochs 30          # MNIST, on a GPU

Writes DIGIT.png (samples of the chosen class) and class_samples.png (every class, a row
each) and prints the test accuracy of classifying by likelihood, argmax_y p(x|y) p(y).
"""

import pyrovae
from pyrovae.inference.evaluate import class_log_prior
from pyrovae.report import plots

from common import example_parser, load

parser = example_parser(__doc__, epochs=100)
parser.add_argument("--digit", type=int, default=9)
parser.add_argument("--out", default="runs/conditional")
args = parser.parse_args()

data = load(args)
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=8, prior="class-means",
                                            num_classes=data.num_classes))
pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed),
            run_dir=args.out)

path = plots.save(plots.samples_figure(vae, data.image_shape, n=32, label=args.digit), f"{args.out}/{args.digit}.png")
plots.save(plots.class_samples_figure(vae, data.image_shape), f"{args.out}/class_samples.png")
report = pyrovae.evaluation_report(vae, data.test.x, data.test.y, num_samples=None,
                                   log_py=class_log_prior(data.train.y, data.num_classes))
print(f"samples of class {args.digit}: {path}; test accuracy of argmax_y p(x|y) p(y): {report['accuracy']:.3f}")
