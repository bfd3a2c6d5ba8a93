// The ticket's timeline: messages, assignments and SLA moments in time order.
import { describe, expect, it } from "vitest";
import { timeline } from "../src/timeline";
import type { TicketView } from "../src/api/client";

const msg = (id: string, at: string, direction = "inbound") => ({ id, received_at: at, direction, text: id, channel: "api" });

describe("timeline", () => {
  it("interleaves assignments and SLA moments with the messages, in time order", () => {
    const t = {
      messages: [msg("m1", "2026-12-01T10:00:00Z"), msg("m2", "2026-12-01T10:20:00Z", "outbound")],
      assignments: [
        { id: "a1", agent_id: "ann", assigned_at: "2026-12-01T10:00:00Z", reason: "best score", released_at: "2026-12-01T10:30:00Z", release_reason: "transferred", candidates: [] },
      ],
      sla: [{ metric: "first_response", warned_at: "2026-12-01T10:10:00Z", breached_at: null }],
    } as unknown as TicketView;
    const e = timeline(t, (id) => (id === "ann" ? "Ann" : id));
    expect(e.map((x) => (x.kind === "message" ? x.message.id : x.text))).toEqual([
      "m1",
      "Assigned to Ann: best score",
      "SLA warning: first response due soon",
      "m2",
      "Released from Ann: transferred",
    ]);
    expect(e.filter((x) => x.kind === "event" && x.tone === "warn")).toHaveLength(1);
  });
});
