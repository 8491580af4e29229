// The server's HTTP API as the pages use it: the bearer token from the URL fragment (never sent
// to a server, never in a Referer), JSON in and out, refusals as ApiError with the server's code.

export class ApiError extends Error {
  constructor(status, error) {
    super(error?.message || `request failed (${status})`);
    this.status = status;
    this.code = error?.code || "error";
    this.field = error?.field || null;
  }
}

// The token of this page: #token=... in the URL. It stays there so a reload keeps working.
export function pageToken() {
  return new URLSearchParams(location.hash.slice(1)).get("token");
}

// A JWT's claims, for display and routing only (the server verifies every request).
export function claims(token) {
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const text = new TextDecoder().decode(Uint8Array.from(atob(part), (c) => c.charCodeAt(0)));
    return JSON.parse(text);
  } catch {
    return null;
  }
}

async function request(token, path, { method = "GET", json, body, contentType } = {}) {
  const headers = { Authorization: `Bearer ${token}` };
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (contentType) {
    headers["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(path, { method, headers, body, cache: "no-store" });
  } catch {
    throw new ApiError(0, { code: "network", message: "the server cannot be reached" });
  }
  if (!response.ok) {
    let error = null;
    try {
      error = (await response.json()).error;
    } catch {
      // not our error format (a proxy's page): keep the status
    }
    throw new ApiError(response.status, error);
  }
  return response;
}

export async function api(token, path, options) {
  return (await request(token, path, options)).json();
}

export async function apiBlob(token, path, options) {
  return (await request(token, path, options)).blob();
}

// A short, human message for an error shown in the page.
export function describe(error) {
  if (error instanceof ApiError) {
    return error.field ? `${error.message} (${error.field})` : error.message;
  }
  return error?.message || String(error);
}

// A capture's time as the gallery shows it: "14:05:09", with the date when not today.
export function capturedAt(iso) {
  if (!iso) return "";
  const at = new Date(iso);
  const time = at.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return at.toDateString() === new Date().toDateString() ? time : `${at.toLocaleDateString()} ${time}`;
}

// "in 1 h 20 min" / "12 min overdue".
export function timeLeft(seconds) {
  const abs = Math.abs(seconds);
  const h = Math.floor(abs / 3600);
  const m = Math.floor((abs % 3600) / 60);
  const span = h ? `${h} h ${m} min` : `${m} min`;
  return seconds < 0 ? `${span} overdue` : `in ${span}`;
}
