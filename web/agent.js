// The agent console: sign in with a token, receive assignments live (Server-Sent Events), read
// the conversation with the customer's context, reply and resolve. Every text from the server is
// put on the page with textContent, never as HTML.
"use strict";

const state = { token: null, agent: null, ticket: null, assignments: new Map(), source: null, canned: [], current: null, customerName: null };

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

// A knowledge-base article in the side panel: clicking it puts its answer into the reply box.
function kbItem(id, label) {
  const li = el("li", label, "kb-item");
  li.tabIndex = 0;
  li.title = "Insert this answer";
  li.onclick = async () => {
    const a = await api("GET", "/v1/kb/articles/" + encodeURIComponent(id));
    const box = document.getElementById("reply-text");
    const text = a.body.replaceAll("{{", "").replaceAll("}}", "");
    box.value = box.value ? box.value + "\n" + text : text;
  };
  return li;
}

async function api(method, path, body) {
  const res = await fetch(path, {
    method,
    headers: Object.assign({ authorization: "Bearer " + state.token }, body ? { "content-type": "application/json" } : {}),
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (_) { data = text; }
  if (!res.ok) throw new Error((data && data.error && data.error.message) || res.statusText);
  return data;
}

function renderAssignments() {
  const ul = document.getElementById("assignments");
  ul.replaceChildren();
  for (const a of state.assignments.values()) {
    const li = el("li");
    li.dataset.ticket = a.ticket_id;
    li.append(el("strong", a.ticket_number), el("span", a.priority || "", "badge " + (a.priority || "")));
    li.append(el("div", a.subject || a.channel || "", "muted"));
    if (a.ticket_id === state.ticket) li.classList.add("active");
    li.onclick = () => openTicket(a.ticket_id);
    ul.append(li);
  }
  document.getElementById("empty").hidden = state.assignments.size > 0;
}

async function openTicket(id) {
  state.ticket = id;
  renderAssignments();
  const t = await api("GET", "/v1/tickets/" + id);
  state.current = t;
  const title = document.getElementById("ticket-title");
  title.textContent = t.number + " · " + (t.subject || t.channel) + " · " + t.status;
  // A chat the shop did not sign: whoever opened it only claims an identity.
  if (t.customer_verified === false) title.append(el("span", "unverified", "badge high unverified"));
  const box = document.getElementById("messages");
  box.replaceChildren();
  for (const m of t.messages) {
    const d = el("div", m.text, "msg " + m.direction);
    const meta = [m.author || m.direction, new Date(m.received_at).toLocaleString()];
    if (m.sentiment !== null && m.sentiment !== undefined) meta.push("sentiment " + m.sentiment.toFixed(2));
    d.append(el("span", meta.join(" · "), "meta"));
    // The front door could not check the sender (a mail's From, an unsigned chat).
    if (m.direction === "inbound" && m.metadata && m.metadata.sender_verified === "false") {
      d.append(el("span", m.channel === "email" ? "sender not authenticated" : "unverified", "badge high unverified"));
    }
    box.append(d);
  }
  document.getElementById("reply-form").hidden = false;
  const kb = document.getElementById("kb");
  kb.replaceChildren();
  for (const s of t.kb_suggestions || []) kb.append(kbItem(s.article_id, s.title + " (" + Number(s.similarity || 0).toFixed(2) + ")"));
  const c = await api("GET", "/v1/customers/" + t.customer_id);
  state.customerName = c.name;
  const dl = document.getElementById("customer");
  dl.replaceChildren();
  const add = (k, v) => { dl.append(el("dt", k), el("dd", v)); };
  add("Name", c.name || "—");
  if (c.verified === false) {
    const dd = el("dd");
    dd.append(el("span", "unverified", "badge high unverified"));
    if (c.claimed_email) dd.append(el("span", " claims " + c.claimed_email, "muted"));
    dl.append(el("dt", "Identity"), dd);
  }
  add("Tier", c.tier);
  for (const i of c.identities) add(i.kind, i.value);
  const orders = document.getElementById("orders");
  orders.replaceChildren();
  for (const o of c.orders) {
    const ship = (o.fulfillments && o.fulfillments[0]) || {};
    orders.append(el("li", o.number + " · " + (o.total_cents / 100).toFixed(2) + " " + o.currency + " · " + (o.fulfillment_status || o.financial_status || "") + (ship.tracking_number ? " · " + ship.tracking_number : "")));
  }
  const history = document.getElementById("history");
  history.replaceChildren();
  for (const h of c.tickets) if (h.id !== id) history.append(el("li", h.number + " · " + h.channel + " · " + h.status));
}

function connect() {
  if (state.source) state.source.close();
  const src = new EventSource("/v1/agents/" + state.agent + "/stream?access_token=" + encodeURIComponent(state.token));
  state.source = src;
  src.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.assignments = new Map(snap.assignments.map((a) => [a.ticket_id, a]));
    renderAssignments();
  });
  src.addEventListener("assignment", async (e) => {
    const a = JSON.parse(e.data);
    if (a.action === "assigned") {
      const t = await api("GET", "/v1/tickets/" + a.ticket_id);
      state.assignments.set(a.ticket_id, { ticket_id: a.ticket_id, ticket_number: a.ticket_number, subject: t.subject, priority: t.priority, channel: t.channel, status: t.status });
    } else {
      state.assignments.delete(a.ticket_id);
    }
    renderAssignments();
  });
  src.addEventListener("ticket", (e) => {
    const ev = JSON.parse(e.data);
    if (ev.ticket_id === state.ticket && ev.kind === "message_added") openTicket(state.ticket);
  });
}

async function signIn(token) {
  state.token = token;
  const me = await api("GET", "/v1/me");
  if (!me.agent_id) throw new Error("this token is not an agent's");
  state.agent = me.agent_id;
  const agent = await api("GET", "/v1/agents/" + me.agent_id);
  document.getElementById("who").textContent = agent.name + " (" + me.role + ")";
  document.getElementById("status").textContent = agent.status;
  document.getElementById("signin").hidden = true;
  document.getElementById("console").hidden = false;
  sessionStorage.setItem("switchboard-token", token);
  state.canned = await api("GET", "/v1/canned-replies");
  const sel = document.getElementById("canned");
  for (const c of state.canned) { const o = el("option", c.title); o.value = c.id; sel.append(o); }
  connect();
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("signin-form").onsubmit = async (e) => {
    e.preventDefault();
    try { await signIn(document.getElementById("token").value.trim()); }
    catch (err) { document.getElementById("signin-error").textContent = err.message; }
  };
  document.getElementById("go-online").onclick = async () => {
    const r = await api("PUT", "/v1/agents/" + state.agent + "/status", { status: "online" });
    document.getElementById("status").textContent = r.status || "online";
  };
  document.getElementById("reply-form").onsubmit = async (e) => {
    e.preventDefault();
    const text = document.getElementById("reply-text").value.trim();
    if (!text || !state.ticket) return;
    await api("POST", "/v1/tickets/" + state.ticket + "/replies", { agent_id: state.agent, text, request_id: crypto.randomUUID() });
    document.getElementById("reply-text").value = "";
    await openTicket(state.ticket);
  };
  document.getElementById("canned").onchange = (e) => {
    const c = state.canned.find((x) => x.id === e.target.value);
    if (!c) return;
    const text = c.body.replaceAll("{{name}}", state.customerName || "there").replaceAll("{{ticket}}", state.current ? state.current.number : "");
    const box = document.getElementById("reply-text");
    box.value = box.value ? box.value + "\n" + text : text;
    e.target.value = "";
  };
  document.getElementById("kb-search").onsubmit = async (e) => {
    e.preventDefault();
    const q = document.getElementById("kb-q").value.trim();
    if (!q) return;
    const page = await api("GET", "/v1/kb/articles?limit=5&q=" + encodeURIComponent(q));
    // Results have their own list: live ticket updates re-render the suggestions.
    const kb = document.getElementById("kb-results");
    kb.replaceChildren();
    for (const h of page.items) kb.append(kbItem(h.id, h.title));
    if (page.items.length === 0) kb.append(el("li", "no article matches", "muted"));
  };
  document.getElementById("resolve").onclick = async () => {
    await api("PUT", "/v1/tickets/" + state.ticket + "/status", { status: "resolved" });
    await openTicket(state.ticket);
  };
  const saved = sessionStorage.getItem("switchboard-token");
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem("switchboard-token"));
});
