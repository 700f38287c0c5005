// Calls to the StreamSeg API with the signed-in key, sent as a header (never in a URL).

const KEY_STORAGE = "streamseg.apiKey";
let key: string | null = sessionStorage.getItem(KEY_STORAGE);

export function signedIn(): boolean {
  return key !== null;
}

export function signIn(value: string): void {
  key = value;
  sessionStorage.setItem(KEY_STORAGE, value);
}

export function signOut(): void {
  key = null;
  sessionStorage.removeItem(KEY_STORAGE);
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    detail: string,
  ) {
    super(detail);
  }
}

function headers(extra?: HeadersInit): Headers {
  const h = new Headers(extra);
  if (key !== null) h.set("Authorization", `Bearer ${key}`);
  return h;
}

async function failure(r: Response): Promise<ApiError> {
  let code = `http_${r.status}`;
  let detail = r.statusText;
  try {
    const body = (await r.json()) as { error?: string; detail?: string };
    code = body.error ?? code;
    detail = body.detail ?? detail;
  } catch {
    // not a JSON error body
  }
  return new ApiError(r.status, code, detail);
}

export async function api<T>(path: string, init: RequestInit = {}): Promise<T> {
  const h = headers(init.headers);
  if (init.body !== undefined) h.set("Content-Type", "application/json");
  const r = await fetch(path, { ...init, headers: h, cache: "no-store" });
  if (!r.ok) throw await failure(r);
  if (r.status === 204) return undefined as T;
  return (await r.json()) as T;
}

export function query(params: Record<string, string | number | null | undefined>): string {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, String(v));
  const s = q.toString();
  return s ? `?${s}` : "";
}

export interface ServerEvent {
  id: string;
  event: string;
  data: string;
}

// Server-Sent Events read with fetch, since EventSource cannot send the key in a header.
export async function* serverEvents(
  path: string,
  signal: AbortSignal,
  lastEventId: string | null,
  onOpen: () => void = () => {},
): AsyncGenerator<ServerEvent> {
  const h = headers({ Accept: "text/event-stream" });
  if (lastEventId) h.set("Last-Event-ID", lastEventId);
  const r = await fetch(path, { headers: h, signal, cache: "no-store" });
  if (!r.ok || r.body === null) throw await failure(r);
  onOpen();
  const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let id = "";
  let event = "message";
  let data: string[] = [];
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    for (;;) {
      const end = buffer.search(/\r\n|\n|\r/);
      if (end < 0) break;
      const line = buffer.slice(0, end);
      buffer = buffer.slice(buffer.startsWith("\r\n", end) ? end + 2 : end + 1);
      if (line === "") {
        if (data.length) yield { id, event, data: data.join("\n") };
        event = "message";
        data = [];
        continue;
      }
      if (line.startsWith(":")) continue;
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
      if (field === "id") id = text;
      else if (field === "event") event = text;
      else if (field === "data") data.push(text);
    }
  }
}
