// Audit log: who changed what, when.
import { api } from "../api.js";
import { h, table, fmtTime } from "../ui.js";

export default async function audit(main) {
  const rows = await api.get("/api/audit?limit=200");
  main.replaceChildren(h("h2", {}, "Audit log"), table([
    { title: "When", render: (r) => fmtTime(r.at) },
    { title: "Who", render: (r) => r.actor },
    { title: "What", render: (r) => r.action },
    { title: "Detail", render: (r) => h("code", {}, r.detail) },
  ], rows, "audit-table"));
}
