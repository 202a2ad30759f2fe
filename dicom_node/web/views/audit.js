// Audit log: who (by name where the token has one) changed what, when, and what it was before.
import { api } from "../api.js";
import { h, table, fmtTime } from "../ui.js";

const show = (v) => (v === null || v === undefined ? "—" : JSON.stringify(v, null, 1));

function detail(r) {
  const c = r.change;
  if (!c) return h("code", {}, r.detail);
  return h("div", { class: "diff", testid: `audit-diff-${r.id}` },
    h("div", { class: "muted" }, `how: ${c.how}`),
    h("div", { class: "before" }, "before: ", h("code", {}, show(c.before))),
    h("div", { class: "after" }, "after: ", h("code", {}, show(c.after))));
}

export default async function audit(main) {
  const rows = await api.get("/api/audit?limit=200");
  main.replaceChildren(h("h2", {}, "Audit log"), table([
    { title: "When", render: (r) => fmtTime(r.at) },
    { title: "Who", render: (r) => r.actor },
    { title: "What", render: (r) => r.action },
    { title: "Change", render: detail },
  ], rows, "audit-table"));
}
