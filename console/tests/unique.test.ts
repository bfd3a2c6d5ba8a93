import { describe, expect, it } from "vitest";
import { onceEach, titleKey } from "../src/unique";

describe("onceEach", () => {
  it("keeps the first of each title, whatever its case and spaces", () => {
    const hits = [
      { id: "a", title: "Cancel order" },
      { id: "b", title: " cancel ORDER " },
      { id: "c", title: "Refunds" },
      { id: "d", title: "Cancel order" },
    ];
    expect(onceEach(hits, (h) => [titleKey(h.title)]).map((h) => h.id)).toEqual(["a", "c"]);
  });

  it("drops an item that shares any key and one with none", () => {
    const s = [
      { article_id: "1", title: "Ünïcode ✓" },
      { article_id: "2", title: "ünïcode ✓" },
      { article_id: "1", title: "Other" },
      { title: "" },
      { article_id: "3", title: "Third" },
    ];
    expect(onceEach(s, (x) => [x.article_id ?? "", titleKey(x.title)]).map((x) => x.article_id)).toEqual(["1", "3"]);
  });

  it("is linear on a large list", () => {
    const many = Array.from({ length: 100_000 }, (_, i) => ({ title: `t${i % 10}` }));
    expect(onceEach(many, (x) => [x.title])).toHaveLength(10);
  });
});
