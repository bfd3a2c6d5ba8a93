// What the pages outside the console (dashboard, chat widget, help centre, tracking) share: making
// elements whose text goes in with textContent only, and finding the page's elements by id.

/** A new element with `text` (as text, never markup) and `cls` as its class. */
export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  text?: string | number | null,
  cls?: string,
): HTMLElementTagNameMap[K] {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

/** The page's element with this id (of this type when one is given); a page without it is broken. */
export function byId(id: string): HTMLElement;
export function byId<T extends HTMLElement>(id: string, type: new () => T): T;
export function byId<T extends HTMLElement>(id: string, type?: new () => T): HTMLElement {
  const e = document.getElementById(id);
  if (!e || (type && !(e instanceof type))) throw new Error(`the page has no #${id}`);
  return e;
}

/** An API error's body: `{error: {code, message, field}}`. */
export interface ErrorBody {
  error: { code?: string; message: string; field?: string | null };
}
