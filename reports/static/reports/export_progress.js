// Live progress bars for export requests in the admin: polls the JSON progress
// view of every pending or running export; reloads when one finishes.
(function () {
  "use strict";
  const ACTIVE = ["pending", "running"];

  function poll(element) {
    fetch(element.dataset.url, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then((response) => (response.ok ? response.json() : null))
      .then((data) => {
        if (!data) return;
        element.querySelector("progress").value = data.percent;
        element.querySelector(".export-percent").textContent = data.percent + "%";
        const total = data.rows_total === null ? "" : " / " + data.rows_total.toLocaleString();
        element.querySelector(".export-rows").textContent = data.rows_done.toLocaleString() + total;
        if (ACTIVE.includes(data.status)) {
          setTimeout(() => poll(element), 2000);
        } else {
          window.location.reload();
        }
      })
      .catch(() => setTimeout(() => poll(element), 5000));
  }

  document.addEventListener("DOMContentLoaded", () => {
    document.querySelectorAll(".export-progress").forEach((element) => {
      if (ACTIVE.includes(element.dataset.status)) setTimeout(() => poll(element), 1000);
    });
  });
})();
