// Workers: each `srnode worker` (the embedded one too), its state and, when it refuses jobs, why.
import { api } from "../api.js";
import { h, table, fmtTime } from "../ui.js";

export default async function workers(main) {
  const holder = h("div");

  async function refresh() {
    const rows = await api.get("/api/workers");
    holder.replaceChildren(rows.length ? table([
      { title: "Worker", render: (r) => r.name },
      { title: "State", render: (r) => h("span", { class: `state ${r.state}`, testid: `worker-state-${r.name}` }, r.state) },
      { title: "Device", render: (r) => r.device },
      { title: "Models", render: (r) => r.models.join(", ") },
      { title: "Started", render: (r) => fmtTime(r.started_at) },
      { title: "Last seen", render: (r) => `${fmtTime(r.last_seen_at)} (${Math.round(r.seen_s_ago)} s ago)` },
      { title: "Problem", render: (r) => h("span", { class: "error" }, r.problem) },
    ], rows, "workers-table") : h("p", {}, "No worker has reported yet."));
  }

  main.replaceChildren(h("h2", {}, "Workers"), h("div", { class: "row" },
    h("button", { onclick: refresh }, "Refresh")), holder);
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
