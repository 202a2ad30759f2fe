// Series: state (receiving → stable → routed), completeness flags, derived or original, jobs.
import { api } from "../api.js";
import { h, table, fmtTime } from "../ui.js";

export default async function series(main) {
  const state = h("select", {}, ["", "receiving", "stable", "routed"].map((s) => h("option", { value: s }, s || "any state")));
  const derived = h("select", {}, [["", "originals and derived"], ["false", "originals"], ["true", "derived"]]
    .map(([v, t]) => h("option", { value: v }, t)));
  const holder = h("div");
  const detail = h("section", { class: "card", hidden: true });

  async function show(uid) {
    const s = await api.get(`/api/series/${encodeURIComponent(uid)}`);
    detail.replaceChildren(h("h3", {}, s.series_description || s.series_uid),
      h("dl", {}, Object.entries({ UID: s.series_uid, state: s.state, instances: s.instances,
        "likely incomplete": s.likely_incomplete ? `yes: ${s.incomplete_reason}` : "no",
        "derived from job": s.derived_from_job ?? "—" }).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      h("h4", {}, "Jobs"),
      s.jobs.length ? h("ul", {}, s.jobs.map((j) => h("li", {}, `job ${j.id}: ${j.model} x${j.scale} ${j.state} `,
        ["done", "done_with_errors"].includes(j.state) && h("a", { href: `#/viewer/${j.id}` }, "Compare")))) : h("p", { class: "muted" }, "none"));
    detail.hidden = false;
  }

  async function refresh() {
    const q = new URLSearchParams();
    if (state.value) q.set("state", state.value);
    if (derived.value) q.set("derived", derived.value);
    const rows = await api.get(`/api/series?${q}`);
    holder.replaceChildren(table([
      { title: "Series", render: (r) => h("a", { href: "#/series", onclick: (e) => { e.preventDefault(); show(r.series_uid); } },
        r.series_description || r.series_uid.slice(-16)) },
      { title: "Modality", render: (r) => r.modality },
      { title: "State", render: (r) => r.state },
      { title: "Instances", render: (r) => r.instances },
      { title: "From", render: (r) => r.calling_ae },
      { title: "Last received", render: (r) => fmtTime(r.last_received_at) },
      { title: "Flags", render: (r) => (r.likely_incomplete ? h("span", { class: "error", title: r.incomplete_reason }, "incomplete?") : "") },
      { title: "Kind", render: (r) => (r.derived_from_job ? `derived (job ${r.derived_from_job})` : "original") },
    ], rows, "series-table"));
  }
  state.addEventListener("change", refresh);
  derived.addEventListener("change", refresh);
  main.replaceChildren(h("h2", {}, "Series"), h("div", { class: "row" }, state, derived), holder, detail);
  await refresh();
}
