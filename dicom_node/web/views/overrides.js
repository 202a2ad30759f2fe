// Banner above every page while console/API changes override node.yaml: which sections, by whom,
// when, whether the file was edited underneath since (that edit has no effect), and "Revert to file".
import { api } from "../api.js";
import { h, table, toast, errorText, fmtTime } from "../ui.js";

const WARN = "border-left: 4px solid var(--warn)";

function banner() {
  let el = document.getElementById("overrides-banner");
  if (!el) {
    el = h("section", { id: "overrides-banner", class: "card", testid: "overrides-banner",
      style: `${WARN}; margin: .8rem 1rem` });
    document.getElementById("main").before(el);
  }
  return el;
}

// Fetch the overrides and redraw the banner (hidden when the file alone is in force).
export async function showOverrides(session, onChange = () => {}) {
  const sections = await api.get("/api/config/overrides");
  const el = banner();
  const overridden = sections.filter((s) => s.source === "override");
  el.hidden = overridden.length === 0;
  if (el.hidden) return el.replaceChildren();
  const changed = overridden.filter((s) => s.file_changed).map((s) => s.key);
  const revert = (s) => h("button", { class: "danger", testid: `revert-${s.key}`, onclick: async () => {
    if (!confirm(`Revert ${s.key} to the value in node.yaml? The console change is removed.`)) return;
    try {
      await api.del(`/api/config/overrides/${s.key}`);
      toast(`${s.key}: the file's value is in force`);
      await showOverrides(session, onChange);
      onChange();
    } catch (err) { toast(errorText(err), "error"); }
  } }, "Revert to file");
  const cols = [
    { title: "Section", render: (s) => s.key },
    { title: "Changed by", render: (s) => s.actor },
    { title: "When", render: (s) => fmtTime(s.at) },
    { title: "node.yaml", render: (s) => s.file_changed
      ? h("span", { class: "error", testid: `file-changed-${s.key}` }, "edited since: the edit has no effect")
      : h("span", { class: "muted" }, "unchanged since") },
    { title: "", render: (s) => session.role === "admin" && revert(s) },
  ];
  el.replaceChildren(
    h("strong", {}, `Console changes override node.yaml for: ${overridden.map((s) => s.key).join(", ")}.`),
    " ", h("span", { class: "muted" }, "Every other setting comes from the file."),
    changed.length > 0 && h("p", { class: "error", testid: "overrides-file-changed" },
      `node.yaml was edited under the override of ${changed.join(", ")}: the file's new value is not in force.`),
    table(cols, overridden, "overrides-table"));
  return el;
}
