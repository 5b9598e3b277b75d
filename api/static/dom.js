/**
 * dom.js: the few DOM helpers every view uses. `h` builds an element, `setText` fills a node and hides it when empty,
 * `newId` makes page-unique ids (for aria-labelledby / aria-describedby), `setFieldError` marks a form field.
 */

/** h("p", {class: "muted", text: "…", onclick: f}, ...children): props are attributes, except class, text, on*. */
export function h(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child !== null && child !== undefined && child !== false) node.append(child);
  }
  return node;
}

export function setText(node, text) {
  const value = text ?? "";
  if (node.textContent !== value) node.textContent = value;
  node.hidden = value === "";
}

let lastId = 0;
export const newId = (prefix) => `${prefix}-${++lastId}`;

export function setFieldError(input, errorNode, message) {
  setText(errorNode, message ?? "");
  if (message) input.setAttribute("aria-invalid", "true");
  else input.removeAttribute("aria-invalid");
}
