"""The event contracts: typed events, decoding with reasons, and the segment-change CloudEvent.

The ingest worker calls `decode_event` (`decode_customer_event` on the customers topic) once
per record and dead-letters `EventRejected`;
docs/events.md describes the contracts and schemas/ holds their JSON Schema.
"""

from shared.events.customers import (
    CUSTOMER_EVENT_TYPES,
    CUSTOMER_TRAITS,
    CustomerEvent,
    CustomerTraits,
    Traits,
)
from shared.events.decoding import (
    EVENT_CLASSES,
    EVENT_TYPES,
    Event,
    check_occurred_at,
    decode_customer_event,
    decode_event,
    encode_event,
)
from shared.events.errors import EventRejected, RejectReason
from shared.events.interactions import (
    INTERACTION_EVENT_TYPES,
    AddToCart,
    EmailClick,
    EmailOpen,
    InteractionEvent,
    Login,
    PageView,
    ProductView,
    Review,
    Search,
    SupportTicket,
)
from shared.events.orders import (
    ORDER_EVENT_TYPES,
    LineItem,
    OrderCancelled,
    OrderEvent,
    OrderPlaced,
    OrderRefunded,
)
from shared.events.segment_change import (
    CLOUDEVENTS_CONTENT_TYPE,
    SegmentChange,
    SegmentChangeEvent,
    decode_segment_change,
    encode_segment_change,
    segment_change_event,
    segment_change_id,
)

__all__ = [
    "CLOUDEVENTS_CONTENT_TYPE",
    "CUSTOMER_EVENT_TYPES",
    "CUSTOMER_TRAITS",
    "EVENT_CLASSES",
    "EVENT_TYPES",
    "INTERACTION_EVENT_TYPES",
    "ORDER_EVENT_TYPES",
    "AddToCart",
    "CustomerEvent",
    "CustomerTraits",
    "EmailClick",
    "EmailOpen",
    "Event",
    "EventRejected",
    "InteractionEvent",
    "LineItem",
    "Login",
    "OrderCancelled",
    "OrderEvent",
    "OrderPlaced",
    "OrderRefunded",
    "PageView",
    "ProductView",
    "RejectReason",
    "Review",
    "Search",
    "SegmentChange",
    "SegmentChangeEvent",
    "SupportTicket",
    "Traits",
    "check_occurred_at",
    "decode_customer_event",
    "decode_event",
    "decode_segment_change",
    "encode_event",
    "encode_segment_change",
    "segment_change_event",
    "segment_change_id",
]
