"""The scheduler core: performance models, output-length predictor, request and worker state
updated by events, the placement pipeline (filters -> scorers -> picker), the central queue
and the request lifecycle. Pure and fast: no I/O, and no click, pandas, aiohttp or vllm, so
the simulator, the router and the in-engine vLLM plugin all drive the same objects."""
