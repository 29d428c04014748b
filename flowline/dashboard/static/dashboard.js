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
