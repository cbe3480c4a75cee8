/* Operations dashboard: polls the JSON endpoint and renders it; no library, no build step.
 * Every value from the server goes through textContent (never innerHTML).
 */
(function () {
  "use strict";
  var root = document.getElementById("ops");
  if (!root) { return; }
  var COLORS = { "default": "#1f77b4", email: "#ff7f0e", media: "#d62728", reports: "#2ca02c", maintenance: "#9467bd" };
  var SVG = "http://www.w3.org/2000/svg";
  var pollMs = Math.max(500, parseFloat(root.dataset.pollSeconds || "3") * 1000);
  var canControl = root.dataset.canControl === "1";
  var canReplay = root.dataset.canReplay === "1";
  var range = "hour";
  var refreshes = 0;
  var timer = null;

  function $(selector, scope) { return (scope || document).querySelector(selector); }
  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === "text") { node.textContent = attrs[key]; }
      else if (key === "className") { node.className = attrs[key]; }
      else if (key.indexOf("data-") === 0 || key === "title" || key === "type") { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) { if (child) { node.appendChild(child); } });
    return node;
  }
  function td(text, className) { return el("td", { text: text === null || text === undefined ? "–" : String(text), className: className || "" }); }
  function age(seconds) {
    if (seconds === null || seconds === undefined) { return "–"; }
    if (seconds < 60) { return seconds.toFixed(1) + " s"; }
    if (seconds < 3600) { return Math.floor(seconds / 60) + " min " + Math.floor(seconds % 60) + " s"; }
    return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
  }
  function ago(iso) {
    if (!iso) { return "–"; }
    var seconds = (Date.now() - Date.parse(iso)) / 1000;
    return seconds >= 0 ? age(seconds) + " ago" : "in " + age(-seconds);
  }
  function secs(value) { return value === null || value === undefined ? "–" : (value < 1 ? (value * 1000).toFixed(0) + " ms" : value.toFixed(2) + " s"); }
  function kb(value) { return value ? (value / 1024).toFixed(0) + " MiB" : "–"; }
  function statusCell(status) { return el("td", { text: status, className: "status status-" + status }); }

  function post(url, body) {
    return fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRFToken": root.dataset.csrf },
      body: JSON.stringify(body)
    }).then(function (response) {
      return response.json().catch(function () { return { ok: false, outcome: "HTTP " + response.status }; });
    });
  }

  function renderBanner(banner) {
    var box = $("#banner");
    box.dataset.status = banner.status;
    $(".ops-banner-title", box).textContent = banner.check ? banner.status.toUpperCase() + ": " + banner.check : "All checks pass";
    $(".ops-banner-detail", box).textContent = banner.check ? " " + banner.detail + (banner.others ? " (+" + banner.others + " more)" : "") : "";
    $(".ops-banner-remedy", box).textContent = banner.remedy ? "What to do: " + banner.remedy : "";
  }

  function renderQueues(queues) {
    queues.forEach(function (q) {
      var row = $('#queues tr[data-queue="' + q.name + '"]');
      if (!row) { return; }
      row.dataset.status = q.status;
      row.dataset.depth = q.depth === null ? "" : q.depth;
      var cells = row.children;
      cells[1].textContent = q.status; cells[1].className = "status status-" + q.status;
      cells[2].textContent = q.depth === null ? "–" : q.depth.toLocaleString("en");
      cells[3].textContent = age(q.oldest_age_s);
      cells[4].textContent = q.consumers === null ? "?" : q.consumers;
      cells[4].title = (q.consumer_workers || []).join(", ");
      cells[5].textContent = q.succeeded_per_min === undefined ? "–" : q.succeeded_per_min;
      cells[6].textContent = q.failed_per_min === undefined ? "–" : q.failed_per_min;
      cells[7].textContent = q.retried_per_min === undefined ? "–" : q.retried_per_min;
      cells[8].textContent = secs(q.runtime_p50_s);
      cells[9].textContent = secs(q.runtime_p95_s);
      cells[10].textContent = q.detail;
      cells[10].title = q.remedy ? "What to do: " + q.remedy : "";
    });
  }

  function actionButton(label, action, worker, queue) {
    var button = el("button", { type: "button", text: label, "data-action": action, "data-worker": worker });
    if (queue) { button.setAttribute("data-queue", queue); }
    return button;
  }

  function renderWorkers(workers) {
    var body = $("#workers tbody");
    body.textContent = "";
    if (!workers.length) {
      body.appendChild(el("tr", {}, [el("td", { text: "No worker answers.", className: "status-critical" })]));
      return;
    }
    workers.forEach(function (w) {
      var row = el("tr", { "data-worker": w.worker, className: w.answering ? "" : "ops-gone" }, [
        td(w.worker), td(w.host), td((w.queues || []).join(", ")), td(w.pool), td(w.processes ? w.processes + " processes (started with " + w.concurrency + ")" : w.concurrency),
        td(w.answering ? (w.running || []).length : null), td(w.tasks_done), td(kb(w.memory_kb)),
        td(w.answering ? ago(w.last_heartbeat) : "gone, last seen " + ago(w.last_heartbeat))
      ]);
      if (canControl) {
        var cell = el("td");
        if (w.answering) {
          cell.appendChild(actionButton("Grow pool", "pool_grow", w.worker));
          cell.appendChild(actionButton("Shrink pool", "pool_shrink", w.worker));
          (w.queues || []).forEach(function (queue) { cell.appendChild(actionButton("Stop " + queue, "cancel_consumer", w.worker, queue)); });
          cell.appendChild(actionButton("Shut down", "shutdown", w.worker));
        }
        row.appendChild(cell);
      }
      body.appendChild(row);
    });
  }

  function renderDeadLetters(dead) {
    $("#dead-count").textContent = dead.unreplayed === null ? "" : "(" + dead.unreplayed + " not replayed)";
    var body = $("#dead-letters tbody");
    body.textContent = "";
    if (!dead.groups.length) { body.appendChild(el("tr", {}, [td("None waiting.")])); return; }
    dead.groups.forEach(function (g) {
      var row = el("tr", { "data-task": g.task_name, "data-error": g.exception_type }, [
        td(g.task_name), td(g.exception_type), td(g.count, "num"), td(g.queue), td(ago(g.last_seen)), td(g.message)
      ]);
      if (canReplay) {
        var button = el("button", { type: "button", text: "Replay " + g.count, className: "replay" });
        button.addEventListener("click", function () {
          if (!window.confirm("Replay " + g.count + " × " + g.task_name + " (" + g.exception_type + ")? The tasks are sent again.")) { return; }
          button.disabled = true;
          post(root.dataset.replayUrl, { task_name: g.task_name, exception_type: g.exception_type, confirm: true })
            .then(function (answer) { flash(answer); refresh(); });
        });
        row.appendChild(el("td", {}, [button]));
      }
      body.appendChild(row);
    });
  }

  function progress(done, total) {
    if (!total) { return el("span", { text: done + " done" }); }
    var bar = el("span", { className: "ops-progress", title: done + " / " + total }, [el("span")]);
    bar.firstChild.style.width = Math.min(100, (100 * done) / total).toFixed(1) + "%";
    return el("span", {}, [bar, el("span", { text: " " + done + " / " + total })]);
  }

  function renderWork(work) {
    var box = $("#work");
    box.textContent = "";
    var parts = [["campaigns", "Campaigns sending"], ["exports", "Exports running"], ["uploads", "Uploads processing"]];
    var shown = 0;
    parts.forEach(function (part) {
      var rows = work[part[0]];
      if (rows === undefined) { return; }
      shown += 1;
      var title = part[1] + " (" + (part[0] === "uploads" ? work.uploads_waiting : rows.length) + ")";
      var list = el("ul", { "data-kind": part[0] });
      rows.forEach(function (item) {
        list.appendChild(el("li", {}, [
          el("span", { text: item.name + " · " + item.status + " " }),
          part[0] === "uploads" ? el("span", { text: "since " + ago(item.created_at) }) : progress(item.done, item.total)
        ]));
      });
      if (!rows.length) { list.appendChild(el("li", { text: "none" })); }
      box.appendChild(el("h3", { text: title }));
      box.appendChild(list);
    });
    if (!shown) { box.appendChild(el("p", { text: "No queue app with tracked work is installed." })); }
  }

  function renderBeat(entries) {
    var body = $("#beat tbody");
    body.textContent = "";
    entries.forEach(function (e) {
      body.appendChild(el("tr", { "data-entry": e.name }, [
        td(e.name), td(e.task), td(e.schedule), td(e.queue || "(routed)"), td(e.enabled ? "yes" : "no"),
        td(ago(e.last_run_at)), td(e.enabled ? ago(e.next_run_at) : "disabled"), td(e.total_run_count, "num")
      ]));
    });
    if (!entries.length) { body.appendChild(el("tr", {}, [td("No periodic tasks.")])); }
  }

  function renderActions(actions) {
    var list = $("#actions");
    list.textContent = "";
    actions.forEach(function (a) {
      list.appendChild(el("li", { text: ago(a.at) + " · " + a.user + " · " + a.action + " · " + a.target + " · " + (a.succeeded ? "ok" : "failed") + ": " + a.outcome }));
    });
    if (!actions.length) { list.appendChild(el("li", { text: "none yet" })); }
  }

  function renderChecks(checks) {
    var body = $("#checks tbody");
    body.textContent = "";
    checks.forEach(function (c) {
      body.appendChild(el("tr", { "data-check": c.name }, [td(c.name), statusCell(c.status), td(c.detail), td(c.remedy)]));
    });
  }

  function chart(svg, series, metric) {
    while (svg.firstChild) { svg.removeChild(svg.firstChild); }
    var W = 420, H = 160, L = 40, B = 18, T = 8;
    var end = series.now, start = end - series.seconds;
    var max = 0;
    Object.keys(series.queues).forEach(function (name) {
      series.queues[name][metric].forEach(function (v) { if (v !== null && v > max) { max = v; } });
    });
    max = max > 0 ? max * 1.1 : 1;
    function x(t) { return L + ((t - start) / (end - start)) * (W - L - 4); }
    function y(v) { return T + (1 - v / max) * (H - T - B); }
    function text(tx, ty, value, anchor) {
      var node = document.createElementNS(SVG, "text");
      node.setAttribute("x", tx); node.setAttribute("y", ty);
      if (anchor) { node.setAttribute("text-anchor", anchor); }
      node.textContent = value;
      svg.appendChild(node);
    }
    var axis = document.createElementNS(SVG, "path");
    axis.setAttribute("d", "M" + L + " " + T + " V" + (H - B) + " H" + (W - 4));
    axis.setAttribute("stroke", "#999"); axis.setAttribute("fill", "none");
    svg.appendChild(axis);
    text(L - 4, T + 8, max >= 10 ? Math.round(max).toLocaleString("en") : max.toFixed(1), "end");
    text(L - 4, H - B, "0", "end");
    text(L, H - 4, series.range === "day" ? "-24 h" : "-60 min");
    text(W - 4, H - 4, "now", "end");
    Object.keys(series.queues).forEach(function (name) {
      var values = series.queues[name][metric], d = "", pen = "M";
      values.forEach(function (v, i) {
        if (v === null || v === undefined) { pen = "M"; return; }
        d += pen + x(series.t[i]).toFixed(1) + " " + y(v).toFixed(1) + " ";
        pen = "L";
      });
      if (!d) { return; }
      var path = document.createElementNS(SVG, "path");
      path.setAttribute("d", d); path.setAttribute("fill", "none");
      path.setAttribute("stroke", COLORS[name] || "#333"); path.setAttribute("stroke-width", "1.5");
      path.setAttribute("data-queue", name);
      svg.appendChild(path);
    });
  }

  function renderSeries(series) {
    if (!series) { return; }
    chart($("#chart-depth"), series, "depth");
    chart($("#chart-age"), series, "age");
    chart($("#chart-throughput"), series, "throughput");
    $("#series-note").textContent = series.t.length
      ? series.t.length + " samples from the collector (dashboard.tasks.collect_sample)"
      : "No samples yet: beat sends dashboard.tasks.collect_sample every 10 s to the maintenance queue.";
  }

  function flash(answer) {
    var box = $("#fetch-error");
    box.textContent = answer.ok ? "" : (answer.outcome || "failed");
    if (answer.ok) { $("#duration").textContent = "done: " + answer.outcome; }
  }

  function render(data) {
    renderBanner(data.banner);
    renderQueues(data.queues);
    renderWorkers(data.workers);
    renderDeadLetters(data.dead_letters);
    renderWork(data.work || {});
    renderBeat(data.beat);
    renderActions(data.actions);
    renderChecks(data.checks);
    renderSeries(data.series);
    refreshes += 1;
    var updated = $("#updated");
    updated.textContent = new Date().toLocaleTimeString();
    updated.dataset.refreshes = String(refreshes);
    $("#duration").textContent = "served in " + data.duration_ms + " ms";
    var errors = Object.keys(data.errors || {});
    $("#fetch-error").textContent = errors.length ? "Not shown: " + errors.map(function (k) { return k + " (" + data.errors[k] + ")"; }).join("; ") : "";
  }

  function refresh() {
    clearTimeout(timer);
    return fetch(root.dataset.url + "?range=" + range, { credentials: "same-origin", headers: { Accept: "application/json" } })
      .then(function (response) {
        if (!response.ok) { throw new Error("HTTP " + response.status); }
        return response.json();
      })
      .then(render)
      .catch(function (error) { $("#fetch-error").textContent = "Update failed: " + error.message; })
      .then(function () { timer = setTimeout(refresh, pollMs); });
  }

  $("#workers").addEventListener("click", function (event) {
    var button = event.target.closest("button[data-action]");
    if (!button) { return; }
    var action = button.dataset.action, worker = button.dataset.worker, queue = button.dataset.queue || "";
    var what = { pool_grow: "Add one pool process to", pool_shrink: "Remove one pool process from", shutdown: "Shut down (warm: running tasks finish)", cancel_consumer: "Stop consuming " + queue + " on" }[action];
    if (!window.confirm(what + " " + worker + "?")) { return; }
    button.disabled = true;
    post(root.dataset.actionUrl, { action: action, worker: worker, queue: queue, confirm: true })
      .then(function (answer) { flash(answer); refresh(); });
  });

  document.querySelectorAll(".ops-range button").forEach(function (button) {
    button.addEventListener("click", function () {
      range = button.dataset.range;
      document.querySelectorAll(".ops-range button").forEach(function (b) { b.classList.toggle("active", b === button); });
      refresh();
    });
  });
  document.querySelectorAll("#legend span").forEach(function (span) {
    span.firstChild.style.background = COLORS[span.dataset.queue] || "#333";
  });
  refresh();
})();
