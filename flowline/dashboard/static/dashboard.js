// The little the pages need beyond htmx; no inline script, so the CSP can forbid it.
"use strict";

// Buttons with data-confirm ask first (purging is for good).
document.addEventListener("click", (event) => {
  const button = event.target.closest("[data-confirm]");
  if (button && !window.confirm(button.dataset.confirm)) {
    event.preventDefault();
  }
});

// The header checkbox of a dead-letter table selects every row.
document.addEventListener("change", (event) => {
  const all = event.target.closest("[data-select-all]");
  if (!all) return;
  for (const box of document.querySelectorAll(all.dataset.selectAll)) {
    box.checked = all.checked;
  }
});

// The events page: a Server-Sent Events stream of server-rendered rows, newest on top.
// EventSource reconnects by itself and resumes after the last event it got (Last-Event-ID).
const feed = document.querySelector("[data-feed]");
if (feed) {
  const state = document.querySelector("[data-feed-state]");
  const show = (text, kind) => {
    state.textContent = text;
    state.className = `badge ${kind}`;
  };
  const source = new EventSource(feed.dataset.feed);
  source.addEventListener("ready", () => show("live", "ok"));
  source.addEventListener("error", () => show("reconnecting", "warn"));
  source.addEventListener("row", (event) => {
    feed.insertAdjacentHTML("afterbegin", event.data);
    document.querySelector("[data-feed-empty]")?.remove();
    while (feed.rows.length > 500) feed.deleteRow(-1);
  });
  // Closed before the page goes, so leaving it is no connection error.
  window.addEventListener("pagehide", () => source.close());
}
