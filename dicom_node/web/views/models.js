// Models: registry (built-ins and configured), details with sha256 and model card, add a checkpoint.
import { api } from "../api.js";
import { markdown } from "./markdown.js";
import { h, table, toast, errorText } from "../ui.js";

export default async function models(main, args, session) {
  const admin = session.role === "admin";
  const list = await api.get("/api/models");
  const detail = h("section", { class: "card", testid: "model-detail", hidden: true });
  const reload = () => models(main, args, session);

  async function show(name) {
    const m = await api.get(`/api/models/${encodeURIComponent(name)}`);
    const card = m.card ? markdown(m.card.text) : h("p", { class: "muted" }, "no model card found beside the weights");
    detail.replaceChildren(h("h3", {}, m.name),
      h("dl", {},
        h("dt", {}, "architecture"), h("dd", {}, `${m.arch} x${m.scale}`),
        h("dt", {}, "weights"), h("dd", {}, m.weights || "—"),
        h("dt", {}, "sha256 (configured)"), h("dd", { class: "mono" }, m.sha256 || "—"),
        h("dt", {}, "sha256 (file)"), h("dd", { class: m.sha256_ok === false ? "mono error" : "mono" }, m.sha256_file || "—")),
      h("h4", {}, "Model card"), card);
    detail.hidden = false;
  }

  const cols = [
    { title: "Name", render: (r) => h("a", { href: "#/models", onclick: (e) => { e.preventDefault(); show(r.name); } }, r.name) },
    { title: "Arch", render: (r) => r.arch },
    { title: "Scale", render: (r) => `x${r.scale}` },
    { title: "Kind", render: (r) => (r.builtin ? "built-in" : "configured") },
    { title: "Usable", render: (r) => (r.usable ? "yes" : "needs weights") },
    { title: "sha256", render: (r) => h("span", { class: "mono" }, r.sha256 ? `${r.sha256.slice(0, 12)}…` : "") },
    { title: "Description", render: (r) => r.description },
  ];

  const f = {
    name: h("input", { placeholder: "name", required: true }),
    arch: h("select", {}, ["realesrgan", "bsrgan", "dpsr", "swinir", "hat"].map((a) => h("option", { value: a }, a))),
    weights: h("input", { placeholder: "/path/on/node/checkpoint.pth", required: true, size: 40 }),
    sha256: h("input", { placeholder: "expected sha256 (optional)", size: 40 }),
    scale: h("input", { type: "number", value: 4, min: 1, max: 8, class: "narrow" }),
    description: h("input", { placeholder: "description" }),
  };
  const form = admin && h("form", { class: "card row", onsubmit: async (e) => {
    e.preventDefault();
    const body = { name: f.name.value, arch: f.arch.value, weights: f.weights.value, scale: Number(f.scale.value),
      description: f.description.value };
    if (f.sha256.value) body.sha256 = f.sha256.value;
    try { const m = await api.post("/api/models", body); toast(`Added ${m.name} (sha256 ${m.sha256.slice(0, 12)}…)`); reload(); }
    catch (err) { toast(errorText(err), "error"); }
  } }, h("h3", {}, "Add a checkpoint"), f.name, f.arch, f.weights, f.sha256, "x", f.scale, f.description,
  h("button", { type: "submit" }, "Verify and add"));

  main.replaceChildren(h("h2", {}, "Models"), table(cols, list, "models-table"), detail, form);
}
