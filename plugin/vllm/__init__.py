"""The in-engine vLLM plugin: a scheduler class for ``--scheduler-cls`` that admits each
waiting request by its predicted KV growth and every running request's ATGT (the scheduler
core decides), plus the engine hook that exposes its state. Nothing here activates by itself:
the user names ``aladdin.plugin.vllm.scheduler.AladdinScheduler``."""
