import { describe as suite, expect, it } from "vitest";
import { ApiError } from "../src/api/client";
import { describe, useAdminState } from "../src/admin";

suite("admin screens' shared state", () => {
  it("names the field of an API error", () => {
    expect(describe(new ApiError(400, "invalid_field", "1 to 200 bytes", "name"))).toBe("name: 1 to 200 bytes");
    expect(describe(new ApiError(403, "forbidden", "admins only", null))).toBe("admins only");
    expect(describe(new Error("boom"))).toBe("Error: boom");
  });

  it("runs an action, keeps its error and clears it on the next success", async () => {
    const { error, run } = useAdminState();
    expect(await run(async () => { throw new ApiError(409, "conflict", "changed", "version"); })).toBe(false);
    expect(error.value).toBe("version: changed");
    expect(await run(async () => 1)).toBe(true);
    expect(error.value).toBe("");
  });
});
