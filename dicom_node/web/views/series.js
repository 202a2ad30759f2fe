// Series: state (receiving → stable → routed), completeness flags, derived or original, jobs;
// protected from recycling (admins toggle it), and recycled history rows on request.
import { api } from "../api.js";
import { h, table, fmtTime, toast, errorText } from "../ui.js";

export default async function series(main, args, session) {
  const state = h("select", {}, ["", "receiving", "stable", "routed"].map((s) => h("option", { value: s }, s || "any state")));
  const derived = h("select", {}, [["", "originals and derived"], ["false", "originals"], ["true", "derived"]]
    .map(([v, t]) => h("option", { value: v }, t)));
  const recycled = h("input", { type: "checkbox", testid: "series-recycled" });
  const holder = h("div");
  const detail = h("section", { class: "card", hidden: true, testid: "series-detail" });

  async function setProtected(uid, on) {
    try {
      await api.post(`/api/series/${encodeURIComponent(uid)}/${on ? "protect" : "unprotect"}`);
      toast(on ? "Protected from recycling" : "No longer protected");
    } catch (err) {
      toast(errorText(err), "error"); // 409 while it is being recycled
    }
    await Promise.all([show(uid), refresh()]);
  }

  async function show(uid) {
    const s = await api.get(`/api/series/${encodeURIComponent(uid)}?recycled=true`);
    const canToggle = session && session.role === "admin" && !s.recycled_at;
    detail.replaceChildren(h("h3", {}, s.series_description || s.series_uid),
      h("dl", {}, Object.entries({ UID: s.series_uid, state: s.state, instances: s.instances,
        "likely incomplete": s.likely_incomplete ? `yes: ${s.incomplete_reason}` : "no",
        "derived from job": s.derived_from_job ?? "—", protected: s.protected ? "yes" : "no",
        recycled: s.recycled_at ? fmtTime(s.recycled_at) : "no" }).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])),
      canToggle ? h("button", { testid: "series-protect", onclick: () => setProtected(s.series_uid, !s.protected) },
        s.protected ? "Unprotect" : "Protect from recycling") : "", // replaceChildren would print `false`
      h("h4", {}, "Jobs"),
      s.jobs.length ? h("ul", {}, s.jobs.map((j) => h("li", {}, `job ${j.id}: ${j.model} x${j.scale} ${j.state} `,
        ["done", "done_with_errors"].includes(j.state) && h("a", { href: `#/viewer/${j.id}` }, "Compare"), " ",
        // OHIF in a new tab that keeps this one as opener, so it inherits the signed-in token.
        j.ohif_url && h("a", { href: j.ohif_url, target: "_blank", rel: "opener", testid: `ohif-${j.id}` }, "Open in OHIF")))) : h("p", { class: "muted" }, "none"));
    detail.hidden = false;
  }

  async function refresh() {
    const q = new URLSearchParams();
    if (state.value) q.set("state", state.value);
    if (derived.value) q.set("derived", derived.value);
    if (recycled.checked) q.set("recycled", "true");
    const rows = await api.get(`/api/series?${q}`);
    holder.replaceChildren(table([
      { title: "Series", render: (r) => h("a", { href: "#/series", testid: `series-${r.series_uid}`, onclick: (e) => { e.preventDefault(); show(r.series_uid); } },
        r.series_description || r.series_uid.slice(-16)) },
      { title: "Modality", render: (r) => r.modality },
      { title: "State", render: (r) => r.state },
      { title: "Instances", render: (r) => r.instances },
      { title: "From", render: (r) => r.calling_ae },
      { title: "Last received", render: (r) => fmtTime(r.last_received_at) },
      { title: "Flags", render: (r) => [r.likely_incomplete && h("span", { class: "error", title: r.incomplete_reason }, "incomplete? "),
        r.protected && h("span", { testid: "series-protected" }, "protected "), r.recycled_at && h("span", { class: "muted" }, "recycled")] },
      { title: "Kind", render: (r) => (r.derived_from_job ? `derived (job ${r.derived_from_job})` : "original") },
    ], rows, "series-table"));
  }
  state.addEventListener("change", refresh);
  derived.addEventListener("change", refresh);
  recycled.addEventListener("change", refresh);
  main.replaceChildren(h("h2", {}, "Series"), h("div", { class: "row" }, state, derived,
    h("label", {}, recycled, " recycled (history only)")), holder, detail);
  await refresh();
}
