"""OpenTelemetry tracing and metrics, read back with the SDK's in-memory exporters."""

from __future__ import annotations

import json

import pytest
from builders import request_for, sim_order

pytest.importorskip("opentelemetry.sdk")

from opentelemetry import metrics, trace
from opentelemetry.metrics import _internal as metrics_internal
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from mirakl_cancel import (
    ActionTracker,
    ClientCredentials,
    Hooks,
    MiraklConnectClient,
    PollPolicy,
    RetryPolicy,
    UncertainDeliveryError,
)
from mirakl_cancel._observe.hooks import with_request_key
from mirakl_cancel._observe.metrics import METRICS, MetricsObserver, OtelSink
from mirakl_cancel._observe.otel import TracingObserver
from mirakl_cancel.simulator import Fault, Simulator, SimulatorConfig

SCALE = 0.001
MIN = 60.0 * SCALE
POLICY = PollPolicy(min_interval=MIN, interval=0.1, first_delay=MIN, timeout=10.0)
SECRET = "a-client-secret-that-must-never-show"


@pytest.fixture
def spans(monkeypatch: pytest.MonkeyPatch) -> InMemorySpanExporter:
    """A configured global tracer provider for this test only."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    monkeypatch.setattr(trace, "get_tracer_provider", lambda: provider)
    return exporter


def config() -> SimulatorConfig:
    return SimulatorConfig(time_scale=SCALE, processing_delay=(30.0, 60.0), seed=2,
                           client_secret=SECRET)




def client_for(sim: Simulator, auth: ClientCredentials) -> MiraklConnectClient:
    return MiraklConnectClient(auth=auth, base_url=sim.base_url, min_poll_interval=MIN,
                               retry=RetryPolicy(base_delay=0.001, max_delay=0.01))


def by_name(finished: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in finished if span.name == name]


async def test_spans_of_a_cancellation_life_with_no_code_change(
        spans: InMemorySpanExporter) -> None:
    async with Simulator(config()) as sim:
        sim.add_order(sim_order("0001_O-A"))
        sim.add_order(sim_order("0002_O-A"))
        sim.inject(Fault.http(429, retry_after=10.0), route="cancel")
        sim.inject(Fault.http(503), route="status")
        auth = ClientCredentials(config().client_id, SECRET, sim.token_url)
        async with client_for(sim, auth) as client:
            assert client.hooks.active  # tracing was switched on by the provider alone
            accepted = await client.cancel(request_for("0001_O-A", lines=1))
            sim.inject(Fault.drop_after_read(), route="cancel")  # for the second cancel
            with pytest.raises(UncertainDeliveryError):
                await client.cancel(request_for("0002_O-A"))
            async with ActionTracker(client, POLICY) as tracker:
                final = await tracker.wait(accepted.action_id)
            token = auth._token

    finished = spans.get_finished_spans()
    first, uncertain = by_name(finished, "v2-cancelOrderLines")
    assert first.kind is trace.SpanKind.CLIENT
    assert dict(first.attributes or {}) == {
        "http.request.method": "POST", "mirakl.order_id": "0001_O-A", "mirakl.lines": 1,
        "mirakl.outcome": "ok", "mirakl.attempts": 2, "http.response.status_code": 202,
        "mirakl.action_id": accepted.action_id}
    assert [e.name for e in first.events] == ["rate_limited", "retry"]
    assert first.events[1].attributes["mirakl.retry.reason"] == "HTTP 429"  # type: ignore[index]
    assert first.status.is_ok

    assert uncertain.attributes["mirakl.uncertain"] is True  # type: ignore[index]
    assert uncertain.attributes["mirakl.outcome"] == "uncertain"  # type: ignore[index]
    assert [e.name for e in uncertain.events] == ["uncertain_delivery"]
    assert uncertain.status.status_code is trace.StatusCode.ERROR
    assert "mirakl.action_id" not in (uncertain.attributes or {})

    reads = by_name(finished, "v2-getActionStatus")
    assert len(reads) >= 2
    assert reads[0].attributes["http.response.status_code"] == 503  # type: ignore[index]
    assert reads[0].attributes["error.type"] == "ServerError"  # type: ignore[index]
    assert reads[-1].attributes["mirakl.action_state"] == final.raw_status  # type: ignore[index]
    for read in reads:
        assert read.attributes["mirakl.action_id"] == accepted.action_id  # type: ignore[index]
        # Every read leads back to the cancel that created the action.
        assert [link.context.span_id for link in read.links] == [first.context.span_id]

    text = "".join(span.to_json() for span in finished)
    assert SECRET not in text
    assert token and token not in text
    assert "Bearer" not in text and "cancelations" not in text  # no header, no body


async def test_a_cancel_span_is_a_child_of_the_callers_span(
        spans: InMemorySpanExporter) -> None:
    tracer = trace.get_tracer("test")
    async with Simulator(config()) as sim:
        sim.add_order(sim_order("0001_O-A"))
        auth = ClientCredentials(config().client_id, SECRET, sim.token_url)
        async with client_for(sim, auth) as client:
            with tracer.start_as_current_span("order-sync") as parent:
                await with_request_key("rows-1-2", client.cancel(request_for("0001_O-A")))
    (cancel,) = by_name(spans.get_finished_spans(), "v2-cancelOrderLines")
    assert cancel.parent is not None
    assert cancel.parent.span_id == parent.get_span_context().span_id
    assert cancel.context.trace_id == parent.get_span_context().trace_id
    assert cancel.attributes["mirakl.request_key"] == "rows-1-2"  # type: ignore[index]


def test_off_without_a_configured_provider() -> None:
    # opentelemetry is imported (by this module) but no provider is set: nothing added.
    from mirakl_cancel import StaticToken

    client = MiraklConnectClient(auth=StaticToken("t"), base_url="http://127.0.0.1:9")
    assert not client.hooks.active


async def test_otel_metrics(monkeypatch: pytest.MonkeyPatch) -> None:
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    monkeypatch.setattr(metrics, "get_meter_provider", lambda: provider)
    monkeypatch.setattr(metrics_internal, "get_meter_provider", lambda: provider)
    async with Simulator(config()) as sim:
        sim.add_order(sim_order("0001_O-A"))
        sim.inject(Fault.http(429, retry_after=10.0), route="cancel")
        auth = ClientCredentials(config().client_id, SECRET, sim.token_url)
        async with client_for(sim, auth) as client:
            accepted = await client.cancel(request_for("0001_O-A"))
            async with ActionTracker(client, POLICY) as tracker:
                await tracker.wait(accepted.action_id)
    data = json.loads(reader.get_metrics_data().to_json())
    points: dict[str, list[dict[str, object]]] = {}
    for resource in data["resource_metrics"]:
        for scope in resource["scope_metrics"]:
            for metric in scope["metrics"]:
                points[metric["name"]] = metric["data"]["data_points"]
    requests = {(p["attributes"]["route"], p["attributes"]["status"]): p["value"]  # type: ignore[index]
                for p in points["mirakl_cancel.requests"]}
    assert requests[("v2-cancelOrderLines", "429")] == 1
    assert requests[("v2-cancelOrderLines", "202")] == 1
    assert points["mirakl_cancel.rate_limited"][0]["value"] == 1
    assert points["mirakl_cancel.pending_actions"][0]["value"] == 0
    assert points["mirakl_cancel.actions_final"][0]["attributes"] == {"state": "SUCCESS"}
    assert points["mirakl_cancel.action.duration"][0]["count"] == 1
    assert {m.otel_name for m in METRICS.values()} >= set(points) - {"mirakl_cancel.uncertain"}
    assert SECRET not in json.dumps(data)


def test_observers_with_explicit_providers() -> None:
    provider = TracerProvider()
    hooks = Hooks(TracingObserver(provider), MetricsObserver(OtelSink(MeterProvider())))
    assert hooks.listens("call_start") and hooks.listens("action_tracked")
