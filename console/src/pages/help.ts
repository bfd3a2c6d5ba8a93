// Customer help centre: searches the published knowledge-base articles and shows one.
import type { components } from "../api/schema";
import { byId, el, type ErrorBody } from "./dom";

type HelpArticle = components["schemas"]["HelpArticle"];
type KbHit = components["schemas"]["KbHit"];

async function show(id: string): Promise<void> {
  const box = byId("article");
  const res = await fetch("/help/articles/" + encodeURIComponent(id));
  const a = (await res.json()) as HelpArticle | ErrorBody;
  box.replaceChildren();
  if (!res.ok || "error" in a) {
    box.append(el("p", (a as ErrorBody).error.message, "muted"));
    box.hidden = false;
    return;
  }
  box.append(el("h2", a.title));
  for (const para of a.body.split(/\n\s*\n|\n/)) {
    if (para.trim()) box.append(el("p", para));
  }
  box.hidden = false;
  history.replaceState(null, "", "#" + a.id);
}

async function search(q: string): Promise<void> {
  const list = byId("hits");
  list.replaceChildren();
  byId("article").hidden = true;
  const res = await fetch("/help/search?q=" + encodeURIComponent(q));
  const hits = (await res.json()) as KbHit[] | ErrorBody;
  if (!res.ok || !Array.isArray(hits)) {
    list.append(el("li", (hits as ErrorBody).error.message, "muted"));
    return;
  }
  if (hits.length === 0) {
    list.append(el("li", "No answer matches that yet. Try other words, or chat with us.", "muted"));
    return;
  }
  for (const h of hits) {
    const li = document.createElement("li");
    const link = el("a", h.title, "hit");
    link.href = "#" + h.id;
    link.onclick = (e) => {
      e.preventDefault();
      void show(h.id);
    };
    li.append(link, el("p", h.snippet, "muted"));
    list.append(li);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  byId("search", HTMLFormElement).onsubmit = (e) => {
    e.preventDefault();
    void search(byId("q", HTMLInputElement).value);
  };
  if (location.hash.length > 1) void show(location.hash.slice(1));
});
