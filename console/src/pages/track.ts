// Self-service order tracking: the order's status and shipments for its number and email.
import type { components } from "../api/schema";
import { byId, el, type ErrorBody } from "./dom";

type OrderView = components["schemas"]["OrderView"];

/** One shipment of an order (`fulfillments` is the shop's JSON; ingest/src/orders.rs). */
interface Fulfillment {
  tracking_company?: string | null;
  tracking_number?: string | null;
  shipment_status?: string | null;
}

document.addEventListener("DOMContentLoaded", () => {
  byId("track", HTMLFormElement).onsubmit = async (e) => {
    e.preventDefault();
    const out = byId("result");
    out.replaceChildren();
    const res = await fetch("/track", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify({
        order_number: byId("number", HTMLInputElement).value,
        email: byId("email", HTMLInputElement).value,
      }),
    });
    const o = (await res.json()) as OrderView | ErrorBody;
    if (!res.ok || "error" in o) {
      out.append(el("p", (o as ErrorBody).error.message, "muted"));
      return;
    }
    out.append(
      el("h2", "Order " + o.number),
      el("p", "Status: " + (o.fulfillment_status || o.financial_status || "received"), "status"),
    );
    for (const f of (o.fulfillments || []) as Fulfillment[]) {
      out.append(
        el("p", [f.tracking_company, f.tracking_number, f.shipment_status].filter(Boolean).join(" · "), "shipment"),
      );
    }
  };
});
