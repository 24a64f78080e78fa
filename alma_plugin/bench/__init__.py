"""Benchmark runner and embedded default models/data (`python -m alma_plugin.bench`)."""
