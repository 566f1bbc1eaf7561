// Live decisions over Server-Sent Events. Every transaction field is set with textContent,
// never innerHTML: a field is data, not markup.
"use strict";
(function () {
  const maxRows = parseInt(document.body.dataset.history, 10) || 200;
  const tbody = document.getElementById("decisions");
  const status = document.getElementById("status");
  const counters = {
    legit: document.getElementById("count-legit"),
    fraud: document.getElementById("count-fraud"),
    total: document.getElementById("count-total"),
    rate: document.getElementById("rate"),
  };

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text == null ? "" : String(text);
    if (className) td.className = className;
    row.appendChild(td);
  }

  function when(ts) {
    const d = typeof ts === "number" ? new Date(ts) : new Date(String(ts));
    return isNaN(d.getTime()) ? String(ts) : d.toLocaleTimeString();
  }

  function reasons(item) {
    if (item.outcome !== "fraud" || !Array.isArray(item.reasons)) return "";
    return item.reasons.map((r) => r && r.reason).filter(Boolean).join("; ");
  }

  function row(item) {
    const tr = document.createElement("tr");
    tr.className = item.outcome === "fraud" ? "fraud" : "legit";
    tr.dataset.outcome = tr.className;
    cell(tr, when(item.timestamp));
    cell(tr, item.outcome);
    cell(tr, item.id, "id");
    cell(tr, item.source);
    cell(tr, item.target);
    const amount = typeof item.amount === "number" ? item.amount.toFixed(2) : item.amount;
    cell(tr, amount + " " + (item.currency || ""), "num");
    cell(tr, reasons(item), "reasons");
    return tr;
  }

  function show(payload) {
    const data = JSON.parse(payload);
    const fragment = document.createDocumentFragment();
    for (let i = data.items.length - 1; i >= 0; i--) fragment.appendChild(row(data.items[i]));
    tbody.insertBefore(fragment, tbody.firstChild);  // newest first
    while (tbody.rows.length > maxRows) tbody.deleteRow(-1);
    counters.legit.textContent = data.stats.legit.toLocaleString();
    counters.fraud.textContent = data.stats.fraud.toLocaleString();
    counters.total.textContent = data.stats.total.toLocaleString();
    counters.rate.textContent = data.stats.rate.toLocaleString();
  }

  const source = new EventSource("stream" + window.location.search);  // carries ?token=
  source.addEventListener("decisions", (event) => show(event.data));
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status"; };
})();
