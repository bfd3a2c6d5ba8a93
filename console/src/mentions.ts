// The `@mention` being typed in a note: where it starts and what has been typed after the `@`,
// so the console can offer colleagues from the directory and put the chosen one's address in.
// A mention starts the text or follows a space or an opening bracket (an address someone pasted,
// `ann@example.com`, is not one), as `tickets::notes::mention_tokens` reads it on the server.

export interface Typing {
  /** Index of the `@`. */
  start: number;
  /** What follows it, up to the caret. */
  query: string;
}

const MAX_QUERY = 64;

/** The mention the caret is in, if any. */
export function mentionAt(text: string, caret: number): Typing | null {
  const before = text.slice(0, Math.max(0, Math.min(caret, text.length)));
  const at = before.lastIndexOf("@");
  if (at < 0) return null;
  const prev = at === 0 ? " " : before[at - 1];
  if (!/[\s([{"'<,;]/.test(prev)) return null;
  const query = before.slice(at + 1);
  if (query.length > MAX_QUERY || /[\s@]/.test(query)) return null;
  return { start: at, query };
}

/** `text` with the mention at `typing` replaced by `@address ` and the caret after it. */
export function insertMention(text: string, typing: Typing, caret: number, address: string): { text: string; caret: number } {
  const end = typing.start + 1 + typing.query.length;
  const tail = text.slice(Math.max(end, Math.min(caret, text.length)));
  const put = `@${address} `;
  const head = text.slice(0, typing.start) + put;
  return { text: head + tail.replace(/^ /, ""), caret: head.length };
}

/** The chosen agents whose address is still in `text` (the rest were deleted again). */
export function keptMentions(text: string, chosen: Map<string, string>): string[] {
  const lower = text.toLowerCase();
  return [...chosen].filter(([, address]) => lower.includes(`@${address.toLowerCase()}`)).map(([id]) => id);
}
