"""Swap the prior and the likelihood, train each pair the same way, and compare.

Bernoulli pairs see dynamically binarized images; the others see the grayscale pixels,
so compare nats within one likelihood only (densities and probabilities differ).

    python examples/swap_parts.py --dataset digits --epochs 30
    python examples/swap_parts.py --pairs standard:bernoulli vamp:bernoulli --epochs 50   # MNIST, GPU
"""

import pyrovae

from common import example_parser, load

parser = example_parser(__doc__, epochs=30)
parser.add_argument("--pairs", nargs="+", metavar="PRIOR:LIKELIHOOD",
                    default=["standard:bernoulli", "mixture:bernoulli", "vamp:bernoulli",
                             "standard:continuous-bernoulli", "vamp:continuous-bernoulli"])
parser.add_argument("--z-dim", type=int, default=10)
parser.add_argument("--num-samples", type=int, default=1000, help="K of the test log-likelihood")
parser.add_argument("--limit", type=int, default=500, help="test images for the log-likelihood")
args = parser.parse_args()

print("| prior | likelihood | pixels | test -ELBO | NLL |\n|---|---|---|---|---|")
for pair in args.pairs:
    prior, likelihood = pair.split(":")
    binarize = "dynamic" if likelihood == "bernoulli" else "none"
    data = load(args, binarize)
    vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=data.image_shape, z_dim=args.z_dim, prior=prior,
                                                likelihood=likelihood))
    pyrovae.fit(vae, data, pyrovae.TrainConfig(epochs=args.epochs, device=args.device, seed=args.seed),
                progress=False)
    report = pyrovae.evaluation_report(vae, data.test.x[:args.limit], num_samples=args.num_samples)
    pixels = "binarized" if binarize == "dynamic" else "grayscale"
    print(f"| {prior} | {likelihood} | {pixels} | {report['neg_elbo']:.2f} | {report['nll']:.2f} "
          f"± {report['nll_stderr']:.2f} |", flush=True)
