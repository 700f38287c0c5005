import { api, ApiError } from "./api";
import { byId, el, replace, setStatus, table, when } from "./dom";
import type { CustomerSegments, HistoryPage } from "./types";

// One customer at a glance: segments with their reasons, audiences, scores, aggregates, and
// the history as a timeline, newest first.
export async function showCustomer(id: string): Promise<void> {
  const view = byId("customer-view");
  setStatus("customer-status", `Loading ${id}…`);
  const path = `/v1/customers/${encodeURIComponent(id)}`;
  let current: CustomerSegments;
  let history: HistoryPage;
  try {
    [current, history] = await Promise.all([
      api<CustomerSegments>(`${path}/segments`),
      api<HistoryPage>(`${path}/history?limit=100`),
    ]);
  } catch (error) {
    replace(view);
    if (error instanceof ApiError && error.status === 404) {
      setStatus("customer-status", `No customer ${id}`, true);
      return;
    }
    throw error;
  }
  const segments = table(
    "Segments",
    ["Dimension", "Segment", "Since", "Reason"],
    Object.entries(current.segments).map(([d, a]) => [d, el("strong", {}, a.segment), when(a.since), a.reason]),
  );
  const audiences = Object.keys(current.audiences).length
    ? table(
        "Audiences",
        ["Audience", "Since", "Reason"],
        Object.entries(current.audiences).map(([name, a]) => [name, when(a.since), a.reason]),
      )
    : el("p", {}, "In no audience.");
  const scores = Object.keys(current.scores).length
    ? table(
        "Scores",
        ["Score", "Bucket"],
        Object.entries(current.scores).map(([name, v]) => [name, v === null ? "—" : String(v)]),
        "compact",
      )
    : null;
  const aggregates = current.aggregates
    ? table(
        "Aggregates",
        ["Fact", "Value"],
        Object.entries(current.aggregates)
          .filter(([, v]) => typeof v !== "object" || v === null)
          .map(([k, v]) => [k.replaceAll("_", " "), v === null ? "—" : isTime(v) ? when(v) : String(v)]),
        "compact",
      )
    : null;
  const timeline = el(
    "ol",
    { class: "timeline", "aria-label": "History, newest first" },
    ...history.items.map((h) =>
      el(
        "li",
        {},
        el("time", { datetime: h.evaluated_at }, when(h.evaluated_at)),
        el("div", {}, el("strong", {}, h.dimension), `: ${h.from_segment ?? "(none)"} → ${h.to_segment ?? "(none)"} `, el("span", { class: "cause" }, h.cause)),
        el("div", { class: "reason" }, h.reason),
      ),
    ),
  );
  replace(
    view,
    el("p", {}, `Evaluated ${when(current.evaluated_at)} under definitions version ${current.definition_version}` +
      (current.next_change_at ? `; next change due ${when(current.next_change_at)}` : "") + ` (from the ${current.source}).`),
    el("div", { class: "columns" }, el("div", {}, segments, audiences), el("div", {}, scores, aggregates)),
    el("h3", {}, "History"),
    history.items.length ? timeline : el("p", {}, "No changes recorded."),
  );
  setStatus("customer-status", `${id}: ${history.items.length} changes shown`);
}

function isTime(v: unknown): v is string {
  return typeof v === "string" && /^\d{4}-\d\d-\d\dT\d\d:\d\d/.test(v);
}
