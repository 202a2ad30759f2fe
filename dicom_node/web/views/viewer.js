// Comparison viewer: original beside derived (or a swipe overlay), one shared window/level, zoom and
// pan for both, the LR-consistency PSNR of the slice and, beside it, the noise guard's figures (flat-tissue
// noise and strong-edge gradient against lanczos of the same slice). Pixels are rendered on the node from
// float values through the chosen window (display only).
import { api } from "../api.js";
import { h, toast, errorText } from "../ui.js";

const PRESETS = { "soft tissue": [40, 400], lung: [-600, 1500], bone: [400, 1800], brain: [40, 80] };

export default async function viewer(main, args) {
  const jobId = args[0];
  if (!jobId) return chooser(main);
  const info = await api.get(`/api/jobs/${jobId}/slices`);
  if (!info.slices.length) {
    main.replaceChildren(h("h2", {}, `Job ${jobId}`), h("p", { class: "muted" }, "no derived slices stored for this job yet"));
    return;
  }
  const st = {
    k: info.slices[Math.floor(info.slices.length / 2)].k,
    center: info.window ? info.window.center : 40,
    width: info.window ? info.window.width : 400,
    zoom: 1, panX: 0, panY: 0, mode: "side", swipe: 50,
  };
  const urls = {};

  const imgs = { source: h("img", { alt: "original", testid: "img-source" }), derived: h("img", { alt: "derived", testid: "img-derived" }) };
  const swipeImgs = { source: h("img", { alt: "original" }), derived: h("img", { alt: "derived" }) };
  const psnr = h("span", { testid: "psnr" }, "…");
  const noise = h("span", { testid: "noise" }, "");
  const centerIn = h("input", { type: "number", value: st.center, class: "narrow", testid: "wl-center" });
  const widthIn = h("input", { type: "number", value: st.width, min: 1, class: "narrow", testid: "wl-width" });
  const zoomIn = h("input", { type: "range", min: 1, max: 8, step: 0.25, value: 1, testid: "zoom" });
  const sliceIn = h("input", { type: "range", min: 0, max: info.slices.length - 1, value: info.slices.findIndex((s) => s.k === st.k), testid: "slice" });
  const swipeIn = h("input", { type: "range", min: 0, max: 100, value: st.swipe, testid: "swipe" });
  const sliceLabel = h("span");

  const paneSource = h("div", { class: "pane" }, imgs.source, h("span", { class: "label" }, "original"));
  const paneDerived = h("div", { class: "pane" }, imgs.derived, h("span", { class: "label" }, `${info.model} x${info.scale}`));
  const clip = h("div", { class: "clip" }, swipeImgs.derived);
  const divider = h("div", { class: "divider" });
  const paneSwipe = h("div", { class: "pane swipe", testid: "swipe-pane" }, swipeImgs.source, clip, divider,
    h("span", { class: "label" }, "original | derived"));
  const sideBySide = h("div", { class: "panes", testid: "side-by-side" }, paneSource, paneDerived);
  const swipeView = h("div", { class: "panes", hidden: true }, paneSwipe);

  function applyTransform() {
    const t = `translate(${st.panX}px, ${st.panY}px) scale(${st.zoom})`;
    for (const img of [...Object.values(imgs), ...Object.values(swipeImgs)]) img.style.transform = t;
    clip.style.clipPath = `inset(0 0 0 ${st.swipe}%)`;
    divider.style.left = `${st.swipe}%`;
  }

  async function loadImages() {
    const s = info.slices.find((x) => x.k === st.k);
    sliceLabel.textContent = ` slice ${st.k + 1} / ${info.slices.length}  (${s.source_size.join("×")} → ${s.derived_size.join("×")})`;
    const q = `center=${encodeURIComponent(st.center)}&width=${encodeURIComponent(st.width)}`;
    try {
      const [a, b] = await Promise.all(["source", "derived"].map((w) => api.image(`/api/jobs/${jobId}/slices/${st.k}/${w}.png?${q}`)));
      for (const u of Object.values(urls)) URL.revokeObjectURL(u);
      urls.source = a; urls.derived = b;
      imgs.source.src = swipeImgs.source.src = a;
      imgs.derived.src = swipeImgs.derived.src = b;
    } catch (err) { toast(errorText(err), "error"); }
  }

  // The guard's ratios come with the slice list (measured by the worker); x1.00 is lanczos.
  const ratio = (x) => (x === null || x === undefined ? "–" : `x${x.toFixed(2)}`);
  function showNoise() {
    const s = info.slices.find((x) => x.k === st.k);
    if (s.noise_ratio == null && s.edge_ratio == null && info.noise_ratio == null) { noise.textContent = "not measured"; return; }
    noise.textContent = `noise ${ratio(s.noise_ratio)}, edges ${ratio(s.edge_ratio)} over lanczos ` +
      `(series: noise ${ratio(info.noise_ratio)}, edges ${ratio(info.edge_ratio)})${info.held ? " · held for review" : ""}`;
  }

  async function loadPsnr() {
    showNoise();
    psnr.textContent = "…";
    try {
      const r = await api.get(`/api/jobs/${jobId}/slices/${st.k}/psnr`);
      psnr.textContent = r.psnr_db === null ? "∞ dB" : `${r.psnr_db.toFixed(2)} dB`;
    } catch (err) { psnr.textContent = errorText(err); }
  }

  function setWindow(center, width) {
    st.center = Math.round(center); st.width = Math.max(1, Math.round(width));
    centerIn.value = st.center; widthIn.value = st.width;
    loadImages();
  }

  // Drag pans both images; shift-drag (or right-drag) changes window/level for both.
  for (const pane of [paneSource, paneDerived, paneSwipe]) {
    pane.addEventListener("contextmenu", (e) => e.preventDefault());
    pane.addEventListener("wheel", (e) => {
      e.preventDefault();
      st.zoom = Math.min(8, Math.max(1, st.zoom * (e.deltaY < 0 ? 1.25 : 0.8)));
      zoomIn.value = st.zoom; applyTransform();
    }, { passive: false });
    pane.addEventListener("pointerdown", (e) => {
      const wl = e.shiftKey || e.button === 2;
      const start = { x: e.clientX, y: e.clientY, panX: st.panX, panY: st.panY, c: st.center, w: st.width };
      const move = (ev) => {
        const dx = ev.clientX - start.x, dy = ev.clientY - start.y;
        if (wl) { centerIn.value = Math.round(start.c + dy * 2); widthIn.value = Math.max(1, Math.round(start.w + dx * 4)); }
        else { st.panX = start.panX + dx; st.panY = start.panY + dy; applyTransform(); }
      };
      const up = () => {
        window.removeEventListener("pointermove", move);
        window.removeEventListener("pointerup", up);
        if (wl) setWindow(Number(centerIn.value), Number(widthIn.value));
      };
      window.addEventListener("pointermove", move);
      window.addEventListener("pointerup", up);
    });
  }
  centerIn.addEventListener("change", () => setWindow(Number(centerIn.value), Number(widthIn.value)));
  widthIn.addEventListener("change", () => setWindow(Number(centerIn.value), Number(widthIn.value)));
  zoomIn.addEventListener("input", () => { st.zoom = Number(zoomIn.value); applyTransform(); });
  swipeIn.addEventListener("input", () => { st.swipe = Number(swipeIn.value); applyTransform(); });
  sliceIn.addEventListener("change", () => { st.k = info.slices[Number(sliceIn.value)].k; loadImages(); loadPsnr(); });

  const modeBtn = h("button", { testid: "mode", onclick: () => {
    st.mode = st.mode === "side" ? "swipe" : "side";
    sideBySide.hidden = st.mode !== "side"; swipeView.hidden = st.mode !== "swipe";
    modeBtn.textContent = st.mode === "side" ? "Swipe" : "Side by side";
  } }, "Swipe");

  main.replaceChildren(
    h("h2", {}, `Job ${jobId}: ${info.model} x${info.scale}`),
    h("div", { class: "row toolbar" },
      h("label", {}, "Slice ", sliceIn), sliceLabel),
    h("div", { class: "row toolbar" },
      h("label", {}, "Centre ", centerIn), h("label", {}, "Width ", widthIn),
      Object.entries(PRESETS).map(([n, [c, w]]) => h("button", { onclick: () => setWindow(c, w) }, n)),
      h("label", {}, "Zoom ", zoomIn), modeBtn, h("label", {}, "Swipe ", swipeIn),
      h("button", { onclick: () => { st.zoom = 1; st.panX = st.panY = 0; zoomIn.value = 1; applyTransform(); } }, "Reset view")),
    h("p", {}, "LR-consistency PSNR (derived, degraded back ×", info.scale, ", vs original): ", h("strong", {}, psnr),
      " · ", h("span", { title: "flat-tissue noise and strong-edge gradient of the derived slice over lanczos of the original (noise guard)" }, h("strong", {}, noise))),
    sideBySide, swipeView,
    h("p", { class: "muted" }, "Drag to pan, wheel to zoom, shift-drag or right-drag for window/level. The window is for display only."));
  applyTransform();
  await loadImages();
  loadPsnr();
  return () => { for (const u of Object.values(urls)) URL.revokeObjectURL(u); };
}

async function chooser(main) {
  const done = [...await api.get("/api/jobs?state=done&limit=50"),
    ...await api.get("/api/jobs?state=done_with_errors&limit=50")].sort((a, b) => b.id - a.id);
  main.replaceChildren(h("h2", {}, "Viewer"),
    done.length ? h("ul", {}, done.map((j) => h("li", {},
      h("a", { href: `#/viewer/${j.id}` }, `job ${j.id}: ${j.modality} ${j.series_description || j.series_uid} → ${j.model} x${j.scale}`))))
      : h("p", { class: "muted" }, "no finished jobs yet"));
}
