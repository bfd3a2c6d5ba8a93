// What every admin screen shares: the last error (an API error names its field) and the last
// confirmation, and running an action that sets them.
import { ref } from "vue";
import { ApiError } from "./api/client";

export function describe(e: unknown): string {
  return e instanceof ApiError ? (e.field ? `${e.field}: ${e.message}` : e.message) : String(e);
}

export function useAdminState() {
  const error = ref("");
  const done = ref("");
  /** Runs `action`; its error, if any, is shown. Whether it succeeded. */
  async function run(action: () => Promise<unknown>): Promise<boolean> {
    error.value = "";
    try {
      await action();
      return true;
    } catch (e) {
      error.value = describe(e);
      return false;
    }
  }
  return { error, done, run };
}
