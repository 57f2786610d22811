"""Deployers: serialize a model into an artifact directory, then build and deploy it."""
