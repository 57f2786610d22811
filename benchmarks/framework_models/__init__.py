"""Small models, one module per framework, for benchmarks.frameworks (make_artifact)."""
