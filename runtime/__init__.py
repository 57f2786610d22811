"""Schooner container runtime: the model container that speaks Clipper RPC v3."""
