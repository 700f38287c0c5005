import "./style.css";
import { api, ApiError, signedIn, signIn, signOut } from "./api";
import { resizeAll } from "./charts";
import { showCustomer } from "./customer";
import { DefinitionsView } from "./definitions";
import { byId, el, setStatus } from "./dom";
import { showFlow } from "./flow";
import { LiveFeed } from "./live";
import { showSizes } from "./sizes";
import type { Catalog } from "./types";

let catalog: Catalog | null = null;
const feed = new LiveFeed((id) => void openCustomer(id));
const definitions = new DefinitionsView(async () => {
  catalog = await api<Catalog>("/v1/segments");
  fillDimensions();
  byId("who").textContent = `Signed in; definitions version ${catalog.version} in force`;
  // Sizes and flows are drawn again, under the new version's segments, when next shown.
  loaded.delete("sizes");
  loaded.delete("flow");
});
const tabs = ["sizes", "flow", "live", "customer", "definitions"] as const;
type Tab = (typeof tabs)[number];
const loaded = new Set<Tab>();

function report(statusId: string) {
  return (error: unknown) =>
    setStatus(statusId, error instanceof ApiError ? `${error.code}: ${error.message}` : String(error), true);
}

function fillDimensions(): void {
  if (catalog === null) return;
  const names = [...catalog.dimensions.map((d) => d.name), ...catalog.audiences.map((a) => a.name)];
  for (const [id, withAll] of [["sizes-dimension", true], ["flow-dimension", false], ["live-dimension", true]] as const) {
    const select = byId<HTMLSelectElement>(id);
    const keep = select.value;
    select.replaceChildren(...(withAll ? [el("option", { value: "" }, "All")] : []), ...names.map((n) => el("option", { value: n }, n)));
    if (names.includes(keep)) select.value = keep;
  }
}

async function show(tab: Tab, focus = false): Promise<void> {
  for (const t of tabs) {
    const button = byId(`tab-${t}`);
    const selected = t === tab;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    byId(`view-${t}`).hidden = !selected;
    if (selected && focus) button.focus();
  }
  if (tab === "live") feed.start();
  requestAnimationFrame(resizeAll);
  if (loaded.has(tab) || catalog === null) return;
  loaded.add(tab);
  if (tab === "sizes") await showSizes(catalog).catch(report("sizes-status"));
  if (tab === "flow") await showFlow(catalog).catch(report("flow-status"));
  if (tab === "definitions") await definitions.load().catch(report("definitions-status"));
}

async function openCustomer(id: string): Promise<void> {
  byId<HTMLInputElement>("customer-id").value = id;
  await show("customer", true);
  await showCustomer(id).catch(report("customer-status"));
}

// Tabs as the ARIA authoring practices describe them: arrows, Home and End move between
// tabs, Tab moves into the panel.
byId("tabs").addEventListener("keydown", (e: KeyboardEvent) => {
  const current = tabs.findIndex((t) => byId(`tab-${t}`).getAttribute("aria-selected") === "true");
  const next: Record<string, number> = { ArrowRight: current + 1, ArrowLeft: current - 1, Home: 0, End: tabs.length - 1 };
  if (!(e.key in next)) return;
  e.preventDefault();
  void show(tabs[(next[e.key] + tabs.length) % tabs.length], true);
});
for (const t of tabs) byId(`tab-${t}`).addEventListener("click", () => void show(t));

byId("sizes-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (catalog) void showSizes(catalog).catch(report("sizes-status"));
});
byId("flow-form").addEventListener("submit", (e) => {
  e.preventDefault();
  if (catalog) void showFlow(catalog).catch(report("flow-status"));
});
byId("customer-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const id = byId<HTMLInputElement>("customer-id").value.trim();
  if (id) void showCustomer(id).catch(report("customer-status"));
});

async function enter(): Promise<boolean> {
  try {
    catalog = await api<Catalog>("/v1/segments");
  } catch (error) {
    if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
      signOut();
      setStatus("sign-in-error", `${error.code}: ${error.message}`, true);
      return false;
    }
    setStatus("sign-in-error", error instanceof ApiError ? `${error.code}: ${error.message}` : String(error), true);
    return false;
  }
  fillDimensions();
  byId("sign-in").hidden = true;
  byId("app").hidden = false;
  byId("sign-out").hidden = false;
  byId("who").textContent = `Signed in; definitions version ${catalog.version} in force`;
  await show("sizes");
  byId("tab-sizes").focus();
  return true;
}

byId("sign-in-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const input = byId<HTMLInputElement>("api-key");
  const value = input.value.trim();
  if (!value) return;
  signIn(value);
  input.value = "";
  void enter();
});

byId("sign-out").addEventListener("click", () => {
  signOut();
  feed.stop();
  location.reload();
});

if (signedIn()) void enter();
else byId("api-key").focus();
