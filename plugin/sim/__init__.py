"""The cluster simulator: vLLM-V1-like engines driven by the scheduler core."""
