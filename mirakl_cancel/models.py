"""Value types for the two endpoints, as the spec defines them.

Every request model checks itself when it is built, and reports *all* of its problems
at once, so a bad cancel is refused before anything is sent. Conversion to and from
JSON lives in `mirakl_cancel._serde`, not here.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, cast

import attrs

from .errors import ValidationError, ValidationIssue

__all__ = [
    "ActionAccepted",
    "ActionError",
    "ActionState",
    "ActionStatus",
    "Adjustment",
    "AdjustmentType",
    "CancelReason",
    "CancelRequest",
    "Cancelation",
    "Money",
    "Order",
    "OrderLine",
    "Tax",
]

_CURRENCY = re.compile(r"[A-Z]{3}")


class CancelReason(str, enum.Enum):
    """Why a line is cancelled: the seven values the API accepts."""

    CUSTOMER_CANCELATION = "CUSTOMER_CANCELATION"
    OUT_OF_STOCK = "OUT_OF_STOCK"
    RETURN = "RETURN"
    ITEM_NOT_RECEIVED = "ITEM_NOT_RECEIVED"
    AGREEMENT = "AGREEMENT"
    DEFECT = "DEFECT"
    UNABLE_TO_DELIVER = "UNABLE_TO_DELIVER"

    def __str__(self) -> str:
        return self.value


_REASONS = frozenset(r.value for r in CancelReason)


class ActionState(str, enum.Enum):
    """An action's status; UNKNOWN stands for any value the API adds later."""

    PENDING = "PENDING"
    SUCCESS = "SUCCESS"
    FAILED = "FAILED"
    UNKNOWN = "UNKNOWN"

    @classmethod
    def parse(cls, raw: str) -> ActionState:
        """Map the wire value, tolerating values this version does not know."""
        try:
            state = cls(raw)
        except ValueError:
            return cls.UNKNOWN
        return cls.UNKNOWN if state is cls.UNKNOWN else state

    def __str__(self) -> str:
        return self.value


def _issues_or_none(issues: list[ValidationIssue]) -> None:
    if issues:
        raise ValidationError(issues)


#: The most digits an amount may have written out, integer part and decimals together:
#: so at most 18 significant digits, at most 18 decimals, and less than 10**18. Far more
#: than any price needs, and it keeps every amount short on the wire, in the journal and
#: in reports, which write amounts out in full (`1E+999999999` would be a gigabyte).
AMOUNT_MAX_DIGITS = 18
#: The largest quantity. The spec gives `CancelRequest.quantity` no format, and the API's
#: other quantities are int32: a larger number could overflow on the server's side.
QUANTITY_MAX = 2**31 - 1
#: An amount as text: ASCII digits only (no `1_000`, no other scripts' digits, no NaN).
_AMOUNT_TEXT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
#: Longer text cannot be a valid amount (18 digits, a sign, a dot and an exponent).
_AMOUNT_TEXT_MAX = 64
_NOT_FINITE = frozenset({"nan", "snan", "inf", "infinity"})
#: Ints this long have more than AMOUNT_MAX_DIGITS digits: refused before conversion.
_INT_BITS_MAX = 64


def _quote(text: str, limit: int = 40) -> str:
    """`text` quoted for a message, cut if long (a 100 KiB cell must not flood one)."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + f"... ({len(text)} chars)"


def written_digits(amount: Decimal) -> int:
    """How many digits `amount` has written out in plain notation (as on the wire).

    Computed from the exponent, never by writing it out: `1E+999999999` would take a
    gigabyte. Leading zeros (`0.05`) do not count; every decimal does.
    """
    _, digits, exponent = amount.as_tuple()
    assert isinstance(exponent, int)  # finite
    if exponent >= 0:
        return 1 if digits == (0,) else len(digits) + exponent
    return max(len(digits), -exponent)


def coerce_amount(value: object) -> Decimal | str:
    """An exact Decimal from `value`, or the reason it cannot be one.

    Floats are refused rather than converted: `0.1` is not exactly one tenth, and a
    cancel must refund exactly what the user meant. Text must be ASCII digits with an
    optional dot and exponent. At most AMOUNT_MAX_DIGITS digits written out.
    """
    if isinstance(value, bool):
        return "must be a Decimal, int or str, not bool"
    if isinstance(value, Decimal):
        amount = value
    elif isinstance(value, int):
        if value.bit_length() > _INT_BITS_MAX:
            return f"has more than {AMOUNT_MAX_DIGITS} digits"
        amount = Decimal(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lower().lstrip("+-") in _NOT_FINITE:
            return "must be a finite number"
        if len(text) > _AMOUNT_TEXT_MAX or not _AMOUNT_TEXT.fullmatch(text):
            return (f"{_quote(value)} is not a decimal number (ASCII digits, a dot for "
                    "decimals, e.g. 12.34)")
        try:
            amount = Decimal(text)
        except InvalidOperation:  # an exponent beyond what Decimal can hold
            return f"{_quote(value)} is out of range"
    elif isinstance(value, float):
        return "must be a Decimal, int or str, not float (floats are inexact; use Decimal('...'))"
    else:
        return f"must be a Decimal, int or str, not {type(value).__name__}"
    if not amount.is_finite():
        return "must be a finite number"
    digits = written_digits(amount)
    if digits > AMOUNT_MAX_DIGITS:
        return (f"has {digits} digits written out, more than the {AMOUNT_MAX_DIGITS} an "
                "amount may have (integer part and decimals together)")
    if amount < 0:
        return "must be greater than or equal to 0"
    return amount


@attrs.frozen
class Money:
    """An exact amount in one currency (ISO-4217, e.g. EUR)."""

    amount: Decimal
    currency: str

    def __attrs_post_init__(self) -> None:
        issues: list[ValidationIssue] = []
        amount = coerce_amount(self.amount)
        if isinstance(amount, str):
            issues.append(ValidationIssue("amount", amount))
        else:
            object.__setattr__(self, "amount", amount)
        if not isinstance(self.currency, str) or not _CURRENCY.fullmatch(self.currency):
            issues.append(ValidationIssue(
                "currency",
                f"must be an ISO-4217 code of three upper-case letters, not {self.currency!r}"))
        _issues_or_none(issues)


@attrs.frozen
class Tax:
    """A tax amount to cancel, under the sales channel's tax code."""

    code: str
    amount: Money

    def __attrs_post_init__(self) -> None:
        issues: list[ValidationIssue] = []
        if not isinstance(self.code, str) or not self.code:
            issues.append(ValidationIssue("code", "must be a non-empty string"))
        elif issue := _surrogate_issue("code", self.code):
            issues.append(issue)
        if not isinstance(self.amount, Money):
            issues.append(ValidationIssue("amount", "must be a Money"))
        _issues_or_none(issues)


def _not_a_list(value: object) -> bool:
    # A str is iterable, but "TVA" as a list of taxes is a mistake, not three taxes.
    return isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Iterable)


def _as_tuple(value: Iterable[Tax] | None) -> tuple[Tax, ...]:
    if value is None:
        return ()
    if _not_a_list(value):
        # Kept as given for __attrs_post_init__ to refuse with the field named (a
        # converter raising TypeError here would escape as a non-Mirakl error).
        return cast("tuple[Tax, ...]", value)
    return tuple(value)


def _surrogate_issue(name: str, value: str) -> ValidationIssue | None:
    """A lone surrogate cannot be sent (it has no UTF-8 form): name the field up front."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        code = ord(value[exc.start])
        return ValidationIssue(name, f"contains a lone surrogate (\\u{code:04x}) at position "
                                     f"{exc.start}: not valid Unicode text")
    return None


def scalar_issues(quantity: object, reason: object, order_line_id: object,
                  product_id: object) -> list[ValidationIssue]:
    """Problems with a cancelation's own fields (not its amounts), with relative paths."""
    issues: list[ValidationIssue] = []
    if isinstance(quantity, bool) or not isinstance(quantity, int):
        shown = repr(quantity)
        shown = shown if len(shown) <= 40 else shown[:40] + "..."
        issues.append(ValidationIssue("quantity", f"must be an integer, not {shown}"))
    elif quantity < 0:
        issues.append(ValidationIssue("quantity", "must be greater than or equal to 0"))
    elif quantity > QUANTITY_MAX:
        issues.append(ValidationIssue(
            "quantity", f"must be at most {QUANTITY_MAX} (the API's 32-bit integer)"))
    if not isinstance(reason, str) or reason not in _REASONS:
        allowed = ", ".join(r.value for r in CancelReason)  # enum order: stable messages
        issues.append(ValidationIssue("reason", f"{reason!r} is not one of {allowed}"))
    for name, value in (("order_line_id", order_line_id), ("product_id", product_id)):
        if value is not None and (not isinstance(value, str) or not value):
            issues.append(ValidationIssue(name, "must be a non-empty string when given"))
        elif isinstance(value, str) and (issue := _surrogate_issue(name, value)):
            issues.append(issue)
    if order_line_id is None and product_id is None:
        issues.append(ValidationIssue(
            "order_line_id", "neither order_line_id nor product_id is given: one is needed to "
                             "say which line to cancel"))
    return issues


def _cancelation_issues(c: Cancelation) -> list[ValidationIssue]:
    issues = scalar_issues(c.quantity, c.reason, c.order_line_id, c.product_id)
    if not any(issue.path == "reason" for issue in issues):
        object.__setattr__(c, "reason", CancelReason(c.reason))
    monies: list[tuple[str, object]] = [("price", c.price), ("shipping_price", c.shipping_price)]
    for group in ("taxes", "shipping_taxes"):
        value = getattr(c, group)
        if not isinstance(value, tuple):
            issues.append(ValidationIssue(
                group, f"must be a list of Tax, not {type(value).__name__}"))
            continue
        for i, tax in enumerate(value):
            if not isinstance(tax, Tax):
                issues.append(ValidationIssue(f"{group}[{i}]", "must be a Tax"))
            else:
                monies.append((f"{group}[{i}].amount", tax.amount))
    currency = c.price.currency if isinstance(c.price, Money) else None
    for path, money in monies:
        if not isinstance(money, Money):
            issues.append(ValidationIssue(path, "must be a Money"))
        elif currency is not None and money.currency != currency:
            issues.append(ValidationIssue(
                f"{path}.currency",
                f"must match the price currency {currency}, not {money.currency}"))
    return issues


@attrs.frozen
class Cancelation:
    """One line (or part of one) to cancel, with the amounts to refund."""

    quantity: int
    reason: CancelReason
    price: Money
    shipping_price: Money
    order_line_id: str | None = None
    product_id: str | None = None
    taxes: tuple[Tax, ...] = attrs.field(default=(), converter=_as_tuple)
    shipping_taxes: tuple[Tax, ...] = attrs.field(default=(), converter=_as_tuple)

    def __attrs_post_init__(self) -> None:
        _issues_or_none(_cancelation_issues(self))


def _cancelations_tuple(value: Iterable[Cancelation]) -> tuple[Cancelation, ...]:
    if _not_a_list(value):  # refused, field named, by __attrs_post_init__
        return cast("tuple[Cancelation, ...]", value)
    return tuple(value)


@attrs.frozen
class CancelRequest:
    """One POST's worth: the lines of one order to cancel together."""

    order_id: str
    cancelations: tuple[Cancelation, ...] = attrs.field(converter=_cancelations_tuple)

    def __attrs_post_init__(self) -> None:
        issues: list[ValidationIssue] = []
        if not isinstance(self.order_id, str) or not self.order_id.strip():
            issues.append(ValidationIssue("order_id", "must be a non-empty string"))
        elif issue := _surrogate_issue("order_id", self.order_id):
            issues.append(issue)
        if not isinstance(self.cancelations, tuple):
            issues.append(ValidationIssue(
                "cancelations",
                f"must be a list of Cancelation, not {type(self.cancelations).__name__}"))
            _issues_or_none(issues)
        if not self.cancelations:
            issues.append(ValidationIssue("cancelations", "must contain at least one cancelation"))
        for i, c in enumerate(self.cancelations):
            if not isinstance(c, Cancelation):
                issues.append(ValidationIssue(f"cancelations[{i}]", "must be a Cancelation"))
        _issues_or_none(issues)

    @property
    def total_quantity(self) -> int:
        """Units this request cancels, all lines together."""
        return sum(c.quantity for c in self.cancelations)


@attrs.frozen
class ActionAccepted:
    """The API accepted a cancel (202); its outcome is known later through `action_id`."""

    action_id: str
    order_id: str
    #: Deprecated by the API, equal to action_id when present; kept only for completeness.
    tracking_id: str | None = None


@attrs.frozen
class ActionError:
    """Why an action failed; `code` is kept raw so that new codes never break parsing."""

    code: str
    message: str = ""


@attrs.frozen
class ActionStatus:
    """An action as `v2-getActionStatus` reports it."""

    id: str
    state: ActionState
    created_at: datetime | None = None
    updated_at: datetime | None = None
    errors: tuple[ActionError, ...] = ()
    #: The status exactly as the API sent it (meaningful when state is UNKNOWN).
    raw_status: str = ""

    @property
    def is_terminal(self) -> bool:
        """Whether polling this action again can change nothing."""
        return self.state in (ActionState.SUCCESS, ActionState.FAILED)


def prefix_issues(prefix: str, issues: Sequence[ValidationIssue]) -> list[ValidationIssue]:
    """Re-root issues under `prefix` (e.g. `cancelations[2]`)."""
    return [ValidationIssue(f"{prefix}.{issue.path}" if prefix else issue.path, issue.message)
            for issue in issues]


# --- orders, as v2-listOrders reports them (what reconciliation needs) ----------------


class AdjustmentType(str, enum.Enum):
    """Kinds of line adjustment; UNKNOWN stands for any value the API adds later."""

    CANCELATION = "CANCELATION"
    REFUND = "REFUND"
    UNKNOWN = "UNKNOWN"


@attrs.frozen
class Adjustment:
    """A cancelation or refund recorded on an order line: the evidence a cancel took effect.

    `price` is the unit price times the adjusted quantity, as the API documents it, which
    is what a cancel request's `price` carries too.
    """

    id: str
    type: AdjustmentType
    raw_type: str
    created_at: datetime | None
    quantity: int | None
    reason: str | None
    price: Money | None = None
    shipping_price: Money | None = None


@attrs.frozen
class OrderLine:
    """An order line with its adjustments; `raw` keeps every field as the API sent it."""

    id: str
    product_id: str | None
    quantity: int | None
    status: str | None
    adjustments: tuple[Adjustment, ...] = ()
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)


@attrs.frozen
class Order:
    """An order from `v2-listOrders`; only what reconciliation needs is typed."""

    id: str
    status: str | None
    lines: tuple[OrderLine, ...] = ()
    raw: dict[str, Any] = attrs.field(factory=dict, repr=False, eq=False)

    def line(self, *, order_line_id: str | None = None,
             product_id: str | None = None) -> OrderLine | None:
        """The line a cancelation designates: by line id first, else by product id."""
        for candidate in self.lines:
            if order_line_id is not None:
                if candidate.id == order_line_id:
                    return candidate
            elif product_id is not None and candidate.product_id == product_id:
                return candidate
        return None
