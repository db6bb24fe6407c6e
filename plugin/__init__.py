"""The scheduler: the core (models, predictor, worker state, policy pipeline, queue, lifecycle),
the simulator, the planner and the profiler; the router and the in-engine vLLM plugin drive the
same core."""
