// Reader study, admin side (study.html): define a study, follow its candidates and answers, close
// it, read the results in Table 5's layout with CSV/PNG export.
import { api, token } from "../api.js";
import { h, toast, errorText, table, fmtTime } from "../ui.js";

const SCALES = { "128to512": "128→512 (downscaled 512, with ground truth)", "512to2048": "512→2048 (native, no ground truth)" };
const WINDOWS = ["mediastinum", "lung", "bone", "brain"];
let timer = null;

function loginForm(main, then) {
  const input = h("input", { type: "password", testid: "token", placeholder: "admin token", autocomplete: "off" });
  main.replaceChildren(h("form", { class: "card login", onsubmit: async (e) => {
    e.preventDefault(); token.set(input.value.trim());
    try { await then(); } catch (err) { token.clear(); toast(`Login failed: ${errorText(err)}`, "error"); }
  } }, h("h2", {}, "Sign in"), input, h("button", { type: "submit", testid: "login" }, "Sign in")));
}

async function download(path, name) {
  const url = await api.image(path);
  const a = h("a", { href: url, download: name });
  document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

async function createForm(role) {
  const [models, readers, series] = await Promise.all([
    api.get("/api/models"), api.get("/api/reader-studies/readers"), api.get("/api/series?derived=false&limit=500")]);
  const name = h("input", { testid: "study-name", value: "", placeholder: "e.g. chest CT x4, 10 models" });
  const source = h("select", { testid: "study-source" }, h("option", { value: "series" }, "pick slices from a stored series"),
    h("option", { value: "random" }, "draw slices at random (seeded)"));
  const seriesSel = h("select", { testid: "study-series" }, h("option", { value: "" }, "— series —"),
    series.map((s) => h("option", { value: s.series_uid }, `${s.modality} #${s.series_number ?? "?"} ${s.series_description || ""} (${s.instances} images)`)));
  const sliceBox = h("div", { class: "slice-list", testid: "slice-list" }, h("span", { class: "muted" }, "choose a series"));
  const count = h("input", { type: "number", min: 1, value: 10, class: "narrow", testid: "study-count" });
  const modality = h("input", { value: "CT", class: "narrow", testid: "study-modality" });
  const restrict = h("input", { type: "checkbox", testid: "study-random-series" });
  const seed = h("input", { type: "number", min: 0, value: 0, class: "narrow", testid: "study-seed" });
  const crop = h("input", { type: "number", min: 16, step: 4, placeholder: "whole slice", class: "narrow", testid: "study-crop" });
  const scales = Object.entries(SCALES).map(([k, label]) => h("label", {},
    h("input", { type: "checkbox", value: k, checked: k === "128to512", testid: `scale-${k}` }), " ", label));
  const modelChecks = models.map((m) => h("label", { title: m.description || m.arch },
    h("input", { type: "checkbox", value: m.name, disabled: m.scale !== 4 || !m.usable, testid: `model-${m.name}` }),
    ` ${m.name} (${m.arch} x${m.scale})`));
  const readerChecks = readers.map((r) => h("label", {},
    h("input", { type: "checkbox", value: r.reader, testid: `reader-${r.reader}` }), r.name ? ` ${r.name} (${r.reader})` : ` reader ${r.reader}`));
  const task = h("select", { testid: "study-task" }, h("option", { value: "rank" }, "rank all candidates per case (Table 5)"),
    h("option", { value: "pairwise" }, "pick the better of two (pairwise)"));
  const gt = h("input", { type: "checkbox", testid: "study-gt" });
  const win = h("select", { testid: "study-window" }, WINDOWS.map((w) => h("option", { value: w }, w)));

  seriesSel.addEventListener("change", async () => {
    if (!seriesSel.value) return sliceBox.replaceChildren();
    const slices = await api.get(`/api/reader-studies/series/${encodeURIComponent(seriesSel.value)}/slices`);
    sliceBox.replaceChildren(...slices.map((s, i) => h("label", { style: "display:block" },
      h("input", { type: "checkbox", value: s.sop_instance_uid, testid: `slice-${i}` }),
      ` slice ${i + 1} (instance ${s.instance_number ?? "?"}, z ${s.slice_location ?? "?"}, ${s.size.join("×")})`)));
  });
  const checked = (els) => els.map((l) => l.querySelector("input")).filter((i) => i.checked).map((i) => i.value);

  const submit = h("button", { type: "submit", testid: "study-create", disabled: role !== "admin" }, "Create study and compute candidates");
  const form = h("form", { class: "card", testid: "study-form", onsubmit: async (e) => {
    e.preventDefault();
    const body = {
      name: name.value.trim(), seed: Number(seed.value || 0), crop: crop.value ? Number(crop.value) : null,
      scales: checked(scales), models: checked(modelChecks), readers: checked(readerChecks), task: task.value,
      show_ground_truth: gt.checked, window: win.value,
    };
    if (source.value === "series") body.slices = [...sliceBox.querySelectorAll("input:checked")].map((i) => i.value);
    else body.random = { count: Number(count.value), modality: modality.value.trim().toUpperCase(),
      series_uids: restrict.checked && seriesSel.value ? [seriesSel.value] : [] };
    try {
      const s = await api.post("/api/reader-studies", body);
      toast(`Study ${s.id} created: computing ${s.cases} case(s)`);
      await refreshList();
    } catch (err) { toast(errorText(err), "error"); }
  } },
  h("h2", {}, "New reader study"),
  h("div", { class: "form-grid" },
    h("label", {}, "Name"), name,
    h("label", {}, "Slices"), h("div", {}, source, " ", seriesSel),
    h("span", {}, ""), sliceBox,
    h("label", {}, "Random draw"), h("div", { class: "row" }, h("label", {}, "count ", count), h("label", {}, "modality ", modality),
      h("label", {}, restrict, " only from the chosen series")),
    h("label", {}, "Seed"), seed,
    h("label", {}, "Scale / input size"), h("div", { class: "checks" }, scales),
    h("label", {}, "Crop (px, square)"), h("div", {}, crop, h("span", { class: "muted" }, " of the 512 slice; small crops keep the cost low")),
    h("label", {}, "Candidate models"), h("div", { class: "checks" }, modelChecks),
    h("label", {}, "Readers"), h("div", { class: "checks" }, readerChecks.length ? readerChecks : h("span", { class: "muted" }, "no tokens with role reader in admin.tokens")),
    h("label", {}, "Task"), task,
    h("label", {}, "Ground truth"), h("label", {}, gt, " show the reference beside the candidates (128→512 only)"),
    h("label", {}, "Initial window"), win),
  h("p", {}, submit));
  return form;
}

const listBox = h("div", { testid: "studies" });

async function refreshList() {
  const studies = await api.get("/api/reader-studies");
  listBox.replaceChildren(h("h2", {}, "Studies"), table([
    { title: "id", render: (s) => s.id },
    { title: "name", render: (s) => s.name },
    { title: "state", render: (s) => h("span", {}, h("span", { class: `state ${s.state}`, testid: `study-state-${s.id}` }, s.state),
      s.error ? h("div", { class: "error", testid: `study-error-${s.id}` }, s.error) : null) },
    { title: "candidates", render: (s) => `${s.progress[0]} / ${s.progress[1]} cases` },
    { title: "answers per reader", render: (s) => Object.entries(s.answers_per_reader).map(([r, n]) => `${r}: ${n}/${s.cases}`).join(", ") },
    { title: "created", render: (s) => fmtTime(s.created_at) },
    { title: "", render: (s) => h("span", { class: "row" },
      h("a", { href: `#/results/${s.id}`, testid: `results-${s.id}` }, "results"),
      s.state === "open" ? h("button", { testid: `close-${s.id}`, onclick: async () => {
        if (!confirm(`Close study ${s.id}? Readers will see the model names and cannot answer any more.`)) return;
        try { await api.post(`/api/reader-studies/${s.id}/close`); toast(`Study ${s.id} closed`); refreshList(); }
        catch (err) { toast(errorText(err), "error"); }
      } }, "close") : null,
      s.state === "failed" || s.state === "computing" ? h("button", { testid: `retry-${s.id}`, title: "compute the missing candidates again", onclick: async () => {
        try { await api.post(`/api/reader-studies/${s.id}/start`); refreshList(); } catch (err) { toast(errorText(err), "error"); }
      } }, s.state === "failed" ? "retry" : "resume") : null) },
  ], studies, "studies-table"));
  clearTimeout(timer);
  if (studies.some((s) => s.state === "computing" || s.state === "draft")) timer = setTimeout(refreshList, 1000);
}

const fmt = (x, d = 2) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

async function results(main, id) {
  const r = await api.get(`/api/reader-studies/${id}/results`);
  const cols = [{ title: "Model", render: (row) => h("strong", {}, row.model) }];
  for (const s of r.scales) {
    const label = s.replace("to", "→");
    cols.push(
      { title: `${label} ${r.task === "rank" ? "mean rank" : "win rate"} (95% CI)`,
        render: (row) => h("span", { class: "num", testid: `mean-${row.model}-${s}` },
          `${fmt(row[s].value)} (${fmt(row[s].ci[0])}–${fmt(row[s].ci[1])})`) },
      { title: `${label} place`, render: (row) => h("span", { testid: `place-${row.model}-${s}` }, row[s].place ?? "–") },
      { title: `${label} answers`, render: (row) => row[s].n },
      { title: `${label} PSNR dB`, render: (row) => fmt(row[s].psnr_db) },
      { title: `${label} SSIM`, render: (row) => fmt(row[s].ssim, 4) });
  }
  if (r.scales.length > 1) cols.push(
    { title: "overall (mean over scales)", render: (row) => h("span", { testid: `overall-${row.model}` }, fmt(row.overall.value)) },
    { title: "overall place", render: (row) => row.overall.place ?? "–" });
  const chart = h("img", { class: "chart", alt: "mean rank chart", testid: "results-chart" });
  main.replaceChildren(
    h("p", {}, h("a", { href: "#/" }, "← studies")),
    h("h2", {}, `Results: ${r.name} (study ${r.study}, ${r.state})`),
    h("p", { class: "muted" }, `${r.metric}; ${r.readers} reader(s); 95% CIs by bootstrap over cases and readers.`),
    table(cols, r.table, "results-table"),
    h("div", {}, r.scales.map((s) => {
      const a = r.per_scale[s].agreement;
      return h("p", { testid: `kendall-${s}` }, `${s.replace("to", "→")}: ${r.per_scale[s].answers} answers on ${r.per_scale[s].cases} cases`,
        a ? `; Kendall's W ${fmt(a.w_mean_per_case, 3)} (mean over ${a.cases_with_two_readers} cases ranked by ≥2 readers), ${fmt(a.w_reader_mean_ranks, 3)} on the readers' mean ranks` : "");
    })),
    h("p", { class: "row" },
      h("button", { testid: "export-csv", onclick: () => download(`/api/reader-studies/${id}/results.csv`, `reader-study-${id}.csv`) }, "Export CSV"),
      h("button", { testid: "export-png", onclick: () => download(`/api/reader-studies/${id}/results.png`, `reader-study-${id}.png`) }, "Export PNG chart"),
      h("button", { testid: "export-answers", onclick: () => download(`/api/reader-studies/${id}/answers.csv`, `reader-study-${id}-answers.csv`) }, "All answers (audit CSV)")),
    chart);
  chart.src = await api.image(`/api/reader-studies/${id}/results.png`);
}

async function render() {
  const main = document.getElementById("main");
  clearTimeout(timer);
  let me;
  try { me = await api.get("/api/whoami"); } catch (err) { return loginForm(main, render); }
  document.getElementById("who").textContent = `${me.role} (${me.actor})`;
  const [name, id] = location.hash.replace(/^#\/?/, "").split("/");
  try {
    if (name === "results" && id) return await results(main, id);
    main.replaceChildren(await createForm(me.role), listBox);
    await refreshList();
  } catch (err) { main.replaceChildren(h("p", { class: "error" }, errorText(err))); }
}

window.addEventListener("hashchange", render);
render();
