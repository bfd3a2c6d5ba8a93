import { describe, expect, it } from "vitest";
import { insertMention, keptMentions, mentionAt } from "../src/mentions";

describe("mentions", () => {
  it("finds the mention the caret is in, never an address", () => {
    expect(mentionAt("@an", 3)).toEqual({ start: 0, query: "an" });
    expect(mentionAt("cc @Zo", 6)).toEqual({ start: 3, query: "Zo" });
    expect(mentionAt("(@", 2)).toEqual({ start: 1, query: "" });
    expect(mentionAt("mail ann@example.com", 20)).toBeNull();
    expect(mentionAt("@ann done", 9)).toBeNull();
    expect(mentionAt("no at sign", 5)).toBeNull();
    expect(mentionAt("@" + "x".repeat(65), 66)).toBeNull();
    // Non-ASCII and a caret past the end are fine.
    expect(mentionAt("hej @Åsa", 100)).toEqual({ start: 4, query: "Åsa" });
  });

  it("puts the chosen address in place of what was typed", () => {
    const typing = mentionAt("cc @an please", 6)!;
    expect(typing).toEqual({ start: 3, query: "an" });
    const out = insertMention("cc @an please", typing, 6, "ann@example.com");
    expect(out.text).toBe("cc @ann@example.com please");
    expect(out.caret).toBe("cc @ann@example.com ".length);
    const end = insertMention("@b", mentionAt("@b", 2)!, 2, "bob@example.com");
    expect(end.text).toBe("@bob@example.com ");
  });

  it("keeps only the mentions still in the text", () => {
    const chosen = new Map([
      ["a1", "ann@example.com"],
      ["b2", "bob@example.com"],
    ]);
    expect(keptMentions("thanks @ANN@example.com", chosen)).toEqual(["a1"]);
    expect(keptMentions("nobody", chosen)).toEqual([]);
  });
});
