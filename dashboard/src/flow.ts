import { api, query } from "./api";
import { chart, PALETTE } from "./charts";
import { byId, el, replace, setStatus } from "./dom";
import type { Catalog, Transitions } from "./types";

const NONE = "(none)";

// A Sankey from each segment at the start to each at the end of the moves in the period,
// and the same counts as a heat-mapped matrix (a table, readable without the chart).
export async function showFlow(catalog: Catalog): Promise<void> {
  const dimension = byId<HTMLSelectElement>("flow-dimension").value;
  const seconds = Number(byId<HTMLSelectElement>("flow-range").value);
  const until = new Date();
  const since = new Date(until.getTime() - seconds * 1000);
  setStatus("flow-status", "Loading…");
  const body = await api<Transitions>(
    `/v1/stats/transitions${query({ since: since.toISOString(), until: until.toISOString(), dimension })}`,
  );
  const moves = body.transitions.filter((t) => t.dimension === dimension);
  const node = byId("flow-chart");
  node.setAttribute("aria-label", `Flow between segments of ${dimension}: ${moves.length} kinds of move`);
  node.dataset.links = String(moves.length);
  const known = catalog.dimensions.find((d) => d.name === dimension)?.segments.map((s) => s.name) ?? ["member"];
  const seen = new Set<string>(known);
  for (const m of moves) {
    seen.add(m.from_segment ?? NONE);
    seen.add(m.to_segment ?? NONE);
  }
  const segments = [...seen].filter((s) => moves.some((m) => (m.from_segment ?? NONE) === s || (m.to_segment ?? NONE) === s));
  const from = (s: string | null) => `from ${s ?? NONE}`;
  const to = (s: string | null) => `to ${s ?? NONE}`;
  chart(node).setOption(
    {
      color: PALETTE,
      aria: { enabled: true },
      animation: false,
      tooltip: { trigger: "item" },
      series: [
        {
          type: "sankey",
          emphasis: { focus: "adjacency" },
          nodeAlign: "justify",
          label: { color: "#1a1a1a" },
          lineStyle: { color: "gradient", opacity: 0.45 },
          data: [
            ...segments.filter((s) => moves.some((m) => (m.from_segment ?? NONE) === s)).map((s) => ({ name: from(s === NONE ? null : s) })),
            ...segments.filter((s) => moves.some((m) => (m.to_segment ?? NONE) === s)).map((s) => ({ name: to(s === NONE ? null : s) })),
          ],
          links: moves.map((m) => ({ source: from(m.from_segment), target: to(m.to_segment), value: m.count })),
        },
      ],
    },
    true,
  );
  replace(byId("flow-matrix"), matrix(dimension, segments, moves));
  setStatus("flow-status", `${body.total} moves in all dimensions, ${moves.reduce((n, m) => n + m.count, 0)} in ${dimension}`);
}

function matrix(dimension: string, segments: string[], moves: Transitions["transitions"]): HTMLElement {
  if (moves.length === 0) return el("p", {}, "No moves in this period.");
  const count = new Map(moves.map((m) => [`${m.from_segment ?? NONE}\u0000${m.to_segment ?? NONE}`, m.count]));
  const max = Math.max(...moves.map((m) => m.count));
  const rows = segments.map((a) =>
    el(
      "tr",
      {},
      el("th", { scope: "row" }, a),
      ...segments.map((b) => {
        const n = count.get(`${a}\u0000${b}`) ?? 0;
        const cell = el("td", { class: "heat" }, n ? String(n) : "");
        // Lighter to stronger blue, kept light enough that the dark text keeps 6:1 contrast.
        cell.style.backgroundColor = n ? `rgba(0, 90, 181, ${(0.08 + 0.5 * (n / max)).toFixed(3)})` : "";
        return cell;
      }),
    ),
  );
  return el(
    "table",
    { class: "matrix" },
    el("caption", {}, `${dimension}: customers moved, from (rows) to (columns)`),
    el("thead", {}, el("tr", {}, el("td", {}), ...segments.map((b) => el("th", { scope: "col" }, b)))),
    el("tbody", {}, ...rows),
  );
}
