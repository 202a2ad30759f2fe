// The reading screen (reading.html) for tokens with role `reader`. It only ever receives opaque
// candidate ids and the labels A, B, C...: which model made which image stays on the server until
// the study is closed. Keys: letters rank (best first), Backspace undoes, Enter submits,
// ←/→ move between cases; 1-4 pick the window presets.
import { api, token } from "../api.js";
import { h, toast, errorText } from "../ui.js";

const PRESETS = { lung: [-600, 1500], mediastinum: [40, 400], bone: [400, 1800], brain: [40, 80] };
const view = { center: 40, width: 400, zoom: 1, panX: 0, panY: 0 };
let keyHandler = null;
const urls = [];

function setKeys(fn) {
  if (keyHandler) window.removeEventListener("keydown", keyHandler);
  keyHandler = fn;
  if (fn) window.addEventListener("keydown", fn);
}

function login(main) {
  setKeys(null);
  const input = h("input", { type: "password", testid: "reader-token", placeholder: "reader token", autocomplete: "off" });
  main.replaceChildren(h("form", { class: "card login", testid: "reader-login-form", onsubmit: async (e) => {
    e.preventDefault(); token.set(input.value.trim());
    try { await render(); } catch (err) { token.clear(); toast(`Login failed: ${errorText(err)}`, "error"); }
  } }, h("h2", {}, "Reader sign in"), input, h("button", { type: "submit", testid: "reader-login" }, "Sign in")));
  input.focus();
}

async function studies(main) {
  setKeys(null);
  const mine = await api.get("/api/reading/studies");
  main.replaceChildren(h("h2", {}, "Your reader studies"),
    mine.length ? h("ul", { testid: "my-studies" }, mine.map((s) => h("li", {},
      `${s.name} (${s.task}, ${s.state}): ${s.answered} of ${s.total} answered `,
      h("button", { testid: `open-${s.id}`, onclick: () => { location.hash = `#/study/${s.id}/${s.next || 1}`; } },
        s.answered === 0 ? "Start" : s.next ? "Continue" : "Review"))))
      : h("p", { class: "muted" }, "no studies for you yet"));
}

async function reading(main, studyId, position) {
  const c = await api.get(`/api/reading/${studyId}/cases/${position}`);
  const shownAt = performance.now();
  if (!reading.windowSet) { [view.center, view.width] = PRESETS[c.window] || PRESETS.mediastinum; reading.windowSet = true; }
  const labels = c.candidates.map((x) => x.label);
  const byLabel = Object.fromEntries(c.candidates.map((x) => [x.label, x]));
  let ranking = c.ranking ? c.ranking.map((id) => c.candidates.find((x) => x.id === id).label) : [];

  const panes = [];
  const imgs = [];
  function pane(label, id, testid, extra) {
    const img = h("img", { alt: label, testid: `img-${testid}` });
    const p = h("div", { class: "pane", testid: `pane-${testid}` }, img, h("span", { class: "label" }, label, extra || ""));
    imgs.push({ img, id }); panes.push(p);
    return p;
  }
  const row = h("div", { class: "panes", testid: "candidates" },
    c.reference ? pane("Reference", c.reference, "reference") : null,
    c.candidates.map((x) => pane(x.label, x.id, x.label, x.model ? ` = ${x.model}` : "")));

  const centerIn = h("input", { type: "number", value: view.center, class: "narrow", testid: "wl-center" });
  const widthIn = h("input", { type: "number", value: view.width, min: 1, class: "narrow", testid: "wl-width" });
  const zoomIn = h("input", { type: "range", min: 1, max: 8, step: 0.25, value: view.zoom, testid: "zoom" });
  const rankText = h("span", { testid: "ranking" });
  const submitBtn = h("button", { testid: "submit", onclick: () => submit() }, "Submit (Enter)");
  const need = c.task === "rank" ? labels.length : 1;

  function applyTransform() {
    const t = `translate(${view.panX}px, ${view.panY}px) scale(${view.zoom})`;
    for (const { img } of imgs) img.style.transform = t;
  }
  async function loadImages() {
    const q = `center=${encodeURIComponent(view.center)}&width=${encodeURIComponent(view.width)}`;
    try {
      const got = await Promise.all(imgs.map(({ id }) => api.image(`/api/reading/${studyId}/images/${id}.png?${q}`)));
      while (urls.length) URL.revokeObjectURL(urls.pop());
      got.forEach((u, i) => { imgs[i].img.src = u; urls.push(u); });
    } catch (err) { toast(errorText(err), "error"); }
  }
  function setWindow(center, width) {
    view.center = Math.round(center); view.width = Math.max(1, Math.round(width));
    centerIn.value = view.center; widthIn.value = view.width;
    loadImages();
  }
  function showRanking() {
    const words = c.task === "rank" ? ranking.map((l, i) => `${i + 1}. ${l}`).join("  ") : (ranking[0] ? `better: ${ranking[0]}` : "");
    rankText.textContent = words || "—";
    for (const p of panes) {
      const label = p.querySelector(".label").firstChild.textContent;
      const r = ranking.indexOf(label);
      p.classList.toggle("ranked", r >= 0);
      p.querySelector(".label").dataset.rank = r >= 0 ? (c.task === "rank" ? `#${r + 1}` : "✓") : "";
    }
    submitBtn.disabled = ranking.length < need || c.state !== "open";
  }
  function pick(label) {
    if (!labels.includes(label) || c.state !== "open") return;
    if (c.task === "pairwise") ranking = [label];
    else if (!ranking.includes(label)) ranking.push(label);
    // The last remaining candidate is placed automatically.
    if (c.task === "rank" && ranking.length === labels.length - 1) ranking.push(labels.find((l) => !ranking.includes(l)));
    showRanking();
  }
  async function submit() {
    if (ranking.length < need || c.state !== "open") return;
    const full = c.task === "rank" ? ranking : [ranking[0], labels.find((l) => l !== ranking[0])];
    try {
      await api.post(`/api/reading/${studyId}/cases/${position}/answer`,
        { ranking: full.map((l) => byLabel[l].id), seconds_on_case: (performance.now() - shownAt) / 1000 });
    } catch (err) { return toast(errorText(err), "error"); }
    const mine = (await api.get("/api/reading/studies")).find((s) => s.id === Number(studyId));
    const next = position < c.total && (mine.next === null || mine.next > position) ? position + 1 : mine.next;
    if (next) location.hash = `#/study/${studyId}/${next}`;
    else main.replaceChildren(h("h2", { testid: "done" }, `All ${c.total} cases answered. Thank you.`),
      h("p", {}, h("a", { href: `#/study/${studyId}/1` }, "review your answers"), " · ", h("a", { href: "#/" }, "your studies")));
  }

  for (const p of panes) {
    p.addEventListener("wheel", (e) => {
      e.preventDefault();
      view.zoom = Math.min(8, Math.max(1, view.zoom * (e.deltaY < 0 ? 1.25 : 0.8)));
      zoomIn.value = view.zoom; applyTransform();
    }, { passive: false });
    p.addEventListener("pointerdown", (e) => {
      const start = { x: e.clientX, y: e.clientY, panX: view.panX, panY: view.panY };
      const move = (ev) => { view.panX = start.panX + ev.clientX - start.x; view.panY = start.panY + ev.clientY - start.y; applyTransform(); };
      const up = () => { window.removeEventListener("pointermove", move); window.removeEventListener("pointerup", up); };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
  }
  centerIn.addEventListener("change", () => setWindow(Number(centerIn.value), Number(widthIn.value)));
  widthIn.addEventListener("change", () => setWindow(Number(centerIn.value), Number(widthIn.value)));
  zoomIn.addEventListener("input", () => { view.zoom = Number(zoomIn.value); applyTransform(); });

  setKeys((e) => {
    // Typing a window value must not rank; a focused slider (zoom) only keeps its arrow keys.
    const typing = e.target instanceof HTMLInputElement && e.target.type !== "range";
    const slider = e.target instanceof HTMLInputElement && e.target.type === "range";
    if (typing || (slider && e.key.startsWith("Arrow"))) return;
    const k = e.key.toUpperCase();
    if (labels.includes(k)) { e.preventDefault(); pick(k); }
    else if (e.key === "Backspace") { e.preventDefault(); ranking.pop(); showRanking(); }
    else if (e.key === "Enter") { e.preventDefault(); submit(); }
    else if (e.key === "ArrowRight" && position < c.total) location.hash = `#/study/${studyId}/${position + 1}`;
    else if (e.key === "ArrowLeft" && position > 1) location.hash = `#/study/${studyId}/${position - 1}`;
    else if ("1234".includes(e.key) && e.key) setWindow(...Object.values(PRESETS)[Number(e.key) - 1]);
  });

  main.replaceChildren(h("div", { class: "reading" },
    h("h2", {}, `${c.name}`),
    h("div", { class: "row toolbar" },
      h("strong", { testid: "progress" }, `Case ${position} of ${c.total}`),
      h("span", { class: "muted", testid: "answered" }, `(${c.answered} answered)`),
      h("span", { class: "muted" }, `${c.scale}, ${c.size.join("×")} px`),
      c.state === "closed" ? h("span", { class: "ok", testid: "closed" }, "study closed: models revealed") : null),
    h("div", { class: "row toolbar" },
      Object.entries(PRESETS).map(([n, [cc, ww]], i) => h("button", { testid: `preset-${n}`, title: `key ${i + 1}`, onclick: () => setWindow(cc, ww) }, n)),
      h("label", {}, "Centre ", centerIn), h("label", {}, "Width ", widthIn),
      h("label", {}, "Zoom ", zoomIn),
      h("button", { testid: "reset-view", onclick: () => { view.zoom = 1; view.panX = view.panY = 0; zoomIn.value = 1; applyTransform(); } }, "Reset view")),
    row,
    h("div", { class: "rankbar row" },
      h("span", {}, c.task === "rank" ? "Your ranking (best first): " : "Your choice: "), rankText,
      labels.map((l) => h("button", { testid: `rank-${l}`, onclick: () => pick(l) }, l)),
      h("button", { testid: "rank-undo", onclick: () => { ranking.pop(); showRanking(); } }, "Undo (⌫)"), submitBtn),
    h("p", { class: "row" },
      position > 1 ? h("a", { href: `#/study/${studyId}/${position - 1}`, testid: "prev" }, "← previous") : null,
      position < c.total ? h("a", { href: `#/study/${studyId}/${position + 1}`, testid: "next" }, "next →") : null,
      h("a", { href: "#/" }, "your studies")),
    h("p", { class: "muted help" },
      c.task === "rank" ? "Press the letters from best to worst (" : "Press the letter of the better image (",
      labels.map((l) => h("kbd", {}, l)), "), ", h("kbd", {}, "⌫"), " to undo, ", h("kbd", {}, "Enter"), " to submit. ",
      h("kbd", {}, "1"), "–", h("kbd", {}, "4"), " window presets; drag to pan, wheel to zoom (all images together). ",
      "The window is for display only.")));
  applyTransform();
  showRanking();
  await loadImages();
}

async function render() {
  const main = document.getElementById("main");
  if (!token.get()) return login(main);
  document.getElementById("logout").hidden = false;
  const [name, id, pos] = location.hash.replace(/^#\/?/, "").split("/");
  try {
    if (name === "study" && id) await reading(main, Number(id), Number(pos) || 1);
    else await studies(main);
  } catch (err) {
    if (err.status === 401 || err.status === 403) { token.clear(); toast(`Sign in failed: ${errorText(err)}`, "error"); return login(main); }
    main.replaceChildren(h("p", { class: "error" }, errorText(err)), h("a", { href: "#/" }, "your studies"));
  }
}

window.addEventListener("hashchange", render);
document.getElementById("logout").addEventListener("click", () => { token.clear(); location.hash = "#/"; location.reload(); });
render();
