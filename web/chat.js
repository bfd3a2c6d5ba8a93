// The customer chat widget: opens a conversation, sends messages over the WebSocket (resent with
// the same client_id until acked), shows agent replies in order, resumes from the last seen
// sequence after a reconnect. Texts are shown with textContent only.
"use strict";

const chat = { token: null, ws: null, lastSeq: 0, pending: new Map(), counter: 0, typingTimer: null };

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
  ws.onopen = () => {
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
  ws.onclose = () => {
    document.getElementById("conn").textContent = "reconnecting…";
    setTimeout(open, 1000);
  };
}

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("start").onsubmit = async (e) => {
    e.preventDefault();
    const res = await fetch("/chat/sessions", { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify({ email: document.getElementById("email").value }) });
    const data = await res.json();
    if (!res.ok) { document.getElementById("start-error").textContent = data.error.message; return; }
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
    send({ type: "message", client_id: id, text });
    input.value = "";
  };
  document.getElementById("text").oninput = () => {
    send({ type: "typing", on: true });
    clearTimeout(chat.typingTimer);
    chat.typingTimer = setTimeout(() => send({ type: "typing", on: false }), 2000);
  };
});
