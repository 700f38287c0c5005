// The API's response bodies, as much of them as the dashboard reads (docs/api.md).

export interface Catalog {
  version: number;
  dimensions: { name: string; description: string; segments: { name: string; size: number }[] }[];
  audiences: { name: string; description: string; size: number }[];
}

export interface Sizes {
  since: string;
  until: string;
  step_seconds: number | null;
  at: string[];
  series: { dimension: string; segment: string; customers: number[] }[];
}

export interface Transitions {
  since: string;
  until: string;
  total: number;
  transitions: { dimension: string; from_segment: string | null; to_segment: string | null; count: number }[];
}

export interface Change {
  customer_id: string;
  dimension: string;
  from_segment: string | null;
  to_segment: string | null;
  reason: string;
  cause: string;
  definition_version: number;
  evaluated_at: string;
  sequence: number;
}

export interface Assignment {
  segment: string;
  since: string;
  reason: string;
  definition_version: number;
}

export interface CustomerSegments {
  customer_id: string;
  segments: Record<string, Assignment>;
  audiences: Record<string, { since: string; reason: string }>;
  scores: Record<string, number | null>;
  definition_version: number;
  evaluated_at: string;
  next_change_at: string | null;
  staleness_seconds: number;
  source: string;
  aggregates: Record<string, unknown> | null;
}

export interface HistoryPage {
  items: (Change & { id: number; caused_by_event_at: string | null })[];
  next_cursor: string | null;
}

export interface Version {
  version: number;
  activated_at: string;
  activated_by: string;
  note: string;
  replaces: number | null;
  changed_dimensions: string[];
  in_force: boolean;
  backfill: { total: number; queued: number; completed_at: string | null } | null;
}

export interface VersionPage {
  in_force: number | null;
  items: Version[];
  next_cursor: string | null;
}

export interface Diff {
  from_version: number;
  to_version: number;
  identical: boolean;
  dimensions: {
    name: string;
    status: string;
    reevaluated: boolean;
    segments: { name: string; status: string; old_condition: string | null; new_condition: string | null }[];
  }[];
  audiences: { name: string; status: string; old_condition: string | null; new_condition: string | null }[];
  text: string;
}

export interface PreviewEntry {
  name: string;
  status: string;
  segments: { name: string; now: number; candidate: number }[];
  transitions: { from: string | null; to: string | null; customers: number }[];
}

export interface Preview {
  id: string;
  status: "pending" | "running" | "done" | "failed" | "cancelled";
  base_version: number;
  progress: { done: number; total: number | null };
  result: { customers: number; dimensions: PreviewEntry[]; audiences?: PreviewEntry[] } | null;
  error: string | null;
}
