"""Interaction events: what a customer looked at, clicked or asked, with free-form properties."""

from typing import Annotated, ClassVar, Final, Literal, TypeAlias

import msgspec

from shared.events import limits
from shared.events.fields import Id, OccurredAt, SchemaVersion

PropertyKey = Annotated[str, msgspec.Meta(min_length=1, max_length=limits.MAX_PROPERTY_KEY_LENGTH)]
PropertyValue = (
    Annotated[str, msgspec.Meta(max_length=limits.MAX_PROPERTY_STRING_LENGTH)]
    | Annotated[int, msgspec.Meta(ge=limits.PROPERTY_INT_MIN, le=limits.PROPERTY_INT_MAX)]
    | float
    | bool
    | None
)
Properties = Annotated[
    dict[PropertyKey, PropertyValue], msgspec.Meta(max_length=limits.MAX_PROPERTIES)
]


# gc=False as for orders: `properties` holds only scalars, so no reference cycles.
class InteractionEventBase(msgspec.Struct, frozen=True, kw_only=True, gc=False, tag_field="type"):
    """Fields shared by every interaction event. Not an event itself: use a subclass."""

    type: ClassVar[str]

    schema_version: SchemaVersion = 1
    event_id: Id
    customer_id: Id
    occurred_at: OccurredAt
    properties: Properties = msgspec.field(default_factory=dict)


class PageView(InteractionEventBase, frozen=True, tag="page_view"):
    """The customer viewed a page."""

    type: ClassVar[Literal["page_view"]] = "page_view"


class ProductView(InteractionEventBase, frozen=True, tag="product_view"):
    """The customer viewed a product."""

    type: ClassVar[Literal["product_view"]] = "product_view"


class AddToCart(InteractionEventBase, frozen=True, tag="add_to_cart"):
    """The customer added a product to the cart."""

    type: ClassVar[Literal["add_to_cart"]] = "add_to_cart"


class Search(InteractionEventBase, frozen=True, tag="search"):
    """The customer searched."""

    type: ClassVar[Literal["search"]] = "search"


class EmailOpen(InteractionEventBase, frozen=True, tag="email_open"):
    """The customer opened an email."""

    type: ClassVar[Literal["email_open"]] = "email_open"


class EmailClick(InteractionEventBase, frozen=True, tag="email_click"):
    """The customer clicked a link in an email."""

    type: ClassVar[Literal["email_click"]] = "email_click"


class Login(InteractionEventBase, frozen=True, tag="login"):
    """The customer logged in."""

    type: ClassVar[Literal["login"]] = "login"


class SupportTicket(InteractionEventBase, frozen=True, tag="support_ticket"):
    """The customer opened a support ticket."""

    type: ClassVar[Literal["support_ticket"]] = "support_ticket"


class Review(InteractionEventBase, frozen=True, tag="review"):
    """The customer wrote a review."""

    type: ClassVar[Literal["review"]] = "review"


InteractionEvent: TypeAlias = (
    PageView
    | ProductView
    | AddToCart
    | Search
    | EmailOpen
    | EmailClick
    | Login
    | SupportTicket
    | Review
)
INTERACTION_EVENT_CLASSES: Final[tuple[type[InteractionEvent], ...]] = (
    PageView,
    ProductView,
    AddToCart,
    Search,
    EmailOpen,
    EmailClick,
    Login,
    SupportTicket,
    Review,
)
INTERACTION_EVENT_TYPES: Final = frozenset(cls.type for cls in INTERACTION_EVENT_CLASSES)
