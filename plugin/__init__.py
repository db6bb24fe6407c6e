"""The scheduler: performance models, output-length predictor, placement policies,
simulator, planner, router and in-engine vLLM plugin."""
