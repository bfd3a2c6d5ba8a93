// Self-service returns: the customer finds the order by its number and email, sees each line and
// why it cannot go back, picks what to return and why, and starts the return (the shop's policy
// may approve it at once).
import type { components } from "../api/schema";
import { byId, el, type ErrorBody } from "./dom";

type Returnable = components["schemas"]["Returnable"];
type Return = components["schemas"]["Return"];

const WORDS: Record<string, string> = {
  refund: "A refund",
  exchange: "An exchange",
  store_credit: "Store credit",
};

let found: { number: string; email: string } | null = null;

async function post<T>(path: string, body: unknown): Promise<T | ErrorBody> {
  const res = await fetch(path, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(body),
  });
  return (await res.json()) as T | ErrorBody;
}

function failed(v: unknown): v is ErrorBody {
  return typeof v === "object" && v !== null && "error" in v;
}

document.addEventListener("DOMContentLoaded", () => {
  // The bot's link names the order (`/returns?order=1001`): filled in, the email is next.
  const named = new URLSearchParams(window.location.search).get("order");
  if (named) {
    byId("number", HTMLInputElement).value = named.slice(0, 64);
    byId("email", HTMLInputElement).focus();
  }
  const out = byId("result");
  const start = byId("start", HTMLFormElement);
  byId("find", HTMLFormElement).onsubmit = async (e) => {
    e.preventDefault();
    out.replaceChildren();
    start.hidden = true;
    const number = byId("number", HTMLInputElement).value;
    const email = byId("email", HTMLInputElement).value;
    const r = await post<Returnable>("/returns/lookup", { order_number: number, email });
    if (failed(r)) {
      out.append(el("p", r.error.message, "muted"));
      return;
    }
    found = { number, email };
    const lines = byId("lines");
    lines.replaceChildren();
    for (const [i, l] of r.lines.entries()) {
      const row = el("p", null, "line");
      const left = l.quantity - l.returned;
      const label = el("label", `${l.title} (${(l.price_cents / 100).toFixed(2)} ${r.currency})`);
      label.htmlFor = `qty-${i}`;
      const qty = el("input");
      qty.type = "number";
      qty.id = `qty-${i}`;
      qty.min = "0";
      qty.max = String(Math.max(left, 0));
      qty.value = "0";
      qty.dataset.line = l.line_item_id;
      qty.disabled = !l.eligible;
      row.append(label, " ", qty);
      if (!l.eligible) row.append(el("span", " " + (l.why_not || "cannot be returned"), "muted"));
      lines.append(row);
    }
    const res = byId("resolution", HTMLSelectElement);
    res.replaceChildren(
      ...r.resolutions.map((x) => {
        const o = el("option", WORDS[x] || x);
        o.value = x;
        return o;
      }),
    );
    out.append(el("p", `Items can go back within ${r.window_days} days of delivery.`, "muted"));
    start.hidden = !r.lines.some((l) => l.eligible);
  };
  start.onsubmit = async (e) => {
    e.preventDefault();
    if (!found) return;
    out.replaceChildren();
    const items = [...document.querySelectorAll<HTMLInputElement>("#lines input[type=number]")]
      .filter((q) => !q.disabled && Number(q.value) > 0)
      .map((q) => ({ line_item_id: q.dataset.line || "", quantity: Number(q.value) }));
    const note = byId("note", HTMLTextAreaElement).value.trim();
    const r = await post<Return>("/returns", {
      order_number: found.number,
      email: found.email,
      reason: byId("reason", HTMLSelectElement).value,
      resolution: byId("resolution", HTMLSelectElement).value,
      items,
      ...(note ? { note } : {}),
    });
    if (failed(r)) {
      out.append(el("p", r.error.message, "muted"));
      return;
    }
    start.hidden = true;
    out.append(
      el("h2", `Return ${r.number}`),
      el(
        "p",
        r.status === "approved"
          ? "Your return is approved. We will email you the return label and instructions."
          : "We have your request. Our team will review it and email you.",
        "status",
      ),
    );
    if (r.customer_pays_shipping) out.append(el("p", "The return shipping is yours to pay for this reason.", "muted"));
  };
});
