// Customer help centre: searches the published knowledge-base articles and shows one.
"use strict";
function el(tag, text, cls) { const e = document.createElement(tag); e.textContent = text; if (cls) e.className = cls; return e; }
async function show(id) {
  const box = document.getElementById("article");
  const res = await fetch("/help/articles/" + encodeURIComponent(id));
  const a = await res.json();
  box.replaceChildren();
  if (!res.ok) { box.append(el("p", a.error.message, "muted")); box.hidden = false; return; }
  box.append(el("h2", a.title));
  for (const para of a.body.split(/\n\s*\n|\n/)) { if (para.trim()) box.append(el("p", para)); }
  box.hidden = false;
  history.replaceState(null, "", "#" + a.id);
}
async function search(q) {
  const list = document.getElementById("hits");
  list.replaceChildren();
  document.getElementById("article").hidden = true;
  const res = await fetch("/help/search?q=" + encodeURIComponent(q));
  const hits = await res.json();
  if (!res.ok) { list.append(el("li", hits.error.message, "muted")); return; }
  if (hits.length === 0) { list.append(el("li", "No answer matches that yet. Try other words, or chat with us.", "muted")); return; }
  for (const h of hits) {
    const li = document.createElement("li");
    const link = el("a", h.title, "hit");
    link.href = "#" + h.id;
    link.onclick = (e) => { e.preventDefault(); show(h.id); };
    li.append(link, el("p", h.snippet, "muted"));
    list.append(li);
  }
}
document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("search").onsubmit = (e) => { e.preventDefault(); search(document.getElementById("q").value); };
  if (location.hash.length > 1) show(location.hash.slice(1));
});
