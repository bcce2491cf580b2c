// The ComPO dashboard: polls the service's JSON API and redraws the charts (charts.js).
//
// Data: GET v1/runs and v1/stats (the run list), v1/runs/{id}/iterations (what the
// coordinator posts per iteration) and v1/runs/{id}/stats (the service's comparisons).
// The series of the first five charts are those `compo plot` draws (compo/eval/plots.py).
"use strict";

const COLORS = {
  accepted: "#2ca02c", skipped: "#d62728", ratio: "#999999", threshold: "#000000",
  chosen: "#1f77b4", rejected: "#ff7f0e", a: "#1f77b4", b: "#2ca02c", tie: "#bbbbbb",
  abstain: "#d62728", p50: "#1f77b4", p95: "#9467bd", identical: "#8c564b",
  inconsistent: "#e377c2", redispatched: "#ff7f0e", failures: "#d62728",
  base: "#1f77b4", perturbed: "#ff7f0e",
};
const WORKER_COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b",
                       "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];
const WORKER_PER_S = "worker_per_s.";  // per-worker extras (compo/service_oracle/reporting.py)
const VERDICTS = [["a", "a (base better)"], ["b", "b (perturbed better)"], ["tie", "tie"],
                  ["abstain", "abstain"]];
const REFRESH_MS = Number(document.body.dataset.refreshMs) || 2000;
// A run's internal runs (the antithetic signal check, compo probe's settings): hidden
// unless the "internal runs" box is ticked.
const INTERNAL = /\.check$|\.probe-\d+$/;
const ETA_WINDOW = 10;  // the ETA uses the mean seconds of this many latest iterations

let shown = null;  // the data last drawn, as JSON: redraw only when it changes

async function getJSON(path) {
  const response = await fetch(path, {headers: {Accept: "application/json"}});
  if (response.status === 401) {
    location.assign("dashboard/login");
    throw new Error("not logged in");
  }
  if (response.status === 404) return null;
  if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
  return response.json();
}

const at = (rows, value) => rows.map((row) => [row.iteration, value(row)]);
const series = (name, label, kind, points, extra = {}) =>
  ({name, label, kind, points, color: COLORS[name], ...extra});

function runningSum(rows, side) {
  let total = 0;
  return rows.map((row) => [row.iteration, (total += row[`logp_${side}_change`] ?? 0)]);
}

// The five charts of compo plot, from the iteration summaries.
function voteCharts(rows) {
  const accepted = rows.filter((row) => row.accepted);
  const ratio = (row) => row.ratio ?? (row.m ? row.n_minus / row.m : 0);
  const last = rows[rows.length - 1];
  const hlines = last && last.accept_ratio != null ? [{
    name: "threshold", label: `skip threshold λ = ${last.accept_ratio}`, y: last.accept_ratio,
    color: COLORS.threshold}] : [];
  return {
    ratio: {yLabel: "n− / m", hlines, series: [
      series("ratio", "", "line", at(rows, ratio)),
      series("accepted", `accepted (${accepted.length})`, "points", at(accepted, ratio)),
      series("skipped", `skipped (${rows.length - accepted.length})`, "points",
             at(rows.filter((row) => !row.accepted), ratio))]},
    step: {yLabel: "step γ·n−/m", series: rows.map((row) => series(
      row.accepted ? "accepted" : "skipped", "", "bars", [[row.iteration, row.step ?? 0]],
      {name: "step"}))},
    kept: {yLabel: "fraction kept", percent: true, series: [
      series("accepted", "", "points", at(accepted, (row) => row.kept_fraction),
             {name: "kept"})]},
    logp: {yLabel: "change (nats)", series: [
      series("chosen", "log π(y+)", "points", at(accepted, (row) => row.logp_chosen_change)),
      series("rejected", "log π(y−)", "points",
             at(accepted, (row) => row.logp_rejected_change))]},
    logp_total: {yLabel: "running sum (nats)", series: [
      series("chosen", "log π(y+)", "line", runningSum(rows, "chosen")),
      series("rejected", "log π(y−)", "line", runningSum(rows, "rejected"))]},
  };
}

// The service's comparison statistics (per iteration) and the coordinator's identical count.
function judgeCharts(rows, stats) {
  const its = stats ? stats.iterations : [];
  const known = (value) => (row) => row[value] != null;
  const counted = rows.filter((row) => row.oracle_comparisons > 0);
  return {
    verdicts: {yLabel: "comparisons", series: VERDICTS.map(([key, label]) => series(
      key, label, "bars", at(its, (row) => row.votes[key]), {stack: true}))},
    identical: {yLabel: "identical", percent: true, series: [series("identical", "", "points",
      at(counted, (row) => row.oracle_identical / row.oracle_comparisons))]},
    lengths: {yLabel: "characters", series: ["base", "perturbed"].map((side) => series(
      side, `${side} response`, "line", at(counted.filter(known(`oracle_${side}_chars`)),
                                           (row) => row[`oracle_${side}_chars`])))},
    latency: {yLabel: "ms", series: [
      series("p50", "p50", "line", at(its.filter(known("latency_ms_p50")),
                                      (row) => row.latency_ms_p50)),
      series("p95", "p95", "line", at(its.filter(known("latency_ms_p95")),
                                      (row) => row.latency_ms_p95))]},
    inconsistent: {yLabel: "comparisons", series: [series(
      "inconsistent", "", "bars", at(its, (row) => row.position_inconsistent))]},
  };
}

function rayCharts(rows) {
  const workers = [...new Set(rows.flatMap((row) => Object.keys(row)
    .filter((key) => key.startsWith(WORKER_PER_S))
    .map((key) => key.slice(WORKER_PER_S.length))))].sort();
  const throughput = workers.map((worker, i) => {
    const key = WORKER_PER_S + worker;
    return {name: `worker:${worker}`, label: worker, kind: "line",
            color: WORKER_COLORS[i % WORKER_COLORS.length],
            points: at(rows.filter((row) => row[key] != null), (row) => row[key])};
  });
  const ray = rows.filter((row) => row.ray_redispatched != null);
  return {workers, charts: {
    throughput: {yLabel: "perturbations / s", series: throughput},
    redispatch: {yLabel: "count", series: [
      series("redispatched", "chunks re-dispatched", "bars", at(ray, (r) => r.ray_redispatched)),
      series("failures", "failed calls", "points", at(ray, (r) => r.ray_failures ?? 0))]},
  }};
}

// Draw each chart; all span the run's iterations, so their x axes line up.
function drawAll(charts, rows) {
  const xExtent = rows.length ? [rows[0].iteration, rows[rows.length - 1].iteration] : [];
  for (const [name, spec] of Object.entries(charts)) {
    Charts.draw(document.querySelector(`svg[data-chart="${name}"]`), {xExtent, ...spec});
  }
}

// [key, name, value, percent?] -> cards; data-value holds the exact value
function cards(container, entries) {
  container.replaceChildren(...entries.map(([key, name, value, percent]) => {
    const card = document.createElement("div");
    card.className = "card";
    card.dataset.card = key;
    card.dataset.value = value == null ? "" : String(value);
    const shownValue = document.createElement("span");
    shownValue.className = "value";
    shownValue.textContent = value == null ? "–" : typeof value === "number"
      ? Charts.format(value, percent) : value;
    const label = document.createElement("span");
    label.className = "name";
    label.textContent = name;
    card.append(shownValue, label);
    return card;
  }));
}

// Seconds left: the iterations to go times the mean seconds of the latest ones (running only).
function etaSeconds(rows, info) {
  if (!info || info.state !== "running" || info.iterations_total == null) return null;
  const recent = rows.slice(-ETA_WINDOW).filter((row) => row.seconds != null);
  if (!recent.length) return null;
  const mean = recent.reduce((sum, row) => sum + row.seconds, 0) / recent.length;
  return Math.max(0, info.iterations_total - rows.length) * mean;
}

function duration(seconds) {
  if (seconds == null) return null;
  const s = Math.round(seconds);
  if (seconds > 0 && s < 1) return "< 1 s";
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${s % 60} s`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

function statusCards(rows, info) {
  const total = info && info.iterations_total;
  const eta = etaSeconds(rows, info);
  cards(document.getElementById("run-status"), [
    ["state", "status", (info && info.state) || "no status sent"],
    ["progress", "progress (iterations)", total != null ? `${rows.length} of ${total}`
                                                        : String(rows.length)],
    ["eta", "time left (ETA)", duration(eta)]]);
  const card = document.querySelector('[data-card="eta"]');
  card.dataset.value = eta == null ? "" : String(eta);
  document.getElementById("run-message").textContent = (info && info.message) || "";
}

function runCards(runId, rows) {
  const last = rows[rows.length - 1] || {};
  const accepted = rows.filter((row) => row.accepted).length;
  cards(document.getElementById("summary"), [
    ["run", "run", runId], ["iterations", "iterations", rows.length],
    ["accepted", "accepted", accepted], ["skipped", "skipped", rows.length - accepted],
    ["threshold", "skip threshold λ", last.accept_ratio], ["m", "votes m (last)", last.m],
    ["ratio", "n−/m (last)", last.ratio], ["seconds", "seconds (last iteration)", last.seconds],
    ["per_s", "perturbations / s (last)", last.perturbations_per_s]]);
}

function judgeSection(runId, rows, stats) {
  const section = document.getElementById("judge");
  section.hidden = !stats && !rows.some((row) => row.oracle_comparisons != null);
  if (section.hidden) return;
  document.getElementById("judge-note").textContent = stats ? "" : "The service has no " +
    `comparison statistics for run ${runId} (GET v1/runs/${runId}/stats answers 404).`;
  const s = stats || {};
  cards(document.getElementById("judge-totals"), [
    ["comparisons", "comparisons", s.comparisons], ["cache_hit_rate", "cache hit rate",
    s.cache_hit_rate, true], ["position_inconsistent", "position-inconsistent",
    s.position_inconsistent], ["latency_ms_p50", "latency p50 (ms)", s.latency_ms_p50],
    ["latency_ms_p95", "latency p95 (ms)", s.latency_ms_p95], ["prompt_tokens",
    "prompt tokens", s.prompt_tokens], ["completion_tokens", "completion tokens",
    s.completion_tokens], ["cost_usd", "cost (USD)", s.cost_usd]]);
  const body = document.querySelector("#errors tbody");
  body.replaceChildren(...Object.entries(s.errors || {}).sort().map(([kind, count]) => {
    const row = document.createElement("tr");
    row.dataset.kind = kind;
    row.dataset.count = String(count);
    for (const text of [kind, String(count)]) {
      row.appendChild(document.createElement("td")).textContent = text;
    }
    return row;
  }));
  drawAll(judgeCharts(rows, stats), rows);
}

function runList(ids, current) {
  document.getElementById("runs").replaceChildren(...ids.map((id) => {
    const link = document.createElement("a");
    link.href = `#run=${encodeURIComponent(id)}`;
    link.textContent = id;
    if (id === current) link.setAttribute("aria-current", "page");
    return link;
  }));
}

function wantedRun() {
  const match = /run=([^&]+)/.exec(location.hash);
  return match && decodeURIComponent(match[1]);
}

function selectedRun(ids) {
  const wanted = wantedRun();
  return ids.includes(wanted) ? wanted : ids[0];
}

// The runs to list: internal ones only when asked for (or when the address names one).
function listedRuns(ids) {
  if (document.getElementById("show-internal").checked) return ids;
  return ids.filter((id) => !INTERNAL.test(id) || id === wantedRun());
}

async function refresh() {
  const [runs, service] = await Promise.all([getJSON("v1/runs"), getJSON("v1/stats")]);
  const ids = listedRuns([...new Set([...runs.runs.map((run) => run.run_id),
                                     ...Object.keys(service.runs)])]);
  const runId = selectedRun(ids);
  runList(ids, runId);
  if (runId === undefined) return "no runs yet";
  const path = `v1/runs/${encodeURIComponent(runId)}`;
  const [list, stats] = await Promise.all([getJSON(`${path}/iterations`),
                                           getJSON(`${path}/stats`)]);
  const rows = list.iterations;
  const info = runs.runs.find((run) => run.run_id === runId) || null;
  const data = JSON.stringify([runId, rows, stats, info, ids]);
  if (data !== shown) {
    statusCards(rows, info);
    runCards(runId, rows);
    drawAll(voteCharts(rows), rows);
    judgeSection(runId, rows, stats);
    const ray = rayCharts(rows);
    document.getElementById("ray").hidden = !ray.workers.length;
    if (ray.workers.length) drawAll(ray.charts, rows);
    shown = data;
    document.body.dataset.run = runId;
    document.body.dataset.iterations = String(rows.length);
  }
  return `${rows.length} iterations`;
}

async function poll() {
  const status = document.getElementById("status");
  try {
    const what = await refresh();
    status.textContent = `${what} · updated ${new Date().toLocaleTimeString()} · ` +
      `refresh every ${REFRESH_MS / 1000} s`;
  } catch (error) {
    status.textContent = `could not update (${error.message}); retrying`;
  }
  document.body.dataset.polls = String(Number(document.body.dataset.polls || 0) + 1);
  setTimeout(poll, REFRESH_MS);
}

function redraw() {
  shown = null;
  refresh().catch(() => {});  // at once; the next poll retries a failure
}

window.addEventListener("hashchange", redraw);
document.getElementById("show-internal").addEventListener("change", redraw);
poll();
