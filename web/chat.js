// The customer chat widget: opens a conversation, sends messages over the WebSocket (resent with
// the same client_id until acked), shows agent replies in order, resumes from the last seen
// sequence after a reconnect. Texts are shown with textContent only.
//
// Identity: a shop whose visitor is signed in sets, before this script runs,
//   window.SwitchboardChat = { identity: { email, external_id, name }, identity_hmac }
// with identity_hmac = hex(HMAC-SHA256(identity secret, email, else external_id)) computed on its
// backend (never in the page: the secret must not reach the browser). The chat is then that
// customer's. Without it the visitor types an email, and the chat is unverified: its own
// customer, the address only a claim.
"use strict";

const chat = { token: null, ws: null, lastSeq: 0, pending: new Map(), counter: 0, typingTimer: null, backoff: 1000, idle: false };
const signed = (window.SwitchboardChat && window.SwitchboardChat.identity) ? window.SwitchboardChat : null;

function el(tag, text, cls) {
  const e = document.createElement(tag);
  e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function show(text, cls, meta) {
  const d = el("div", text, "msg " + cls);
  if (meta) d.append(el("span", meta, "meta"));
  document.getElementById("messages").append(d);
  return d;
}

function send(frame) {
  if (chat.ws && chat.ws.readyState === WebSocket.OPEN) chat.ws.send(JSON.stringify(frame));
}

function open() {
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(proto + location.host + "/chat/ws?token=" + encodeURIComponent(chat.token) + "&last_seq=" + chat.lastSeq);
  chat.ws = ws;
  chat.idle = false;
  ws.onopen = () => {
    chat.backoff = 1000;
    document.getElementById("conn").textContent = "connected";
    // Whatever was not acked goes again, with the same id (never twice downstream).
    for (const [id, p] of chat.pending) send({ type: "message", client_id: id, text: p.text });
  };
  ws.onmessage = (e) => {
    const f = JSON.parse(e.data);
    if (f.type === "ack") {
      const p = chat.pending.get(f.client_id);
      if (p) { p.node.querySelector(".meta").textContent = "sent"; chat.pending.delete(f.client_id); }
    } else if (f.type === "message" && f.seq > chat.lastSeq) {
      chat.lastSeq = f.seq;
      show(f.text, "outbound", f.author === "bot" ? "assistant" : "support");
      document.getElementById("typing").textContent = "";
      send({ type: "delivered", seq: f.seq });
    } else if (f.type === "typing") {
      document.getElementById("typing").textContent = f.on ? "Support is typing…" : "";
    } else if (f.type === "error" && !f.retry && f.client_id) {
      const p = chat.pending.get(f.client_id);
      if (p) { p.node.querySelector(".meta").textContent = "not sent: " + f.message; chat.pending.delete(f.client_id); }
    }
  };
  ws.onclose = (e) => {
    if (e.code === 4408) {
      // Closed for being idle: back when the customer writes again.
      chat.idle = true;
      document.getElementById("conn").textContent = "paused";
      return;
    }
    document.getElementById("conn").textContent = "reconnecting…";
    // A refused or flooded socket (429, 1008) waits longer each time.
    setTimeout(open, chat.backoff);
    chat.backoff = Math.min(chat.backoff * 2, 30000);
  };
}

function wake() {
  if (chat.idle && chat.token) open();
}

document.addEventListener("DOMContentLoaded", () => {
  if (signed) {
    // The shop knows who this is: nothing to type.
    const email = document.getElementById("email");
    email.value = signed.identity.email || "";
    email.readOnly = true;
    email.required = false;
  }
  document.getElementById("start").onsubmit = async (e) => {
    e.preventDefault();
    const body = signed
      ? { identity: signed.identity, identity_hmac: signed.identity_hmac }
      : { email: document.getElementById("email").value };
    const res = await fetch("/chat/sessions", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(body) });
    const data = await res.json().catch(() => ({ error: { message: res.statusText } }));
    if (!res.ok) { document.getElementById("start-error").textContent = (data.error && data.error.message) || res.statusText; return; }
    chat.token = data.token;
    document.getElementById("start").hidden = true;
    document.getElementById("room").hidden = false;
    open();
  };
  document.getElementById("send").onsubmit = (e) => {
    e.preventDefault();
    const input = document.getElementById("text");
    const text = input.value.trim();
    if (!text) return;
    const id = "c" + Date.now().toString(36) + "-" + (chat.counter++);
    chat.pending.set(id, { text, node: show(text, "inbound", "sending…") });
    // After an idle close the socket reopens and sends what is pending.
    if (chat.idle) wake(); else send({ type: "message", client_id: id, text });
    input.value = "";
  };
  document.getElementById("text").oninput = () => {
    wake();
    // One "typing" per two seconds at most (every frame spends the conversation's budget).
    const now = Date.now();
    if (!chat.typingSentAt || now - chat.typingSentAt > 2000) { chat.typingSentAt = now; send({ type: "typing", on: true }); }
    clearTimeout(chat.typingTimer);
    chat.typingTimer = setTimeout(() => { chat.typingSentAt = 0; send({ type: "typing", on: false }); }, 2000);
  };
});
