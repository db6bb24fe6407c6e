"""The router: Aladdin's cluster-level half as an OpenAI-compatible gateway in front of vLLM workers.

It exists so the scheduler core places live requests the way it places simulated ones: the
router tokenizes a request, has the core predict its output length and choose a worker (or hold
it in the central queue), proxies the stream, and reports every token, finish and abort back to
the same :class:`aladdin.plugin.core.lifecycle.Scheduler` the simulator drives. One module per
concept: ``config`` (what the user sets), ``inputs`` (a request checked and measured),
``workers`` (the pool, health and state sources), ``placement`` (glue to the core, queue and
late binding), ``proxy`` (one attempt on one worker), ``app`` (the aiohttp front end),
``metrics`` and ``scaling`` (observability), ``cli`` (``aladdin router``).
"""
