// Thin client for the admin API: bearer token from sessionStorage, JSON in and out.
const KEY = "srnode.token";

export const token = {
  get: () => sessionStorage.getItem(KEY),
  set: (t) => sessionStorage.setItem(KEY, t),
  clear: () => sessionStorage.removeItem(KEY),
};

export class ApiError extends Error {
  constructor(status, body) {
    const detail = body && (Array.isArray(body.detail) ? body.detail.map((d) => d.msg).join("; ") : body.detail);
    super(`${status}: ${detail || "request failed"}`);
    this.status = status;
    this.body = body;
  }
}

// No header at all before sign-in: "Bearer null" would be an unknown token to the server.
function authHeaders() {
  const t = token.get();
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function request(method, path, body) {
  const headers = authHeaders();
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new ApiError(r.status, data);
  return data;
}

export const api = {
  get: (p) => request("GET", p),
  put: (p, b) => request("PUT", p, b),
  post: (p, b) => request("POST", p, b),
  del: (p) => request("DELETE", p),
  // Images need the token too, so they are fetched and shown through object URLs.
  async image(path) {
    const r = await fetch(path, { headers: authHeaders() });
    if (!r.ok) throw new ApiError(r.status, null);
    return URL.createObjectURL(await r.blob());
  },
};
