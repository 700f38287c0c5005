"""The advisory lock that leases one customer, shared by everyone who must exclude an
evaluation of that customer: segmenters while they evaluate, erasure while it deletes.

The two-key form of advisory locks is a key space of its own, apart from the one-key locks
in services/segmenter/repository.py; the first key keeps schemas sharing a database apart.
"""

from __future__ import annotations


def customer_lease_key(customer_id_sql: str) -> str:
    """The lock's two keys, for a SQL expression that yields the customer id."""
    return f"hashtext(current_schema()), hashtext({customer_id_sql})"
