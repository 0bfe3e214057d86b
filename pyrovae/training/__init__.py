"""Training by SVI: the settings (:class:`~pyrovae.training.config.TrainConfig`), the checks made once before any
work (will it fit), one optimizer step, the epoch loop :func:`~pyrovae.training.loop.fit` and how it stops."""
