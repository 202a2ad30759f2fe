// Storage: used bytes against the retention quota, what recycling may take and what is protected,
// by kind (original / derived), and why the node refuses instances when it does (GET /api/storage).
import { api } from "../api.js";
import { h, table } from "../ui.js";

const KINDS = ["original", "derived"];

function mib(bytes) {
  return `${(bytes / 1048576).toFixed(1)} MiB`;
}

export default async function storage(main) {
  const holder = h("div");

  async function refresh() {
    const s = await api.get("/api/storage");
    const quota = s.quota_bytes === null ? "none (retention off)" : mib(s.quota_bytes);
    const share = s.quota_bytes ? ` (${Math.round((100 * s.used_bytes) / s.quota_bytes)} % of the quota)` : "";
    const rows = [
      { what: "Used", total: s.used_bytes, by: s.by_kind, series: null },
      { what: "Eligible for recycling", total: s.eligible.bytes, by: s.eligible.by_kind, series: s.eligible.series },
      { what: "Protected", total: s.protected.bytes, by: s.protected.by_kind, series: s.protected.series },
    ];
    holder.replaceChildren(
      s.refusing ? h("p", { class: "error", testid: "storage-refusing" }, `Refusing new instances: ${s.refusing}`) : "",
      h("p", { testid: "storage-used" }, `${mib(s.used_bytes)} used, quota ${quota}${share}; ${mib(s.recycled_bytes)} recycled so far;`
        + ` a series becomes eligible ${s.keep_after_delivery_h} h after its last activity.`),
      table([
        { title: "", render: (r) => r.what },
        { title: "Total", render: (r) => mib(r.total) },
        ...KINDS.map((k) => ({ title: k[0].toUpperCase() + k.slice(1), render: (r) => mib((r.by || {})[k] || 0) })),
        { title: "Series", render: (r) => (r.series === null ? "" : r.series) },
      ], rows, "storage-table"));
  }

  main.replaceChildren(h("h2", {}, "Storage"), h("div", { class: "row" },
    h("button", { onclick: refresh }, "Refresh")), holder);
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 10000);
  return () => clearInterval(timer);
}
