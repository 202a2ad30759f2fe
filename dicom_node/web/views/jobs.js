// Jobs: filter by state and modality, progress, noise guard figures, retry, cancel, release a held series,
// open in the viewer.
import { api } from "../api.js";
import { h, table, toast, errorText, fmtTime } from "../ui.js";

const STATES = ["", "queued", "running", "done", "done_with_errors", "failed", "cancelled"];
const FINISHED = ["done", "done_with_errors"];

// A finished job is not done for the PACS until its instances are delivered: say what waits.
function delivery(r) {
  const d = r.delivery;
  if (!d || (!d.pending && !d.failed)) return d && d.delivered ? h("span", { class: "muted" }, ` · ${d.delivered} delivered`) : null;
  return h("span", { class: d.failed ? "state failed" : "state pending", testid: `job-delivery-${r.id}` },
    ` · ${d.pending ? `${d.pending} waiting to be sent` : ""}${d.pending && d.failed ? ", " : ""}${d.failed ? `${d.failed} not delivered (gave up)` : ""}`);
}

// The noise guard's series medians against lanczos; a held series waits for an admin's release.
function quality(r) {
  const q = r.quality;
  if (!q) return h("span", { class: "muted" }, "–");
  const x = (v) => (v === null || v === undefined ? "–" : `x${v.toFixed(2)}`);
  return h("span", { testid: `job-quality-${r.id}`, title: q.limit ? `limit x${q.limit.toFixed(2)} (${q.action}); ${q.over} slice(s) over` : "no limit set" },
    `noise ${x(q.noise_ratio)} · edges ${x(q.edge_ratio)}`,
    q.over ? h("span", { class: "state failed" }, ` · ${q.over} over`) : null);
}

export default async function jobs(main, args, session) {
  const admin = session.role === "admin";
  const state = h("select", { testid: "job-state" }, STATES.map((s) => h("option", { value: s }, s || "any state")));
  const modality = h("input", { placeholder: "modality", class: "narrow", testid: "job-modality" });
  const holder = h("div");

  async function act(id, what) {
    try { await api.post(`/api/jobs/${id}/${what}`); toast(`job ${id}: ${what}`); await refresh(); }
    catch (err) { toast(errorText(err), "error"); }
  }

  async function refresh() {
    const q = new URLSearchParams();
    if (state.value) q.set("state", state.value);
    if (modality.value) q.set("modality", modality.value);
    const rows = await api.get(`/api/jobs?${q}`);
    holder.replaceChildren(table([
      { title: "Job", render: (r) => r.id },
      { title: "State", render: (r) => h("span", {},
        h("span", { class: `state ${r.state}`, testid: `job-state-${r.id}` }, r.state),
        r.held ? h("span", { class: "state failed", testid: `job-held-${r.id}` }, " · held for review") : null,
        delivery(r)) },
      { title: "Modality", render: (r) => r.modality },
      { title: "Series", render: (r) => r.series_description || r.series_uid.slice(-12) },
      { title: "Model", render: (r) => `${r.model} x${r.scale}` },
      { title: "Noise / edges vs lanczos", render: quality },
      { title: "Progress", render: (r) => h("span", {},
        h("progress", { max: r.progress.total || 1, value: r.progress.done }), ` ${r.progress.done}/${r.progress.total}`) },
      { title: "Created", render: (r) => fmtTime(r.created_at) },
      { title: "Error", render: (r) => h("span", { class: "error" }, r.error) },
      { title: "", render: (r) => h("span", {},
        FINISHED.includes(r.state) && h("a", { href: `#/viewer/${r.id}`, testid: `view-${r.id}` }, "Compare"),
        admin && ["failed", "cancelled", "done_with_errors"].includes(r.state) && h("button", { testid: `retry-${r.id}`, onclick: () => act(r.id, "retry") }, "Retry"),
        admin && ["queued", "running"].includes(r.state) && h("button", { class: "danger", testid: `cancel-${r.id}`, onclick: () => act(r.id, "cancel") }, "Cancel"),
        admin && r.held && h("button", { testid: `release-${r.id}`, onclick: () => act(r.id, "release") }, "Release")) },
    ], rows, "jobs-table"));
  }

  state.addEventListener("change", refresh);
  modality.addEventListener("change", refresh);
  main.replaceChildren(h("h2", {}, "Jobs"), h("div", { class: "row" }, state, modality,
    h("button", { onclick: refresh }, "Refresh")), holder);
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 3000);
  return () => clearInterval(timer);
}
