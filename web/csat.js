// The satisfaction survey: posts the chosen rating (and comment) for the token in the URL.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const token = location.pathname.split("/").pop();
  document.querySelectorAll("#r button").forEach((b) => {
    b.onclick = async () => {
      const res = await fetch("/csat/" + encodeURIComponent(token), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({ rating: Number(b.dataset.r), comment: document.getElementById("c").value || null }),
      });
      document.getElementById("done").textContent = res.ok ? "Thank you!" : "Sorry, that did not work.";
    };
  });
});
