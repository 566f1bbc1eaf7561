// The live page: one Server-Sent Events stream, one payload per server tick (counters, chart
// points, rankings, alerts that changed, the rows of this page's view). Every field of a
// transaction is put on the page with textContent, never innerHTML: a field is data, not markup.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  const maxRows = parseInt(document.body.dataset.history, 10) || 200;
  const SERIES_S = 600;
  const tbody = $("decisions");
  const alertsBody = $("alerts");
  const status = $("status");
  const analyst = $("analyst");
  const reviews = new Map();   // transaction id -> the latest analyst verdict
  const alerts = new Map();    // alert key -> alert (open ones are replaced when they close)
  const series = new Map();    // second -> [legit, fraud]
  const rulesSeen = new Set();
  let paused = false;
  let held = [];               // rows that arrived while paused, oldest first
  let wantedAlert = null;      // from #alert/<id>
  let source = null;
  let shown = null;            // what the detail panel shows: {kind, key}

  analyst.value = window.localStorage.getItem("fraudstream.analyst") || "";
  analyst.addEventListener("change", () => {
    window.localStorage.setItem("fraudstream.analyst", analyst.value.trim());
  });

  // --- formatting ------------------------------------------------------------------------

  function pad(n, w) { return String(n).padStart(w || 2, "0"); }

  // "2026-12-02 14:03:07" in the browser's time zone; a value that is not a time as it is
  function stamp(ts) {
    if (ts == null || ts === "") return "";
    const d = typeof ts === "number" ? new Date(ts) : new Date(String(ts));
    if (isNaN(d.getTime())) return String(ts);
    return d.getFullYear() + "-" + pad(d.getMonth() + 1) + "-" + pad(d.getDate()) + " " +
      pad(d.getHours()) + ":" + pad(d.getMinutes()) + ":" + pad(d.getSeconds());
  }

  function num(n) { return typeof n === "number" ? n.toLocaleString() : String(n); }

  function score(s) { return typeof s === "number" ? s.toFixed(4) : ""; }

  function text(tag, value, className) {
    const el = document.createElement(tag);
    el.textContent = value == null ? "" : String(value);
    if (className) el.className = className;
    return el;
  }

  function cell(row, value, className) { row.appendChild(text("td", value, className)); }

  function decisionOf(item) {
    const r = item.record || {};
    return r.decision && typeof r.decision === "object" ? r.decision : {};
  }

  function reasonsOf(decision) {
    return Array.isArray(decision.reasons) ? decision.reasons.filter((r) => r && typeof r === "object") : [];
  }

  function reasonText(decision) {
    return reasonsOf(decision).map((r) => String(r.reason == null ? "" : r.reason)).join("; ");
  }

  // --- the decisions table -----------------------------------------------------------------

  function row(item) {
    const record = item.record || {};
    const decision = decisionOf(item);
    const tr = document.createElement("tr");
    tr.className = item.outcome === "fraud" ? "fraud" : "legit";
    tr.dataset.outcome = tr.className;
    tr.dataset.id = record.id == null ? "" : String(record.id);
    cell(tr, stamp(record.timestamp), "time");
    cell(tr, item.outcome);
    cell(tr, score(decision.score), "num");
    cell(tr, record.id, "id");
    cell(tr, record.source);
    cell(tr, record.target);
    const amount = typeof record.amount === "number" ? record.amount.toFixed(2) : record.amount;
    cell(tr, (amount == null ? "" : amount) + " " + (record.currency || ""), "num");
    cell(tr, item.outcome === "fraud" ? reasonText(decision) : "", "reasons");
    tr.appendChild(reviewCell(item, tr.dataset.id));
    tr.addEventListener("click", (event) => {
      if (event.target.closest("button")) return;
      showDecision(item);
    });
    for (const r of reasonsOf(decision)) noteRule(r.rule);
    return tr;
  }

  // who confirmed or cleared it, or (for fraud, and in the detail panel) the two buttons
  function reviewCell(item, id, always) {
    const td = document.createElement("td");
    td.className = "review";
    const done = reviews.get(id);
    if (done) {
      td.textContent = (done.verdict === "fraud" ? "confirmed by " : "cleared by ") + done.reviewer;
      return td;
    }
    if (item.outcome !== "fraud" && !always) return td;
    for (const [verdict, label] of [["fraud", "confirm"], ["legit", "clear"]]) {
      const button = text("button", label, verdict === "fraud" ? "confirm" : "clear");
      button.type = "button";
      button.addEventListener("click", () => review(item, verdict, td));
      td.appendChild(button);
    }
    return td;
  }

  async function review(item, verdict, td) {
    const name = analyst.value.trim();
    if (!name) { analyst.focus(); analyst.placeholder = "your name first"; return; }
    const record = item.record || {};
    const body = {
      id: record.id, verdict: verdict, analyst: name, timestamp: record.timestamp,
      target: record.target, merchant: record.merchant,
    };
    td.textContent = "sending…";
    try {
      const response = await fetch("review" + tokenQuery(), {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const answer = await response.json();
      td.textContent = response.ok ? "sent, waiting for the labels topic…" : answer.error;
    } catch (e) {
      td.textContent = "not sent: " + e;
    }
  }

  function addRows(items) {
    const fragment = document.createDocumentFragment();
    for (let i = items.length - 1; i >= 0; i--) fragment.appendChild(row(items[i]));
    tbody.insertBefore(fragment, tbody.firstChild);  // newest first
    // Over maxRows, fraud rows keep up to half of the table and the oldest legit rows go
    // first, as the server chooses rows (fraud first): rows come in the order the topics are
    // read, and while the page counts the history the small fraud topic is read long before
    // the last legit rows, which would push every fraud row out. The other half keeps the
    // newest legit rows coming.
    let excess = tbody.rows.length - maxRows;
    if (excess > 0) {
      const fraud = tbody.querySelectorAll("tr.fraud");
      const legit = tbody.querySelectorAll("tr.legit");
      const fraudKept = Math.max(Math.ceil(maxRows / 2), maxRows - legit.length);
      for (let i = fraud.length - 1; i >= fraudKept && excess > 0; i--, excess--) fraud[i].remove();
      for (let i = legit.length - 1; i >= 0 && excess > 0; i--, excess--) legit[i].remove();
      while (excess-- > 0) tbody.deleteRow(-1);
    }
  }

  function showReviews(list) {
    for (const r of list) {
      const id = String(r.id);
      reviews.set(id, r);
      for (const tr of tbody.querySelectorAll("tr")) {
        if (tr.dataset.id === id) {
          tr.replaceChild(reviewCell({ outcome: tr.dataset.outcome }, id), tr.querySelector("td.review"));
        }
      }
    }
    if (list.length) renderAlerts();
  }

  // --- pause, filters --------------------------------------------------------------------

  $("pause").addEventListener("click", () => {
    paused = !paused;
    $("pause").textContent = paused ? "resume" : "pause";
    status.textContent = paused ? "paused" : "live";
    status.className = paused ? "status paused" : "status live";
    if (!paused) { addRows(held); held = []; }
    $("paused-note").textContent = "";
  });

  function view() {
    const params = new URLSearchParams();
    const outcome = $("filter-outcome").value;
    const rule = $("filter-rule").value;
    const account = $("filter-account").value.trim();
    if (outcome) params.set("outcome", outcome);
    if (rule) params.set("rule", rule);
    if (account) params.set("account", account);
    return params;
  }

  function tokenQuery() {
    const token = new URLSearchParams(window.location.search).get("token");
    return token == null ? "" : "?" + new URLSearchParams({ token: token }).toString();
  }

  function noteRule(rule) {
    if (typeof rule !== "string" || !rule || rulesSeen.has(rule)) return;
    rulesSeen.add(rule);
    const select = $("filter-rule");
    select.appendChild(text("option", rule)).value = rule;
  }

  for (const id of ["filter-outcome", "filter-rule"]) $(id).addEventListener("change", connect);
  $("filter-account").addEventListener("change", connect);
  $("filters").addEventListener("submit", (e) => { e.preventDefault(); connect(); });
  $("filter-clear").addEventListener("click", () => {
    $("filter-outcome").value = ""; $("filter-rule").value = ""; $("filter-account").value = "";
    connect();
  });

  // --- charts (uPlot, served from /static/vendor) -----------------------------------------

  function chart(id, seriesOpts, axes) {
    const el = $(id);
    return new uPlot({
      width: Math.max(el.clientWidth, 300), height: 170,
      series: [{}].concat(seriesOpts), axes: axes,
      scales: { x: { time: true } }, legend: { live: false },
    }, [[], ...seriesOpts.map(() => [])], el);
  }

  // axis labels that fit the axis's width at any rate: 950, 12k, 1.5M (uPlot's own
  // "12,000" is clipped at the left edge)
  function compact(u, splits) {
    return splits.map((v) => {
      if (v == null) return "";
      const a = Math.abs(v);
      if (a >= 1e6) return +(v / 1e6).toFixed(1) + "M";
      if (a >= 1e3) return +(v / 1e3).toFixed(1) + "k";
      return String(+v.toFixed(2));
    });
  }

  // the time axis: one line, "14:03:05" in the browser's time zone, ticks far enough apart
  // for it (uPlot's own adds the date under the first tick, which overlapped the next one)
  const clock = { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false };
  const timeAxis = {
    space: 80,
    values: (u, splits) =>
      splits.map((v) => (v == null ? "" : new Date(v * 1000).toLocaleTimeString([], clock))),
  };

  const throughput = chart("chart-throughput", [
    { label: "decisions/s", stroke: "#2b6cb0", width: 1.5 },
    { label: "fraud/s", stroke: "#c01818", width: 1.5, scale: "fraud" },
  ], [timeAxis, { values: compact }, { scale: "fraud", side: 1, grid: { show: false }, values: compact }]);
  const fraudRate = chart("chart-fraud-rate", [
    { label: "fraud %", stroke: "#c01818", width: 1.5, fill: "rgba(192,24,24,0.08)" },
  ], [timeAxis, {}]);

  function drawCharts() {
    const secs = Array.from(series.keys()).sort((a, b) => a - b);
    const newest = secs.length ? secs[secs.length - 1] : 0;
    while (secs.length && secs[0] <= newest - SERIES_S) series.delete(secs.shift());
    const total = [], fraud = [], rate = [];
    let windowTotal = 0, windowFraud = 0;
    for (let i = 0, j = 0; i < secs.length; i++) {
      const [l, f] = series.get(secs[i]);
      total.push(l + f); fraud.push(f);
      windowTotal += l + f; windowFraud += f;
      while (secs[j] <= secs[i] - 60) {
        const [lj, fj] = series.get(secs[j]);
        windowTotal -= lj + fj; windowFraud -= fj; j++;
      }
      rate.push(windowTotal ? (100 * windowFraud) / windowTotal : 0);
    }
    throughput.setData([secs, total, fraud]);
    fraudRate.setData([secs, rate]);
  }

  window.addEventListener("resize", () => {
    for (const [u, id] of [[throughput, "chart-throughput"], [fraudRate, "chart-fraud-rate"]]) {
      u.setSize({ width: Math.max($(id).clientWidth, 300), height: 170 });
    }
  });

  // --- rankings, health ------------------------------------------------------------------

  function ranking(id, list, filter) {
    const ol = $(id);
    ol.textContent = "";
    for (const [name, count] of list || []) {
      const li = document.createElement("li");
      const link = text("button", name, "link");
      link.type = "button";
      link.title = "show only these decisions";
      link.addEventListener("click", () => { filter(name); connect(); });
      li.appendChild(link);
      li.appendChild(text("span", num(count), "count"));
      ol.appendChild(li);
    }
    if (!ol.children.length) ol.appendChild(text("li", "none yet", "none"));
  }

  function showHealth(h) {
    const el = $("health");
    if (!h) return;
    if (!h.known) {
      el.textContent = "detector health unknown: " + h.why; el.className = "health unknown";
    } else if (h.stalled) {
      el.textContent = "STALLED: " + h.why; el.className = "health stalled";
    } else {
      const age = h.last_commit_ago_s == null ? "no commit yet" : "last commit " + h.last_commit_ago_s + " s ago";
      el.textContent = "detector ok · " + h.instances + " instance(s) · " + age;
      el.className = "health ok";
    }
    for (const d of h.drift || []) el.textContent += " · MODEL DRIFT: " + d;
    const stages = $("health-stages");
    stages.textContent = "";
    for (const s of h.stages || []) {
      const tr = document.createElement("tr");
      cell(tr, s.stage); cell(tr, num(s.partitions), "num"); cell(tr, num(s.lag), "num");
      cell(tr, num(s.buffered), "num");
      stages.appendChild(tr);
    }
  }

  // --- alerts ----------------------------------------------------------------------------

  function reviewedCount(alert) {
    let n = 0;
    for (const t of alert.transactions || []) if (t && reviews.has(String(t.id))) n++;
    return n;
  }

  // the rules behind an alert, each once ("rule: reason" texts; the detail shows them whole)
  function alertRules(alert) {
    const rules = new Set();
    for (const r of alert.reasons || []) rules.add(String(r).split(":")[0]);
    return Array.from(rules);
  }

  function renderAlerts() {
    const list = Array.from(alerts.values()).sort((a, b) => b.first_ms - a.first_ms).slice(0, 200);
    const fragment = document.createDocumentFragment();
    for (const alert of list) {
      const tr = document.createElement("tr");
      tr.className = "alert" + (alert.open ? " open" : "");
      tr.dataset.alertId = alert.open ? "" : alert.alert_id;
      cell(tr, stamp(alert.first_ms), "time");
      cell(tr, alert.account);
      cell(tr, num(alert.count), "num");
      cell(tr, score(alert.score), "num");
      cell(tr, alertRules(alert).join(", "), "reasons");
      const reviewed = reviewedCount(alert);
      cell(tr, (alert.open ? "open" : "alert") + (reviewed ? " · " + reviewed + " reviewed" : ""));
      tr.addEventListener("click", () => showAlert(alert.key));
      fragment.appendChild(tr);
    }
    alertsBody.textContent = "";
    alertsBody.appendChild(fragment);
  }

  function routeAlert() {
    const m = /^#alert\/(.+)$/.exec(window.location.hash);
    wantedAlert = m ? decodeURIComponent(m[1]) : null;
  }
  window.addEventListener("hashchange", () => { routeAlert(); openWanted(true); });
  routeAlert();

  function openWanted(final) {
    if (!wantedAlert) return;
    for (const alert of alerts.values()) {
      if (alert.alert_id === wantedAlert && !alert.open) { showAlert(alert.key); wantedAlert = null; return; }
    }
    if (final) {
      openDetail("alert " + wantedAlert, [text("p",
        "This alert is not among the latest " + alerts.size + " alerts the dashboard keeps. " +
        "Search its account with the account filter below.", "note")]);
      wantedAlert = null;
    }
  }

  // --- the detail panel ------------------------------------------------------------------

  function openDetail(title, nodes, what) {
    $("detail-title").textContent = title;
    const body = $("detail-body");
    body.textContent = "";
    for (const n of nodes) body.appendChild(n);
    $("detail").hidden = false;
    shown = what || null;
  }

  $("detail-close").addEventListener("click", () => {
    $("detail").hidden = true; shown = null;
    if (window.location.hash.startsWith("#alert/")) history.replaceState(null, "", window.location.pathname + window.location.search);
  });

  function table(rows, className) {
    const t = document.createElement("table");
    t.className = className || "kv";
    for (const [k, v] of rows) {
      const tr = document.createElement("tr");
      tr.appendChild(text("th", k));
      tr.appendChild(text("td", v));
      t.appendChild(tr);
    }
    return t;
  }

  function modelProbability(decision) {
    for (const r of reasonsOf(decision)) {
      if (r.rule === "model") {
        const m = /probability ([0-9.]+)/.exec(String(r.reason));
        if (m) return m[1];
      }
    }
    return "not used, or below 0.05 (no model reason)";
  }

  function showDecision(item) {
    const record = item.record || {};
    const decision = decisionOf(item);
    const nodes = [];
    nodes.push(text("h3", "decision"));
    nodes.push(table([
      ["outcome", item.outcome],
      ["score", typeof decision.score === "number" ? String(decision.score) : ""],
      ["model probability", modelProbability(decision)],
      ["rules version", decision.rules_version],
      ["decided at", stamp(item.decided_ms)],
      ["event time", stamp(record.timestamp)],
      ["topic position", "partition " + item.partition + ", offset " + item.offset],
    ]));
    nodes.push(text("h3", "reasons"));
    const reasons = reasonsOf(decision);
    nodes.push(reasons.length
      ? table(reasons.map((r) => [r.rule, r.reason]), "kv reasons")
      : text("p", "no rule fired", "note"));
    nodes.push(text("h3", "transaction"));
    nodes.push(table(Object.keys(record).filter((k) => k !== "decision").map((k) => {
      const v = record[k];
      return [k, typeof v === "string" ? v : JSON.stringify(v)];
    }), "kv fields"));
    const review = document.createElement("p");
    review.className = "detail-review";
    review.appendChild(reviewCell(item, record.id == null ? "" : String(record.id), true));
    nodes.push(review);
    openDetail("transaction " + (record.id == null ? "" : record.id), nodes, { kind: "decision" });
  }

  function showAlert(key) {
    const alert = alerts.get(key);
    if (!alert) return;
    const nodes = [table([
      ["alert id", alert.open ? "(open: its id is final when it closes)" : alert.alert_id],
      ["account", alert.account],
      ["transactions", num(alert.count)],
      ["highest score", score(alert.score)],
      ["first", stamp(alert.first_ms)],
      ["state", alert.open ? "open" : "sent to the alert sinks"],
    ])];
    nodes.push(text("h3", "reasons"));
    const ul = document.createElement("ul");
    for (const r of alert.reasons || []) ul.appendChild(text("li", r));
    nodes.push(ul);
    nodes.push(text("h3", "transactions (click one for its decision)"));
    const t = document.createElement("table");
    t.className = "alert-transactions";
    for (const record of alert.transactions || []) {
      if (!record || typeof record !== "object") continue;
      const item = { outcome: "fraud", record: record, decided_ms: null, partition: "?", offset: "?" };
      const tr = document.createElement("tr");
      cell(tr, stamp(record.timestamp), "time");
      cell(tr, record.id, "id");
      cell(tr, record.target);
      cell(tr, typeof record.amount === "number" ? record.amount.toFixed(2) : record.amount, "num");
      tr.appendChild(reviewCell(item, String(record.id)));
      tr.addEventListener("click", (event) => { if (!event.target.closest("button")) showDecision(item); });
      t.appendChild(tr);
    }
    nodes.push(t);
    openDetail("alert on " + alert.account, nodes, { kind: "alert", key: key });
  }

  // --- the stream ------------------------------------------------------------------------

  function show(payload) {
    const data = JSON.parse(payload);
    if (data.snapshot) { tbody.textContent = ""; held = []; }  // a (re)connection starts over
    const stats = data.stats;
    $("count-legit").textContent = num(stats.legit);
    $("count-fraud").textContent = num(stats.fraud);
    $("count-total").textContent = num(stats.total);
    $("rate").textContent = num(stats.rate);
    $("fraud-rate").textContent = (100 * stats.fraud_rate).toFixed(2) + "%";
    $("counting").textContent = stats.caught_up ? "" :
      "counting the decisions already on the topics… " + num(stats.behind) + " to go";
    for (const [sec, l, f] of data.series || []) series.set(sec, [l, f]);
    drawCharts();
    for (const [rule] of data.top_rules || []) noteRule(rule);
    ranking("top-rules", data.top_rules, (name) => { $("filter-rule").value = name; });
    ranking("top-accounts", data.top_accounts, (name) => { $("filter-account").value = name; });
    showHealth(data.health);
    for (const r of data.reviews || []) reviews.set(String(r.id), r);
    for (const a of data.alerts || []) {
      if (!a.open) alerts.delete(a.key);  // the open version, replaced by the closed one
      alerts.set(a.key, a);
    }
    while (alerts.size > 250) {  // the oldest first in the map's order
      alerts.delete(alerts.keys().next().value);
    }
    renderAlerts();
    openWanted(Boolean(data.snapshot));
    if (shown && shown.kind === "alert" && data.alerts && data.alerts.some((a) => a.key === shown.key)) {
      showAlert(shown.key);
    }
    const items = data.items || [];
    // a new page's first tick: the decisions its snapshot already had are not new to it
    const decided = stats.decided - (data.in_snapshot || 0);
    const sampled = !data.snapshot && decided > items.length && !view().toString();
    $("sampled").textContent = sampled
      ? "sampled: the newest " + items.length + " of " + num(decided) + " decisions of the last tick, fraud first"
      : "";
    if (paused) {
      held = held.concat(items).slice(-maxRows);
      $("paused-note").textContent = held.length ? held.length + " new while paused" : "";
    } else {
      addRows(items);
    }
    showReviews(data.reviews || []);
  }

  function connect() {
    if (source) source.close();
    tbody.textContent = "";
    held = [];
    const params = view();
    const token = new URLSearchParams(window.location.search).get("token");
    if (token != null) params.set("token", token);
    const query = params.toString();
    source = new EventSource("stream" + (query ? "?" + query : ""));
    source.addEventListener("decisions", (event) => show(event.data));
    source.onopen = () => {
      status.textContent = paused ? "paused" : "live";
      status.className = paused ? "status paused" : "status live";
    };
    source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status"; };
  }

  connect();
})();
