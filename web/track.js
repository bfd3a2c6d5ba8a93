// Self-service order tracking: the order's status and shipments for its number and email.
"use strict";
function el(tag, text, cls) { const e = document.createElement(tag); e.textContent = text; if (cls) e.className = cls; return e; }
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("track").onsubmit = async (e) => {
    e.preventDefault();
    const out = document.getElementById("result");
    out.replaceChildren();
    const res = await fetch("/track", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ order_number: document.getElementById("number").value, email: document.getElementById("email").value }) });
    const o = await res.json();
    if (!res.ok) { out.append(el("p", o.error.message, "muted")); return; }
    out.append(el("h2", "Order " + o.number), el("p", "Status: " + (o.fulfillment_status || o.financial_status || "received"), "status"));
    for (const f of o.fulfillments || []) {
      out.append(el("p", [f.tracking_company, f.tracking_number, f.shipment_status].filter(Boolean).join(" · "), "shipment"));
    }
  };
});
