"""``--scheduler-cls aladdin.plugin.vllm.scheduler.AladdinScheduler``: KV- and SLO-aware admission
inside one vLLM engine, decided by the scheduler core (one worker: this engine).

vLLM admits a waiting request whenever its prompt fits the KV cache now, and preempts when the
running requests grow. This subclass of vLLM's ``AsyncScheduler`` passes a new request on to
vLLM's waiting queue only when the core's filters admit it: the predicted peak KV of every
request (each growing to its predicted length) within capacity less a headroom, the max number
of sequences, and, with a profile, every running request's predicted ATGT and the new one's
TTFT. Until then the request is held here, and re-offered on every capacity change (a finish,
a first token, a re-prediction) and every ``tick_s``. vLLM then schedules what it was given
exactly as it always does.

- A request that can never fit (prompt + its predicted length, capped by ``max_tokens``, beyond
  the cache) is refused at once; with ``lost_ttft: hand-back`` a held request whose TTFT can no
  longer be met here is handed back. Both end with vLLM's error finish before their first token;
  the front door (``middleware.FrontDoor``) turns that into a 503 naming the outcome, so a router
  retries them elsewhere.
- Decoding requests that outgrow their prediction are re-predicted (the core), so their share
  of the cache grows; nothing running moves.
- The engine reports to the core after each step: one decode step, first tokens, preemptions,
  finishes, aborts and the KV in use, and reconciles every ``RECONCILE_STEPS`` steps.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict, deque
from dataclasses import replace
from typing import Any

from vllm.logger import init_logger

from aladdin import __version__
from aladdin.errors import AladdinError
from aladdin.plugin.core.calibration import DecodeCalibration
from aladdin.plugin.core.lifecycle import Placement, Scheduler, SchedulerConfig
from aladdin.plugin.core.perfmodel import DecodeModel, KVModel, PerfModel, PrefillModel
from aladdin.plugin.core.policies import PolicySpec, named_policy
from aladdin.plugin.core.predictor import LengthPredictor, PredictorConfig
from aladdin.plugin.core.request import Request as CoreRequest
from aladdin.plugin.core.request import RequestStatus as CoreStatus
from aladdin.plugin.core.worker import RequestReport
from aladdin.plugin.vllm import compat
from aladdin.plugin.vllm.config import PluginConfig, load_config, request_inputs

logger = init_logger("vllm.aladdin")  # under vLLM's logger, so its handlers print it

ENGINE = "engine"  # the core's one worker
RECONCILE_STEPS = 32  # steps between exact re-reads of every admitted request
OUTCOMES_KEPT = 4096  # refused and handed-back requests remembered for the front door
FINISHED_KEPT = 1024  # ended requests listed in the state, so a front end that does not follow
# the streams (the endpoint picker) learns each one's length: far more than end between two polls
REJECTED, HANDED_BACK = "rejected", "handed-back"  # why a request ended before its first token


def engine_perf(config: PluginConfig, block_size: int, blocks: int, max_num_seqs: int, max_batched_tokens: int) -> PerfModel:
    """The engine's model: the profile's times (if any) with the engine's real KV cache and limits."""
    kv = KVModel(block_size=block_size, capacity_tokens=blocks * block_size)
    if config.profile is None:
        zero = 0.0
        return PerfModel(PrefillModel(zero, zero, zero), DecodeModel(zero, zero, zero), kv, max_num_seqs, max_batched_tokens)
    from aladdin.plugin.profile.io import load_profile

    perf = load_profile(config.profile)
    return replace(perf, kv=kv, max_num_seqs=max_num_seqs, max_batched_tokens=max_batched_tokens)


def admission_policy(config: PluginConfig) -> PolicySpec:
    """With a profile, all of aladdin's filters; without, only those that need no time model."""
    if config.profile is not None:
        return named_policy("aladdin", config.headroom)
    return PolicySpec("aladdin-kv", ("seqs", "kv"), (("fill", 1.0),), pick="max", headroom=config.headroom)


class AladdinScheduler(compat.AsyncScheduler):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # 0.26-0.33 differ in keywords only: pass them through
        self.aladdin_config = load_config(getattr(self.vllm_config, "additional_config", None))
        block_size, blocks = compat.kv_geometry(self)
        perf = engine_perf(self.aladdin_config, block_size, blocks, self.max_num_running_reqs,
                           self.scheduler_config.max_num_batched_tokens)
        self.core = Scheduler(
            [(ENGINE, perf)],
            admission_policy(self.aladdin_config).build(),
            LengthPredictor(PredictorConfig(quantile=self.aladdin_config.length_quantile,
                                            default_output_tokens=self.aladdin_config.default_output_tokens
                                            or self.max_model_len)),  # cold start: capped by max_tokens below
            SchedulerConfig(lost_ttft="shed" if self.aladdin_config.lost_ttft == "hand-back" else "best-effort"),
        )
        self._engine = self.core.worker(ENGINE)
        self._held: dict[str, compat.Request] = {}  # requests the core has not admitted yet
        self._admitted: dict[str, compat.Request] = {}  # in vLLM's queues
        self._preemptions: dict[str, int] = {}
        self._errors: dict[str, str] = {}  # request id -> why it ends with an error (sent next step)
        self._outcomes: OrderedDict[str, dict[str, str]] = OrderedDict()  # the latest refusals, for ``outcome``
        self._finished: deque[dict[str, Any]] = deque(maxlen=FINISHED_KEPT)  # the latest ends, oldest first
        self._finished_seq = 0  # ends so far: a reader asks for those after the last it saw
        self.rejected_total = 0
        self.handed_back_total = 0
        self._steps = 0
        self._next_tick = 0.0
        self.calibration = DecodeCalibration(perf.decode)  # measured / profiled decode step time
        self._last_step_at: float | None = None  # when the previous step's output came back (busy)
        # compile (or load) the core's kernels now, not on the first request
        self.core.evaluate(CoreRequest("aladdin-warm-up", 1, time.time(), predicted_output_tokens=1), time.time())
        logger.info("aladdin: AladdinScheduler %s active on vLLM %s: %d KV blocks of %d tokens, policy %s, config %s",
                    __version__, compat.VLLM_VERSION, blocks, block_size, self.core.policy.name,
                    self.aladdin_config.to_dict())

    # ------------------------------------------------------------------ requests in

    def add_request(self, request: compat.Request) -> None:
        if request.request_id in self.requests or request.request_id in self._held:
            super().add_request(request)  # a streaming-input continuation: vLLM's business
            return
        config = self.aladdin_config
        try:
            inputs = request_inputs(compat.extra_args(request))
        except AladdinError as exc:
            self._refuse(request, str(exc))
            return
        core = CoreRequest(
            request.request_id, request.num_prompt_tokens, request.arrival_time,
            ttft_slo=inputs.ttft_slo or config.ttft_slo, atgt_slo=inputs.atgt_slo or config.atgt_slo,
            predicted_output_tokens=inputs.predicted_output_tokens or 0,
            max_output_tokens=max(min(compat.max_tokens(request), self.max_model_len - request.num_prompt_tokens), 1),
        )
        self.core.predict(core)  # capped by max_tokens, and so is every re-prediction
        kv = self._engine.perf.kv
        if request.num_prompt_tokens + core.predicted_output_tokens - 1 > kv.capacity_tokens:
            self._refuse(request, f"needs {request.num_prompt_tokens + core.predicted_output_tokens - 1} KV tokens, "
                                  f"more than this worker's {kv.capacity_tokens}: retry on a larger worker")
            return
        self._held[request.request_id] = request
        self._apply(self.core.offer(core, time.time()))

    def _apply(self, decisions: list) -> None:
        for decision in decisions:
            request = self._held.pop(decision.request.id)
            if isinstance(decision, Placement):
                self._admitted[request.request_id] = request
                self._preemptions[request.request_id] = request.num_preemptions
                super().add_request(request)
            else:  # shed: its TTFT can no longer be met on this worker
                self.handed_back_total += 1
                self._fail(request, HANDED_BACK, "its TTFT can no longer be met on this worker; retry elsewhere")

    def _refuse(self, request: compat.Request, message: str) -> None:
        self.rejected_total += 1
        self._fail(request, REJECTED, message)

    def _fail(self, request: compat.Request, kind: str, message: str) -> None:
        """End the request with an error at the next step (vLLM sends it like its own errors), and
        remember why, so the front door can answer 503 with the reason instead of vLLM's 500."""
        logger.warning("aladdin: request %s %s: %s", request.request_id, kind, message)
        self.requests[request.request_id] = request  # tracked (so it can finish), never queued
        self._errors[request.request_id] = message
        self._outcomes[request.request_id] = {"outcome": kind, "message": message}
        while len(self._outcomes) > OUTCOMES_KEPT:
            self._outcomes.popitem(last=False)

    def outcome(self, request_key: str) -> dict[str, str] | None:
        """Why the request whose id contains ``-{request_key}-`` (the X-Request-Id the front door
        set) ended before its first token, if this scheduler refused or handed it back."""
        needle = f"-{request_key}-"
        for request_id in reversed(self._outcomes):
            if needle in f"{request_id}-":
                return self._outcomes[request_id]
        return None

    # ------------------------------------------------------------------ engine steps

    def update_from_output(self, scheduler_output: Any, model_runner_output: Any) -> dict:
        self._time_step(scheduler_output)
        outputs = super().update_from_output(scheduler_output, model_runner_output)
        now = time.time()
        core = self.core
        decisions = core.advance(ENGINE, 1, now)
        self._steps += 1
        for request_id, request in list(self._admitted.items()):
            state = core.requests.get(request_id)
            if state is None:
                continue
            if compat.is_finished(request):
                del self._admitted[request_id]
                self._preemptions.pop(request_id, None)
                self._ended(request_id, request.num_output_tokens, aborted=False)
                decisions += core.finish(request_id, request.num_output_tokens, now)
            elif request.num_preemptions != self._preemptions[request_id]:
                self._preemptions[request_id] = request.num_preemptions
                core.preempted(request_id, request.num_output_tokens)
            elif state.status is CoreStatus.PLACED:
                if request.num_output_tokens >= 1:
                    decisions += core.started(request_id, request.num_output_tokens, now)
                elif request.num_computed_tokens != state.computed_tokens:
                    core.prefill_progress(request_id, request.num_computed_tokens)
        pool = self.kv_cache_manager.block_pool
        core.report_kv(ENGINE, (pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()) * self.block_size)
        if self._steps % RECONCILE_STEPS == 0:
            decisions += core.reconcile(ENGINE, self._reports(), None, now)
        if now >= self._next_tick:
            self._next_tick = now + self.aladdin_config.tick_s
            scale = self.calibration.update()
            if scale is not None:
                core.scale_decode(ENGINE, scale)
            decisions += core.tick(now)
        self._apply(decisions)
        if self._errors:
            errors, self._errors = self._errors, {}
            for request in super().finish_requests(list(errors), compat.RequestStatus.FINISHED_ERROR):
                outputs.setdefault(request.client_index, compat.EngineCoreOutputs()).outputs.append(
                    compat.error_output(request))
        return outputs

    def _time_step(self, scheduler_output: Any) -> None:
        """Time a decode-only step (one token for each request) as the gap since the previous
        step's output: with the engine busy, that is one step (the frontend's share included,
        as in the profile's client-side decode times)."""
        now = time.monotonic()
        scheduled: dict[str, int] = getattr(scheduler_output, "num_scheduled_tokens", None) or {}
        previous, self._last_step_at = self._last_step_at, (now if scheduled else None)
        if previous is None or not scheduled or any(n != 1 for n in scheduled.values()):
            return
        context = sum(self.requests[r].num_computed_tokens for r in scheduled if r in self.requests)
        self.calibration.observe(len(scheduled), context, now - previous)

    def _reports(self) -> list[RequestReport]:
        return [
            RequestReport(r.request_id, r.num_output_tokens, r.num_computed_tokens,
                          r.status == compat.RequestStatus.RUNNING and r.num_output_tokens >= 1)
            for r in self._admitted.values() if not compat.is_finished(r)
        ]

    def finish_requests(self, request_ids: Any, finished_status: Any) -> list:
        """Aborts (and vLLM's own finishes) reach held requests too; the core forgets them."""
        if isinstance(request_ids, str):
            request_ids = (request_ids,)
        ids = list(self.requests) + list(self._held) if request_ids is None else list(request_ids)
        now = time.time()
        held = []
        for request_id in ids:
            request = self._held.pop(request_id, None)
            if request is not None:
                request.status = finished_status
                held.append(request)
                self._apply(self.core.abort(request_id, now))
        finished = super().finish_requests([i for i in ids if i not in {r.request_id for r in held}], finished_status)
        for request in finished:
            if self._admitted.pop(request.request_id, None) is not None:
                self._preemptions.pop(request.request_id, None)
                self._ended(request.request_id, request.num_output_tokens, aborted=True)
                self._apply(self.core.abort(request.request_id, now))
        return held + finished

    def _ended(self, request_id: str, output_tokens: int, aborted: bool) -> None:
        self._finished_seq += 1
        self._finished.append({"seq": self._finished_seq, "id": request_id, "output_tokens": output_tokens,
                               "aborted": aborted})

    # ------------------------------------------------------------------ what the engine reports

    def has_requests(self) -> bool:
        return bool(self._held or self._errors) or super().has_requests()

    def get_num_unfinished_requests(self) -> int:
        return super().get_num_unfinished_requests() + len(self._held)

    def get_request_counts(self) -> tuple[int, int]:
        running, waiting = super().get_request_counts()
        return running, waiting + len(self._held)

    def aladdin_state(self) -> dict[str, Any]:
        """The worker as the core sees it (GET /aladdin/state)."""
        kv = self._engine.perf.kv
        pool = self.kv_cache_manager.block_pool

        def seconds(value: float) -> float | None:
            return value if math.isfinite(value) else None  # no SLO: JSON null

        atgt = self._predicted_atgt()

        def row(request_id: str, where: str) -> dict[str, Any]:
            state = self.core.requests[request_id]
            return {"id": request_id, "where": where, "generated_tokens": self._engine.generated(state)
                    if state.worker else state.generated_tokens, "predicted_output_tokens": state.predicted_output_tokens,
                    "prompt_tokens": state.prompt_tokens, "ttft_slo": seconds(state.ttft_slo),
                    "atgt_slo": seconds(state.atgt_slo), "predicted_atgt_s": atgt.get(request_id)}

        running = [r.request_id for r in self.running]
        waiting = [rid for rid in self._admitted if rid not in set(running)]
        reserved = self._reserved_tokens()
        return {
            "plugin_version": __version__,
            "vllm_version": compat.VLLM_VERSION,
            "policy": self.core.policy.name,
            "profile": self.aladdin_config.profile,
            "capacity_tokens": kv.capacity_tokens,
            "block_size": kv.block_size,
            "kv_held_tokens": (pool.num_gpu_blocks - 1 - pool.get_num_free_blocks()) * self.block_size,
            "kv_reserved_tokens": reserved,
            "headroom": self.aladdin_config.headroom,
            "kv_headroom_tokens": int(kv.capacity_tokens * (1.0 - self.aladdin_config.headroom)) - reserved,
            "predicted_atgt_max_s": max(atgt.values(), default=0.0),
            "decode_scale": self._engine.decode_scale,
            "decode_steps_timed": self.calibration.steps,
            "running": [row(rid, "running") for rid in running if rid in self.core.requests],
            "waiting": [row(rid, "waiting") for rid in waiting if rid in self.core.requests],
            "held": [row(rid, "held") for rid in self._held if rid in self.core.requests],
            "finished": list(self._finished),
            "finished_seq": self._finished_seq,
            "rejected_total": self.rejected_total,
            "handed_back_total": self.handed_back_total,
            "max_held": self.aladdin_config.max_held,
            "tick_s": self.aladdin_config.tick_s,
        }

    def _predicted_atgt(self) -> dict[str, float]:
        """Each decoding request's predicted ATGT from now to its predicted end (the profile's
        decode model over the running batch; zero without a profile)."""
        decoding = [self.core.requests[r.request_id] for r in self.running
                    if r.num_output_tokens >= 1 and r.request_id in self.core.requests]
        if not decoding:
            return {}
        generated = [self._engine.generated(state) for state in decoding]
        contexts = [state.prompt_tokens + done for state, done in zip(decoding, generated)]
        remaining = [max(state.predicted_output_tokens - done, 1) for state, done in zip(decoding, generated)]
        values = self._engine.perf.decode.predicted_atgt(contexts, remaining) * self._engine.decode_scale
        return {state.id: float(value) for state, value in zip(decoding, values)}

    def _reserved_tokens(self) -> int:
        """Predicted peak KV of everything admitted (each request at its predicted length)."""
        return int(self.core.pool.predicted_peak_kv(self._engine.index))
