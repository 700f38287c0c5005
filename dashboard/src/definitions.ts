import { api, ApiError } from "./api";
import { byId, el, replace, setStatus, table, when } from "./dom";
import type { Diff, Preview, PreviewEntry, Version, VersionPage } from "./types";

const POLL_MS = 500;

// Versions, a diff between two, and a preview of candidate definitions followed, once it
// is done, by their activation over the version the preview compared with.
export class DefinitionsView {
  private previewed: { content: string; base: number } | null = null;

  constructor(private readonly onActivated: () => Promise<void>) {
    byId("diff-form").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.guard("definitions-status", () => this.diff());
    });
    byId("preview-form").addEventListener("submit", (e) => {
      e.preventDefault();
      void this.guard("preview-status", () => this.preview());
    });
    byId("preview-activate").addEventListener("click", () => void this.guard("preview-status", () => this.activate()));
    byId("preview-content").addEventListener("input", () => {
      // A candidate edited after its preview must be previewed again before activation.
      this.previewed = null;
      byId<HTMLButtonElement>("preview-activate").disabled = true;
    });
  }

  async load(): Promise<void> {
    const page = await api<VersionPage>("/v1/definitions?limit=50");
    replace(
      byId("definitions-versions"),
      table(
        "Versions, newest first",
        ["Version", "Activated", "By", "Note", "Changed dimensions", "Backfill"],
        page.items.map((v) => [
          v.in_force ? el("strong", {}, `${v.version} (in force)`) : String(v.version),
          when(v.activated_at),
          v.activated_by,
          v.note || "—",
          v.changed_dimensions.join(", ") || "—",
          backfill(v),
        ]),
      ),
    );
    const options = () => page.items.map((v) => el("option", { value: String(v.version) }, `Version ${v.version}`));
    const a = byId<HTMLSelectElement>("diff-a");
    const b = byId<HTMLSelectElement>("diff-b");
    a.replaceChildren(...options());
    b.replaceChildren(...options());
    if (page.items.length > 1) a.value = String(page.items[1].version);
    setStatus("definitions-status", `${page.items.length} versions; version ${page.in_force ?? "—"} in force`);
    const content = byId<HTMLTextAreaElement>("preview-content");
    if (!content.value && page.in_force !== null) {
      content.value = (await api<{ content: string }>(`/v1/definitions/${page.in_force}`)).content;
    }
  }

  private async guard(status: string, action: () => Promise<void>): Promise<void> {
    try {
      await action();
    } catch (error) {
      setStatus(status, error instanceof ApiError ? `${error.code}: ${error.message}` : String(error), true);
    }
  }

  private async diff(): Promise<void> {
    const a = byId<HTMLSelectElement>("diff-a").value;
    const b = byId<HTMLSelectElement>("diff-b").value;
    const d = await api<Diff>(`/v1/definitions/${a}/diff/${b}`);
    const changed = d.dimensions.filter((x) => x.status !== "unchanged");
    const audiences = d.audiences.filter((x) => x.status !== "unchanged");
    replace(
      byId("diff-view"),
      el("p", { class: "diff-summary" }, d.identical ? `Versions ${a} and ${b} are identical (but for formatting).` : `${changed.length} dimensions and ${audiences.length} audiences differ from version ${a} to ${b}.`),
      changed.length
        ? table(
            "Changed segments",
            ["Dimension", "Segment", "Change", "Condition in " + a, "Condition in " + b],
            changed.flatMap((dim) =>
              dim.segments.length
                ? dim.segments.map((s) => [dim.name, s.name, s.status, s.old_condition ?? "—", s.new_condition ?? "—"])
                : [[dim.name, "—", dim.status, "—", "—"]],
            ),
          )
        : null,
      audiences.length
        ? table("Changed audiences", ["Audience", "Change", "Condition in " + a, "Condition in " + b], audiences.map((x) => [x.name, x.status, x.old_condition ?? "—", x.new_condition ?? "—"]))
        : null,
      d.text ? textDiff(d.text) : null,
    );
  }

  private async preview(): Promise<void> {
    const content = byId<HTMLTextAreaElement>("preview-content").value;
    const activate = byId<HTMLButtonElement>("preview-activate");
    activate.disabled = true;
    setStatus("preview-status", "Starting the preview…");
    let job = await api<Preview>("/v1/definitions/previews", { method: "POST", body: JSON.stringify({ content, samples: 3 }) });
    while (job.status === "pending" || job.status === "running") {
      setStatus("preview-status", `Preview ${job.status}: ${job.progress.done} of ${job.progress.total ?? "?"} customers`);
      await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      job = await api<Preview>(`/v1/definitions/previews/${job.id}`);
    }
    if (job.status !== "done" || job.result === null) {
      setStatus("preview-status", `Preview ${job.status}${job.error ? `: ${job.error}` : ""}`, true);
      return;
    }
    const entries = [...job.result.dimensions, ...(job.result.audiences ?? [])];
    replace(byId("preview-view"), ...entries.filter((e) => e.status !== "unchanged" || moved(e) > 0).map(previewEntry));
    this.previewed = { content, base: job.base_version };
    activate.disabled = false;
    setStatus("preview-status", `Preview done over ${job.result.customers} customers against version ${job.base_version}; ${entries.reduce((n, e) => n + moved(e), 0)} would move`);
  }

  private async activate(): Promise<void> {
    if (this.previewed === null) return;
    const note = byId<HTMLInputElement>("preview-note").value;
    const v = await api<Version>("/v1/definitions", {
      method: "POST",
      body: JSON.stringify({ content: this.previewed.content, replaces: this.previewed.base, note }),
    });
    this.previewed = null;
    byId<HTMLButtonElement>("preview-activate").disabled = true;
    await this.load();
    await this.onActivated();
    setStatus("preview-status", `Activated version ${v.version} (replaces ${v.replaces ?? "none"}); changed: ${v.changed_dimensions.join(", ") || "nothing"}`);
  }
}

function backfill(v: Version): string {
  if (v.backfill === null) return "—";
  if (v.backfill.completed_at) return `done (${v.backfill.total})`;
  return `${v.backfill.queued} of ${v.backfill.total} queued`;
}

function moved(e: PreviewEntry): number {
  return e.transitions.filter((t) => t.from !== t.to).reduce((n, t) => n + t.customers, 0);
}

function previewEntry(e: PreviewEntry): HTMLElement {
  return el(
    "section",
    { class: "preview-entry" },
    el("h4", {}, `${e.name} (${e.status})`),
    table(`${e.name}: sizes now and under the candidate`, ["Segment", "Now", "Candidate"], e.segments.map((s) => [s.name, String(s.now), String(s.candidate)]), "compact"),
    table(
      `${e.name}: moves`,
      ["From", "To", "Customers"],
      e.transitions.filter((t) => t.from !== t.to).map((t) => [t.from ?? "(none)", t.to ?? "(none)", String(t.customers)]),
      "compact",
    ),
  );
}

function textDiff(text: string): HTMLElement {
  const pre = el("pre", { class: "diff", "aria-label": "Unified diff" });
  for (const line of text.split("\n")) {
    const cls = line.startsWith("+") ? "add" : line.startsWith("-") ? "del" : line.startsWith("@@") ? "hunk" : "";
    pre.append(el("span", cls ? { class: cls } : {}, line), "\n");
  }
  return pre;
}
