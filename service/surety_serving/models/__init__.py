"""Builders of the default models that `surety build-defaults` writes into the repository."""
