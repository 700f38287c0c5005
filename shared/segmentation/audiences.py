"""Audiences: named boolean segments beside the exclusive dimensions.

A customer is in any number of audiences. An audience's condition reads what a dimension's
condition reads (metrics, scores, cut-offs) and also every dimension's current segment
(`value_tier = vip`, a segment-typed value of that dimension) and other audiences (as
booleans). References between audiences may not form a cycle: `dependency_order` finds one
and names it, or orders the audiences so that each follows those it reads.

Evaluation (`decide_audiences`) runs after every dimension has settled at `now`, in that
order, so an audience follows a dimension's change in the same evaluation.

Membership is stored like a dimension's segment: `MEMBER` while a member, nothing otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

from shared.segmentation.conditions import (
    All,
    AnyOf,
    Condition,
    Env,
    LetRef,
    Not,
    Predicate,
    Truth,
    explain,
    holds,
    render,
)
from shared.segmentation.facts import Assignment
from shared.segmentation.metrics import MetricValue, Number

MEMBER = "member"


@dataclass(frozen=True, slots=True)
class Audience:
    """One audience. `metrics` are the metrics, scores and cut-offs its condition reads;
    `dimensions` and `audiences` the dimensions and audiences it references. `thresholds`
    and `cutoff_refs` are as a dimension's, for the next-change search."""

    name: str
    description: str
    source: str
    condition: Condition
    metrics: frozenset[str]
    dimensions: frozenset[str]
    audiences: frozenset[str]
    thresholds: Mapping[str, frozenset[Number]]
    cutoff_refs: Mapping[str, frozenset[str]]
    predicate: Predicate = field(repr=False, compare=False)

    @property
    def reads(self) -> frozenset[str]:
        """Every name the condition reads: metrics, dimensions and audiences."""
        return self.metrics | self.dimensions | self.audiences


@dataclass(frozen=True, slots=True)
class AudienceDecision:
    """Membership of one audience. `since` is when the customer entered (kept from the
    previous assignment while still a member, `now` on entry; None when not a member);
    `was_member` is the membership before this evaluation. `values` holds what the
    condition was decided on: the metrics, dimensions' segments and audiences it reads."""

    member: bool
    changed: bool
    since: datetime | None
    was_member: bool
    values: Mapping[str, MetricValue]
    audience: Audience = field(repr=False, compare=False)

    @property
    def segment(self) -> str | None:
        """The stored form: `MEMBER`, or None when not a member."""
        return MEMBER if self.member else None

    @property
    def reason(self) -> str:
        """For a member, the condition that holds with the actual values
        (`value_tier=vip = vip and lifecycle=at_risk = at_risk`); otherwise why it does
        not hold (`not (lifecycle=active = at_risk)`). Rendered on demand."""
        if self.member:
            return explain(self.audience.condition, self.values)
        return explain_unmet(self.audience.condition, self.values)


def explain_unmet(condition: Condition, env: Env) -> str:
    """Why a condition does not hold in `env`, with the actual values: for `and`, the
    operands that fail; for `or`, every branch; for a let, its body."""
    match condition:
        case All(operands):
            return " and ".join(
                explain_unmet(operand, env) for operand in operands if not holds(operand, env)
            )
        case AnyOf(operands):
            return " and ".join(explain_unmet(operand, env) for operand in operands)
        case LetRef(name, body):
            return f"not {name} ({explain_unmet(body, env)})"
        case Not(operand):
            return explain(operand, env)  # the operand holds: that is why `not` fails
        case Truth():
            return render(condition, env)  # "has_ordered=false", "vip_at_risk=false"
    return f"not ({render(condition, env)})"


def dependency_order(audiences: Sequence[Audience]) -> tuple[list[Audience], list[list[str]]]:
    """The audiences ordered so that each follows the audiences it references (file order
    otherwise), and the cycles found, each as the names along it (`[a, b, a]`).

    A depth-first walk with a stack of its own: a document may chain thousands of
    audiences, deeper than Python's recursion."""
    by_name = {audience.name: audience for audience in audiences}
    ordered: list[Audience] = []
    cycles: list[list[str]] = []
    done: set[str] = set()
    for root in audiences:
        if root.name in done:
            continue
        path: list[str] = [root.name]  # the names being visited, root first
        pending = [iter(sorted(root.audiences & by_name.keys()))]
        while pending:
            reference = next(pending[-1], None)
            if reference is None:
                pending.pop()
                name = path.pop()
                done.add(name)
                ordered.append(by_name[name])
            elif reference in path:
                cycle = [*path[path.index(reference) :], reference]
                if not any(set(cycle) == set(found) for found in cycles):
                    cycles.append(cycle)
            elif reference not in done:
                path.append(reference)
                pending.append(iter(sorted(by_name[reference].audiences & by_name.keys())))
    return ordered, cycles


def decide_audiences(
    audiences: Sequence[Audience],
    env: dict[str, MetricValue],
    previous: Mapping[str, Assignment],
    now: datetime,
) -> dict[str, AudienceDecision]:
    """Every audience's membership at `now`, in dependency order. `env` holds the metrics
    and every dimension's settled segment by the dimension's name; each audience's
    membership is added to it (in place) for the audiences after it."""
    decisions = {}
    for audience in audiences:
        member = audience.predicate(env)
        env[audience.name] = member
        prior = previous.get(audience.name)
        was_member = prior is not None and prior.segment == MEMBER
        since = None
        if member:
            since = prior.since if was_member and prior is not None else now
        decisions[audience.name] = AudienceDecision(
            member=member,
            changed=member != was_member,
            since=since,
            was_member=was_member,
            values={name: env[name] for name in audience.reads},
            audience=audience,
        )
    return decisions


def memberships(audiences: Sequence[Audience], env: dict[str, MetricValue]) -> dict[str, bool]:
    """Membership of every audience in `env` (in place, as `decide_audiences`), without
    decisions: the next-change search's inner loop."""
    found = {}
    for audience in audiences:
        found[audience.name] = env[audience.name] = audience.predicate(env)
    return found
