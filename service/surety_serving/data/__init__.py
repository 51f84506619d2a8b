"""Datasets the default models are built from (downloaded and split on demand, never at import)."""
