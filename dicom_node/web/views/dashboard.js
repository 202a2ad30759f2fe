// Dashboard: destinations (failing first, with C-ECHO and "retry now"), queue, jobs, throughput,
// charts of the last hours (inline SVG, no chart library), disk, workers, failures; every 5 s.
import { api } from "../api.js";
import { h, fmtTime, toast, errorText } from "../ui.js";

// Counter names of /api/stats → what an operator reads.
const LABELS = {
  "jobs.stat": "Jobs waiting (STAT)", "jobs.routine": "Jobs waiting (routine)",
  queued: "Queued", running: "Running", done: "Done", done_with_errors: "Done with failed slices",
  failed: "Failed", cancelled: "Cancelled", pending: "Pending", delivered: "Delivered",
  jobs_done_1h: "Jobs done (1 h)", jobs_done_24h: "Jobs done (24 h)",
  instances_received_1h: "Instances received (1 h)", instances_received_24h: "Instances received (24 h)",
};
const label = (k) => LABELS[k] || (k.startsWith("outbox.") ? `To send to ${k.slice(7)}` : k.replaceAll("_", " "));
const SVG = "http://www.w3.org/2000/svg";
const STATE_ORDER = { failing: 0, ok: 1, idle: 2 };

function kv(title, obj, testid) {
  return h("section", { class: "card", testid },
    h("h3", {}, title),
    h("dl", {}, Object.entries(obj).flatMap(([k, v]) => [h("dt", {}, label(k)), h("dd", {}, String(v))])));
}

function svg(tag, attrs) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  return el;
}

// A small bar chart of one series of counts, newest on the right.
function chart(title, values, testid) {
  const w = 240, hgt = 60, max = Math.max(1, ...values), bw = w / Math.max(1, values.length);
  const root = svg("svg", { viewBox: `0 0 ${w} ${hgt}`, class: "chart", role: "img", "aria-label": title });
  values.forEach((v, i) => {
    const bh = (v / max) * (hgt - 4);
    const bar = svg("rect", { x: i * bw + 0.5, y: hgt - bh, width: Math.max(1, bw - 1), height: bh });
    bar.append(svg("title", {}));
    bar.firstChild.textContent = String(v);
    root.append(bar);
  });
  return h("figure", { class: "chart-box", testid },
    h("figcaption", {}, `${title} `, h("span", { class: "muted" }, `now ${values.at(-1) ?? 0}, max ${max}`)), root);
}

function bytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

function destinations(peers, admin, refresh) {
  const rows = Object.entries(peers).sort(([, a], [, b]) => STATE_ORDER[a.delivery.state] - STATE_ORDER[b.delivery.state]);
  return h("section", { class: "card", testid: "dash-destinations" }, h("h3", {}, "Destinations"),
    rows.length ? h("table", {}, h("tbody", {}, rows.map(([key, p]) => {
      const d = p.delivery, result = h("span", { testid: `dash-echo-result-${key}` });
      return h("tr", { class: `dest ${d.state}`, testid: `dest-${key}` },
        h("td", {}, h("b", {}, key), ` ${p.ae_title}@${p.host}:${p.port}`),
        h("td", {}, h("span", { class: `state ${d.state}`, testid: `dest-state-${key}` }, d.state)),
        h("td", {}, `${d.pending} waiting`, d.oldest_pending_s ? ` (oldest ${Math.round(d.oldest_pending_s)} s)` : "",
          d.failed ? `, ${d.failed} given up` : ""),
        h("td", {}, d.last_success_at ? `last delivered ${fmtTime(d.last_success_at)}` : "nothing delivered yet",
          d.state === "failing" && h("div", { class: "error" }, d.last_error)),
        h("td", {}, admin && h("button", { testid: `dash-echo-${key}`, onclick: async () => {
          result.textContent = "…";
          try {
            const r = await api.post(`/api/peers/${encodeURIComponent(key)}/echo`);
            result.textContent = r.ok ? `OK (${r.elapsed_ms.toFixed(0)} ms)` : `failed: ${r.error}`;
            result.className = r.ok ? "ok" : "error";
          } catch (err) { result.textContent = errorText(err); result.className = "error"; }
        } }, "C-ECHO"), " ",
        admin && d.pending > 0 && h("button", { testid: `dash-retry-${key}`, onclick: async () => {
          try {
            const r = await api.post(`/api/peers/${encodeURIComponent(key)}/retry`);
            toast(`${key}: ${r.pending_made_due} instance(s) retried now`);
            await refresh();
          } catch (err) { toast(errorText(err), "error"); }
        } }, "Retry now"), " ", result));
    }))) : h("p", { class: "muted" }, "no peers configured"));
}

export default async function dashboard(main, _args, session) {
  const admin = session && session.role === "admin";
  async function refresh() {
    const [s, hist, peers, workers] = await Promise.all([
      api.get("/api/stats"), api.get("/api/stats/history?hours=6"), api.get("/api/peers"), api.get("/api/workers")]);
    const disk = s.disk;
    main.replaceChildren(
      h("h2", {}, "Dashboard"),
      destinations(peers, admin, refresh),
      h("section", { class: "card", testid: "dash-charts" },
        h("h3", {}, `Last ${hist.hours} h (${hist.bucket_s / 60} min per bar)`),
        h("div", { class: "charts" },
          chart("Jobs done", hist.jobs_done, "chart-jobs-done"),
          chart("Instances received", hist.instances_received, "chart-received"),
          chart("Instances delivered", hist.instances_delivered, "chart-delivered"),
          chart("Jobs waiting", hist.jobs_waiting, "chart-jobs-waiting"),
          chart("Instances to send", hist.outbox_pending, "chart-outbox"))),
      h("div", { class: "grid" },
        kv("Queue", s.queue, "dash-queue"),
        kv("Jobs", s.jobs, "dash-jobs"),
        kv("Throughput", s.throughput, "dash-throughput"),
        kv("Outbox", s.outbox, "dash-outbox"),
        h("section", { class: "card", testid: "dash-disk" }, h("h3", {}, "Disk (storage)"),
          disk ? [h("meter", { min: 0, max: disk.total_bytes, high: disk.total_bytes * 0.9, value: disk.used_bytes }),
            h("p", {}, `${bytes(disk.used_bytes)} used, ${bytes(disk.free_bytes)} free of ${bytes(disk.total_bytes)}`)]
            : h("p", { class: "error" }, "storage folder missing")),
        h("section", { class: "card", testid: "dash-workers" }, h("h3", {}, "Workers"),
          workers.length ? h("ul", {}, workers.map((w) => h("li", {},
            h("span", { class: `state ${w.state}` }, w.state), ` ${w.name} on ${w.device}`,
            w.models.length ? ` (loaded: ${w.models.join(", ")})` : " (no model loaded)",
            w.problem && h("div", { class: "error" }, w.problem))))
            : h("p", { class: "muted" }, "no worker has reported yet"))),
      h("section", { class: "card", testid: "dash-failures" },
        h("h3", {}, `Failures: ${s.failures.jobs_failed} job(s), ${s.failures.jobs_done_with_errors} job(s) with failed slices, ${s.failures.outbox_failed} delivery(ies) given up`),
        s.failures.recent.length
          ? h("ul", {}, s.failures.recent.map((f) => h("li", {},
              h("a", { href: `#/jobs` }, `job ${f.job}`), ` ${f.model} ${fmtTime(f.at)}: ${f.error}`)))
          : h("p", { class: "muted" }, "none")));
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
