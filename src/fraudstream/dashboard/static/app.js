// Live decisions over Server-Sent Events. Every transaction field is set with textContent,
// never innerHTML: a field is data, not markup.
"use strict";
(function () {
  const maxRows = parseInt(document.body.dataset.history, 10) || 200;
  const tbody = document.getElementById("decisions");
  const status = document.getElementById("status");
  const analyst = document.getElementById("analyst");
  const reviews = new Map();  // transaction id -> the latest analyst verdict
  analyst.value = window.localStorage.getItem("fraudstream.analyst") || "";
  analyst.addEventListener("change", () => {
    window.localStorage.setItem("fraudstream.analyst", analyst.value.trim());
  });
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
    tr.dataset.id = item.id == null ? "" : String(item.id);
    tr.appendChild(reviewCell(item));
    return tr;
  }

  // The review column: who confirmed or cleared it, or (for fraud) the two buttons.
  function reviewCell(item) {
    const td = document.createElement("td");
    td.className = "review";
    const done = reviews.get(String(item.id));
    if (done) {
      td.textContent = (done.verdict === "fraud" ? "confirmed by " : "cleared by ") + done.reviewer;
      return td;
    }
    if (item.outcome !== "fraud") return td;
    for (const [verdict, text] of [["fraud", "confirm"], ["legit", "clear"]]) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = text;
      button.className = verdict === "fraud" ? "confirm" : "clear";
      button.addEventListener("click", () => review(item, verdict, td));
      td.appendChild(button);
    }
    return td;
  }

  async function review(item, verdict, td) {
    const name = analyst.value.trim();
    if (!name) { td.dataset.error = "1"; analyst.focus(); analyst.placeholder = "your name first"; return; }
    const body = {
      id: item.id, verdict: verdict, analyst: name, timestamp: item.timestamp,
      target: item.target, merchant: item.merchant,
    };
    td.textContent = "sending…";
    try {
      const response = await fetch("review" + window.location.search, {
        method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
      });
      const answer = await response.json();
      td.textContent = response.ok ? "sent, waiting for the labels topic…" : answer.error;
    } catch (e) {
      td.textContent = "not sent: " + e;
    }
  }

  function showReviews(list) {
    for (const r of list || []) {
      reviews.set(String(r.id), r);
      for (const tr of tbody.querySelectorAll("tr")) {
        if (tr.dataset.id === String(r.id)) {
          const item = { id: r.id, outcome: tr.dataset.outcome };
          tr.replaceChild(reviewCell(item), tr.querySelector("td.review"));
        }
      }
    }
  }

  function show(payload) {
    const data = JSON.parse(payload);
    for (const r of data.reviews || []) reviews.set(String(r.id), r);
    const fragment = document.createDocumentFragment();
    for (let i = data.items.length - 1; i >= 0; i--) fragment.appendChild(row(data.items[i]));
    tbody.insertBefore(fragment, tbody.firstChild);  // newest first
    while (tbody.rows.length > maxRows) tbody.deleteRow(-1);
    counters.legit.textContent = data.stats.legit.toLocaleString();
    counters.fraud.textContent = data.stats.fraud.toLocaleString();
    counters.total.textContent = data.stats.total.toLocaleString();
    counters.rate.textContent = data.stats.rate.toLocaleString();
    showReviews(data.reviews);
  }

  const source = new EventSource("stream" + window.location.search);  // carries ?token=
  source.addEventListener("decisions", (event) => show(event.data));
  source.onopen = () => { status.textContent = "live"; status.className = "status live"; };
  source.onerror = () => { status.textContent = "reconnecting…"; status.className = "status"; };
})();
