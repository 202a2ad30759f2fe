// Small DOM helpers shared by the views.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "testid") el.dataset.testid = v;
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function toast(message, kind = "info") {
  const t = document.getElementById("toast");
  t.textContent = message;
  t.className = kind;
  t.dataset.testid = "toast";
  clearTimeout(toast._timer);
  toast._timer = setTimeout(() => { t.textContent = ""; t.className = ""; }, 6000);
}

export function errorText(err) {
  const keys = err.body && err.body.keys;
  return keys && keys.length ? `${err.message} [${keys.join(", ")}]` : err.message;
}

export function table(columns, rows, testid) {
  return h("table", { testid },
    h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c.title)))),
    h("tbody", {}, rows.map((r) => h("tr", {}, columns.map((c) => h("td", {}, c.render(r)))))));
}

export function fmtTime(iso) {
  return iso ? new Date(iso).toLocaleString() : "";
}
