"""The generative model and its guide: nets, priors, likelihoods, posteriors, the :class:`~pyrovae.model.vae.VAE`
(one or two stochastic layers), its settings and how they build it. It knows nothing of data files, training or
run directories."""
