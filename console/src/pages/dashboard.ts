// The supervisor dashboard: live tiles and charts from GET /v1/dashboard (refreshed every 5 s),
// drill-down from any bar to its tickets, CSV export of the agent table. Charts are SVG drawn
// here; every text goes in with textContent.
import type { components } from "../api/schema";
import { byId, el } from "./dom";

type TicketSummary = components["schemas"]["TicketSummary"];
type ReturnStats = components["schemas"]["ReturnStats"];
type ForecastAnswer = components["schemas"]["ForecastAnswer"];
type StaffingAnswer = components["schemas"]["StaffingAnswer"];
type DraftAcceptance = components["schemas"]["DraftAcceptance"];
type AtRisk = components["schemas"]["AtRisk"];
type ChurnModel = components["schemas"]["ChurnModel"];

/** A bar: a key and its count. */
interface KeyCount {
  key: string;
  n: number;
}
/** A point of a line: the hour (Unix seconds) and its value. */
interface HourValue {
  hour: number;
  value: number;
}
interface Percentiles {
  p50: number | null;
  p90: number | null;
}
/** `GET /v1/dashboard` (serving/src/dashboard.rs; documented as a free-form object). */
interface Dashboard {
  hours: number;
  queues: { queue: string; waiting: number; oldest_wait_secs: number | null }[];
  agents_by_status: { status: string; agents: number; busy: number }[];
  sla_at_risk: number;
  sla_breached_open: number;
  csat: { mean: number | null; answered: number };
  agents: AgentLine[];
  /** Reply drafts' fate per category in the window, the total (`all`) first. */
  drafts: DraftAcceptance[];
  /** From ClickHouse; none when the binary runs without it. */
  history: History | null;
}
interface History {
  by_channel: KeyCount[];
  by_category: KeyCount[];
  hourly: HourValue[];
  sla: KeyCount[];
  first_response_secs: Percentiles;
  resolution_secs: Percentiles;
  sentiment_hourly: HourValue[];
}
interface AgentLine {
  id: string;
  name: string;
  status: string;
  active: number;
  capacity: number;
  handled: number;
  handling_secs: number | null;
  csat: number | null;
  sla_met_pct: number | null;
}
/** The fields a drill-down asks by. */
type Drill = "channel" | "category" | "queue";

const SVG = "http://www.w3.org/2000/svg";
const dash: { token: string | null; timer: number | undefined } = { token: null, timer: undefined };

function svg<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
): SVGElementTagNameMap[K] {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}
async function request(path: string): Promise<Response> {
  const res = await fetch(path, { headers: { authorization: "Bearer " + dash.token } });
  if (!res.ok) {
    const t = await res.text();
    throw new Error(t || res.statusText);
  }
  return res;
}
async function api<T>(path: string): Promise<T> {
  return (await request(path)).json() as Promise<T>;
}
async function apiBlob(path: string): Promise<Blob> {
  return (await request(path)).blob();
}
function secs(s: number | null | undefined): string {
  if (s === null || s === undefined) return "—";
  if (s < 90) return Math.round(s) + " s";
  if (s < 5400) return Math.round(s / 60) + " min";
  return (s / 3600).toFixed(1) + " h";
}

/** A chart's accessible name: its panel's heading and what it shows, in words. */
function chartName(box: HTMLElement, parts: string[]): string {
  const heading = box.closest("section")?.querySelector("h2")?.textContent ?? "chart";
  const shown = parts.slice(0, 12).join("; ");
  return `${heading}: ${shown}${parts.length > 12 ? "; …" : ""}`;
}

function bars(id: string, rows: KeyCount[], drill: Drill | null): void {
  const box = byId(id);
  box.replaceChildren();
  if (!rows.length) {
    box.append(el("p", "No data in this window.", "empty"));
    return;
  }
  const max = Math.max(...rows.map((r) => r.n), 1);
  const rowH = 24,
    w = 400,
    labelW = 110;
  const s = svg("svg", { viewBox: `0 0 ${w} ${rows.length * rowH + 4}`, role: "img", "aria-label": chartName(box, rows.map((r) => `${r.key || "(none)"}: ${r.n}`)) });
  rows.forEach((r, i) => {
    const y = i * rowH + 2;
    const label = svg("text", { x: 0, y: y + 15 });
    label.textContent = r.key || "(none)";
    const bw = Math.max(2, ((w - labelW - 40) * r.n) / max);
    const bar = svg("rect", { x: labelW, y, width: bw, height: rowH - 6, class: "bar", "data-key": r.key, "data-n": r.n });
    const title = svg("title");
    title.textContent = `${r.key || "(none)"}: ${r.n}`;
    bar.append(title);
    if (drill) bar.addEventListener("click", () => void drillDown(drill, r.key));
    const n = svg("text", { x: labelW + bw + 4, y: y + 15 });
    n.textContent = String(r.n);
    s.append(label, bar, n);
  });
  box.append(s);
}

function line(id: string, points: HourValue[], fmt: (v: number) => string | number): void {
  const box = byId(id);
  box.replaceChildren();
  if (points.length < 1) {
    box.append(el("p", "No data in this window.", "empty"));
    return;
  }
  const w = 400,
    h = 140,
    pad = 24;
  const xs = points.map((p) => p.hour),
    ys = points.map((p) => p.value);
  const x0 = Math.min(...xs),
    x1 = Math.max(...xs, x0 + 1);
  const y0 = Math.min(0, ...ys),
    y1 = Math.max(...ys, y0 + 1e-9);
  const X = (x: number) => pad + ((w - 2 * pad) * (x - x0)) / (x1 - x0);
  const Y = (y: number) => h - pad - ((h - 2 * pad) * (y - y0)) / (y1 - y0);
  const s = svg("svg", { viewBox: `0 0 ${w} ${h}`, role: "img", "aria-label": chartName(box, [`${points.length} hours, from ${fmt(y0)} to ${fmt(y1)}`]) });
  s.append(svg("polyline", { class: "line", points: points.map((p) => `${X(p.hour)},${Y(p.value)}`).join(" ") }));
  for (const p of points) {
    const c = svg("circle", { cx: X(p.hour), cy: Y(p.value), r: 3, fill: "#2f6fed" });
    const t = svg("title");
    t.textContent = new Date(p.hour * 1000).toLocaleString() + ": " + fmt(p.value);
    c.append(t);
    s.append(c);
  }
  const hi = svg("text", { x: 0, y: 12 });
  hi.textContent = String(fmt(y1));
  const lo = svg("text", { x: 0, y: h - 4 });
  lo.textContent = String(fmt(y0));
  s.append(hi, lo);
  box.append(s);
}

function tiles(d: Dashboard): void {
  const box = byId("tiles");
  box.replaceChildren();
  const add = (label: string, value: string | number) => {
    const t = el("div", null, "tile");
    t.append(el("div", value, "v"), el("div", label, "l"));
    box.append(t);
  };
  const waiting = d.queues.reduce((a, q) => a + q.waiting, 0);
  const oldest = Math.max(0, ...d.queues.map((q) => q.oldest_wait_secs || 0));
  const online = d.agents_by_status.find((a) => a.status === "online") || { agents: 0, busy: 0 };
  add("waiting", waiting);
  add("longest wait", secs(oldest));
  add("agents online", online.agents);
  add("agents busy", online.busy);
  add("SLA at risk", d.sla_at_risk);
  add("SLA breached (open)", d.sla_breached_open);
  const h = d.history;
  add("first response p50 / p90", h ? secs(h.first_response_secs.p50) + " / " + secs(h.first_response_secs.p90) : "—");
  add("resolution p50 / p90", h ? secs(h.resolution_secs.p50) + " / " + secs(h.resolution_secs.p90) : "—");
  add("CSAT", d.csat.mean ? d.csat.mean.toFixed(2) + " (" + d.csat.answered + ")" : "—");
}

function agents(rows: AgentLine[]): void {
  const tb = document.querySelector("#agents tbody");
  if (!tb) throw new Error("the page has no #agents tbody");
  tb.replaceChildren();
  for (const a of rows) {
    const tr = el("tr");
    const f = (v: number | null | undefined, s: (x: number) => string) => (v === null || v === undefined ? "—" : s(v));
    for (const v of [
      a.name,
      a.status,
      a.active + "/" + a.capacity,
      a.handled,
      f(a.handling_secs, secs),
      f(a.csat, (x) => x.toFixed(2)),
      f(a.sla_met_pct, (x) => x.toFixed(0) + "%"),
    ])
      tr.append(el("td", v));
    tb.append(tr);
  }
}

/** Reply drafts: per category, the replies that took one (sent as offered or edited) out of
 *  those that answered offered drafts; the summary gives the whole desk's split. */
function drafts(rows: DraftAcceptance[]): void {
  const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
  const all = rows.find((r) => r.category === "all");
  byId("drafts-summary").textContent =
    !all || all.offered === 0
      ? "No replies answered drafts in this window."
      : `${all.offered} replies answered drafts: ${all.sent} sent as offered, ${all.edited} edited, ${all.discarded} passed over; ${pct(all.acceptance)} accepted.`;
  bars(
    "drafts-acceptance",
    rows.filter((r) => r.category !== "all").map((r) => ({ key: `${r.category} · ${pct(r.acceptance)} of ${r.offered}`, n: r.sent + r.edited })),
    null,
  );
}

/** Which weights score the customers, and how a fit on outcomes did on held-out customers. */
function churnModel(m: ChurnModel): void {
  const f = m.fit;
  const auc = (a: number | null | undefined) => (a == null ? "–" : a.toFixed(3));
  byId("risk-model").textContent = f
    ? `Scored with weights fitted on outcomes after ${new Date(f.as_of).toLocaleDateString()} (${f.train_customers} customers): held-out AUC ${auc(f.auc_fitted)} against ${auc(f.auc_hand_set)} for the hand-set weights (${f.held_out_customers} customers, ${f.held_out_churned} left).`
    : "Scored with the hand-set weights (no fit on outcomes is active: switchboard models fit-churn).";
}

/** The customers who wrote in the last 30 days with a high churn risk, the riskiest first, with
 *  the two factors that weigh most. */
function atRisk(rows: AtRisk[]): void {
  const tb = document.querySelector("#at-risk tbody");
  if (!tb) throw new Error("the page has no #at-risk tbody");
  tb.replaceChildren();
  byId("risk-summary").textContent =
    rows.length === 0 ? "No customer who wrote in the last 30 days is at high risk." : `${rows.length} customers at high risk (shown up to 20).`;
  for (const r of rows.slice(0, 20)) {
    const tr = el("tr");
    for (const v of [
      r.name ?? r.email ?? r.customer_id,
      r.tier,
      `${(r.score * 100).toFixed(0)}%`,
      (r.value_365d_cents / 100).toFixed(2),
      r.factors
        .filter((f) => f.contribution > 0)
        .slice(0, 2)
        .map((f) => f.says)
        .join("; "),
      new Date(r.last_contact_at).toLocaleString(),
    ])
      tr.append(el("td", v));
    tb.append(tr);
  }
}

/** Returns over the last 8 weeks (Postgres, `GET /v1/returns/stats`): rate per week, reasons,
 *  the products most returned, the share the policy approved alone and the time to refund. */
function returns(r: ReturnStats): void {
  bars(
    "returns-weekly",
    r.weeks.map((w) => ({ key: `${w.week} · ${(w.rate * 100).toFixed(1)}% of ${w.orders}`, n: w.returns })),
    null,
  );
  bars(
    "returns-reason",
    r.by_reason.map((c) => ({ key: c.key.replace(/_/g, " "), n: c.returns })),
    null,
  );
  bars(
    "returns-product",
    r.by_product.slice(0, 10).map((c) => ({ key: c.key, n: c.returns })),
    null,
  );
  const total = r.by_status.reduce((a, c) => a + c.returns, 0);
  const hours = (h: number | null | undefined) => (h === null || h === undefined ? "—" : secs(h * 3600));
  byId("returns-summary").textContent =
    total === 0
      ? "No returns in the last 8 weeks."
      : `${total} returns; ${(r.auto_approved_share * 100).toFixed(0)}% approved by the policy alone; request to refund p50 ${hours(r.hours_to_refund_p50)}, p90 ${hours(r.hours_to_refund_p90)}.`;
}

/** A legend under a chart: swatch class and label. */
function legend(box: HTMLElement, items: [string, string][]): void {
  const ul = el("ul", null, "legend");
  for (const [cls, label] of items) {
    const li = el("li");
    const sw = el("span", null, cls);
    sw.setAttribute("aria-hidden", "true");
    li.append(sw, label);
    ul.append(li);
  }
  box.append(ul);
}

const hourLabel = (iso: string) => new Date(iso).toLocaleString([], { weekday: "short", hour: "2-digit", minute: "2-digit" });

/** Forecast vs actual: the interval as a band, the newest forecast as a line, the day-ahead
 *  forecast dashed, what came as dots, a rule at now. */
function forecastChart(f: ForecastAnswer): void {
  const box = byId("forecast");
  box.replaceChildren();
  const summary = byId("fc-summary");
  const has = (v: number | null | undefined): v is number => v !== null && v !== undefined;
  const fitted = f.hours.filter((x) => has(x.point));
  const came = f.hours.filter((x) => has(x.actual));
  const pct = (v: number | null | undefined) => (has(v) ? (v * 100).toFixed(1) + "%" : "—");
  summary.textContent =
    (f.generated_at
      ? `Fitted ${new Date(f.generated_at).toLocaleString()}; ${Math.round(f.level * 100)}% interval. `
      : "No forecast yet: it needs three days of history (the job fits it hourly). ") +
    `Day-ahead error so far: ${pct(f.mape_hourly)} per hour, ${pct(f.mape_daily)} per day.`;
  if (!fitted.length && !came.length) {
    box.append(el("p", "No data in this window.", "empty"));
    return;
  }
  const w = 900,
    h = 220,
    pad = 28;
  const n = f.hours.length;
  const top = Math.max(1, ...f.hours.map((x) => Math.max(x.upper ?? 0, x.actual ?? 0)));
  const X = (i: number) => pad + ((w - 2 * pad) * i) / Math.max(1, n - 1);
  const Y = (v: number) => h - pad - ((h - 2 * pad) * v) / top;
  const peak = fitted.length ? Math.round(Math.max(...fitted.map((x) => x.point ?? 0))) : 0;
  const s = svg("svg", {
    viewBox: `0 0 ${w} ${h}`,
    role: "img",
    "aria-label": chartName(box, [`${n} hours from ${hourLabel(f.hours[0].hour)}`, `peak forecast ${peak} per hour`, `${came.length} hours have come`]),
  });
  const idx = f.hours.map((x, i) => ({ x, i })).filter(({ x }) => has(x.point));
  if (idx.length) {
    const band = idx.map(({ x, i }) => `${X(i)},${Y(x.upper ?? 0)}`).concat(idx.map(({ x, i }) => `${X(i)},${Y(x.lower ?? 0)}`).reverse());
    s.append(svg("polygon", { class: "band", points: band.join(" ") }));
    s.append(svg("polyline", { class: "line", points: idx.map(({ x, i }) => `${X(i)},${Y(x.point ?? 0)}`).join(" ") }));
  }
  const da = f.hours.map((x, i) => (has(x.day_ahead) ? `${X(i)},${Y(x.day_ahead)}` : null)).filter((p): p is string => p !== null);
  if (da.length) s.append(svg("polyline", { class: "dayahead", points: da.join(" ") }));
  f.hours.forEach((x, i) => {
    if (!has(x.actual)) return;
    const c = svg("circle", { class: "actual", cx: X(i), cy: Y(x.actual), r: 2.5 });
    const t = svg("title");
    t.textContent =
      `${hourLabel(x.hour)}: ${x.actual} came` + (has(x.point) ? `, ${Math.round(x.point)} forecast (${Math.round(x.lower ?? 0)}–${Math.round(x.upper ?? 0)})` : "");
    c.append(t);
    s.append(c);
  });
  const nowIdx = f.hours.findIndex((x) => new Date(x.hour).getTime() > Date.now());
  if (nowIdx > 0) s.append(svg("line", { class: "now", x1: X(nowIdx), x2: X(nowIdx), y1: pad, y2: h - pad }));
  f.hours.forEach((x, i) => {
    if (new Date(x.hour).getUTCHours() !== 0) return;
    const t = svg("text", { x: X(i) + 2, y: h - 8 });
    t.textContent = new Date(x.hour).toLocaleDateString([], { weekday: "short", day: "numeric" });
    s.append(t);
  });
  const hi = svg("text", { x: 0, y: 12 });
  hi.textContent = `${Math.round(top)}/h`;
  s.append(hi);
  box.append(s);
  legend(box, [
    ["band", "interval"],
    ["line", "forecast"],
    ["dayahead", "day-ahead forecast"],
    ["actual", "came"],
  ]);
}

/** Agents needed per hour (a line) against agents on shift (bars); short hours shaded. */
function staffingChart(p: StaffingAnswer): void {
  const box = byId("staffing");
  box.replaceChildren();
  const short = p.hours.filter((x) => x.gap < 0);
  byId("staffing-summary").textContent =
    `${p.date}: ${Math.round(p.service_level * 100)}% of tickets picked up in time, occupancy at most ${Math.round(p.max_occupancy * 100)}%, ` +
    `${p.concurrency} tickets at once per agent. ` +
    (short.length
      ? `Short in ${p.short_hours} hours (${p.short_agent_hours} agent-hours missing), first at ${hourLabel(short[0].hour)}.`
      : "No hour is short.") +
    " Handling: " +
    p.basis.map((b) => `${b.channel} ${secs(b.handle_secs)}${b.samples < 20 ? " (default)" : ""}`).join(", ") +
    ".";
  const w = 900,
    h = 200,
    pad = 28;
  const top = Math.max(1, ...p.hours.map((x) => Math.max(x.needed, x.scheduled)));
  const bw = (w - 2 * pad) / 24;
  const Y = (v: number) => h - pad - ((h - 2 * pad) * v) / top;
  const s = svg("svg", {
    viewBox: `0 0 ${w} ${h}`,
    role: "img",
    "aria-label": chartName(box, p.hours.map((x) => `${new Date(x.hour).getUTCHours()}h: ${x.needed} needed, ${x.scheduled} on shift`)),
  });
  p.hours.forEach((x, i) => {
    if (x.gap < 0) s.append(svg("rect", { class: "short", x: pad + i * bw, y: pad, width: bw, height: h - 2 * pad }));
    const r = svg("rect", { class: "onshift", x: pad + i * bw + 2, y: Y(x.scheduled), width: bw - 4, height: h - pad - Y(x.scheduled) });
    const t = svg("title");
    t.textContent = `${hourLabel(x.hour)}: ${Math.round(x.tickets)} tickets forecast, ${x.needed} agents needed, ${x.scheduled} on shift, ${Math.round(x.expected_service_level * 100)}% expected in time`;
    r.append(t);
    s.append(r);
    if (i % 3 === 0) {
      const l = svg("text", { x: pad + i * bw + 2, y: h - 8 });
      l.textContent = String(new Date(x.hour).getUTCHours()).padStart(2, "0") + ":00";
      s.append(l);
    }
  });
  s.append(svg("polyline", { class: "needed", points: p.hours.map((x, i) => `${pad + i * bw + bw / 2},${Y(x.needed)}`).join(" ") }));
  const hi = svg("text", { x: 0, y: 12 });
  hi.textContent = `${top} agents`;
  s.append(hi);
  box.append(s);
  legend(box, [
    ["onshift", "on shift"],
    ["needed", "needed (Erlang C)"],
    ["short", "short"],
  ]);
}

async function forecastPanels(): Promise<void> {
  const sel = byId("fc-series", HTMLSelectElement);
  const f = await api<ForecastAnswer>("/v1/forecast?series=" + encodeURIComponent(sel.value) + "&days=3");
  const have = new Set(Array.from(sel.options).map((o) => o.value));
  for (const name of f.series_available)
    if (!have.has(name)) {
      const o = el("option", name);
      o.value = name;
      sel.append(o);
    }
  forecastChart(f);
  staffingChart(await api<StaffingAnswer>("/v1/staffing"));
}

async function drillDown(field: Drill, key: string): Promise<void> {
  const list = await api<{ tickets: TicketSummary[] }>(`/v1/tickets?${field}=${encodeURIComponent(key)}&limit=100`);
  byId("drill").hidden = false;
  byId("drill-title").textContent = `Tickets where ${field} = ${key} (${list.tickets.length})`;
  const ul = byId("drill-list");
  ul.replaceChildren();
  for (const t of list.tickets)
    ul.append(el("li", `${t.number} · ${t.channel} · ${t.status} · ${t.priority} · ${t.subject || ""}`));
}

async function refresh(): Promise<void> {
  const hours = byId("hours", HTMLSelectElement).value;
  const d = await api<Dashboard>("/v1/dashboard?hours=" + hours);
  tiles(d);
  bars(
    "queues",
    d.queues.map((q) => ({ key: q.queue, n: q.waiting })),
    "queue",
  );
  const h: Pick<History, "by_channel" | "by_category" | "hourly" | "sla" | "sentiment_hourly"> = d.history || {
    by_channel: [],
    by_category: [],
    hourly: [],
    sla: [],
    sentiment_hourly: [],
  };
  bars("by-channel", h.by_channel, "channel");
  bars("by-category", h.by_category, "category");
  bars("sla", h.sla, null);
  line("hourly", h.hourly, (v) => Math.round(v));
  line("sentiment", h.sentiment_hourly, (v) => v.toFixed(2));
  agents(d.agents);
  drafts(d.drafts);
  atRisk(await api<AtRisk[]>("/v1/customers/at-risk?limit=100"));
  churnModel(await api<ChurnModel>("/v1/customers/churn-model"));
  returns(await api<ReturnStats>("/v1/returns/stats?weeks=8"));
  // Without ClickHouse there is no forecast: the panels say so and the rest still refreshes.
  await forecastPanels().catch((e: unknown) => {
    const text = e instanceof Error ? e.message : String(e);
    let why = text;
    try {
      why = (JSON.parse(text) as { error?: { message?: string } }).error?.message ?? text;
    } catch {
      // not JSON: the text as it came
    }
    byId("fc-summary").textContent = "No forecast: " + why;
  });
  byId("updated").textContent = "updated " + new Date().toLocaleTimeString();
}

async function signIn(token: string): Promise<void> {
  dash.token = token;
  await refresh();
  byId("signin").hidden = true;
  byId("board").hidden = false;
  sessionStorage.setItem("switchboard-supervisor-token", token);
  clearInterval(dash.timer);
  dash.timer = window.setInterval(() => refresh().catch(() => {}), 5000);
}

document.addEventListener("DOMContentLoaded", () => {
  byId("signin-form", HTMLFormElement).onsubmit = async (e) => {
    e.preventDefault();
    try {
      await signIn(byId("token", HTMLInputElement).value.trim());
    } catch (err) {
      byId("signin-error").textContent = err instanceof Error ? err.message : String(err);
    }
  };
  byId("hours", HTMLSelectElement).onchange = () => refresh().catch(() => {});
  byId("fc-series", HTMLSelectElement).onchange = () => forecastPanels().catch(() => {});
  byId("export", HTMLButtonElement).onclick = async () => {
    const blob = await apiBlob("/v1/dashboard/agents.csv?hours=" + byId("hours", HTMLSelectElement).value);
    const a = el("a");
    a.href = URL.createObjectURL(blob);
    a.download = "agents.csv";
    a.click();
  };
  const saved = sessionStorage.getItem("switchboard-supervisor-token");
  if (saved) signIn(saved).catch(() => sessionStorage.removeItem("switchboard-supervisor-token"));
});
