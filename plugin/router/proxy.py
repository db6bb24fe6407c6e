"""One attempt of one request on one worker, up to the moment its answer may reach the client.

Why apart from the front end: whether a request can still go elsewhere is decided here. Nothing
is sent to the client before the worker's first stream event (or, not streaming, its whole
body), so a worker that refuses the connection, dies before the first byte, or hands the
request back (503, ``X-Aladdin-Outcome``) raises :class:`Retry` and the request is re-placed.
Once the first event is out, the stream is the client's; :class:`StreamTracker` then follows
it (tokens seen, the final usage) for the core.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from aladdin.plugin.router.inputs import ParsedRequest
from aladdin.plugin.router.placement import Ticket
from aladdin.plugin.vllm.config import ATGT_KEY, PREDICTED_KEY, TTFT_KEY

OUTCOME_HEADER = "X-Aladdin-Outcome"
WORKER_HEADER = "X-Aladdin-Worker"
MIN_TTFT_BUDGET_S = 0.001
LAZY_TIMEOUT = hasattr(asyncio.Task, "uncancel")  # Python 3.11+; else asyncio.wait_for per read


class Retry(Exception):
    """The attempt failed before anything reached the client; ``worker_failed``: the worker is
    unreachable (it leaves the pool now), else it refused or dropped this request (it is
    health-checked at once)."""

    def __init__(self, reason: str, message: str, worker_failed: bool):
        super().__init__(message)
        self.reason = reason
        self.message = message
        self.worker_failed = worker_failed


class UpstreamTimeout(Exception):
    """The worker took longer than the router waits; the request is not retried (it may have run)."""


@dataclass
class Upstream:
    """A worker's answer so far: a whole body, or a stream's head and its first events (``head``:
    the whole events received by then)."""

    status: int
    content_type: str
    body: bytes | None = None
    response: aiohttp.ClientResponse | None = None
    head: bytes = b""
    reader: EventReader | None = None

    def close(self) -> None:
        """Drop the connection (not back to the pool): vLLM sees the client gone and aborts."""
        if self.reader is not None:
            self.reader.stop()
        if self.response is not None:
            self.response.close()

    def release(self) -> None:
        """The body was read to its end: the connection goes back to the pool."""
        if self.reader is not None:
            self.reader.stop()
        if self.response is not None:
            self.response.release()


class EventReader:
    """Server-sent events from a response, as they are received: ``next()`` gives the whole events
    of the next read at once (bytes, each event ending with its blank line; ``None`` at the end of
    the stream). The start of an event split across reads waits in ``buffer`` for its end."""

    def __init__(self, response: aiohttp.ClientResponse):
        self.response = response
        self.buffer = b""
        # the read timeout, lazily: one timer per stream re-armed only when it fires early,
        # instead of a timer made and cancelled for every read
        self._deadline = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._waiter: asyncio.Task | None = None
        self._expired = False

    async def next(self, timeout: float) -> bytes | None:
        while True:
            chunk = await self._read(timeout)
            if not chunk:
                return None
            if self.buffer:
                chunk = self.buffer + chunk
            end = events_end(chunk)
            self.buffer = chunk[end:]
            if end:
                return chunk[:end]

    async def _read(self, timeout: float) -> bytes:
        """The next data received; asyncio.TimeoutError after ``timeout`` seconds without any."""
        if not LAZY_TIMEOUT:
            return await asyncio.wait_for(self.response.content.readany(), timeout)
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        if self._timer is None:
            self._timer = loop.call_at(self._deadline, self._check)
        task = asyncio.current_task()
        self._waiter = task
        try:
            return await self.response.content.readany()
        except asyncio.CancelledError:
            if self._expired:
                self._expired = False
                if task is not None and task.uncancel() == 0:  # our cancel, and no one else's
                    raise asyncio.TimeoutError from None
            raise
        finally:
            self._waiter = None

    def _check(self) -> None:
        self._timer = None
        waiter = self._waiter
        if waiter is None:
            return  # not reading now: the next read arms it again
        loop = asyncio.get_running_loop()
        if loop.time() < self._deadline:  # data came since it was armed: wait the rest
            self._timer = loop.call_at(self._deadline, self._check)
            return
        self._expired = True
        waiter.cancel()

    def stop(self) -> None:
        """Done reading: drop the timer (it would keep this reader alive until it fires)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def at_end(self) -> bool:
        """The whole body was read and nothing is left over: the connection can be reused."""
        return self.response.content.at_eof() and not self.buffer.strip()

    async def finish(self, timeout: float, limit: int = 1 << 16) -> bool:
        """After the stream's last event: read to the end of the body (at most ``limit`` more
        bytes, within ``timeout``) so that the connection can go back to the pool; False if it
        did not end cleanly (then the caller closes it)."""
        content = self.response.content
        extra = len(self.buffer)
        try:
            while not content.at_eof():
                chunk = await self._read(timeout)
                extra += len(chunk)
                if not chunk or extra > limit:
                    break
        except (asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
            return False
        finally:
            self.stop()
        return extra <= limit and self.at_end()


def events_end(data: bytes) -> int:
    """The end of the whole events that ``data`` (which starts an event) begins with: just past
    the blank line of the last one, cut where splitting on ``\\n\\n`` from the start cuts (0: none)."""
    end = data.rfind(b"\n\n")
    if end < 0:
        return 0
    start = end
    while start and data[start - 1] == 10:  # a run of newlines pairs up from its start
        start -= 1
    return start + (end + 2 - start) // 2 * 2


def upstream_body(parsed: ParsedRequest, ticket: Ticket, now: float, ask_usage: bool = True) -> bytes:
    """The client's request plus the prediction and SLOs in ``vllm_xargs`` (the TTFT budget left
    after the time spent in the router), and (``ask_usage``) the final usage chunk asked for on
    streams: the router drops it again unless the client asked for it."""
    payload: dict[str, Any] = dict(parsed.payload)
    xargs = dict(payload.get("vllm_xargs") or {})
    core = ticket.core
    xargs[PREDICTED_KEY] = int(core.predicted_output_tokens)
    if math.isfinite(core.ttft_slo):
        xargs[TTFT_KEY] = max(core.ttft_slo - (now - core.arrival_time), MIN_TTFT_BUDGET_S)
    if math.isfinite(core.atgt_slo):
        xargs[ATGT_KEY] = core.atgt_slo
    payload["vllm_xargs"] = xargs
    if parsed.stream and ask_usage:
        options = dict(payload.get("stream_options") or {})
        options["include_usage"] = True
        payload["stream_options"] = options
    return json.dumps(payload).encode()


async def start(session: aiohttp.ClientSession, url: str, parsed: ParsedRequest, ticket: Ticket, *,
                headers: dict[str, str], connect_s: float, first_token_s: float, request_s: float,
                now: float) -> Upstream:
    """Send the request and wait for what may go to the client; raise Retry or UpstreamTimeout."""
    body = upstream_body(parsed, ticket, now)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_s)
    response: aiohttp.ClientResponse | None = None
    deadline = time.monotonic() + (first_token_s if parsed.stream else request_s)
    try:
        try:
            response = await asyncio.wait_for(
                session.post(url + parsed.path, data=body, timeout=timeout,
                             headers={"Content-Type": "application/json", "X-Request-Id": ticket.id, **headers}),
                first_token_s)
            content_type = response.headers.get("Content-Type", "application/json")
            if response.status == 503:
                outcome = response.headers.get(OUTCOME_HEADER)
                text = (await asyncio.wait_for(response.read(), max(deadline - time.monotonic(), 0.001))).decode(
                    "utf-8", "replace")
                response.release()
                reason = outcome or "unavailable"
                raise Retry(reason.replace("-", "_"), f"worker answered 503 ({reason}): {_message(text)}", False)
            if not parsed.stream or response.status != 200 or not content_type.startswith("text/event-stream"):
                data = await asyncio.wait_for(response.read(), max(deadline - time.monotonic(), 0.001))
                response.release()
                return Upstream(response.status, content_type, body=data)
            reader = EventReader(response)
            head = b""
            try:
                while not head.strip():  # blank events do not count as the first
                    events = await reader.next(max(deadline - time.monotonic(), 0.001))
                    if events is None:
                        raise Retry("failed", "the worker ended the stream before its first event", True)
                    head += events
            finally:
                reader.stop()  # the stream's reads (from here: the read timeout) arm it again
            return Upstream(200, content_type, response=response, head=head, reader=reader)
        except aiohttp.ServerTimeoutError as exc:  # only the connect timeout is set on the session call
            raise Retry("failed", f"worker unreachable: connect timeout ({exc})", True) from None
        except asyncio.TimeoutError:
            raise UpstreamTimeout(f"the worker did not answer within {first_token_s if parsed.stream else request_s:g} s") from None
        except (aiohttp.ClientConnectorError, aiohttp.ClientOSError) as exc:  # refused, unreachable
            raise Retry("failed", f"worker unreachable: {type(exc).__name__}: {exc}".rstrip(": "), True) from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as exc:
            # it dropped the connection before the first byte reached the client (it died, or a
            # pooled connection went stale): try another; a health check decides about the worker
            raise Retry("failed", f"worker dropped the request: {type(exc).__name__}: {exc}".rstrip(": "),
                        False) from None
    except BaseException:
        if response is not None:
            response.close()
        raise


def _message(text: str) -> str:
    try:
        error = json.loads(text).get("error")
        if isinstance(error, dict):
            return str(error.get("message", ""))[:300]
        return str(error)[:300]
    except (ValueError, AttributeError):
        return text.strip()[:300]


class StreamTracker:
    """Follows a stream for the core: tokens seen, the exact count from the usage the worker
    reports, the end; drops the final usage chunk when the client did not ask for it.

    ``forward`` takes the events of one read at once and looks at the bytes: a read of plain
    token events (the bulk of a stream) goes on as it came, its tokens counted from its events
    (approximately: the progress the core is told; the count it learns comes from the usage).
    Only a read holding ``[DONE]``, an error, a usage chunk, or anything else out of the way, is
    taken event by event (``feed``, which decodes each one's JSON).
    """

    def __init__(self, wants_usage: bool):
        self.wants_usage = wants_usage
        self.generated = 0
        self.usage_tokens: int | None = None
        self.done = False
        self.error = False
        self._usage_events: bytes | None = None  # the last read of token events carrying usage, decoded at the end

    @property
    def output_tokens(self) -> int:
        """The worker's own count when it reported usage, else the tokens seen."""
        if self._usage_events is not None:
            for event in reversed(self._usage_events.split(b"\n\n")):
                tokens = _completion_tokens(_chunk(event))
                if tokens is not None:
                    self.usage_tokens = tokens
                    break
            self._usage_events = None
        return self.usage_tokens if self.usage_tokens is not None else self.generated

    def forward(self, events: bytes) -> bytes:
        """Whole events as read (each ending with its blank line): the bytes to send on."""
        n = events.count(b"\n\n")
        if (events.count(b"\n\ndata:") + events.startswith(b"data:") == n  # data events only, none blank
                and b"[DONE]" not in events and b'"error"' not in events):
            usage = _USAGE.search(events) is not None
            # with usage in every token event (continuous usage stats) none is the final usage
            # chunk, and only the last usage counts
            if not usage or events.count(b'"choices":[{') + events.count(b'"choices": [{') == n:
                self.generated += max(n - len(_EMPTY.findall(events)), 0)
                if usage:
                    self._usage_events = events
                return events
        out = []
        for event in events.split(b"\n\n")[:-1]:
            if event.strip():
                kept = self.feed(event)
                if kept is not None:
                    out += (kept, b"\n\n")
                if self.done:
                    break  # nothing after [DONE] is forwarded
        return b"".join(out)

    def feed(self, event: bytes) -> bytes | None:
        """One event: the event to forward (None: drop it)."""
        if not event.startswith(b"data:"):
            return event
        data = event[5:].strip()
        if data == b"[DONE]":
            self.done = True
            return event
        chunk = _chunk(event)
        if chunk is None:
            return event
        if "error" in chunk:
            self.error = True
            return event
        usage = chunk.get("usage")
        tokens = _completion_tokens(chunk)
        if tokens is not None:
            self.usage_tokens = tokens
            self._usage_events = None
        choices = chunk.get("choices")
        if not choices:
            return event if self.wants_usage or not isinstance(usage, dict) else None
        if any(_has_content(choice) for choice in choices if isinstance(choice, dict)):
            self.generated += 1
        return event


_USAGE = re.compile(rb'"usage"\s*:\s*\{')  # a usage object (not null)
_EMPTY = re.compile(rb'"(?:text|content)"\s*:\s*""')  # an event without text (chat's first, a last one)
_decode = json.JSONDecoder().decode  # json.loads without its per-call encoding detection and wrapper


def _chunk(event: bytes) -> dict[str, Any] | None:
    """A data event's JSON object (None: not a data event, not JSON, or not an object)."""
    if not event.startswith(b"data:"):
        return None
    try:
        chunk = _decode(event[5:].decode())  # UTF-8 (SSE's encoding); a bad byte is a ValueError too
    except ValueError:
        return None
    return chunk if isinstance(chunk, dict) else None


def _completion_tokens(chunk: dict[str, Any] | None) -> int | None:
    usage = chunk.get("usage") if chunk is not None else None
    if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
        return usage["completion_tokens"]
    return None


def _has_content(choice: dict[str, Any]) -> bool:
    if choice.get("text"):
        return True
    delta = choice.get("delta")
    return isinstance(delta, dict) and bool(delta.get("content") or delta.get("tool_calls") or delta.get("reasoning_content"))


def error_event(message: str, code: int = 502) -> bytes:
    """vLLM's own in-stream error shape."""
    return b"data: " + json.dumps({"error": {"message": message, "type": "UpstreamError", "param": None,
                                             "code": code}}).encode()
