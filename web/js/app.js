// The chat page: log in or register, sessions, a streamed reply that can be stopped, files.
// The current session lives in the URL (`#session/ID`) so a reload finds it again; the token
// lives in sessionStorage (see api.js). Text from the api only ever reaches the page as text
// nodes (renderMarkdown builds elements; nothing here assigns HTML).

import { api, auth, upload, describe, ApiError } from "./api.js";
import { readEvents } from "./sse.js";
import { renderMarkdown } from "./markdown.js";

const $ = (id) => document.getElementById(id);
const view = {
  auth: $("auth-view"),
  chat: $("chat-view"),
  authForm: $("auth-form"),
  email: $("email"),
  password: $("password"),
  userEmail: $("user-email"),
  logout: $("logout"),
  menu: $("menu-toggle"),
  sidebar: $("sidebar"),
  notice: $("notice"),
  sessions: $("sessions"),
  newSession: $("new-session"),
  files: $("files"),
  fileInput: $("file-input"),
  progress: $("upload-progress"),
  title: $("chat-title"),
  messages: $("messages"),
  composer: $("composer"),
  message: $("message"),
  send: $("send"),
  stop: $("stop"),
};

const STATE_NOTES = {
  streaming: "Writing…",
  partial: "Stopped: the partial reply is kept.",
};
// Chat stream error codes and the status the same error has as an HTTP answer.
const STREAM_ERROR_STATUS = {
  llm_unavailable: 502,
  llm_rejected: 502,
  llm_timeout: 502,
  llm_stream_broken: 502,
  llm_bad_response: 502,
  unavailable: 503,
  overloaded: 503,
  internal: 500,
};
const NEW_TITLE = "New conversation";

const state = {
  sessionId: null,
  sessions: [],
  /** The AbortController of the reply being streamed, if any. */
  stream: null,
};

function notify(text) {
  view.notice.textContent = text;
  view.notice.hidden = !text;
}

/** Runs `work`; a failure is shown as `what` failed, and a 401 ends the login. */
async function guarded(what, work) {
  try {
    return await work();
  } catch (err) {
    if (err instanceof ApiError && err.status === 401 && auth.token) {
      logOut("Your login expired; log in again.");
    } else {
      notify(describe(err, what));
    }
    return undefined;
  }
}

function button(text, className, onClick) {
  const element = document.createElement("button");
  element.type = "button";
  element.className = className;
  element.textContent = text;
  element.addEventListener("click", onClick);
  return element;
}

// ---- views --------------------------------------------------------------------------------

function showAuth() {
  view.chat.hidden = true;
  view.logout.hidden = true;
  view.menu.hidden = true;
  view.userEmail.textContent = "";
  view.auth.hidden = false;
  view.email.focus();
}

/** Shows the chat once its lists and the session in the URL are loaded: a message typed
 * earlier would be cleared (and its stream aborted) by the session opening under it. */
async function showChat() {
  view.auth.hidden = true;
  view.userEmail.textContent = auth.email;
  await Promise.all([loadSessions(), loadFiles()]);
  await openFromUrl();
  if (!auth.token) return; // the login ended while loading (a 401)
  view.chat.hidden = false;
  view.logout.hidden = false;
  view.menu.hidden = false;
  view.message.focus();
}

function logOut(message = "") {
  state.stream?.abort();
  auth.clear();
  state.sessionId = null;
  state.sessions = [];
  view.sessions.replaceChildren();
  view.files.replaceChildren();
  view.messages.replaceChildren();
  history.replaceState(null, "", location.pathname);
  view.password.value = "";
  notify(message);
  showAuth();
}

// ---- log in / register --------------------------------------------------------------------

view.authForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const registering = event.submitter?.value === "register";
  const what = registering ? "Register" : "Log in";
  const email = view.email.value.trim();
  const password = view.password.value;
  notify("");
  const session = await guarded(what, () =>
    registering ? api.register(email, password) : api.login(email, password),
  );
  if (!session) return;
  auth.save(session.token, session.user?.email ?? email);
  view.password.value = "";
  await showChat();
});

view.logout.addEventListener("click", () => logOut());

view.menu.addEventListener("click", () => {
  const collapsed = view.sidebar.classList.toggle("collapsed");
  view.menu.setAttribute("aria-expanded", String(!collapsed));
});

// ---- sessions -----------------------------------------------------------------------------

async function loadSessions() {
  const page = await guarded("Loading the sessions", () => api.sessions());
  if (!page) return;
  state.sessions = page.sessions;
  renderSessions();
}

function renderSessions() {
  const items = state.sessions.map((session) => {
    const item = document.createElement("li");
    item.dataset.id = session.id;
    if (session.id === state.sessionId) item.setAttribute("aria-current", "true");
    const open = button(session.title, "link", () => navigate(session.id));
    open.dataset.action = "open";
    const remove = button("Delete", "ghost", () => deleteSession(session));
    remove.setAttribute("aria-label", `Delete session ${session.title}`);
    remove.dataset.action = "delete";
    item.append(open, remove);
    return item;
  });
  if (items.length === 0) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "No sessions yet.";
    items.push(empty);
  }
  view.sessions.replaceChildren(...items);
  const current = state.sessions.find((s) => s.id === state.sessionId);
  view.title.textContent = current ? current.title : NEW_TITLE;
}

/** Opens session `id` (null: a new conversation) and records it in the URL. */
function navigate(id) {
  history.pushState(null, "", id ? `#session/${id}` : location.pathname);
  view.sidebar.classList.add("collapsed");
  view.menu.setAttribute("aria-expanded", "false");
  return openFromUrl();
}

function sessionInUrl() {
  const match = location.hash.match(/^#session\/([0-9a-f-]{36})$/i);
  return match ? match[1] : null;
}

async function openFromUrl() {
  state.stream?.abort();
  const id = sessionInUrl();
  state.sessionId = id;
  view.messages.replaceChildren();
  renderSessions();
  if (!id) {
    view.message.focus();
    return;
  }
  const found = await guarded("Opening the session", () => api.session(id));
  if (!found || state.sessionId !== id) return;
  view.title.textContent = found.session.title;
  view.messages.replaceChildren(
    ...found.messages.map((m) => messageElement(m.role, m.content, m.status)),
  );
  view.messages.scrollTop = view.messages.scrollHeight;
}

async function deleteSession(session) {
  const deleted = await guarded("Deleting the session", () => api.deleteSession(session.id));
  if (deleted === undefined) return;
  if (session.id === state.sessionId) await navigate(null);
  await loadSessions();
}

view.newSession.addEventListener("click", () => navigate(null));
window.addEventListener("popstate", () => openFromUrl());

// ---- messages and the streamed reply ------------------------------------------------------

function messageElement(role, content, status) {
  const article = document.createElement("article");
  article.className = `message ${role}`;
  article.dataset.role = role;
  const label = document.createElement("div");
  label.className = "role";
  label.textContent = role === "user" ? "You" : role === "assistant" ? "Assistant" : role;
  const body = document.createElement("div");
  body.className = "body";
  body.append(renderMarkdown(content));
  const note = document.createElement("div");
  note.className = "state";
  article.append(label, body, note);
  setMessageState(article, status);
  return article;
}

function setMessageState(article, status, note = STATE_NOTES[status] ?? "") {
  article.dataset.state = status;
  article.querySelector(".state").textContent = note;
}

function setStreaming(on) {
  view.send.hidden = on;
  view.stop.hidden = !on;
  if (on) view.stop.focus();
  else if (document.activeElement === document.body || document.activeElement === view.stop) {
    view.message.focus();
  }
}

function streamError(payload) {
  const code = payload?.error?.code ?? "internal";
  return new ApiError(STREAM_ERROR_STATUS[code] ?? 500, code, payload?.error?.message ?? "");
}

async function sendMessage() {
  const text = view.message.value;
  if (!text.trim() || state.stream) return;
  notify("");
  const controller = new AbortController();
  state.stream = controller;
  const asked = messageElement("user", text, "complete");
  const reply = messageElement("assistant", "", "streaming");
  const replyBody = reply.querySelector(".body");
  view.messages.append(asked);
  setStreaming(true);
  let replyText = "";
  let accepted = false;
  try {
    const response = await api.chat(text, state.sessionId, controller.signal);
    accepted = true;
    view.message.value = "";
    view.messages.append(reply);
    for await (const { event, data } of readEvents(response.body)) {
      const payload = JSON.parse(data);
      if (event === "session" && payload.session_id !== state.sessionId) {
        state.sessionId = payload.session_id;
        history.replaceState(null, "", `#session/${payload.session_id}`);
        loadSessions();
      } else if (event === "delta") {
        replyText += payload.content;
        replyBody.replaceChildren(renderMarkdown(replyText));
        view.messages.scrollTop = view.messages.scrollHeight;
      } else if (event === "done") {
        setMessageState(reply, "complete");
      } else if (event === "error") {
        const err = streamError(payload);
        setMessageState(reply, "error", describe(err, "The reply"));
        notify(describe(err, "The reply"));
      }
    }
    if (reply.dataset.state === "streaming") {
      setMessageState(reply, "error", "The reply ended early.");
    }
  } catch (err) {
    if (err.name === "AbortError") {
      setMessageState(reply, "partial");
    } else if (!accepted) {
      asked.remove();
      if (err instanceof ApiError && err.status === 401) logOut("Your login expired; log in again.");
      else notify(describe(err, "Sending the message"));
    } else {
      setMessageState(reply, "error", describe(err, "The reply"));
    }
  } finally {
    if (state.stream === controller) state.stream = null;
    setStreaming(false);
    if (auth.token) loadSessions();
  }
}

view.composer.addEventListener("submit", (event) => {
  event.preventDefault();
  sendMessage();
});

view.message.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    sendMessage();
  }
});

view.stop.addEventListener("click", () => state.stream?.abort());

// ---- files --------------------------------------------------------------------------------

function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

async function loadFiles() {
  const listed = await guarded("Loading the files", () => api.files());
  if (!listed) return;
  const items = listed.files.map((file) => {
    const item = document.createElement("li");
    item.dataset.id = file.id;
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = file.name;
    const size = document.createElement("span");
    size.className = "size";
    size.textContent = sizeText(file.size_bytes);
    const download = button("Download", "ghost", () => downloadFile(file));
    download.setAttribute("aria-label", `Download ${file.name}`);
    download.dataset.action = "download";
    const remove = button("Delete", "ghost", () => deleteFile(file));
    remove.setAttribute("aria-label", `Delete file ${file.name}`);
    remove.dataset.action = "delete";
    item.append(name, size, download, remove);
    return item;
  });
  if (items.length === 0) {
    const empty = document.createElement("li");
    empty.className = "muted";
    empty.textContent = "No files yet.";
    items.push(empty);
  }
  view.files.replaceChildren(...items);
}

async function downloadFile(file) {
  const blob = await guarded(`Downloading ${file.name}`, () => api.download(file.id));
  if (!blob) return;
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = file.name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

async function deleteFile(file) {
  const deleted = await guarded(`Deleting ${file.name}`, () => api.deleteFile(file.id));
  if (deleted !== undefined) await loadFiles();
}

view.fileInput.addEventListener("change", async () => {
  const file = view.fileInput.files[0];
  if (!file) return;
  notify("");
  view.progress.value = 0;
  view.progress.hidden = false;
  const stored = await guarded(`Uploading ${file.name}`, () =>
    upload(file, (fraction) => {
      view.progress.value = fraction;
    }),
  );
  view.progress.hidden = true;
  view.fileInput.value = "";
  if (stored) await loadFiles();
});

// ---- start --------------------------------------------------------------------------------

async function start() {
  if (!auth.token) {
    showAuth();
    return;
  }
  // A 401 here ends the login (guarded); any other failure is shown over the chat view.
  await guarded("Checking the login", () => api.me());
  if (auth.token) await showChat();
}

start();
