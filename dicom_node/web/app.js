// srnode console: login with a token, then one view per hash route (#/jobs, #/viewer/12 ...).
import { api, token } from "./api.js";
import { h, toast, errorText } from "./ui.js";
import dashboard from "./views/dashboard.js";
import peers from "./views/peers.js";
import routing from "./views/routing.js";
import models from "./views/models.js";
import jobs from "./views/jobs.js";
import viewer from "./views/viewer.js";
import audit from "./views/audit.js";
import series from "./views/series.js";
import workers from "./views/workers.js";
import { showOverrides } from "./views/overrides.js";

const VIEWS = { dashboard, peers, routing, models, jobs, workers, series, viewer, audit };
import storage from "./views/storage.js"; VIEWS.storage = storage; // imports are hoisted; one line on purpose
export const session = { role: null };
let cleanup = null;

function loginView(main) {
  const input = h("input", { type: "password", id: "token", testid: "token", placeholder: "admin token", autocomplete: "off" });
  const form = h("form", { class: "card login", testid: "login-form", onsubmit: async (e) => {
    e.preventDefault();
    token.set(input.value.trim());
    try {
      await start();
      toast(`Signed in as ${session.role}`);
    } catch (err) {
      token.clear();
      toast(`Login failed: ${errorText(err)}`, "error");
    }
  } },
  h("h2", {}, "Sign in"),
  h("label", { for: "token" }, "Token"), input,
  h("button", { type: "submit", testid: "login" }, "Sign in"));
  main.replaceChildren(form);
  input.focus();
}

async function start() {
  const me = await api.get("/api/whoami");
  session.role = me.role;
  document.getElementById("who").textContent = `${me.role} (${me.actor})`;
  document.getElementById("nav").hidden = false;
  document.getElementById("logout").hidden = false;
  if (!location.hash || location.hash === "#/login") location.hash = "#/dashboard";
  else render();
}

async function render() {
  const main = document.getElementById("main");
  if (cleanup) { cleanup(); cleanup = null; }
  if (!token.get() || !session.role) return loginView(main);
  const [name, ...args] = location.hash.replace(/^#\/?/, "").split("/");
  const view = VIEWS[name] || dashboard;
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.getAttribute("href") === `#/${name}`);
  main.replaceChildren(h("p", { class: "muted" }, "Loading…"));
  showOverrides(session, render).catch((err) => err.status === 401 || toast(errorText(err), "error"));
  try {
    cleanup = (await view(main, args, session)) || null;
  } catch (err) {
    if (err.status === 401) { token.clear(); session.role = null; return loginView(main); }
    main.replaceChildren(h("p", { class: "error" }, errorText(err)));
  }
}

window.addEventListener("hashchange", render);
document.getElementById("logout").addEventListener("click", () => {
  token.clear();
  session.role = null;
  location.hash = "#/login";
  location.reload();
});

if (token.get()) start().catch(() => { token.clear(); render(); });
else render();
