"""The retry decision, as a pure function of what one attempt came to.

`decide()` maps (the answer's status and Retry-After, or how the exchange failed) x
(idempotent or not) x (which attempt, how long so far) to one `Decision`: retry after a
delay, raise the error, report the request UNCERTAIN, or renew the token once. It reads
no clock and draws no random number (the jitter fraction is an argument), so every rule
is a row of a table test (tests/http/test_retry.py). The transport performs the decision:
it sleeps, pauses, logs and raises; it decides nothing itself.

The one safety rule: a request that is not idempotent (a cancel) is sent again only
when the server certainly did not process it: it never left (no connection, no
token), or the API turned it away before processing it (`REFUSED_BEFORE_PROCESSING`).
Anything else after it may have left is UNCERTAIN, unless the caller opted into
resending those (`RetryPolicy.retry_uncertain_posts`).
"""

from __future__ import annotations

import enum

import attrs

from .._constants import (
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_RETRY_AFTER,
    DEFAULT_RETRY_BASE_DELAY,
    DEFAULT_RETRY_MAX_DELAY,
    DEFAULT_RETRY_MAX_TIME,
)
from . import backoff as _backoff

__all__ = ["NO_RETRY", "REFUSED_BEFORE_PROCESSING", "Attempt", "Decision", "Failure",
           "RetryPolicy", "Verdict", "decide", "resend_safe"]


@attrs.frozen
class RetryPolicy:
    """How hard to try: exponential backoff with full jitter, bounded twice.

    `retry_uncertain_posts` is for callers who reconcile duplicates themselves: it lets
    a cancel whose answer was lost be sent again. Left off, such a cancel raises
    `UncertainDeliveryError` instead, because the API has no idempotency key and a
    repeated partial cancel cancels more units.
    """

    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    max_time: float = DEFAULT_RETRY_MAX_TIME
    base_delay: float = DEFAULT_RETRY_BASE_DELAY
    max_delay: float = DEFAULT_RETRY_MAX_DELAY
    #: A Retry-After longer than this surfaces as RateLimitError rather than a silent sleep.
    max_retry_after: float = DEFAULT_MAX_RETRY_AFTER
    retry_uncertain_posts: bool = False

    def __attrs_post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if min(self.max_time, self.base_delay, self.max_delay, self.max_retry_after) < 0:
            raise ValueError("RetryPolicy durations must not be negative")


NO_RETRY = RetryPolicy(max_attempts=1)

#: Statuses by which the API refuses a request before processing it (credentials,
#: scope, rate limit, unavailable): a cancel so refused did not take effect, and the
#: same request may be sent again. The transport retries 429 and 503 (401 once, with a
#: new token); the error raised in the end carries `resend_safe` (see `errors`).
REFUSED_BEFORE_PROCESSING = frozenset({401, 403, 429, 503})


class Failure(enum.Enum):
    """How one attempt failed to give a usable answer."""

    #: The server answered a status the caller does not expect.
    ANSWER = "answer"
    #: An answer whose body cannot be used: not JSON under an expected status, or past
    #: a bound (size, depth). Whatever its status said, the request reached the server.
    UNREADABLE = "unreadable"
    #: Certainly never left: no connection could be made, or no token could be had.
    NOT_SENT = "not_sent"
    #: The exchange broke after the request may have left (reset, timeout).
    BROKEN = "broken"
    #: Something unforeseen broke the exchange: nothing says the request did not leave.
    UNFORESEEN = "unforeseen"


@attrs.frozen
class Attempt:
    """What one attempt came to, as plain data: the input of `decide()`."""

    failure: Failure
    #: The answer's status (`Failure.ANSWER`, `Failure.UNREADABLE`), else None.
    status: int | None = None
    #: Seconds the answer's Retry-After asked for, if it said so.
    retry_after: float | None = None

    @property
    def sent(self) -> bool:
        """Whether the request may have reached the server (a read counts then)."""
        return self.failure is not Failure.NOT_SENT


def resend_safe(attempt: Attempt) -> bool:
    """Whether the request of a failed `attempt` certainly did not take effect, for a
    reason that is not its content: it never left, or the API refused it before
    processing it. Sending it again (later, or with other credentials) is then safe;
    a 400 or 404 is not "safe" in this sense: the same request would be refused again.
    """
    if not attempt.sent:
        return True
    return attempt.failure is Failure.ANSWER and attempt.status in REFUSED_BEFORE_PROCESSING


class Verdict(enum.Enum):
    """What to do after a failed attempt."""

    RETRY = "retry"
    RAISE = "raise"
    #: A request that is not idempotent may have been processed: UncertainDeliveryError.
    UNCERTAIN = "uncertain"
    #: A 401: renew the token and send again (once; it is not counted as an attempt).
    REFRESH_TOKEN = "refresh_token"


@attrs.frozen
class Decision:
    """The verdict, and for a retry how long to wait."""

    verdict: Verdict
    #: The backoff, or the server's Retry-After when longer: the wait before the next
    #: attempt, and, after a 429, how long the whole client holds back.
    delay: float = 0.0
    #: What the next attempt really waits: `delay`, or longer when the resource's
    #: once-a-minute ceiling asks for it (the bound `max_time` is checked against).
    wait: float = 0.0
    #: A 429: every request of the client pauses for `delay`, retried or not.
    pause: bool = False


def _verdict(attempt: Attempt, idempotent: bool, refreshed: bool,
             resend_uncertain: bool) -> Verdict:
    """The verdict before the bounds (attempts, time, Retry-After) are applied."""
    # The request may have been processed and its answer lost: a read is tried again;
    # a cancel is UNCERTAIN, unless the caller resends such cancels knowingly.
    lost = Verdict.RETRY if idempotent or resend_uncertain else Verdict.UNCERTAIN
    failure = attempt.failure
    if failure is Failure.NOT_SENT:
        return Verdict.RETRY
    if failure is Failure.BROKEN:
        return lost
    if failure is Failure.UNFORESEEN:
        # For a read an unknown failure is not worth repeating; a cancel may have left.
        return Verdict.RAISE if idempotent else lost
    if failure is Failure.UNREADABLE:
        # It reached the server and was answered: a cancel was processed, never resent.
        return Verdict.RAISE if idempotent else Verdict.UNCERTAIN
    status = attempt.status or 0
    if 200 <= status < 300:
        # A success status we did not expect still means the request was processed.
        return Verdict.RAISE if idempotent else Verdict.UNCERTAIN
    if status == 401:
        return Verdict.RAISE if refreshed else Verdict.REFRESH_TOKEN
    if status in (429, 503):
        return Verdict.RETRY  # refused before processing (and soon over): try again
    if status >= 500:
        return lost
    return Verdict.RAISE


def decide(attempt: Attempt, *, idempotent: bool, tries: int, elapsed: float,
           policy: RetryPolicy, refreshed: bool = False, jitter: float = 1.0,
           ready_in: float = 0.0) -> Decision:
    """What to do after the failed attempt number `tries` (counted from 1).

    `elapsed`: seconds since the first attempt started; `refreshed`: the token was
    already renewed once for this request; `jitter`: a draw in [0, 1) that spreads the
    backoff; `ready_in`: seconds until the resource may be read again (its ceiling).
    """
    verdict = _verdict(attempt, idempotent, refreshed, policy.retry_uncertain_posts)
    if verdict is not Verdict.RETRY:
        return Decision(verdict)
    # Through the module: the one backoff home, which a test may patch.
    delay = _backoff.full_jitter(
        _backoff.exponential(tries, policy.base_delay, policy.max_delay), jitter)
    retry_after = attempt.retry_after
    if retry_after is not None:
        delay = max(retry_after, delay)
    pause = attempt.status == 429  # whoever got it, the whole client holds back
    if retry_after is not None and retry_after > policy.max_retry_after:
        return Decision(Verdict.RAISE, delay, delay, pause)
    wait = max(delay, ready_in)
    if tries >= policy.max_attempts or elapsed + wait > policy.max_time:
        return Decision(Verdict.RAISE, delay, wait, pause)
    return Decision(Verdict.RETRY, delay, wait, pause)
