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
import type { components } from "../api/schema";
import { byId, el } from "./dom";

type Identity = components["schemas"]["Identity"];
type NewSession = components["schemas"]["NewSession"];
type Session = components["schemas"]["Session"];

declare global {
  interface Window {
    /** Set by a shop whose visitor is signed in (see above). */
    SwitchboardChat?: { identity?: Identity | null; identity_hmac?: string | null };
  }
}

/** Frames to the server (ingest/src/chat.rs `ClientFrame`). */
type ClientFrame =
  | { type: "message"; client_id: string; text: string }
  | { type: "typing"; on: boolean }
  | { type: "delivered"; seq: number };

/** Frames from the server (ingest/src/chat.rs `ServerFrame`). */
type ServerFrame =
  | { type: "ack"; client_id: string; message_id: string }
  | { type: "message"; seq: number; id: string; author: string; text: string; at: string }
  | { type: "typing"; who: string; on: boolean }
  | { type: "error"; code: string; message: string; client_id?: string; retry: boolean };

/** A message sent and not yet acked: its text and the node that shows it. */
interface Pending {
  text: string;
  node: HTMLElement;
}

const chat = {
  token: null as string | null,
  ws: null as WebSocket | null,
  lastSeq: 0,
  pending: new Map<string, Pending>(),
  counter: 0,
  typingTimer: undefined as number | undefined,
  typingSentAt: 0,
  backoff: 1000,
  idle: false,
};
const signed = window.SwitchboardChat && window.SwitchboardChat.identity ? window.SwitchboardChat : null;

function show(text: string, cls: string, meta?: string): HTMLElement {
  const d = el("div", text, "msg " + cls);
  if (meta) d.append(el("span", meta, "meta"));
  byId("messages").append(d);
  return d;
}

/** Marks a pending message's node (its `.meta`). */
function mark(p: Pending, text: string): void {
  const meta = p.node.querySelector(".meta");
  if (meta) meta.textContent = text;
}

function send(frame: ClientFrame): void {
  if (chat.ws && chat.ws.readyState === WebSocket.OPEN) chat.ws.send(JSON.stringify(frame));
}

function open(): void {
  const proto = location.protocol === "https:" ? "wss://" : "ws://";
  const ws = new WebSocket(
    proto + location.host + "/chat/ws?token=" + encodeURIComponent(chat.token ?? "") + "&last_seq=" + chat.lastSeq,
  );
  chat.ws = ws;
  chat.idle = false;
  ws.onopen = () => {
    chat.backoff = 1000;
    byId("conn").textContent = "connected";
    // Whatever was not acked goes again, with the same id (never twice downstream).
    for (const [id, p] of chat.pending) send({ type: "message", client_id: id, text: p.text });
  };
  ws.onmessage = (e: MessageEvent<string>) => {
    const f = JSON.parse(e.data) as ServerFrame;
    if (f.type === "ack") {
      const p = chat.pending.get(f.client_id);
      if (p) {
        mark(p, "sent");
        chat.pending.delete(f.client_id);
      }
    } else if (f.type === "message" && f.seq > chat.lastSeq) {
      chat.lastSeq = f.seq;
      show(f.text, "outbound", f.author === "bot" ? "assistant" : "support");
      byId("typing").textContent = "";
      send({ type: "delivered", seq: f.seq });
    } else if (f.type === "typing") {
      byId("typing").textContent = f.on ? "Support is typing…" : "";
    } else if (f.type === "error" && !f.retry && f.client_id) {
      const p = chat.pending.get(f.client_id);
      if (p) {
        mark(p, "not sent: " + f.message);
        chat.pending.delete(f.client_id);
      }
    }
  };
  ws.onclose = (e) => {
    if (e.code === 4408) {
      // Closed for being idle: back when the customer writes again.
      chat.idle = true;
      byId("conn").textContent = "paused";
      return;
    }
    byId("conn").textContent = "reconnecting…";
    // A refused or flooded socket (429, 1008) waits longer each time.
    setTimeout(open, chat.backoff);
    chat.backoff = Math.min(chat.backoff * 2, 30000);
  };
}

function wake(): void {
  if (chat.idle && chat.token) open();
}

/** The message of an API error's body, if it is one. */
function errorMessage(data: unknown): string | undefined {
  if (typeof data !== "object" || data === null || !("error" in data)) return undefined;
  const error: unknown = data.error;
  if (typeof error !== "object" || error === null || !("message" in error)) return undefined;
  return typeof error.message === "string" ? error.message : undefined;
}

document.addEventListener("DOMContentLoaded", () => {
  if (signed) {
    // The shop knows who this is: nothing to type.
    const email = byId("email", HTMLInputElement);
    email.value = signed.identity?.email || "";
    email.readOnly = true;
    email.required = false;
  }
  byId("start", HTMLFormElement).onsubmit = async (e) => {
    e.preventDefault();
    const body: NewSession = signed
      ? { identity: signed.identity, identity_hmac: signed.identity_hmac }
      : { email: byId("email", HTMLInputElement).value };
    const res = await fetch("/chat/sessions", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
    const data: unknown = await res.json().catch(() => ({ error: { message: res.statusText } }));
    if (!res.ok) {
      byId("start-error").textContent = errorMessage(data) || res.statusText;
      return;
    }
    chat.token = (data as Session).token;
    byId("start").hidden = true;
    byId("room").hidden = false;
    open();
  };
  byId("send", HTMLFormElement).onsubmit = (e) => {
    e.preventDefault();
    const input = byId("text", HTMLInputElement);
    const text = input.value.trim();
    if (!text) return;
    const id = "c" + Date.now().toString(36) + "-" + chat.counter++;
    chat.pending.set(id, { text, node: show(text, "inbound", "sending…") });
    // After an idle close the socket reopens and sends what is pending.
    if (chat.idle) wake();
    else send({ type: "message", client_id: id, text });
    input.value = "";
  };
  byId("text", HTMLInputElement).oninput = () => {
    wake();
    // One "typing" per two seconds at most (every frame spends the conversation's budget).
    const now = Date.now();
    if (!chat.typingSentAt || now - chat.typingSentAt > 2000) {
      chat.typingSentAt = now;
      send({ type: "typing", on: true });
    }
    clearTimeout(chat.typingTimer);
    chat.typingTimer = window.setTimeout(() => {
      chat.typingSentAt = 0;
      send({ type: "typing", on: false });
    }, 2000);
  };
});
