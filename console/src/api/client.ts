// A typed client for the agent API. Every shape comes from `schema.d.ts`, generated from the
// binary's own /openapi.json (`npm run schema`); `scripts/test.sh` regenerates it and fails when
// the committed file is stale, so the console cannot drift from the API.
import type { components } from "./schema";

export type S = components["schemas"];
export type TicketSummary = S["TicketSummary"];
export type TicketView = S["TicketView"];
export type MessageView = S["MessageView"];
export type View = S["View"];
export type ViewCount = S["ViewCount"];
export type Page = S["Page"];
export type Results = S["Results"];
export type Hit = S["Hit"];
export type Part = S["Part"];
export type TicketPresence = S["TicketPresence"];
export type Viewer = S["Viewer"];
export type Macro = S["Macro"];
export type ApplyOutput = S["ApplyOutput"];
export type BulkOutput = S["BulkOutput"];
export type NewReply = S["NewReply"];
export type Activity = S["Activity"];
export type AgentCard = S["AgentCard"];
export type AgentView = S["AgentView"];
export type AgentUpdate = S["AgentUpdate"];
export type Deactivated = S["Deactivated"];
export type TokenView = S["TokenView"];
export type NewToken = S["NewToken"];
export type IssuedToken = S["IssuedToken"];

/** `GET /v1/customers/{id}` (documented as a free-form object). */
export interface Profile {
  /** What an unverified chat's customer says their email is (a claim, never an identity). */
  claimed_email?: string | null;
  tickets: { id: string; number: string; status: string; subject: string | null; created_at: string }[];
  orders: S["OrderView"][];
}

export interface Me {
  role: "agent" | "supervisor" | "admin";
  agent_id: string | null;
  token_id: string | null;
  /** Set when signed in through single sign-on (a session cookie, no token). */
  session_id?: string | null;
}

/** The CSRF token of the single sign-on session (its cookie is readable; the session's is not). */
export function csrfToken(): string | null {
  const m = document.cookie.split(";").map((c) => c.trim()).find((c) => c.startsWith("sb_csrf="));
  return m ? decodeURIComponent(m.slice("sb_csrf=".length)) : null;
}

/** `GET /auth/config`: whether single sign-on is on, and where its button goes. */
export async function authConfig(base = ""): Promise<S["AuthConfig"]> {
  const r = await fetch(`${base}/auth/config`);
  if (!r.ok) return { sso: false, login_url: null, button_label: null };
  return (await r.json()) as S["AuthConfig"];
}

/** An answer that was not 2xx: the API's `{error: {code, message, field}}`. */
export class ApiError extends Error {
  constructor(
    public status: number,
    public code: string,
    message: string,
    public field: string | null,
  ) {
    super(message);
  }
}

export class Api {
  /** Called when the API answers 401 (the token or session ended). */
  onUnauthorized: (() => void) | null = null;

  /** `token`: a bearer token; null: the single sign-on session's cookie (and its CSRF token). */
  constructor(
    private token: string | null,
    private base = "",
  ) {}

  get usesSession(): boolean {
    return this.token === null;
  }

  private async call<T>(method: string, path: string, body?: unknown): Promise<T> {
    const headers: Record<string, string> = body === undefined ? {} : { "content-type": "application/json" };
    if (this.token !== null) headers.authorization = `Bearer ${this.token}`;
    else if (method !== "GET" && method !== "HEAD") headers["x-csrf-token"] = csrfToken() ?? "";
    const r = await fetch(this.base + path, {
      method,
      headers,
      credentials: "same-origin",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    if (r.status === 401) this.onUnauthorized?.();
    if (r.status === 204) return undefined as T;
    const text = await r.text();
    let json: unknown = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      json = null;
    }
    if (!r.ok) {
      const e = (json as { error?: { code?: string; message?: string; field?: string | null } } | null)?.error;
      throw new ApiError(r.status, e?.code ?? "error", e?.message ?? `HTTP ${r.status}`, e?.field ?? null);
    }
    return json as T;
  }

  me = () => this.call<Me>("GET", "/v1/me");
  profile = (customer: string) => this.call<Profile>("GET", `/v1/customers/${encodeURIComponent(customer)}`);
  views = () => this.call<View[]>("GET", "/v1/views");
  counts = () => this.call<ViewCount[]>("GET", "/v1/views/counts");
  viewTickets = (id: string, cursor?: string | null, limit = 50) =>
    this.call<Page>(
      "GET",
      `/v1/views/${encodeURIComponent(id)}/tickets?limit=${limit}${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
    );
  search = (q: string, limit = 25) =>
    this.call<Results>("GET", `/v1/search?q=${encodeURIComponent(q)}&limit=${limit}`);
  ticket = (id: string) => this.call<TicketView>("GET", `/v1/tickets/${encodeURIComponent(id)}`);
  reply = (id: string, body: NewReply) =>
    this.call<{ id: string; duplicate?: boolean }>("POST", `/v1/tickets/${id}/replies`, body);
  /** Corrects the models' triage (category, intent, the sentiment flagged). */
  correctTriage = (id: string, body: S["TriageCorrection"]) => this.call<S["Corrected"]>("PUT", `/v1/tickets/${id}/triage`, body);
  note = (id: string, text: string, mentions: string[] = [], request_id?: string) =>
    this.call<S["NoteOutput"]>("POST", `/v1/tickets/${id}/notes`, { text, mentions, request_id });
  agent = (id: string) => this.call<S["AgentView"]>("GET", `/v1/agents/${encodeURIComponent(id)}`);
  setAgentStatus = (id: string, status: "online" | "away" | "offline") =>
    this.call<{ id: string; status: string }>("PUT", `/v1/agents/${encodeURIComponent(id)}/status`, { status });
  /** Admins: the agents, active or deactivated, for the agents screen. */
  roster = (q: string, deactivated: boolean) =>
    this.call<AgentCard[]>("GET", `/v1/agents?${new URLSearchParams({ q, limit: "100", deactivated: String(deactivated) }).toString()}`);
  updateAgent = (id: string, body: AgentUpdate) => this.call<AgentView>("PUT", `/v1/agents/${encodeURIComponent(id)}`, body);
  deactivateAgent = (id: string) => this.call<Deactivated>("POST", `/v1/agents/${encodeURIComponent(id)}/deactivate`);
  reactivateAgent = (id: string) => this.call<AgentView>("POST", `/v1/agents/${encodeURIComponent(id)}/reactivate`);
  tokens = (all: boolean) => this.call<TokenView[]>("GET", `/v1/tokens?all=${all}`);
  issueToken = (body: NewToken) => this.call<IssuedToken>("POST", "/v1/tokens", body);
  revokeToken = (id: string) => this.call<unknown>("DELETE", `/v1/tokens/${encodeURIComponent(id)}`);
  /** The directory colleagues are picked from (assignment, `@mention`). */
  agents = (q: string, limit = 8) =>
    this.call<AgentCard[]>("GET", `/v1/agents?${new URLSearchParams({ q, limit: String(limit) }).toString()}`);
  split = (id: string, message_ids: string[]) =>
    this.call<S["SplitOutput"]>("POST", `/v1/tickets/${id}/split`, { message_ids });
  merge = (id: string, into: string) =>
    this.call<unknown>("POST", `/v1/tickets/${id}/merge`, { into_ticket_id: into });
  setStatus = (id: string, status: string, version?: number) =>
    this.call<{ id: string; status: string; version: number }>("PUT", `/v1/tickets/${id}/status`, { status, version });
  presence = (id: string, state: Activity) =>
    this.call<TicketPresence>("PUT", `/v1/tickets/${id}/presence`, { state });
  macros = () => this.call<Macro[]>("GET", "/v1/macros");
  applyMacro = (ticket: string, macro: string, body: S["ApplyInput"]) =>
    this.call<ApplyOutput>("POST", `/v1/tickets/${ticket}/macros/${macro}`, body);
  bulk = (body: S["BulkInput"]) => this.call<BulkOutput>("POST", "/v1/tickets/bulk", body);
  createView = (body: S["ViewInput"]) => this.call<View>("POST", "/v1/views", body);
  rules = () => this.call<S["RuleOut"][]>("GET", "/v1/rules");
  ruleFields = () => this.call<S["FieldInfo"][]>("GET", "/v1/rules/fields");
  createRule = (body: S["RuleInput"]) => this.call<S["RuleOut"]>("POST", "/v1/rules", body);
  updateRule = (id: string, body: S["RuleInput"]) => this.call<S["RuleOut"]>("PUT", `/v1/rules/${encodeURIComponent(id)}`, body);
  deleteRule = (id: string) => this.call<unknown>("DELETE", `/v1/rules/${encodeURIComponent(id)}`);
  dryRun = (body: S["DryRunInput"]) => this.call<S["DryRunOutput"]>("POST", "/v1/rules/dry-run", body);
  teams = () => this.call<S["Team"][]>("GET", "/v1/teams");
  createTeam = (body: S["TeamInput"]) => this.call<S["Team"]>("POST", "/v1/teams", body);
  updateTeam = (id: string, body: S["TeamInput"]) => this.call<S["Team"]>("PUT", `/v1/teams/${encodeURIComponent(id)}`, body);
  deleteTeam = (id: string) => this.call<unknown>("DELETE", `/v1/teams/${encodeURIComponent(id)}`);
  /** A team's members, by name (the directory, filtered). */
  teamMembers = (team: string) =>
    this.call<AgentCard[]>("GET", `/v1/agents?${new URLSearchParams({ team_id: team, limit: "100" }).toString()}`);
  assign = (id: string, body: S["AssignInput"]) => this.call<S["AssignOutput"]>("POST", `/v1/tickets/${id}/assign`, body);
  addTags = (id: string, tags: string[]) => this.call<S["TagsOutput"]>("POST", `/v1/tickets/${id}/tags`, { tags });
  removeTags = (id: string, tags: string[]) => this.call<S["TagsOutput"]>("DELETE", `/v1/tickets/${id}/tags`, { tags });
  articles = (q: string, limit = 5) =>
    this.call<S["KbPage"]>("GET", `/v1/kb/articles?${new URLSearchParams({ q, limit: String(limit) }).toString()}`);
  article = (id: string) => this.call<S["KbArticle"]>("GET", `/v1/kb/articles/${encodeURIComponent(id)}`);

  audit = (q: { actor?: string; action?: string; ticket?: string; cursor?: string | null; limit?: number }) => {
    const params = new URLSearchParams({ limit: String(q.limit ?? 50) });
    for (const k of ["actor", "action", "ticket", "cursor"] as const) {
      const v = q[k];
      if (v) params.set(k, v);
    }
    return this.call<S["AuditPage"]>("GET", `/v1/audit?${params.toString()}`);
  };
  /** The audit log as CSV, for a download (same filters). */
  async auditCsv(q: { actor?: string; action?: string; ticket?: string }): Promise<Blob> {
    const params = new URLSearchParams({ format: "csv", limit: "1000" });
    for (const k of ["actor", "action", "ticket"] as const) {
      const v = q[k];
      if (v) params.set(k, v);
    }
    const headers: Record<string, string> = this.token === null ? {} : { authorization: `Bearer ${this.token}` };
    const r = await fetch(`${this.base}/v1/audit?${params.toString()}`, { headers, credentials: "same-origin" });
    if (!r.ok) throw new ApiError(r.status, "error", `HTTP ${r.status}`, null);
    return r.blob();
  }
  sessions = (all = false, agent?: string) =>
    this.call<S["SessionView"][]>("GET", `/v1/sessions?${new URLSearchParams({ all: String(all), ...(agent ? { agent_id: agent } : {}) }).toString()}`);
  revokeSession = (id: string) => this.call<unknown>("DELETE", `/v1/sessions/${encodeURIComponent(id)}`);
  /** An order with its lines, parcels, the actions taken on it and its returns. */
  order = (id: string) => this.call<S["OrderDetail"]>("GET", `/v1/orders/${encodeURIComponent(id)}`);
  /** Order actions answer 200 (done), 202 (waiting for a supervisor) or an error. */
  refund = (id: string, body: S["RefundInput"]) =>
    this.call<S["OrderAction"]>("POST", `/v1/orders/${encodeURIComponent(id)}/refund`, body);
  cancelOrder = (id: string, body: S["CancelInput"]) =>
    this.call<S["OrderAction"]>("POST", `/v1/orders/${encodeURIComponent(id)}/cancel`, body);
  changeAddress = (id: string, body: S["AddressInput"]) =>
    this.call<S["OrderAction"]>("POST", `/v1/orders/${encodeURIComponent(id)}/address`, body);
  resend = (id: string, body: S["ResendInput"]) =>
    this.call<S["OrderAction"]>("POST", `/v1/orders/${encodeURIComponent(id)}/resend`, body);
  orderActions = (q: { state?: string; order?: string; ticket?: string }) =>
    this.call<S["OrderAction"][]>("GET", `/v1/order-actions?${new URLSearchParams(q as Record<string, string>).toString()}`);
  approveAction = (id: string) =>
    this.call<S["OrderAction"]>("POST", `/v1/order-actions/${encodeURIComponent(id)}/approve`);
  rejectAction = (id: string, reason: string) =>
    this.call<S["OrderAction"]>("POST", `/v1/order-actions/${encodeURIComponent(id)}/reject`, { reason });
  returns = (q: { status?: string; order?: string; ticket?: string }) =>
    this.call<S["Return"][]>("GET", `/v1/returns?${new URLSearchParams(q as Record<string, string>).toString()}`);
  startReturn = (body: S["CreateReturn"]) => this.call<S["Return"]>("POST", "/v1/returns", body);
  approveReturn = (id: string, body: S["ApproveInput"]) =>
    this.call<S["Return"]>("POST", `/v1/returns/${encodeURIComponent(id)}/approve`, body);
  rejectReturn = (id: string, body: S["RejectReturn"]) =>
    this.call<S["Return"]>("POST", `/v1/returns/${encodeURIComponent(id)}/reject`, body);
  returnStats = (weeks = 8) => this.call<S["ReturnStats"]>("GET", `/v1/returns/stats?weeks=${weeks}`);
  /** Ends the single sign-on session; where to go next to sign out at the IdP too. */
  logout = () => this.call<S["LoggedOut"]>("POST", "/auth/logout");

  /** The agent's live stream (EventSource cannot send headers: a token goes in the query; a
   *  session's cookie goes by itself). */
  stream(agent: string): EventSource {
    const auth = this.token === null ? "" : `?access_token=${encodeURIComponent(this.token)}`;
    return new EventSource(`${this.base}/v1/agents/${encodeURIComponent(agent)}/stream${auth}`);
  }
}
