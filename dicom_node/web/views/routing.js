// Routing: the model per modality (quick choice), the rules with their names and matches, and the
// full rule list as JSON. Everything renders from one GET /api/routing/state and is fetched again
// after every save, so no panel shows rules older than another; each save names the version it was
// based on and is refused (409) when someone changed the rules meanwhile.
import { api } from "../api.js";
import { h, table, toast, errorText } from "../ui.js";
import { showOverrides } from "./overrides.js";

export default async function routing(main, args, session) {
  const admin = session.role === "admin";
  const [state, models] = await Promise.all([api.get("/api/routing/state"), api.get("/api/models")]);
  const usable = models.filter((m) => m.usable).map((m) => m.name);
  const versioned = (path) => `${path}?version=${encodeURIComponent(state.version)}`;
  const save = async (put, done) => {
    try {
      const res = await put();
      toast(done(res));
      await showOverrides(session, () => routing(main, args, session));
      await routing(main, args, session);  // the one state, fetched again
    } catch (err) {
      // 409: someone else saved first; the page keeps the admin's edits until they reload.
      toast(errorText(err), "error");
    }
  };

  const rows = Object.entries(state.modalities).map(([modality, m]) => ({ modality, ...m }));
  const cols = [
    { title: "Modality", render: (r) => r.modality },
    { title: "Rule for ordinary series", render: (r) => r.rule
      ? h("span", { testid: `modality-rule-${r.modality}` }, h("strong", {}, r.rule), " ", h("span", { class: "muted" }, r.match))
      : h("span", { class: "muted", testid: `modality-rule-${r.modality}` }, "no general rule",
        r.other_rules.length ? ` (narrower: ${r.other_rules.join(", ")})` : "") },
    { title: "Model", render: (r) => {
      const sel = h("select", { testid: `model-select-${r.modality}`, disabled: !admin },
        h("option", { value: "" }, "—"),
        usable.map((n) => h("option", { value: n, selected: n === r.model }, n)));
      const scale = h("input", { type: "number", min: 1, max: 8, value: r.scale ?? "", placeholder: "model's",
        class: "narrow", testid: `scale-${r.modality}`, disabled: !admin });
      const label = r.rule ? `Apply to ${r.rule}` : `Create general ${r.modality} rule`;
      return h("span", {}, sel, " scale ", scale, admin && h("button", { testid: `model-save-${r.modality}`,
        onclick: () => {
          if (!sel.value) return toast("choose a model", "error");
          const body = { model: sel.value };
          if (scale.value) body.scale = Number(scale.value);
          return save(() => api.put(versioned(`/api/routing/modalities/${r.modality}`), body),
            (res) => `${r.modality} now uses ${res.model} (rule ${res.rule}${res.created ? ", created" : ""})`);
        } }, label));
    } },
  ];

  const ruleCols = [
    { title: "#", render: (r) => r.index },
    { title: "Name", render: (r) => h("span", { testid: `rule-name-${r.index}` }, r.name) },
    { title: "Match", render: (r) => r.match },
    { title: "Model", render: (r) => r.skip ? "skip" : `${r.model}${r.scale ? ` x${r.scale}` : ""}` },
    { title: "Destinations", render: (r) => r.destinations.join(", ") || "—" },
    { title: "", render: (r) => [r.on_demand && "on demand", r.passthrough && "passthrough"].filter(Boolean).join(", ") },
  ];

  const editor = h("textarea", { rows: 16, spellcheck: false, testid: "rules-json", readOnly: !admin },
    JSON.stringify(state.rules, null, 2));
  main.replaceChildren(
    h("h2", {}, "Routing"),
    h("p", { class: "muted" }, "First matching rule wins. Changes apply to the next series without a restart. ",
      "The model per modality is the one of its general rule (matching on the modality alone)."),
    table(cols, rows, "modality-table"),
    h("section", { class: "card" }, h("h3", {}, "Rules"), table(ruleCols, state.shown, "rules-table")),
    h("section", { class: "card" }, h("h3", {}, "All rules (JSON)"),
      h("p", { class: "muted" }, "Give each rule a \"name\": jobs record it, and unnamed rules are called by position (rule-N)."),
      editor,
      admin && h("button", { testid: "rules-save", onclick: () => {
        let parsed;
        try { parsed = JSON.parse(editor.value); } catch (e) { return toast(`not JSON: ${e.message}`, "error"); }
        return save(() => api.put(versioned("/api/routing"), parsed), () => "Rules saved");
      } }, "Save rules"),
      " ", h("button", { testid: "rules-reload", onclick: () => routing(main, args, session) }, "Reload")));
}
