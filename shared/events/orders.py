"""Order events: an order placed, refunded (partly or fully) or cancelled as a whole."""

from typing import Annotated, ClassVar, Final, Literal, TypeAlias

import msgspec

from shared.events import limits
from shared.events.fields import Amount, Currency, Id, OccurredAt, SchemaVersion


class LineItem(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One order line. `amount` on the event is authoritative for the order's spend; lines
    are what metrics filtered on `item.sku` or `item.category` sum (quantity x unit_price)."""

    sku: Id
    quantity: Annotated[int, msgspec.Meta(ge=1, le=limits.MAX_ITEM_QUANTITY)]
    unit_price: Amount
    # Optional since schema version 1 was published: producers that do not send it still
    # validate, and their lines match no category filter.
    category: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_CATEGORY_LENGTH)] | None
    ) = None


# gc=False: events hold only scalars and tuples, so they cannot form reference cycles, and
# skipping GC tracking makes decoding measurably cheaper.
class OrderEventBase(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    """Fields shared by every order event. Not an event itself: use a subclass."""

    type: ClassVar[str]

    schema_version: SchemaVersion = 1
    event_id: Id
    customer_id: Id
    order_id: Id
    occurred_at: OccurredAt
    amount: Amount
    currency: Currency
    items: Annotated[tuple[LineItem, ...], msgspec.Meta(max_length=limits.MAX_ITEMS)] = ()
    channel: (
        Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_CHANNEL_LENGTH)] | None
    ) = None


class OrderPlaced(OrderEventBase, frozen=True, tag="order_placed"):
    """An order was placed: it counts once, for `amount`."""

    type: ClassVar[Literal["order_placed"]] = "order_placed"


class OrderRefunded(OrderEventBase, frozen=True, tag="order_refunded"):
    """Part or all of an order was refunded: `amount` is the refunded amount."""

    type: ClassVar[Literal["order_refunded"]] = "order_refunded"


class OrderCancelled(OrderEventBase, frozen=True, tag="order_cancelled"):
    """The whole order was cancelled: it no longer counts, nor does its amount."""

    type: ClassVar[Literal["order_cancelled"]] = "order_cancelled"


OrderEvent: TypeAlias = OrderPlaced | OrderRefunded | OrderCancelled
ORDER_EVENT_CLASSES: Final[tuple[type[OrderEvent], ...]] = (
    OrderPlaced,
    OrderRefunded,
    OrderCancelled,
)
ORDER_EVENT_TYPES: Final = frozenset(cls.type for cls in ORDER_EVENT_CLASSES)
