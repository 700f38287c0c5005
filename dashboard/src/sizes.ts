import { api, query } from "./api";
import { chart, dispose, PALETTE } from "./charts";
import { byId, el, replace, setStatus, table } from "./dom";
import type { Catalog, Sizes } from "./types";

const AUDIENCES = "Audiences";

// One stacked-area chart per dimension (a customer is in one segment of each, so the stack
// is the dimension's population); audiences overlap, so theirs are lines, not stacked.
export async function showSizes(catalog: Catalog): Promise<void> {
  const dimension = byId<HTMLSelectElement>("sizes-dimension").value;
  const seconds = Number(byId<HTMLSelectElement>("sizes-range").value);
  const until = new Date();
  const since = new Date(until.getTime() - seconds * 1000);
  setStatus("sizes-status", "Loading…");
  const sizes = await api<Sizes>(
    `/v1/stats/sizes${query({ since: since.toISOString(), until: until.toISOString(), dimension })}`,
  );
  const holder = byId("sizes-charts");
  for (const old of holder.querySelectorAll<HTMLElement>(".chart")) dispose(old);
  const audiences = new Set(catalog.audiences.map((a) => a.name));
  const order = [...catalog.dimensions.map((d) => d.name)];
  const groups = new Map<string, Sizes["series"]>();
  for (const s of sizes.series) {
    const group = audiences.has(s.dimension) ? AUDIENCES : s.dimension;
    if (!groups.has(group)) groups.set(group, []);
    groups.get(group)!.push(s);
  }
  const names = [...groups.keys()].sort((a, b) => rank(order, a) - rank(order, b));
  if (names.length === 0 || sizes.at.length === 0) {
    replace(holder, el("p", {}, "No size snapshots in this period yet."));
    setStatus("sizes-status", "No data");
    return;
  }
  const figures: HTMLElement[] = [];
  for (const name of names) {
    const series = groups.get(name)!;
    const segmentOrder = catalog.dimensions.find((d) => d.name === name)?.segments.map((s) => s.name) ?? [];
    series.sort((a, b) => rank(segmentOrder, a.segment) - rank(segmentOrder, b.segment));
    const label = (s: Sizes["series"][number]) => (name === AUDIENCES ? s.dimension : s.segment);
    const canvas = el("div", { class: "chart", role: "img", "aria-label": `Sizes of ${name} over time` });
    canvas.dataset.series = String(series.length);
    canvas.dataset.points = String(sizes.at.length);
    const last = sizes.at.length - 1;
    const summary = table(
      `${name}: latest sizes (${new Date(sizes.at[last]).toLocaleString()})`,
      [name === AUDIENCES ? "Audience" : "Segment", "Customers"],
      series.map((s) => [label(s), String(s.customers[last])]),
      "compact",
    );
    figures.push(el("figure", { class: "size-figure", "data-dimension": name }, el("figcaption", {}, name), canvas, summary));
    requestAnimationFrame(() =>
      chart(canvas).setOption({
        color: PALETTE,
        aria: { enabled: true },
        animation: false,
        tooltip: { trigger: "axis" },
        legend: { type: "scroll", top: 0 },
        grid: { left: 56, right: 16, top: 36, bottom: 28 },
        xAxis: { type: "time" },
        yAxis: { type: "value", name: "customers" },
        series: series.map((s) => ({
          name: label(s),
          type: "line",
          stack: name === AUDIENCES ? undefined : "size",
          areaStyle: name === AUDIENCES ? undefined : {},
          showSymbol: false,
          data: sizes.at.map((t, i) => [t, s.customers[i]]),
        })),
      }),
    );
  }
  replace(holder, ...figures);
  setStatus("sizes-status", `${sizes.at.length} points, every ${describeStep(sizes.step_seconds)}`);
}

function rank(order: string[], name: string): number {
  const i = order.indexOf(name);
  return i < 0 ? order.length : i;
}

function describeStep(seconds: number | null): string {
  if (seconds === null) return "—";
  if (seconds % 86400 === 0) return `${seconds / 86400} d`;
  if (seconds % 3600 === 0) return `${seconds / 3600} h`;
  if (seconds % 60 === 0) return `${seconds / 60} min`;
  return `${seconds} s`;
}
