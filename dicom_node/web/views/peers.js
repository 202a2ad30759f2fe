// Peers: list, C-ECHO test, add/change, delete.
import { api } from "../api.js";
import { h, table, toast, errorText } from "../ui.js";

export default async function peers(main, _args, session) {
  const admin = session.role === "admin";
  const list = await api.get("/api/peers");
  const rows = Object.entries(list).map(([key, p]) => ({ key, ...p }));
  const reload = () => peers(main, _args, session);

  async function echo(key, cell) {
    cell.textContent = "…";
    try {
      const r = await api.post(`/api/peers/${encodeURIComponent(key)}/echo`);
      cell.textContent = r.ok ? `OK (${r.elapsed_ms.toFixed(0)} ms)` : `failed: ${r.error}`;
      cell.className = r.ok ? "ok" : "error";
    } catch (err) { cell.textContent = errorText(err); cell.className = "error"; }
  }

  const cols = [
    { title: "Key", render: (r) => r.key },
    { title: "AE title", render: (r) => r.ae_title },
    { title: "Host", render: (r) => r.host },
    { title: "Port", render: (r) => r.port },
    { title: "TLS", render: (r) => (r.tls ? "yes" : "no") },
    { title: "Delivery", render: (r) => r.delivery && h("span", { title: r.delivery.last_error || "" },
      h("span", { class: `state ${r.delivery.state}`, testid: `peer-delivery-${r.key}` }, r.delivery.state),
      ` ${r.delivery.pending} waiting`) },
    { title: "", render: (r) => {
      const result = h("span", { testid: `echo-result-${r.key}` });
      return h("span", {},
        admin && h("button", { testid: `echo-${r.key}`, onclick: () => echo(r.key, result) }, "C-ECHO"),
        " ", result,
        admin && h("button", { class: "danger", onclick: async () => {
          if (!confirm(`Delete peer ${r.key}?`)) return;
          try { await api.del(`/api/peers/${encodeURIComponent(r.key)}`); toast(`Deleted ${r.key}`); reload(); }
          catch (err) { toast(errorText(err), "error"); }
        } }, "Delete"));
    } },
  ];

  const f = {
    key: h("input", { placeholder: "key", testid: "peer-key", required: true }),
    ae: h("input", { placeholder: "AE title", testid: "peer-ae", required: true }),
    host: h("input", { placeholder: "host", testid: "peer-host", required: true }),
    port: h("input", { type: "number", placeholder: "port", testid: "peer-port", required: true }),
    tls: h("input", { type: "checkbox" }),
  };
  const form = admin && h("form", { class: "card row", onsubmit: async (e) => {
    e.preventDefault();
    try {
      await api.put(`/api/peers/${encodeURIComponent(f.key.value)}`,
        { ae_title: f.ae.value, host: f.host.value, port: Number(f.port.value), tls: f.tls.checked });
      toast(`Saved peer ${f.key.value}`);
      reload();
    } catch (err) { toast(errorText(err), "error"); }
  } }, h("h3", {}, "Add or change a peer"), f.key, f.ae, f.host, f.port, h("label", {}, f.tls, " TLS"),
  h("button", { type: "submit", testid: "peer-save" }, "Save"));

  main.replaceChildren(h("h2", {}, "Peers"), table(cols, rows, "peers-table"), form);
}
