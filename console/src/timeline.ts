// The ticket's history as one list in time order: messages, assignments and SLA moments, so an
// agent reads "assigned to Ann", "first response warned" and the replies where they happened.
import type { TicketView } from "./api/client";

export type Entry =
  | { kind: "message"; at: string; message: TicketView["messages"][number] }
  | { kind: "event"; at: string; text: string; tone: "info" | "warn" | "bad" };

const metric = (m: string) => m.replace(/_/g, " ");

export function timeline(t: TicketView, agentName: (id: string) => string): Entry[] {
  const out: Entry[] = t.messages.map((m) => ({ kind: "message", at: m.received_at, message: m }));
  for (const a of t.assignments) {
    out.push({ kind: "event", at: a.assigned_at, tone: "info", text: `Assigned to ${agentName(a.agent_id)}: ${a.reason}` });
    if (a.released_at) {
      out.push({ kind: "event", at: a.released_at, tone: "info", text: `Released from ${agentName(a.agent_id)}${a.release_reason ? `: ${a.release_reason}` : ""}` });
    }
  }
  for (const c of t.sla) {
    if (c.warned_at) out.push({ kind: "event", at: c.warned_at, tone: "warn", text: `SLA warning: ${metric(c.metric)} due soon` });
    if (c.breached_at) out.push({ kind: "event", at: c.breached_at, tone: "bad", text: `SLA breached: ${metric(c.metric)}` });
  }
  // Stable: entries at the same instant keep their order (a message before its assignment).
  return out
    .map((e, i) => ({ e, i }))
    .sort((x, y) => Date.parse(x.e.at) - Date.parse(y.e.at) || x.i - y.i)
    .map(({ e }) => e);
}
