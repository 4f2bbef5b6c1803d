"""Training role: model definition, checkpoint format, datasets and the training CLI."""
