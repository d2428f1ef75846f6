"""OpenTelemetry tracing and metrics, built on the client hooks (extra `mirakl-cancel[otel]`).

On by itself: when a program has configured an OpenTelemetry tracer (or meter) provider,
every new client reports to it, with no code change. "Configured" is read cheaply:
if `opentelemetry` was never imported, nobody configured it, and this module imports
nothing (so a program without OpenTelemetry pays one dictionary lookup per client).

Spans (one per logical call, retries included):

- ``v2-cancelOrderLines`` — `mirakl.order_id`, `mirakl.request_key` (when known),
  `mirakl.lines`, `mirakl.outcome`, `mirakl.action_id`, `http.response.status_code`,
  `mirakl.attempts`; events ``retry`` and ``rate_limited``; an UNCERTAIN delivery
  sets `mirakl.uncertain` and an ``uncertain_delivery`` event.
- ``v2-getActionStatus`` — `mirakl.action_id`, `mirakl.action_state`, the status and
  attempts; linked to the span of the cancel that created the action (a span link, so
  reads made long after, or by a tracker, still lead back to their cancel).
- ``v2-listOrders``.

No attribute or event ever holds a token, a secret or a body: they are built from the
hooks' events, which carry none.
"""

from __future__ import annotations

import sys
import weakref
from typing import TYPE_CHECKING, Any

from .._version import __version__
from .hooks import (
    ROUTE_CANCEL,
    ActionFinalEvent,
    Call,
    CallEndEvent,
    CallOutcome,
    Hooks,
    Observer,
    RateLimitEvent,
    RetryEvent,
    UncertainEvent,
)

if TYPE_CHECKING:
    from opentelemetry.trace import SpanContext, TracerProvider

__all__ = ["TracingObserver", "auto_instrument"]

#: How many cancels' span contexts are kept for linking their reads (oldest dropped).
MAX_LINKS = 100_000

_SPAN = "otel.span"

#: Hooks already instrumented automatically (one observer per Hooks, even if shared).
_instrumented: weakref.WeakSet[Hooks] = weakref.WeakSet()


def _configured(api: Any, getter: str, proxy: str) -> bool:
    """Whether a real provider was set (the API's default is a proxy to a no-op)."""
    provider = getattr(api, getter)()
    return type(provider).__name__ not in (proxy, "NoOpTracerProvider", "NoOpMeterProvider")


def auto_instrument(hooks: Hooks) -> None:
    """Add tracing and metrics observers to `hooks` if OpenTelemetry is configured."""
    if hooks in _instrumented:
        return
    trace_api = sys.modules.get("opentelemetry.trace")
    metrics_api = sys.modules.get("opentelemetry.metrics")
    added = False
    if trace_api is not None and _configured(trace_api, "get_tracer_provider",
                                             "ProxyTracerProvider"):
        hooks.add(TracingObserver())
        added = True
    if metrics_api is not None and _configured(metrics_api, "get_meter_provider",
                                               "_ProxyMeterProvider"):
        from .metrics import MetricsObserver, OtelSink

        hooks.add(MetricsObserver(OtelSink()))
        added = True
    if added:
        _instrumented.add(hooks)


class TracingObserver(Observer):
    """Spans for calls, from the hooks. `Hooks.add(TracingObserver(provider))` to choose
    the provider yourself; the global one otherwise."""

    def __init__(self, tracer_provider: TracerProvider | None = None) -> None:
        from opentelemetry import trace

        self._trace = trace
        self._tracer = trace.get_tracer("mirakl_cancel", __version__,
                                        tracer_provider=tracer_provider)
        #: The span context of the cancel that created each action, for links.
        self._links: dict[str, SpanContext] = {}

    def on_call_start(self, call: Call) -> None:
        attributes: dict[str, Any] = {"http.request.method": call.method}
        if call.order_id is not None:
            attributes["mirakl.order_id"] = call.order_id
        if call.lines is not None:
            attributes["mirakl.lines"] = call.lines
        if call.request_key is not None:
            attributes["mirakl.request_key"] = call.request_key
        links = None
        if call.action_id is not None:
            attributes["mirakl.action_id"] = call.action_id
            created_by = self._links.get(call.action_id)
            if created_by is not None:
                links = [self._trace.Link(created_by)]
        call.extensions[_SPAN] = self._tracer.start_span(
            call.route, kind=self._trace.SpanKind.CLIENT, attributes=attributes, links=links,
            start_time=int(call.started_at * 1e9))

    def on_retry(self, event: RetryEvent) -> None:
        span = event.call.extensions.get(_SPAN)
        if span is not None:
            span.add_event("retry", {"mirakl.attempt": event.attempt,
                                     "mirakl.retry.delay": event.delay,
                                     "mirakl.retry.reason": event.reason})

    def on_rate_limit(self, event: RateLimitEvent) -> None:
        span = event.call.extensions.get(_SPAN)
        if span is not None:
            span.add_event("rate_limited", {"mirakl.attempt": event.attempt,
                                            "mirakl.pause.seconds": event.seconds})

    def on_uncertain(self, event: UncertainEvent) -> None:
        span = event.call.extensions.get(_SPAN)
        if span is not None:
            span.set_attribute("mirakl.uncertain", True)
            span.add_event("uncertain_delivery", {"mirakl.reason": event.reason})

    def on_call_end(self, event: CallEndEvent) -> None:
        call = event.call
        span = call.extensions.pop(_SPAN, None)
        if span is None:
            return
        span.set_attribute("mirakl.outcome", event.outcome.value)
        span.set_attribute("mirakl.attempts", call.attempts)
        if event.status is not None:
            span.set_attribute("http.response.status_code", event.status)
        if event.action_state is not None:
            span.set_attribute("mirakl.action_state", event.action_state)
        if call.action_id is not None:
            span.set_attribute("mirakl.action_id", call.action_id)
            if call.route == ROUTE_CANCEL and event.outcome is CallOutcome.OK:
                self._remember(call.action_id, span.get_span_context())
        if event.outcome is not CallOutcome.OK:
            if event.error is not None:
                span.set_attribute("error.type", event.error)
            # The class name only: an error's message may quote an answer's body.
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, event.error))
        span.end()

    def on_action_final(self, event: ActionFinalEvent) -> None:
        self._links.pop(event.result.action_id, None)

    def _remember(self, action_id: str, context: SpanContext) -> None:
        links = self._links
        links[action_id] = context
        if len(links) > MAX_LINKS:
            del links[next(iter(links))]
