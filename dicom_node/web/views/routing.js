// Routing: the model per modality (quick choice) and the full rule list as JSON.
import { api } from "../api.js";
import { h, table, toast, errorText } from "../ui.js";

export default async function routing(main, args, session) {
  const admin = session.role === "admin";
  const [byModality, rules, models] = await Promise.all([
    api.get("/api/routing/modalities"), api.get("/api/routing"), api.get("/api/models")]);
  const usable = models.filter((m) => m.usable).map((m) => m.name);
  const reload = () => routing(main, args, session);

  const modalities = Object.keys(byModality);
  for (const m of ["CT", "MR"]) if (!modalities.includes(m)) modalities.push(m);
  const rows = modalities.map((m) => ({ modality: m, ...(byModality[m] || { model: null, rule: "(none)" }) }));

  const cols = [
    { title: "Modality", render: (r) => r.modality },
    { title: "Rule", render: (r) => r.rule },
    { title: "Model", render: (r) => {
      const sel = h("select", { testid: `model-select-${r.modality}`, disabled: !admin },
        h("option", { value: "" }, "—"),
        usable.map((n) => h("option", { value: n, selected: n === r.model }, n)));
      const scale = h("input", { type: "number", min: 1, max: 8, value: r.scale ?? "", placeholder: "model's",
        class: "narrow", testid: `scale-${r.modality}`, disabled: !admin });
      return h("span", {}, sel, " scale ", scale, admin && h("button", { testid: `model-save-${r.modality}`,
        onclick: async () => {
          if (!sel.value) return toast("choose a model", "error");
          const body = { model: sel.value };
          if (scale.value) body.scale = Number(scale.value);
          try {
            const res = await api.put(`/api/routing/modalities/${r.modality}`, body);
            toast(`${r.modality} now uses ${res.model}`);
            reload();
          } catch (err) { toast(errorText(err), "error"); }
        } }, "Apply"));
    } },
  ];

  const editor = h("textarea", { rows: 16, spellcheck: false, testid: "rules-json", readOnly: !admin },
    JSON.stringify(rules, null, 2));
  main.replaceChildren(
    h("h2", {}, "Routing"),
    h("p", { class: "muted" }, "First matching rule wins. Changes apply to the next series without a restart."),
    table(cols, rows, "modality-table"),
    h("section", { class: "card" }, h("h3", {}, "All rules (JSON)"), editor,
      admin && h("button", { testid: "rules-save", onclick: async () => {
        let parsed;
        try { parsed = JSON.parse(editor.value); } catch (e) { return toast(`not JSON: ${e.message}`, "error"); }
        try { await api.put("/api/routing", parsed); toast("Rules saved"); reload(); }
        catch (err) { toast(errorText(err), "error"); }
      } }, "Save rules")));
}
