"""Profiling a live vLLM and fitting the performance models: profile -> model."""
