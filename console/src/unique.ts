/**
 * The items whose keys were not seen in an earlier item, in order: the first of each kind wins.
 * An item with no key at all is dropped (nothing to show it by).
 */
export function onceEach<T>(items: readonly T[], keys: (item: T) => readonly string[]): T[] {
  const seen = new Set<string>();
  return items.filter((item) => {
    const ks = keys(item).filter((k) => k.length > 0);
    if (!ks.length || ks.some((k) => seen.has(k))) return false;
    ks.forEach((k) => seen.add(k));
    return true;
  });
}

/** A title as people read it: case and surrounding spaces do not make another title. */
export const titleKey = (title: string | null | undefined) => (title ?? "").trim().toLowerCase();
