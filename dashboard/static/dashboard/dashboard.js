/* Operations dashboard: polls the JSON endpoint and renders it; no build step.
 * Charts: uPlot (vendor/uplot, pinned; time axis, values on hover, legend toggles).
 * Every value from the server goes through textContent (never innerHTML).
 */
(function () {
  "use strict";
  var root = document.getElementById("ops");
  if (!root) { return; }
  var COLORS = { "default": "#1f77b4", email: "#ff7f0e", media: "#d62728", reports: "#2ca02c", maintenance: "#9467bd" };
  var CHARTS = [["depth", "chart-depth"], ["age", "chart-age"], ["throughput", "chart-throughput"]];
  var charts = {};  // metric -> uPlot instance (window.opsCharts: for tests and the console)
  var current = null;  // the series shown
  window.opsCharts = charts;
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
  function until(iso) {
    if (!iso) { return "–"; }
    var seconds = (Date.parse(iso) - Date.now()) / 1000;
    return seconds > 1 ? "in " + age(seconds) : "due now";
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

  // Destructive actions (they stop work) look it: .ops-danger, and say what they do.
  var DESTRUCTIVE = { shutdown: true, cancel_consumer: true };
  function actionButton(label, action, worker, queue, title) {
    var button = el("button", { type: "button", text: label, "data-action": action, "data-worker": worker, title: title,
      className: DESTRUCTIVE[action] ? "ops-danger" : "" });
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
          cell.appendChild(actionButton("Grow pool", "pool_grow", w.worker, "", "Add one pool process"));
          cell.appendChild(actionButton("Shrink pool", "pool_shrink", w.worker, "", "Remove one pool process"));
          (w.queues || []).forEach(function (queue) {
            cell.appendChild(actionButton("Stop consuming " + queue, "cancel_consumer", w.worker, queue,
              "This worker stops taking " + queue + " messages; they wait for other workers"));
          });
          cell.appendChild(actionButton("Shut down worker", "shutdown", w.worker, "",
            "Warm shutdown: running tasks finish, then the worker exits (its supervisor may restart it)"));
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
            .then(function (answer) { flash(answer, "Replay " + g.task_name + " (" + g.exception_type + ")"); refresh(); });
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
        td(ago(e.last_run_at)), td(e.enabled ? until(e.next_run_at) : "disabled"), td(e.total_run_count, "num")
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

  function cssVar(name, fallback) {
    var value = getComputedStyle(root).getPropertyValue(name).trim();
    return value || fallback;
  }
  function number(value) {
    if (value === null || value === undefined) { return "–"; }
    return value >= 100 ? Math.round(value).toLocaleString("en") : String(Math.round(value * 10) / 10);
  }
  function chartData(series, metric) {
    var names = Object.keys(series.queues);
    return [series.t].concat(names.map(function (name) { return series.queues[name][metric]; }));
  }
  function chartWidth(box) { return Math.max(200, Math.floor(box.getBoundingClientRect().width)); }
  function makeChart(box, series, metric) {
    var quiet = cssVar("--body-quiet-color", "#666"), hairline = cssVar("--hairline-color", "#ddd");
    var axis = { stroke: quiet, grid: { stroke: hairline, width: 1 }, ticks: { stroke: hairline, width: 1 } };
    var options = {
      width: chartWidth(box),
      height: 180,
      // The whole range is shown even while the samples cover part of it.
      scales: {
        x: { time: true, range: function () { return [current.now - current.seconds, current.now]; } },
        y: { range: function (u, min, max) { return [0, max > 0 ? max * 1.1 : 1]; } }
      },
      axes: [axis, Object.assign({ size: 48, values: function (u, ticks) { return ticks.map(number); } }, axis)],
      cursor: { points: { size: 6 } },
      series: [{ label: "time" }].concat(Object.keys(series.queues).map(function (name) {
        return {
          label: name, stroke: COLORS[name] || "#333", width: 1.5,
          value: function (u, value) { return metric === "age" && value !== null && value !== undefined ? age(value) : number(value); }
        };
      }))
    };
    return new window.uPlot(options, chartData(series, metric), box);
  }

  function renderSeries(series) {
    if (!series || !window.uPlot) { return; }
    current = series;
    CHARTS.forEach(function (pair) {
      var metric = pair[0], box = document.getElementById(pair[1]);
      if (!charts[metric]) { charts[metric] = makeChart(box, series, metric); }
      else { charts[metric].setData(chartData(series, metric)); }
      box.dataset.points = String(series.t.length);
    });
    $("#throughput-unit").textContent = series.bucket_seconds ? "per minute" : "per sample (about 10 s)";
    $("#series-note").textContent = series.t.length
      ? series.t.length + (series.bucket_seconds ? " one-minute buckets (depth and age: the highest of each minute; throughput: the sum)" : " samples, every one") + " from the collector (dashboard.tasks.collect_sample)"
      : "No samples yet: beat sends dashboard.tasks.collect_sample every 10 s to the maintenance queue.";
  }

  window.addEventListener("resize", function () {
    CHARTS.forEach(function (pair) {
      var chart = charts[pair[0]];
      if (chart) { chart.setSize({ width: chartWidth(document.getElementById(pair[1])), height: 180 }); }
    });
  });

  // An action's answer stays until the operator dismisses it (refreshes do not touch it).
  function flash(answer, what) {
    var box = $("#action-result");
    box.dataset.ok = answer.ok ? "1" : "0";
    $(".ops-result-text", box).textContent = (what ? what + ": " : "") + (answer.ok ? "done: " : "failed: ") + (answer.outcome || "no answer");
    box.hidden = false;
  }
  $("#action-result button").addEventListener("click", function () { $("#action-result").hidden = true; });

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
    var what = { pool_grow: "Add one pool process to", pool_shrink: "Remove one pool process from", shutdown: "Shut down (warm: running tasks finish)", cancel_consumer: "Stop consuming " + queue + " on", add_consumer: "Start consuming " + queue + " on" }[action];
    if (!window.confirm(what + " " + worker + "?")) { return; }
    button.disabled = true;
    post(root.dataset.actionUrl, { action: action, worker: worker, queue: queue, confirm: true })
      .then(function (answer) { flash(answer, button.textContent + " " + worker); refresh(); });
  });

  document.querySelectorAll(".ops-range button").forEach(function (button) {
    button.addEventListener("click", function () {
      range = button.dataset.range;
      document.querySelectorAll(".ops-range button").forEach(function (b) { b.classList.toggle("active", b === button); });
      refresh();
    });
  });
  refresh();
})();
