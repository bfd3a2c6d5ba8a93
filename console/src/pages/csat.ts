// The satisfaction survey (the page is rendered by serving/src/csat.rs: buttons `#r button[data-r]`,
// the comment `#c`, the answer `#done`): posts the chosen rating (and comment) for the token in
// the URL. On its own, importing nothing: the page loads this one file.
document.addEventListener("DOMContentLoaded", () => {
  const token = location.pathname.split("/").pop() ?? "";
  document.querySelectorAll<HTMLButtonElement>("#r button").forEach((b) => {
    b.onclick = async () => {
      const comment = document.getElementById("c");
      const res = await fetch("/csat/" + encodeURIComponent(token), {
        method: "POST",
        headers: { "content-type": "application/json" },
        body: JSON.stringify({
          rating: Number(b.dataset.r),
          comment: (comment instanceof HTMLTextAreaElement && comment.value) || null,
        }),
      });
      const done = document.getElementById("done");
      if (done) done.textContent = res.ok ? "Thank you!" : "Sorry, that did not work.";
    };
  });
});

export {};
