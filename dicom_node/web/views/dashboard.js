// Dashboard: queue depth, jobs per state, throughput, failures; refreshed every 5 s.
import { api } from "../api.js";
import { h, fmtTime } from "../ui.js";

function kv(title, obj, testid) {
  return h("section", { class: "card", testid },
    h("h3", {}, title),
    h("dl", {}, Object.entries(obj).flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, String(v))])));
}

export default async function dashboard(main) {
  async function refresh() {
    const s = await api.get("/api/stats");
    main.replaceChildren(
      h("h2", {}, "Dashboard"),
      h("div", { class: "grid" },
        kv("Queue", s.queue, "dash-queue"),
        kv("Jobs", s.jobs, "dash-jobs"),
        kv("Throughput", s.throughput, "dash-throughput"),
        kv("Outbox", s.outbox, "dash-outbox")),
      h("section", { class: "card", testid: "dash-failures" },
        h("h3", {}, `Failures: ${s.failures.jobs_failed} job(s), ${s.failures.jobs_done_with_errors} job(s) with failed slices, ${s.failures.outbox_failed} delivery(ies)`),
        s.failures.recent.length
          ? h("ul", {}, s.failures.recent.map((f) => h("li", {},
              h("a", { href: `#/jobs` }, `job ${f.job}`), ` ${f.model} ${fmtTime(f.at)}: ${f.error}`)))
          : h("p", { class: "muted" }, "none")));
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 5000);
  return () => clearInterval(timer);
}
