import { ApiError, query, serverEvents } from "./api";
import { byId, el, setStatus, when } from "./dom";
import type { Change } from "./types";

const KEEP = 200;
const RETRY_MS = 2000;

// The change stream (/v1/changes/stream), read with fetch so that the key goes in a header.
// A dropped connection resumes after the last event seen (Last-Event-ID).
export class LiveFeed {
  private controller: AbortController | null = null;
  private lastId: string | null = null;
  private paused = false;
  private received = 0;

  constructor(private readonly openCustomer: (id: string) => void) {
    byId("live-dimension").addEventListener("change", () => {
      this.lastId = null;
      this.restart();
    });
    byId("live-filter").addEventListener("input", () => this.applyFilter());
    const pause = byId<HTMLButtonElement>("live-pause");
    pause.addEventListener("click", () => {
      this.paused = !this.paused;
      pause.setAttribute("aria-pressed", String(this.paused));
      pause.textContent = this.paused ? "Resume" : "Pause";
    });
  }

  start(): void {
    if (this.controller === null) this.restart();
  }

  stop(): void {
    this.controller?.abort();
    this.controller = null;
  }

  private restart(): void {
    this.stop();
    byId("live-feed").replaceChildren();
    this.received = 0;
    const controller = new AbortController();
    this.controller = controller;
    void this.follow(controller.signal);
  }

  private async follow(signal: AbortSignal): Promise<void> {
    const dimension = byId<HTMLSelectElement>("live-dimension").value;
    while (!signal.aborted) {
      try {
        setStatus("live-status", "Connecting…");
        const events = serverEvents(`/v1/changes/stream${query({ dimension })}`, signal, this.lastId, () =>
          setStatus("live-status", `Connected: ${this.received} changes so far`),
        );
        for await (const event of events) {
          if (event.id) this.lastId = event.id;
          if (event.event === "segment.changed") this.add(JSON.parse(event.data).data as Change);
        }
        setStatus("live-status", "Stream ended; reconnecting…");
      } catch (error) {
        if (signal.aborted) return;
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          setStatus("live-status", `Not allowed: ${error.message}`, true);
          return;
        }
        setStatus("live-status", "Disconnected; reconnecting…", true);
      }
      await new Promise((resolve) => setTimeout(resolve, RETRY_MS));
    }
  }

  private add(change: Change): void {
    this.received += 1;
    setStatus("live-status", `Connected: ${this.received} changes so far${this.paused ? " (paused)" : ""}`);
    if (this.paused) return;
    const feed = byId("live-feed");
    const open = el("button", { type: "button", class: "link" }, change.customer_id);
    open.addEventListener("click", () => this.openCustomer(change.customer_id));
    const item = el(
      "li",
      { "data-customer": change.customer_id, "data-text": `${change.customer_id} ${change.from_segment ?? ""} ${change.to_segment ?? ""}`.toLowerCase() },
      el("time", { datetime: change.evaluated_at }, when(change.evaluated_at)),
      " ",
      open,
      " ",
      el("strong", {}, change.dimension),
      `: ${change.from_segment ?? "(none)"} → ${change.to_segment ?? "(none)"} `,
      el("span", { class: "cause" }, change.cause),
      el("div", { class: "reason" }, change.reason),
    );
    feed.prepend(item);
    this.filterOne(item);
    while (feed.children.length > KEEP) feed.lastElementChild?.remove();
  }

  private applyFilter(): void {
    for (const item of byId("live-feed").children) this.filterOne(item as HTMLElement);
  }

  private filterOne(item: HTMLElement): void {
    const needle = byId<HTMLInputElement>("live-filter").value.trim().toLowerCase();
    item.hidden = needle !== "" && !(item.dataset.text ?? "").includes(needle);
  }
}
