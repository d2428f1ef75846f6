"""Every number the library's behaviour rests on, in one place.

Most are the API's own limits (Mirakl Connect's documentation and OpenAPI bundle), the
rest are defaults chosen for them. A rule that reads one of these must import it from
here, never restate the literal: when the API changes a limit, one line changes.
This module imports nothing from the package, so every layer may use it.
"""

from __future__ import annotations

import sys

import aiohttp

from ._version import __version__

# --- The API's limits -------------------------------------------------------------------

#: The API's ceiling for `v2-getActionStatus` (per action) and for `v2-listOrders`:
#: one call per minute. Intervals below it are allowed only against a loopback server
#: (the simulator, in scaled time).
API_MIN_INTERVAL = 60.0
#: The most ids (and orders per page) `v2-listOrders` takes in one call.
LIST_ORDERS_MAX_IDS = 100

# --- Endpoints --------------------------------------------------------------------------

DEFAULT_BASE_URL = "https://miraklconnect.com/api"
DEFAULT_TOKEN_URL = "https://auth.mirakl.net/oauth/token"
USER_AGENT = (f"mirakl-cancel/{__version__} aiohttp/{aiohttp.__version__} "
              f"python/{sys.version_info.major}.{sys.version_info.minor}")

# --- Transport (MiraklConnectClient, Timeout, RetryPolicy) -------------------------------

DEFAULT_MAX_CONCURRENCY = 16
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_MAX_ATTEMPTS = 5
DEFAULT_RETRY_MAX_TIME = 120.0
DEFAULT_RETRY_BASE_DELAY = 0.5
DEFAULT_RETRY_MAX_DELAY = 30.0
#: A Retry-After longer than this surfaces as RateLimitError rather than a silent sleep.
DEFAULT_MAX_RETRY_AFTER = 300.0
#: One attempt as a whole, connecting to last byte: a trickling server cannot stretch it.
DEFAULT_ANSWER_TIMEOUT = 60.0

# --- Bounds on answers (Limits) -----------------------------------------------------------

#: An answer's body, after decompression; a 100-order page is well under 1 MiB.
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
#: JSON nesting, checked before decoding; the API's documents nest fewer than 10 levels.
DEFAULT_MAX_JSON_DEPTH = 64
#: A token answer is a few hundred bytes: more than this is not one.
MAX_TOKEN_ANSWER_BYTES = 64 * 1024

# --- Tokens (ClientCredentials) ---------------------------------------------------------

#: Renew a token this long before it expires, so no request carries one that dies in flight.
TOKEN_REFRESH_MARGIN = 60.0
TOKEN_REQUEST_TIMEOUT = 30.0
#: The lifetime assumed when a token answer has no usable `expires_in` (OAuth2's common one).
DEFAULT_TOKEN_LIFETIME = 3600.0
#: A stated `expires_in` is kept within these bounds: a negative or zero one must not make
#: every request fetch a token (a 401 still renews one that really expired), and an
#: absurd one must not overflow or keep a token for ever.
MIN_TOKEN_LIFETIME = 1.0
MAX_TOKEN_LIFETIME = 86400.0

# --- Tracking (PollPolicy, ActionTracker) -----------------------------------------------

#: Mirakl's recommended pace for status reads.
DEFAULT_POLL_INTERVAL = 300.0
#: A read sooner than this after acceptance would almost surely still say PENDING.
DEFAULT_FIRST_POLL_DELAY = API_MIN_INTERVAL
#: Status reads in flight at most, per tracker.
DEFAULT_TRACKER_CONCURRENCY = 8
#: A status read refused (429) for longer than this ends that action's tracking with
#: the RateLimitError (PollPolicy.max_retry_after): nothing waits for ever.
DEFAULT_TRACKER_MAX_RETRY_AFTER = 3600.0

# --- Reconciliation (ReconcilePolicy) ---------------------------------------------------

#: Time enough for Mirakl to process an action: after it, no adjustment means not applied.
DEFAULT_SETTLE = 900.0
#: Clock difference allowed with the API when dating adjustments.
DEFAULT_SKEW = 120.0

# --- The file job (CLI) -----------------------------------------------------------------

#: Cancels in flight at most for `mirakl-cancel run`, and as many status reads.
DEFAULT_JOB_CONCURRENCY = 8
#: Seconds a silent worker of a fleet job keeps its claims before the others take them
#: over: long enough for a stalled process (GC, a slow disk) not to lose its work.
DEFAULT_LEASE = 30.0
#: Requests a fleet worker claims at once: enough to keep its senders busy, few enough
#: that a worker that dies leaves little for the others to take over.
DEFAULT_CLAIM_BATCH = 16
#: At most this long (seconds) between two looks of an idle fleet worker for work
#: (lapsed leases, released requests); a quarter of the lease when that is shorter.
DEFAULT_JOB_IDLE = 1.0
#: Without a terminal, a progress line this often (seconds).
DEFAULT_PROGRESS_INTERVAL = 10.0

# --- Batching (CancelBatcher) -----------------------------------------------------------

#: Seconds a line waits for other lines of its order before its request leaves.
DEFAULT_LINGER = 0.05

# --- The poll ceiling across processes (_pollstore) -------------------------------------

#: Seconds an abandoned read (no answer: a timeout, a reset, a cancel) counts as later than
#: the moment we gave up on it: bytes already on their way may still reach the server.
READ_ABANDON_MARGIN = 2.0
#: At most this long (seconds) a read waits before looking again at a read of the same
#: resource that is still in flight elsewhere (whose end, not its start, the next counts
#: from).
READ_IN_FLIGHT_RECHECK = 0.5

#: Rows older than this under both readings (wall and monotonic) are deleted: far above
#: the API's one-minute ceiling, so that no row that still constrains a read is lost.
POLL_STATE_RETENTION = 600.0
#: How long to wait for another process's transaction before giving up on the file.
POLL_STATE_LOCK_TIMEOUT = 2.0

# --- Shared store (PostgresStore, SharedActionTracker) ----------------------------------

#: Seconds any one store operation (connecting included) may take before StoreError.
DEFAULT_STORE_TIMEOUT = 10.0
#: Seconds a fleet tracker's worker keeps a status read it claimed before another may
#: take it: far above a read's own bounds (retries included), so a slow read is not
#: taken over mid-flight, yet a dead worker's actions are read again within minutes.
DEFAULT_TRACKER_LEASE = 120.0
#: At most this long (seconds) a fleet tracker's worker sleeps before looking for due
#: actions and for results it missed a notification of.
DEFAULT_TRACKER_IDLE_POLL = 1.0

# --- Metrics (histogram buckets, seconds) ------------------------------------------------

#: One HTTP attempt: milliseconds to a minute.
METRIC_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                          60.0)
#: An action from acceptance to its final state: seconds to hours.
METRIC_ACTION_LIFETIME_BUCKETS = (1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0,
                                  1800.0, 3600.0, 7200.0, 14400.0)
#: A status read behind its schedule: none, a little, a whole interval.
METRIC_POLL_LAG_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0)
