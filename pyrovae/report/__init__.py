"""What a trained model shows: matplotlib figures, summaries of the latent space, TensorBoard events."""
