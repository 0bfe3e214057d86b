"""Estimators over a model and guide: the ELBOs and the importance-weighted bound with their gradient estimators,
per-example importance weights, evaluation (negative ELBO, log-likelihood, accuracy), KL-weight schedules and the
semi-supervised objective."""
