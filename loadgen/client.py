"""The streaming client: one OpenAI-compatible request in, one ``RequestRecord`` out.

Runs on gevent (Locust's concurrency model) through geventhttpclient's keep-alive pool.
Every chunk is stamped with the run clock *before* it is parsed, and tokens per chunk come
from vLLM's ``continuous_usage_stats`` (a chunk is not always one token); a server that does
not send per-chunk usage is counted as one token per non-empty chunk.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Callable
from urllib.parse import urlsplit

import gevent
from geventhttpclient import HTTPClient
from geventhttpclient.response import HTTPConnectionClosed

from aladdin.loadgen.records import ERROR, OK, TIMEOUT, RequestRecord, make_record
from aladdin.loadgen.slo import slo_headers

WORKER_HEADER = "x-aladdin-worker"
STALE_CONNECTION_ERRORS = (HTTPConnectionClosed, ConnectionResetError, BrokenPipeError)
API_PATHS = {"completions": "/v1/completions", "chat": "/v1/chat/completions"}


class RunClock:
    """One monotonic clock per process, zeroed at the run's common wall-clock start.

    Each process converts the shared ``start_epoch`` (``time.time()`` value) once to its own
    ``perf_counter``; after that only ``perf_counter`` is read, so timestamps never jump.
    """

    def __init__(self, start_epoch: float):
        self.start_epoch = start_epoch
        self._zero = time.perf_counter() + (start_epoch - time.time())

    def now(self) -> float:
        return time.perf_counter() - self._zero


@dataclass(frozen=True)
class Endpoint:
    """Where and how requests are sent."""

    base_url: str
    model: str
    api: str = "completions"  # completions | chat
    timeout_s: float = 600.0
    headers: dict[str, str] = field(default_factory=dict)
    extra_body: dict = field(default_factory=dict)
    max_connections: int = 4096

    @property
    def path(self) -> str:
        return API_PATHS[self.api]


def build_payload(endpoint: Endpoint, prompt: str, prompt_token_ids, output_tokens: int) -> dict:
    """The request body: pinned output length, streaming with per-chunk usage."""
    body: dict = {
        "model": endpoint.model,
        "max_tokens": output_tokens,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True, "continuous_usage_stats": True},
        "temperature": 0.0,
    }
    if endpoint.api == "chat":
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = list(prompt_token_ids) if prompt_token_ids else prompt
    body.update(endpoint.extra_body)
    return body


class StreamingClient:
    """Sends requests to one endpoint and records their token timeline."""

    def __init__(self, endpoint: Endpoint, clock: RunClock, client_name: str = "local"):
        self.endpoint = endpoint
        self.clock = clock
        self.client_name = client_name
        url = urlsplit(endpoint.base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"host must be an http(s) URL, got {endpoint.base_url!r}")
        self._http = HTTPClient(
            url.hostname,
            port=url.port,
            ssl=url.scheme == "https",
            concurrency=endpoint.max_connections,
            connection_timeout=10.0,
            network_timeout=endpoint.timeout_s,
        )
        self._path = url.path.rstrip("/") + endpoint.path
        self._headers = {"Content-Type": "application/json", **endpoint.headers}

    def close(self) -> None:
        self._http.close()

    def run(
        self,
        request_id: str,
        prompt: str,
        prompt_token_ids,
        output_tokens: int,
        scheduled: float,
        expected_prompt_tokens: int | None = None,
        on_done: Callable[[RequestRecord], None] | None = None,
        slo_tier: str | None = None,
        ttft_slo: float | None = None,
        atgt_slo: float | None = None,
    ) -> RequestRecord:
        """Send one request now and stream it to the end (or error, or timeout)."""
        rec = make_record(
            id=request_id,
            scheduled=scheduled,
            requested_output_tokens=output_tokens,
            expected_prompt_tokens=expected_prompt_tokens,
            dispatched=self.clock.now(),
            client=self.client_name,
            slo_tier=slo_tier,
            ttft_slo=ttft_slo,
            atgt_slo=atgt_slo,
        )
        body = json.dumps(build_payload(self.endpoint, prompt, prompt_token_ids, output_tokens))
        headers = {**self._headers, "X-Request-Id": request_id, **slo_headers(ttft_slo, atgt_slo)}
        try:
            with gevent.Timeout(self.endpoint.timeout_s):
                response = self._send(body, headers, rec)
                rec.first_byte = self.clock.now()
                try:
                    self._consume(response, rec)
                finally:
                    response.release()
        except gevent.Timeout:
            rec.outcome, rec.error = TIMEOUT, f"no complete answer within {self.endpoint.timeout_s:g}s"
        except Exception as exc:  # any transport failure is this request's result, not the run's
            rec.outcome, rec.error = ERROR, f"{type(exc).__name__}: {exc}"
        rec.done = self.clock.now()
        if on_done is not None:
            on_done(rec)
        return rec

    def _send(self, body: str, headers: dict, rec: RequestRecord):
        """POST and wait for the response headers, stamping ``rec.sent``.

        A pooled keep-alive connection may have been closed by the server while idle (uvicorn
        closes them after 5 s); the request then fails before any response byte, without the
        server having read it, so it is sent once more on a fresh connection.
        """
        for attempt in (1, 2):
            rec.sent = self.clock.now()
            try:
                return self._http.request("POST", self._path, body=body, headers=headers)
            except STALE_CONNECTION_ERRORS:
                if attempt == 2:
                    raise

    def _consume(self, response, rec: RequestRecord) -> None:
        rec.status = response.status_code
        worker = response.get(WORKER_HEADER)
        rec.worker = worker if isinstance(worker, str) else None
        if rec.status != 200:
            rec.outcome, rec.error = ERROR, f"HTTP {rec.status}: {_error_text(response.read(65536))}"
            return
        tokens_so_far = 0
        finished = False
        while True:
            line = response.readline(b"\n")
            now = self.clock.now()  # stamped before parsing
            if not line:
                break
            if not line.startswith(b"data:"):
                continue  # blank separators and SSE comments
            data = line[5:].strip()
            if data == b"[DONE]":
                finished = True
                break
            chunk = json.loads(data)
            if "error" in chunk:
                rec.outcome, rec.error = ERROR, f"stream error: {_error_text(data)}"
                return
            usage = chunk.get("usage") or {}
            choices = chunk.get("choices") or []
            if choices:
                cumulative = usage.get("completion_tokens")
                if cumulative is not None:
                    new_tokens = cumulative - tokens_so_far
                    tokens_so_far = cumulative
                else:
                    new_tokens = 1 if _has_content(choices[0]) else 0
                if new_tokens > 0:
                    rec.chunk_times.append(now)
                    rec.chunk_tokens.append(new_tokens)
            elif usage:
                rec.prompt_tokens = usage.get("prompt_tokens")
                rec.output_tokens = usage.get("completion_tokens")
        if not finished:
            rec.outcome, rec.error = ERROR, "stream ended before [DONE]"
        else:
            rec.outcome = OK


def _has_content(choice: dict) -> bool:
    if choice.get("text"):
        return True
    delta = choice.get("delta") or {}
    return bool(delta.get("content") or delta.get("reasoning_content") or delta.get("reasoning") or delta.get("tool_calls"))


def _error_text(raw: bytes) -> str:
    """The server's error message from an OpenAI-style error body, else the raw text, on one line."""
    text = raw.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
        err = obj.get("error", obj)
        msg = err.get("message", err) if isinstance(err, dict) else err
        text = str(msg)
    except (ValueError, AttributeError):
        pass
    return " ".join(text.split())[:500]


def served_models(base_url: str, timeout_s: float = 5.0) -> list[str]:
    """The model ids a server lists at ``/v1/models``; raises ``ConnectionError`` naming the problem."""
    import urllib.error
    import urllib.request

    url = base_url.rstrip("/") + "/v1/models"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            data = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        raise ConnectionError(f"{url} answered HTTP {exc.code}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ConnectionError(f"cannot reach {url}: {reason}") from None
    except ValueError:
        raise ConnectionError(f"{url} did not answer JSON; is it an OpenAI-compatible server?") from None
    return [m["id"] for m in data.get("data", []) if isinstance(m, dict) and "id" in m]
