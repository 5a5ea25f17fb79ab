// The api's documented routes and nothing else. Every failure becomes an `ApiError` carrying the
// HTTP status, the api's error code and message (`{"error": {"code", "message"}}`), and for 429
// the `Retry-After` seconds; `describe` turns one into the sentence the user reads.

const TOKEN_KEY = "cairn.token";
const EMAIL_KEY = "cairn.email";

export class ApiError extends Error {
  constructor(status, code, message, retryAfter = null) {
    super(message);
    this.status = status;
    this.code = code;
    this.retryAfter = retryAfter;
  }
}

/** The bearer token of this browser tab (sessionStorage: gone when the tab closes). */
export const auth = {
  get token() {
    return sessionStorage.getItem(TOKEN_KEY);
  },
  get email() {
    return sessionStorage.getItem(EMAIL_KEY) ?? "";
  },
  save(token, email) {
    sessionStorage.setItem(TOKEN_KEY, token);
    sessionStorage.setItem(EMAIL_KEY, email);
  },
  clear() {
    sessionStorage.removeItem(TOKEN_KEY);
    sessionStorage.removeItem(EMAIL_KEY);
  },
};

/** An `ApiError` from a failed answer: its JSON error body when there is one (nginx's own
 * 413 page is HTML), and `Retry-After`. */
export function errorFrom(status, bodyText, retryAfterHeader) {
  let code = `http_${status}`;
  let message = "";
  try {
    const body = JSON.parse(bodyText);
    if (body && body.error) {
      code = String(body.error.code ?? code);
      message = String(body.error.message ?? "");
    }
  } catch {
    // Not JSON: keep the status alone.
  }
  const seconds = Number.parseInt(retryAfterHeader ?? "", 10);
  return new ApiError(status, code, message, Number.isFinite(seconds) ? seconds : null);
}

async function errorOf(response) {
  const text = await response.text().catch(() => "");
  return errorFrom(response.status, text, response.headers.get("Retry-After"));
}

/** `fetch` with the token; resolves to the response when it is 2xx, else throws `ApiError`. */
export async function send(method, path, { json, signal } = {}) {
  const headers = {};
  if (auth.token) headers.Authorization = `Bearer ${auth.token}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  let response;
  try {
    response = await fetch(path, {
      method,
      headers,
      body: json === undefined ? undefined : JSON.stringify(json),
      signal,
    });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, "network", "the server could not be reached");
  }
  if (!response.ok) throw await errorOf(response);
  return response;
}

export async function sendJson(method, path, json) {
  const response = await send(method, path, { json });
  return response.status === 204 ? null : response.json();
}

export const api = {
  register: (email, password) => sendJson("POST", "/api/auth/register", { email, password }),
  login: (email, password) => sendJson("POST", "/api/auth/login", { email, password }),
  me: () => sendJson("GET", "/api/auth/me"),
  sessions: () => sendJson("GET", "/api/sessions?limit=100&offset=0"),
  session: (id) => sendJson("GET", `/api/sessions/${encodeURIComponent(id)}`),
  deleteSession: (id) => sendJson("DELETE", `/api/sessions/${encodeURIComponent(id)}`),
  chat: (message, sessionId, signal) =>
    send("POST", "/api/chat", {
      json: sessionId ? { message, session_id: sessionId } : { message },
      signal,
    }),
  files: () => sendJson("GET", "/api/files"),
  deleteFile: (id) => sendJson("DELETE", `/api/files/${encodeURIComponent(id)}`),
  download: async (id) => (await send("GET", `/api/files/${encodeURIComponent(id)}`)).blob(),
};

/** `POST /api/files?name=` with upload progress (fetch has none): resolves to the metadata. */
export function upload(file, onProgress) {
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("POST", `/api/files?name=${encodeURIComponent(file.name)}`);
    if (auth.token) xhr.setRequestHeader("Authorization", `Bearer ${auth.token}`);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) onProgress(event.loaded / event.total);
    });
    xhr.addEventListener("load", () => {
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(JSON.parse(xhr.responseText));
      } else {
        reject(errorFrom(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After")));
      }
    });
    xhr.addEventListener("error", () =>
      reject(new ApiError(0, "network", "the upload was cut off (too large, or the server is unreachable)")),
    );
    xhr.send(file);
  });
}

/** The sentence shown for `error` while doing `what` ("Log in", "Upload", ...). */
export function describe(error, what) {
  if (!(error instanceof ApiError)) return `${what} failed: ${error.message ?? error}`;
  const detail = error.message ? `: ${error.message}` : "";
  switch (error.status) {
    case 0:
      return `${what} failed: ${error.message}.`;
    case 401:
      return error.code === "unauthorized" && what === "Log in"
        ? "Wrong email or password."
        : `${what} failed: not logged in or the session expired${detail}.`;
    case 409:
      return `${what} failed${detail}.`;
    case 413:
      return `${what} failed: too large for the server (413)${detail}.`;
    case 415:
      return `${what} failed: this file type is not accepted (415)${detail}.`;
    case 422:
      return `${what} failed: the input was refused (422)${detail}.`;
    case 429: {
      const wait = error.retryAfter === null ? "a moment" : `${error.retryAfter} s`;
      return `${what} failed: too many requests (429); try again in ${wait}${detail}.`;
    }
    case 502:
    case 503:
      return `${what} failed: the language model or a service is unavailable (${error.status})${detail}. Try again later.`;
    default:
      return `${what} failed (${error.status || error.code})${detail}.`;
  }
}
