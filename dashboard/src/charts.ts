// ECharts with only what the dashboard draws, rendered as SVG (readable in tests, crisp).
import { LineChart, SankeyChart } from "echarts/charts";
import { AriaComponent, GridComponent, LegendComponent, TooltipComponent } from "echarts/components";
import * as echarts from "echarts/core";
import { SVGRenderer } from "echarts/renderers";

echarts.use([LineChart, SankeyChart, GridComponent, TooltipComponent, LegendComponent, AriaComponent, SVGRenderer]);

// Okabe-Ito: distinguishable with colour-blindness, each at least 3:1 against white.
export const PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#8C564B"];

const charts = new Map<HTMLElement, echarts.ECharts>();

export function chart(node: HTMLElement): echarts.ECharts {
  let c = charts.get(node);
  if (c === undefined) {
    c = echarts.init(node, undefined, { renderer: "svg" });
    charts.set(node, c);
  }
  return c;
}

export function dispose(node: HTMLElement): void {
  charts.get(node)?.dispose();
  charts.delete(node);
}

export function resizeAll(): void {
  for (const c of charts.values()) c.resize();
}

window.addEventListener("resize", resizeAll);
