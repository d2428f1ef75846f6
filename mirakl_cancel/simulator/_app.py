"""HTTP routes of the simulated Mirakl Connect, on aiohttp.web.

Each route is wrapped by :func:`_guarded`, which applies, in order: request
counting, latency, the global rate limit, the fault plan; then the handler;
then the post-processing faults (drop, delay). Keeping that pipeline in one
place is what makes "refused before processing" and "processed but answer
lost" reliably different.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ._faults import Fault
from ._json import InvalidJSON, canonical, dumps, loads
from ._listing import ListQueryError, list_orders, parse_list_query
from ._state import SimState
from ._validate import validate_cancel_body

__all__ = ["STATE_KEY", "create_app"]

STATE_KEY: web.AppKey[SimState] = web.AppKey("mirakl_sim_state", SimState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ERROR_CODES = {
    400: "INVALID_INPUT",
    401: "UNAUTHORIZED",
    403: "FORBIDDEN",
    404: "DATA_NOT_FOUND",
    429: "TOO_MANY_REQUEST",
    503: "UNAVAILABLE",
    504: "UNAVAILABLE",
}
_BAD_GATEWAY_HTML = (
    "<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    "<center><h1>502 Bad Gateway</h1></center>\r\n</body>\r\n</html>\r\n"
)


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, body=dumps(body), content_type="application/json", headers=headers
    )


def error_response(
    status: int,
    code: str,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The spec's ``Error`` body: ``{code, message, errors?[{field?, message}]}``."""
    body: dict[str, Any] = {"code": code, "message": message}
    if errors:
        body["errors"] = errors
    return json_response(status, body, headers)


def _fault_response(state: SimState, fault: Fault, route: str) -> web.Response:
    clock = state.clock
    headers: dict[str, str] = {}
    if isinstance(fault.retry_after, str):
        headers["Retry-After"] = fault.retry_after
    elif fault.retry_after is not None:
        headers["Retry-After"] = clock.retry_after(clock.scaled(fault.retry_after))
    elif fault.status in (429, 503):
        headers["Retry-After"] = clock.retry_after(clock.scaled(1.0))
    status = fault.status
    if status == 502:
        return web.Response(
            status=502, text=_BAD_GATEWAY_HTML, content_type="text/html", headers=headers
        )
    if route == "token":
        return json_response(status, {"error": "temporarily_unavailable"}, headers)
    code = _ERROR_CODES.get(status, "UNEXPECTED" if status >= 500 else "INVALID_INPUT")
    return error_response(status, code, f"Simulated fault: HTTP {status}", headers=headers)


def _drop(request: web.Request) -> None:
    """Close the connection so the client gets no response at all."""
    transport = request.transport
    if transport is not None:
        transport.abort()


def _guarded(state: SimState, route: str, handler: Handler) -> Handler:
    config = state.config
    low, high = config.latency
    api = route != "token"

    async def guarded(request: web.Request) -> web.StreamResponse:
        stats = state.stats
        stats.count_request(route)
        if high > 0:
            await asyncio.sleep(state.clock.scaled(state.latency_rng.uniform(low, high)))
        if api and state.bucket is not None:
            wait = state.bucket.take(state.clock.now())
            if wait > 0:
                stats.count_response(429)
                return error_response(
                    429,
                    "TOO_MANY_REQUEST",
                    "Rate limit exceeded",
                    headers={"Retry-After": state.clock.retry_after(wait)},
                )
        fault = state.faults.choose(route)
        if fault is not None:
            stats.count_fault(fault.label)
            if fault.kind == "http":
                refusal = _fault_response(state, fault, route)
                stats.count_response(refusal.status)
                return refusal
        response = await handler(request)
        if fault is not None:
            if fault.kind == "drop_after_read":
                stats.drops += 1
                _drop(request)
                return response
            await asyncio.sleep(fault.seconds)
        stats.count_response(response.status)
        return response

    return guarded


def _authorize(state: SimState, request: web.Request) -> web.Response | None:
    problem = state.tokens.check(request.headers.get("Authorization"))
    if problem is None:
        return None
    return error_response(
        401, "UNAUTHORIZED", problem, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'}
    )


def _client_credentials(request: web.Request, form: Any) -> tuple[str | None, str | None]:
    """Form fields, or HTTP Basic as RFC 6749 section 2.3.1 also allows."""
    header = request.headers.get("Authorization", "")
    if header[:6].lower() == "basic ":
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None, None
        return user, password
    return form.get("client_id"), form.get("client_secret")


def create_app(state: SimState) -> web.Application:
    """Build the aiohttp application serving ``state``."""
    config = state.config

    async def token(request: web.Request) -> web.Response:
        form = await request.post()
        if form.get("grant_type") != "client_credentials":
            return json_response(400, {"error": "unsupported_grant_type"})
        client_id, secret = _client_credentials(request, form)
        if client_id != config.client_id or secret != config.client_secret:
            return json_response(401, {"error": "invalid_client"}, {"WWW-Authenticate": "Basic"})
        access_token, lifetime = state.tokens.issue(owner=client_id or "")
        expires_in: float | int = lifetime if lifetime != int(lifetime) else int(lifetime)
        if isinstance(expires_in, float):
            expires_in = round(expires_in, 3)
        return json_response(
            200,
            {"access_token": access_token, "token_type": "Bearer", "expires_in": expires_in},
            {"Cache-Control": "no-store"},
        )

    async def cancel(request: web.Request) -> web.Response:
        if (refused := _authorize(state, request)) is not None:
            return refused
        content_type = request.content_type
        if content_type != "application/json" and not content_type.endswith("+json"):
            return error_response(
                415, "INVALID_INPUT", f"Unsupported Content-Type {content_type!r}"
            )
        order_id = request.match_info["order_id"]
        raw = await request.read()
        try:
            body = loads(raw)
        except InvalidJSON as exc:
            state.note_post(order_id, "raw:" + raw.decode("utf-8", "replace"))
            return error_response(
                400,
                "INVALID_INPUT",
                "Malformed JSON request body",
                [{"field": "$", "message": str(exc)}],
            )
        state.note_post(order_id, canonical(body))
        problems = validate_cancel_body(body)
        if problems:
            return error_response(400, "INVALID_INPUT", "The request is invalid", problems)
        order = state.orders.get(order_id)
        if order is None:
            return error_response(
                404,
                "DATA_NOT_FOUND",
                f"Order {order_id} not found",
                [{"field": "order_id", "message": f"no order with id {order_id!r}"}],
            )
        action = state.submit_cancel(order, body["cancelations"])
        return json_response(202, {"action_id": action.id, "tracking_id": action.id})

    async def action_status(request: web.Request) -> web.Response:
        if (refused := _authorize(state, request)) is not None:
            return refused
        action_id = request.match_info["action_id"]
        action = state.actions.get(action_id)
        if action is None:
            return error_response(
                404,
                "DATA_NOT_FOUND",
                f"Action {action_id} not found",
                [{"field": "action_id", "message": f"no action with id {action_id!r}"}],
            )
        now = state.clock.now()
        wait = state.accept_poll(action, now)
        if wait > 0:
            return error_response(
                429,
                "TOO_MANY_REQUEST",
                "v2-getActionStatus may be called at most once per minute per action ID",
                headers={"Retry-After": state.clock.retry_after(wait)},
            )
        return json_response(200, action.to_api(now))

    async def orders(request: web.Request) -> web.Response:
        if (refused := _authorize(state, request)) is not None:
            return refused
        credential = state.tokens.owner(request.headers.get("Authorization"))
        wait = state.accept_listing(credential, state.clock.now())
        if wait > 0:
            return error_response(
                429,
                "TOO_MANY_REQUEST",
                "v2-listOrders may be called at most once per minute",
                headers={"Retry-After": state.clock.retry_after(wait)},
            )
        try:
            query, direction, key = parse_list_query(request.query, request.query.getall)
        except ListQueryError as exc:
            return error_response(400, "INVALID_INPUT", "Invalid query parameters", exc.errors)
        return json_response(200, list_orders(state, query, direction, key))

    async def sim_stats(request: web.Request) -> web.Response:
        return json_response(200, state.stats.as_dict())

    async def sim_reset_stats(request: web.Request) -> web.Response:
        state.stats.reset()
        return json_response(200, state.stats.as_dict())

    app = web.Application()
    app[STATE_KEY] = state
    app.router.add_post("/oauth/token", _guarded(state, "token", token))
    app.router.add_post("/v2/orders/{order_id}/cancel", _guarded(state, "cancel", cancel))
    app.router.add_get("/v2/orders/actions/{action_id}", _guarded(state, "status", action_status))
    app.router.add_get("/v2/orders", _guarded(state, "orders", orders))
    app.router.add_get("/_sim/stats", sim_stats)
    app.router.add_post("/_sim/reset-stats", sim_reset_stats)
    return app
