// A safe subset of Markdown, built from DOM nodes: paragraphs (line breaks kept), fenced code
// blocks, ordered and unordered lists, inline code, emphasis and strong. Every piece of the
// input reaches the page as a text node; nothing is ever parsed as HTML, so `<script>` or
// `<img onerror=...>` in a reply is shown as the characters it is.

const FENCE = /^\s*(```|~~~)/;
const LIST_ITEM = /^\s*([-*+]|\d{1,9}[.)])\s+(.*)$/;
const INLINE = /(`+)([\s\S]+?)\1|\*\*(?=\S)([\s\S]*?\S)\*\*|__(?=\S)([\s\S]*?\S)__|\*(?=\S)([^*]*?\S)\*|\b_(?=\S)([^_]*?\S)_\b/g;

/** The Markdown `text` as a fragment of elements and text nodes. */
export function renderMarkdown(text) {
  const fragment = document.createDocumentFragment();
  const lines = String(text).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (line.trim() === "") {
      i += 1;
    } else if (FENCE.test(line)) {
      i = codeBlock(lines, i, fragment);
    } else if (LIST_ITEM.test(line)) {
      i = list(lines, i, fragment);
    } else {
      i = paragraph(lines, i, fragment);
    }
  }
  return fragment;
}

function codeBlock(lines, start, parent) {
  const fence = lines[start].trim().slice(0, 3);
  const body = [];
  let i = start + 1;
  while (i < lines.length && !lines[i].trim().startsWith(fence)) {
    body.push(lines[i]);
    i += 1;
  }
  const pre = document.createElement("pre");
  const code = document.createElement("code");
  code.textContent = body.join("\n");
  pre.append(code);
  parent.append(pre);
  return i + 1; // past the closing fence (or the end of an unclosed block)
}

function list(lines, start, parent) {
  const ordered = /\d/.test(lines[start].match(LIST_ITEM)[1]);
  const element = document.createElement(ordered ? "ol" : "ul");
  let i = start;
  let match;
  while (i < lines.length && (match = lines[i].match(LIST_ITEM))) {
    if (/\d/.test(match[1]) !== ordered) break;
    const item = document.createElement("li");
    appendInline(item, match[2]);
    element.append(item);
    i += 1;
  }
  parent.append(element);
  return i;
}

function paragraph(lines, start, parent) {
  const p = document.createElement("p");
  let i = start;
  while (
    i < lines.length &&
    lines[i].trim() !== "" &&
    !FENCE.test(lines[i]) &&
    !(i > start && LIST_ITEM.test(lines[i]))
  ) {
    if (i > start) p.append(document.createElement("br"));
    appendInline(p, lines[i]);
    i += 1;
  }
  parent.append(p);
  return i;
}

/** Inline code, strong and emphasis inside `text`, appended to `parent`. */
function appendInline(parent, text) {
  let last = 0;
  for (const match of text.matchAll(INLINE)) {
    if (match.index > last) parent.append(text.slice(last, match.index));
    const [, ticks, code, strong1, strong2, em1, em2] = match;
    let element;
    if (ticks) {
      element = document.createElement("code");
      element.textContent = code;
    } else if (strong1 !== undefined || strong2 !== undefined) {
      element = document.createElement("strong");
      appendInline(element, strong1 ?? strong2);
    } else {
      element = document.createElement("em");
      appendInline(element, em1 ?? em2);
    }
    parent.append(element);
    last = match.index + match[0].length;
  }
  if (last < text.length) parent.append(text.slice(last));
}
