//! Who may call what: every operation of the published OpenAPI document, called with no token,
//! as an agent on its own things, as an agent on another agent's (ticket, assignment, stream),
//! as a supervisor, as an admin, and with the admin token in the query string instead of the
//! header, against a running node on real services. Each answer must be the one the table says
//! (401, 403, or neither) and a status the document lists for the operation.
//!
//! The table must name exactly the operations of the document: a route added without an entry
//! (or an entry whose route went away) fails the test, so every new route decides who may call
//! it here.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
use common::{eventually, start, Harness, Node, CORE};

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde_json::{json, Value};
use uuid::Uuid;

/// The answer a caller must get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 401: no credential the route accepts.
    U,
    /// 403: known, but not allowed.
    F,
    /// Past authorization: anything but 401 and 403.
    A,
}

use Want::{A, F, U};

/// The callers, in the order each operation is called with them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    None,
    /// Ann, an agent, on her ticket, her assignment, her own agent routes.
    Agent,
    /// Ann on Bob's ticket, assignment and agent routes.
    AgentOnOthers,
    Supervisor,
    Admin,
    /// The admin token as `?access_token=` and no header.
    QueryToken,
}

impl Caller {
    /// The caller's column in [`Route::want`].
    fn column(self) -> usize {
        match self {
            Caller::None => 0,
            Caller::Agent => 1,
            Caller::AgentOnOthers => 2,
            Caller::Supervisor => 3,
            Caller::Admin => 4,
            Caller::QueryToken => 5,
        }
    }
}

/// Ann on others' things before her own, so nothing she was refused can have been done
/// earlier by her own allowed call.
const CALLERS: [Caller; 6] = [
    Caller::None,
    Caller::AgentOnOthers,
    Caller::Agent,
    Caller::Supervisor,
    Caller::Admin,
    Caller::QueryToken,
];

// Answers for: no token, agent (own), agent (others'), supervisor, admin, query-string token.
/// Any role.
const ANY: [Want; 6] = [U, A, A, A, A, U];
/// An agent on what is its own (ticket assigned to it, itself), supervisors on anything.
const OWN: [Want; 6] = [U, A, F, A, A, U];
const SUPERVISOR: [Want; 6] = [U, F, F, A, A, U];
/// Any token that belongs to an agent (the table's supervisor and admin tokens do not).
const AGENTS: [Want; 6] = [U, A, A, F, F, U];
const ADMIN: [Want; 6] = [U, F, F, F, A, U];
/// The inbound API: trusted connectors holding the configured admin token only.
const CONNECTOR: [Want; 6] = [U, U, U, U, A, U];
/// Customer-facing, no token (bearer tokens are irrelevant).
const PUBLIC: [Want; 6] = [A; 6];
/// Customer-facing with a credential of its own (a signature, a conversation token), which
/// these calls do not have.
const OWN_CREDENTIAL: [Want; 6] = [U; 6];
/// The chat socket: its credential is the conversation token; a stray `access_token`
/// parameter is refused as unknown (400) before that is checked, and is no credential either.
const CHAT_SOCKET: [Want; 6] = [U, U, U, U, U, A];

/// One operation: how to call it and who may.
struct Route {
    method: &'static str,
    /// As in the document.
    path: &'static str,
    /// The request path; `{ticket}`, `{agent}`, `{assignment}`, `{customer}` are the subject's
    /// (the caller's own for an agent, Bob's otherwise), `{canned}`, `{article}` fixtures,
    /// `{nobody}` a fresh unknown id, `{zeros}` 64 hex zeros.
    call: &'static str,
    /// JSON with the same placeholders, and `{self}` (the caller's agent, or the subject's for
    /// supervisors and admins) and `{uniq}` (unique per call).
    body: Option<&'static str>,
    want: [Want; 6],
}

const fn r(
    method: &'static str,
    path: &'static str,
    call: &'static str,
    body: Option<&'static str>,
    want: [Want; 6],
) -> Route {
    Route {
        method,
        path,
        call,
        body,
        want,
    }
}

const STREAM: [Want; 6] = [U, A, F, A, A, A];

fn table() -> Vec<Route> {
    vec![
        // Agents.
        r(
            "post",
            "/v1/agents",
            "/v1/agents",
            Some(r#"{"name": "R {uniq}", "email": "r-{uniq}@example.com", "max_concurrent": 1}"#),
            ADMIN,
        ),
        // The directory colleagues are picked from: anyone signed in.
        r("get", "/v1/agents", "/v1/agents?q=a&limit=5", None, ANY),
        r("get", "/v1/agents/{id}", "/v1/agents/{agent}", None, OWN),
        r("get", "/v1/audit", "/v1/audit?limit=5", None, ADMIN),
        // The lifecycle: admins only (on an unknown agent, so the others keep theirs).
        r(
            "put",
            "/v1/agents/{id}",
            "/v1/agents/{nobody}",
            Some(
                r#"{"version": 1, "name": "R", "email": "r-{uniq}@example.com", "max_concurrent": 1}"#,
            ),
            ADMIN,
        ),
        r(
            "post",
            "/v1/agents/{id}/deactivate",
            "/v1/agents/{nobody}/deactivate",
            None,
            ADMIN,
        ),
        r(
            "post",
            "/v1/agents/{id}/reactivate",
            "/v1/agents/{nobody}/reactivate",
            None,
            ADMIN,
        ),
        r(
            "put",
            "/v1/agents/{id}/status",
            "/v1/agents/{agent}/status",
            Some(r#"{"status": "online"}"#),
            OWN,
        ),
        r(
            "get",
            "/v1/agents/{id}/assignments",
            "/v1/agents/{agent}/assignments",
            None,
            OWN,
        ),
        // The one route that takes the token in the query string.
        r(
            "get",
            "/v1/agents/{id}/stream",
            "/v1/agents/{agent}/stream",
            None,
            STREAM,
        ),
        r(
            "post",
            "/v1/assignments/{id}/accept",
            "/v1/assignments/{assignment}/accept",
            Some(r#"{"agent_id": "{self}"}"#),
            OWN,
        ),
        // Tickets: anyone reads; an agent works only the tickets assigned to it.
        r("get", "/v1/tickets", "/v1/tickets?limit=5", None, ANY),
        r("get", "/v1/tickets/{id}", "/v1/tickets/{ticket}", None, ANY),
        r(
            "get",
            "/v1/attachments/{key}",
            "/v1/attachments/{zeros}",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/tickets/{id}/replies",
            "/v1/tickets/{ticket}/replies",
            Some(
                r#"{"agent_id": "{self}", "text": "Checking the carrier ({uniq}).", "internal": true}"#,
            ),
            // A note never collides: any agent notes on any ticket (replies to the customer
            // on another's ticket are 409 take_over, in workspace.rs).
            ANY,
        ),
        r(
            "post",
            "/v1/tickets/{id}/split",
            "/v1/tickets/{ticket}/split",
            Some(r#"{"message_ids": ["{nobody}"]}"#),
            OWN,
        ),
        r(
            "get",
            "/v1/tickets/{id}/presence",
            "/v1/tickets/{ticket}/presence",
            None,
            ANY,
        ),
        // Presence is an agent's: the supervisor's and admin's tokens here have no agent.
        r(
            "put",
            "/v1/tickets/{id}/presence",
            "/v1/tickets/{ticket}/presence",
            Some(r#"{"state": "viewing"}"#),
            AGENTS,
        ),
        r(
            "put",
            "/v1/tickets/{id}/status",
            "/v1/tickets/{ticket}/status",
            Some(r#"{"status": "pending"}"#),
            OWN,
        ),
        r(
            "post",
            "/v1/tickets/{id}/typing",
            "/v1/tickets/{ticket}/typing",
            Some(r#"{"on": true}"#),
            OWN,
        ),
        r(
            "post",
            "/v1/tickets/{id}/merge",
            "/v1/tickets/{ticket}/merge",
            Some(r#"{"into_ticket_id": "{nobody}"}"#),
            SUPERVISOR,
        ),
        // Customers.
        r(
            "get",
            "/v1/customers",
            "/v1/customers?email=cy%40example.com",
            None,
            ANY,
        ),
        r(
            "get",
            "/v1/customers/{id}",
            "/v1/customers/{customer}",
            None,
            ANY,
        ),
        r(
            "delete",
            "/v1/customers/{id}",
            "/v1/customers/{nobody}",
            None,
            ADMIN,
        ),
        // Customer notes: any agent writes; its author or a supervisor deletes.
        r(
            "post",
            "/v1/customers/{id}/notes",
            "/v1/customers/{customer}/notes",
            Some(r#"{"text": "Prefers email ({uniq})."}"#),
            ANY,
        ),
        r(
            "delete",
            "/v1/customers/{id}/notes/{note}",
            "/v1/customers/{customer}/notes/{nobody}",
            None,
            ANY,
        ),
        // Reports.
        r(
            "get",
            "/v1/reports/csat",
            "/v1/reports/csat",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/dashboard",
            "/v1/dashboard?hours=1",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/dashboard/agents.csv",
            "/v1/dashboard/agents.csv?hours=1",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/forecast",
            "/v1/forecast?days=1",
            None,
            SUPERVISOR,
        ),
        r("get", "/v1/staffing", "/v1/staffing", None, SUPERVISOR),
        r(
            "get",
            "/v1/customers/at-risk",
            "/v1/customers/at-risk?limit=1",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/customers/churn-model",
            "/v1/customers/churn-model",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/drafts/acceptance",
            "/v1/drafts/acceptance?hours=1",
            None,
            SUPERVISOR,
        ),
        // Canned replies and articles: anyone reads, supervisors write.
        // Teams: anyone reads, supervisors write.
        r("get", "/v1/teams", "/v1/teams", None, ANY),
        r(
            "post",
            "/v1/teams",
            "/v1/teams",
            Some(r#"{"name": "Team {uniq}"}"#),
            SUPERVISOR,
        ),
        r("get", "/v1/teams/{id}", "/v1/teams/{team}", None, ANY),
        r(
            "put",
            "/v1/teams/{id}",
            "/v1/teams/{team}",
            Some(r#"{"name": "Team {uniq}", "members": ["{self}"]}"#),
            SUPERVISOR,
        ),
        r(
            "delete",
            "/v1/teams/{id}",
            "/v1/teams/{nobody}",
            None,
            SUPERVISOR,
        ),
        // Views: every agent has its own; a personal view is its owner's (and supervisors').
        r("get", "/v1/views", "/v1/views", None, ANY),
        r(
            "post",
            "/v1/views",
            "/v1/views",
            Some(r#"{"name": "View {uniq}", "filter": {"status": ["open"]}}"#),
            ANY,
        ),
        r("get", "/v1/views/counts", "/v1/views/counts", None, ANY),
        r(
            "put",
            "/v1/views/{id}",
            "/v1/views/{view}",
            Some(r#"{"name": "View {uniq}", "filter": {}}"#),
            OWN,
        ),
        r("delete", "/v1/views/{id}", "/v1/views/{nobody}", None, ANY),
        r(
            "get",
            "/v1/views/{id}/tickets",
            "/v1/views/{view}/tickets",
            None,
            OWN,
        ),
        // Tags: on the tickets an agent holds.
        r(
            "post",
            "/v1/tickets/{id}/tags",
            "/v1/tickets/{ticket}/tags",
            Some(r#"{"tags": ["t-{uniq}"]}"#),
            OWN,
        ),
        r(
            "delete",
            "/v1/tickets/{id}/tags",
            "/v1/tickets/{ticket}/tags",
            Some(r#"{"tags": ["t-{uniq}"]}"#),
            OWN,
        ),
        // Assign: an agent moves the tickets it holds; a supervisor any.
        r(
            "post",
            "/v1/tickets/{id}/assign",
            "/v1/tickets/{ticket}/assign",
            Some(r#"{"agent_id": "{self}", "reason": "routes {uniq}"}"#),
            OWN,
        ),
        // Notes: any agent on any ticket (a note brings a colleague in); mentions are one's own.
        r(
            "post",
            "/v1/tickets/{id}/notes",
            "/v1/tickets/{ticket}/notes",
            Some(r#"{"text": "Checked the carrier ({uniq})."}"#),
            ANY,
        ),
        r(
            "get",
            "/v1/agents/{id}/mentions",
            "/v1/agents/{agent}/mentions",
            None,
            OWN,
        ),
        // Bulk: every role may ask; each ticket answers as its own route would.
        r(
            "post",
            "/v1/tickets/bulk",
            "/v1/tickets/bulk",
            Some(
                r#"{"ticket_ids": ["{ticket}"], "action": {"type": "tags", "add": ["b-{uniq}"]}}"#,
            ),
            ANY,
        ),
        // Custom fields: admins define, any role reads; values on the tickets an agent holds.
        r("get", "/v1/fields", "/v1/fields", None, ANY),
        r(
            "post",
            "/v1/fields",
            "/v1/fields",
            Some(r#"{"key": "f_{uniq}", "name": "F", "kind": "text"}"#),
            ADMIN,
        ),
        r(
            "put",
            "/v1/fields/{id}",
            "/v1/fields/{nobody}",
            Some(r#"{"name": "F"}"#),
            ADMIN,
        ),
        r(
            "delete",
            "/v1/fields/{id}",
            "/v1/fields/{nobody}",
            None,
            ADMIN,
        ),
        r(
            "put",
            "/v1/tickets/{id}/triage",
            "/v1/tickets/{ticket}/triage",
            Some(r#"{"sentiment": "neutral"}"#),
            OWN,
        ),
        r(
            "put",
            "/v1/tickets/{id}/fields",
            "/v1/tickets/{ticket}/fields",
            Some(r#"{"values": {"no_such_field": 1}}"#),
            OWN,
        ),
        // Macros: everyone lists and applies what it may see, writes its own; supervisors
        // share. (`{canned}` is a shared macro with one reply.)
        r("get", "/v1/macros", "/v1/macros", None, ANY),
        r(
            "post",
            "/v1/macros",
            "/v1/macros",
            Some(r#"{"title": "Route {uniq}", "actions": [{"type": "tags", "add": ["route"]}]}"#),
            SUPERVISOR,
        ),
        r(
            "put",
            "/v1/macros/{id}",
            "/v1/macros/{canned}",
            Some(
                r#"{"title": "Route canned", "actions": [{"type": "reply", "text": "Hello again."}]}"#,
            ),
            SUPERVISOR,
        ),
        // An unknown macro is 404 before who may is asked (another agent's own macro is
        // unknown too): the owner rules are in workspace.rs.
        r(
            "delete",
            "/v1/macros/{id}",
            "/v1/macros/{nobody}",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/tickets/{id}/macros/{macro_id}",
            "/v1/tickets/{ticket}/macros/{canned}",
            Some(r#"{"preview": true}"#),
            ANY,
        ),
        // Rules: every role reads them; supervisors write, dry-run and read what they did.
        r("get", "/v1/rules", "/v1/rules", None, ANY),
        r("get", "/v1/rules/fields", "/v1/rules/fields", None, ANY),
        r("get", "/v1/rules/{id}", "/v1/rules/{nobody}", None, ANY),
        r(
            "get",
            "/v1/rules/{id}/versions",
            "/v1/rules/{nobody}/versions",
            None,
            ANY,
        ),
        r(
            "get",
            "/v1/rules/{id}/fires",
            "/v1/rules/{nobody}/fires",
            None,
            SUPERVISOR,
        ),
        r(
            "post",
            "/v1/rules",
            "/v1/rules",
            Some(
                r#"{"name": "Route {uniq}", "kind": "trigger", "on": ["created"], "actions": [{"type": "tags", "add": ["route"]}]}"#,
            ),
            SUPERVISOR,
        ),
        r(
            "put",
            "/v1/rules/{id}",
            "/v1/rules/{nobody}",
            Some(
                r#"{"name": "Route {uniq}", "kind": "trigger", "on": ["created"], "actions": [{"type": "tags", "add": ["route"]}]}"#,
            ),
            SUPERVISOR,
        ),
        r(
            "delete",
            "/v1/rules/{id}",
            "/v1/rules/{nobody}",
            None,
            SUPERVISOR,
        ),
        r(
            "post",
            "/v1/rules/dry-run",
            "/v1/rules/dry-run",
            Some(
                r#"{"kind": "trigger", "on": ["created"], "actions": [{"type": "tags", "add": ["route"]}], "days": 1}"#,
            ),
            SUPERVISOR,
        ),
        // Webhooks: admins only (they carry data out and hold secrets); anyone lists the types.
        r("get", "/v1/webhooks", "/v1/webhooks", None, ADMIN),
        r(
            "get",
            "/v1/webhooks/event-types",
            "/v1/webhooks/event-types",
            None,
            ANY,
        ),
        r(
            "get",
            "/v1/webhooks/{id}",
            "/v1/webhooks/{nobody}",
            None,
            ADMIN,
        ),
        r(
            "post",
            "/v1/webhooks",
            "/v1/webhooks",
            Some(
                r#"{"url": "https://hooks.example.com/{uniq}", "events": ["ticket.created"], "enabled": false}"#,
            ),
            ADMIN,
        ),
        r(
            "put",
            "/v1/webhooks/{id}",
            "/v1/webhooks/{nobody}",
            Some(
                r#"{"url": "https://hooks.example.com/{uniq}", "events": ["*"], "enabled": false}"#,
            ),
            ADMIN,
        ),
        r(
            "delete",
            "/v1/webhooks/{id}",
            "/v1/webhooks/{nobody}",
            None,
            ADMIN,
        ),
        r(
            "post",
            "/v1/webhooks/{id}/rotate",
            "/v1/webhooks/{nobody}/rotate",
            Some("{}"),
            ADMIN,
        ),
        r(
            "get",
            "/v1/webhooks/{id}/deliveries",
            "/v1/webhooks/{nobody}/deliveries",
            None,
            ADMIN,
        ),
        r(
            "get",
            "/v1/webhooks/{id}/deliveries/{delivery_id}",
            "/v1/webhooks/{nobody}/deliveries/{nobody}",
            None,
            ADMIN,
        ),
        r(
            "post",
            "/v1/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            "/v1/webhooks/{nobody}/deliveries/{nobody}/redeliver",
            None,
            ADMIN,
        ),
        // Notification preferences: one's own, supervisors anyone's.
        r(
            "get",
            "/v1/agents/{id}/notifications",
            "/v1/agents/{agent}/notifications",
            None,
            OWN,
        ),
        r(
            "put",
            "/v1/agents/{id}/notifications",
            "/v1/agents/{agent}/notifications",
            Some(r#"{"email": true, "sms": false, "topics": ["rule"]}"#),
            OWN,
        ),
        r(
            "get",
            "/v1/agents/{id}/notifications/history",
            "/v1/agents/{agent}/notifications/history",
            None,
            OWN,
        ),
        // Search: every role reads every ticket, as the ticket list does.
        r("get", "/v1/search", "/v1/search?q=refund", None, ANY),
        r(
            "get",
            "/v1/canned-replies",
            "/v1/canned-replies?q=route",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/canned-replies",
            "/v1/canned-replies",
            Some(r#"{"title": "Route {uniq}", "body": "Hello."}"#),
            SUPERVISOR,
        ),
        r(
            "put",
            "/v1/canned-replies/{id}",
            "/v1/canned-replies/{canned}",
            Some(r#"{"title": "Route canned", "body": "Hello again."}"#),
            SUPERVISOR,
        ),
        r(
            "delete",
            "/v1/canned-replies/{id}",
            "/v1/canned-replies/{nobody}",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/kb/articles",
            "/v1/kb/articles?q=parcel",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/kb/articles",
            "/v1/kb/articles",
            Some(r#"{"title": "Route {uniq}", "body": "How to track a parcel."}"#),
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/kb/articles/{id}",
            "/v1/kb/articles/{article}",
            None,
            ANY,
        ),
        r(
            "put",
            "/v1/kb/articles/{id}",
            "/v1/kb/articles/{article}",
            Some(r#"{"title": "Tracking", "body": "How to track a parcel.", "version": 1}"#),
            SUPERVISOR,
        ),
        r(
            "delete",
            "/v1/kb/articles/{id}",
            "/v1/kb/articles/{nobody}",
            None,
            SUPERVISOR,
        ),
        // Orders: anyone signed in reads an order and asks for an action on it (an agent through a
        // ticket it holds: an unknown order is 404 first); supervisors list and decide.
        r("get", "/v1/orders/{id}", "/v1/orders/{nobody}", None, ANY),
        r(
            "post",
            "/v1/orders/{id}/cancel",
            "/v1/orders/{nobody}/cancel",
            Some(r#"{"reason": "customer"}"#),
            ANY,
        ),
        r(
            "post",
            "/v1/orders/{id}/refund",
            "/v1/orders/{nobody}/refund",
            Some(r#"{"amount_cents": 100}"#),
            ANY,
        ),
        r(
            "post",
            "/v1/orders/{id}/address",
            "/v1/orders/{nobody}/address",
            Some(
                r#"{"shipping_address": {"address1": "1 Main St", "city": "Springfield", "zip": "12345", "country": "US"}}"#,
            ),
            ANY,
        ),
        r(
            "post",
            "/v1/orders/{id}/resend",
            "/v1/orders/{nobody}/resend",
            Some(r#"{"reason": "lost in transit"}"#),
            ANY,
        ),
        r(
            "get",
            "/v1/order-actions",
            "/v1/order-actions?state=awaiting_approval",
            None,
            SUPERVISOR,
        ),
        r(
            "get",
            "/v1/order-actions/{id}",
            "/v1/order-actions/{nobody}",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/order-actions/{id}/approve",
            "/v1/order-actions/{nobody}/approve",
            None,
            SUPERVISOR,
        ),
        r(
            "post",
            "/v1/order-actions/{id}/reject",
            "/v1/order-actions/{nobody}/reject",
            Some(r#"{"reason": "too much"}"#),
            SUPERVISOR,
        ),
        // Returns: anyone signed in reads them and starts or moves one (an unknown one is 404
        // first); the figures are the supervisors'.
        r(
            "get",
            "/v1/returns",
            "/v1/returns?status=requested",
            None,
            ANY,
        ),
        r(
            "post",
            "/v1/returns",
            "/v1/returns",
            Some(
                r#"{"order_id": "{nobody}", "reason": "damaged", "items": [{"line_item_id": "1", "quantity": 1}]}"#,
            ),
            ANY,
        ),
        r(
            "get",
            "/v1/returns/stats",
            "/v1/returns/stats?weeks=4",
            None,
            SUPERVISOR,
        ),
        r("get", "/v1/returns/{id}", "/v1/returns/{nobody}", None, ANY),
        r(
            "post",
            "/v1/returns/{id}/approve",
            "/v1/returns/{nobody}/approve",
            Some(r#"{}"#),
            ANY,
        ),
        r(
            "post",
            "/v1/returns/{id}/reject",
            "/v1/returns/{nobody}/reject",
            Some(r#"{"reason": "outside the window"}"#),
            ANY,
        ),
        r(
            "post",
            "/v1/returns/{id}/status",
            "/v1/returns/{nobody}/status",
            Some(r#"{"status": "received"}"#),
            ANY,
        ),
        // Access.
        r(
            "post",
            "/v1/tokens",
            "/v1/tokens",
            Some(r#"{"role": "supervisor", "name": "route {uniq}"}"#),
            ADMIN,
        ),
        r("get", "/v1/tokens", "/v1/tokens", None, ADMIN),
        r(
            "delete",
            "/v1/tokens/{id}",
            "/v1/tokens/{nobody}",
            None,
            ADMIN,
        ),
        r("get", "/v1/me", "/v1/me", None, ANY),
        // Sessions: everyone lists their own; an unknown one is 404 before ownership matters.
        r("get", "/v1/sessions", "/v1/sessions", None, ANY),
        r(
            "delete",
            "/v1/sessions/{id}",
            "/v1/sessions/{nobody}",
            None,
            ANY,
        ),
        // Single sign-on: the console's question is public; signing out needs a session.
        r("get", "/auth/config", "/auth/config", None, PUBLIC),
        r("post", "/auth/logout", "/auth/logout", None, OWN_CREDENTIAL),
        r("get", "/v1/clock", "/v1/clock", None, ANY),
        // Messages in.
        r(
            "post",
            "/v1/messages",
            "/v1/messages",
            Some(
                r#"{"channel": "api", "customer": {"email": "route-{uniq}@example.com"}, "text": "Where is my parcel?", "external_id": "route-{uniq}"}"#,
            ),
            CONNECTOR,
        ),
        r(
            "post",
            "/chat/sessions",
            "/chat/sessions",
            Some(r#"{"email": "chat-{uniq}@example.com"}"#),
            PUBLIC,
        ),
        r(
            "get",
            "/chat/ws",
            "/chat/ws?token=not-a-conversation-token",
            None,
            CHAT_SOCKET,
        ),
        // Customer self-service.
        r(
            "post",
            "/track",
            "/track",
            Some(r##"{"order_number": "#1001", "email": "cy@example.com"}"##),
            PUBLIC,
        ),
        r(
            "post",
            "/webhooks/orders",
            "/webhooks/orders",
            Some(r##"{"id": 1, "name": "#1", "total_price": "1.00", "email": "x@example.com"}"##),
            OWN_CREDENTIAL,
        ),
        r("get", "/csat/{token}", "/csat/{zeros}", None, PUBLIC),
        r(
            "post",
            "/csat/{token}",
            "/csat/{zeros}",
            Some(r#"{"rating": 5}"#),
            PUBLIC,
        ),
        r(
            "post",
            "/returns/lookup",
            "/returns/lookup",
            Some(r##"{"order_number": "#1001", "email": "cy@example.com"}"##),
            PUBLIC,
        ),
        r(
            "post",
            "/returns",
            "/returns",
            Some(
                r##"{"order_number": "#1001", "email": "cy@example.com", "reason": "did_not_fit", "items": [{"line_item_id": "1", "quantity": 1}]}"##,
            ),
            PUBLIC,
        ),
        r("get", "/help/search", "/help/search?q=parcel", None, PUBLIC),
        r(
            "get",
            "/help/articles/{id}",
            "/help/articles/{article}",
            None,
            PUBLIC,
        ),
    ]
}

/// The ids a request's placeholders stand for.
struct Fixture {
    ann: String,
    bob: String,
    ann_ticket: String,
    bob_ticket: String,
    ann_assignment: String,
    bob_assignment: String,
    ann_customer: String,
    bob_customer: String,
    canned: String,
    team: String,
    ann_view: String,
    bob_view: String,
    article: String,
    admin: String,
    supervisor: String,
    ann_token: String,
}

static UNIQ: AtomicU64 = AtomicU64::new(0);

impl Fixture {
    fn fill(&self, template: &str, caller: Caller) -> String {
        // Ann's things for herself (and for no one), Bob's for everyone else.
        let own = matches!(caller, Caller::Agent | Caller::None);
        let pick = |mine: &str, his: &str| if own { mine } else { his }.to_string();
        let me = match caller {
            Caller::Agent | Caller::AgentOnOthers => self.ann.clone(),
            _ => pick(&self.ann, &self.bob),
        };
        let uniq = format!(
            "{}-{}",
            UNIQ.fetch_add(1, Ordering::Relaxed),
            &Uuid::now_v7().simple().to_string()[20..]
        );
        template
            .replace("{ticket}", &pick(&self.ann_ticket, &self.bob_ticket))
            .replace("{agent}", &pick(&self.ann, &self.bob))
            .replace(
                "{assignment}",
                &pick(&self.ann_assignment, &self.bob_assignment),
            )
            .replace("{customer}", &pick(&self.ann_customer, &self.bob_customer))
            .replace("{canned}", &self.canned)
            .replace("{team}", &self.team)
            .replace("{view}", &pick(&self.ann_view, &self.bob_view))
            .replace("{article}", &self.article)
            .replace("{nobody}", &Uuid::now_v7().to_string())
            .replace("{zeros}", &"0".repeat(64))
            .replace("{self}", &me)
            .replace("{uniq}", &uniq)
    }

    fn bearer(&self, caller: Caller) -> Option<&str> {
        match caller {
            Caller::None | Caller::QueryToken => None,
            Caller::Agent | Caller::AgentOnOthers => Some(&self.ann_token),
            Caller::Supervisor => Some(&self.supervisor),
            Caller::Admin => Some(&self.admin),
        }
    }
}

/// Calls one operation as `caller`: (status, body text when it is not a stream).
async fn call(
    h: &Harness,
    node: &Node,
    fx: &Fixture,
    route: &Route,
    caller: Caller,
) -> (u16, String) {
    let mut path = fx.fill(route.call, caller);
    if caller == Caller::QueryToken {
        let sep = if path.contains('?') { '&' } else { '?' };
        path = format!("{path}{sep}access_token={}", fx.admin);
    }
    let method = reqwest::Method::from_bytes(route.method.to_uppercase().as_bytes()).unwrap();
    let mut req = h
        .http
        .request(method, format!("{}{path}", node.base))
        .timeout(Duration::from_secs(60));
    if let Some(t) = fx.bearer(caller) {
        req = req.bearer_auth(t);
    }
    if route.path == "/chat/ws" {
        // A real upgrade request, so the route gets as far as checking its credential.
        req = req
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==");
    }
    if let Some(b) = route.body {
        let body: Value = serde_json::from_str(&fx.fill(b, caller))
            .unwrap_or_else(|e| panic!("{} {}: body template: {e}", route.method, route.path));
        req = req.json(&body);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let streaming = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("text/event-stream"));
    // A stream is never read to its end: its status and headers are the answer.
    let text = if streaming {
        String::from("(event stream)")
    } else {
        resp.text().await.unwrap_or_default()
    };
    (status, text)
}

/// Waits until `agent` holds a ticket; returns (ticket, assignment, customer).
async fn held_by(pool: &sqlx::PgPool, agent: &str) -> (String, String, String) {
    eventually("the ticket assigned", Duration::from_secs(90), || {
        let pool = pool.clone();
        let agent = agent.to_string();
        async move {
            sqlx::query_as::<_, (Uuid, Uuid, Uuid)>(
                "SELECT t.id, a.id, t.customer_id FROM tickets t
                 JOIN assignments a ON a.ticket_id = t.id AND a.released_at IS NULL
                 WHERE t.assigned_agent_id = $1::uuid",
            )
            .bind(agent)
            .fetch_optional(&pool)
            .await
            .unwrap()
            .map(|(t, a, c)| (t.to_string(), a.to_string(), c.to_string()))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_in_the_document_answers_each_role_as_the_table_says() {
    let (h, node) = start(
        CORE,
        &[
            ("SWITCHBOARD__MODELS__ENABLED", "false"),
            // Nobody takes a ticket away while the table runs.
            ("SWITCHBOARD__ROUTING__ACCEPT_TIMEOUT_SECS", "0"),
            ("SWITCHBOARD__CHANNELS__ORDERS__SECRET", "shop-secret"),
            ("SWITCHBOARD__CHANNELS__CHAT__SECRET", "chat-secret"),
        ],
    )
    .await;
    let skills = ["shipping", "billing", "orders"];
    // One ticket each: Ann (one seat) takes the first, so the second can only go to Bob.
    let ann = h.agent(&node, "ann@example.com", &skills, 1, true).await;
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "cy@example.com"}, "text": "My parcel tracking has not moved", "external_id": "routes-1"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let pool = h.pg().await;
    let (ann_ticket, ann_assignment, ann_customer) = held_by(&pool, &ann).await;
    let bob = h.agent(&node, "bob@example.com", &skills, 1, true).await;
    let (s, v) = h
        .post(&node, "/v1/messages", json!({"channel": "api", "customer": {"email": "dee@example.com"}, "text": "My parcel never arrived", "external_id": "routes-2"}))
        .await;
    assert_eq!(s, 202, "{v}");
    let (bob_ticket, bob_assignment, bob_customer) = held_by(&pool, &bob).await;

    let ann_token = h.issue_token(&node, "agent", Some(&ann), "ann").await;
    let supervisor = h.issue_token(&node, "supervisor", None, "sue").await;
    let v = h
        .created(
            &node,
            "/v1/canned-replies",
            json!({"title": "Route canned", "body": "Hello."}),
        )
        .await;
    let canned = v["id"].as_str().unwrap().to_string();
    let v = h
        .created(&node, "/v1/teams", json!({"name": "Route team"}))
        .await;
    let team = v["id"].as_str().unwrap().to_string();
    let bob_token = h.issue_token(&node, "agent", Some(&bob), "bob").await;
    let mut views = Vec::new();
    for token in [&ann_token, &bob_token] {
        let (s, v) = h
            .caller(&node, token)
            .post("/v1/views", json!({"name": "Mine", "filter": {}}))
            .await;
        assert_eq!(s, 201, "{v}");
        views.push(v["id"].as_str().unwrap().to_string());
    }
    let [ann_view, bob_view] = <[String; 2]>::try_from(views).unwrap();
    let v = h
        .created(
            &node,
            "/v1/kb/articles",
            json!({"title": "Tracking", "body": "How to track a parcel."}),
        )
        .await;
    let article = v["id"].as_str().unwrap().to_string();
    let fx = Fixture {
        ann,
        bob,
        ann_ticket,
        bob_ticket,
        ann_assignment,
        bob_assignment,
        ann_customer,
        bob_customer,
        canned,
        team,
        ann_view,
        bob_view,
        article,
        admin: h.token.clone(),
        supervisor,
        ann_token,
    };

    // The document, as served.
    let (s, doc) = h.get_anon(&node, "/openapi.json").await;
    assert_eq!(s, 200, "{doc}");
    let mut documented = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in [
            "get", "put", "post", "delete", "patch", "head", "options", "trace",
        ] {
            if item.get(method).is_some() {
                documented.insert((method.to_string(), path.clone()));
            }
        }
    }
    let table = table();
    let listed: BTreeSet<(String, String)> = table
        .iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(
        listed.len(),
        table.len(),
        "an operation is in the table twice"
    );
    let missing: Vec<_> = documented.difference(&listed).collect();
    let stale: Vec<_> = listed.difference(&documented).collect();
    assert!(
        missing.is_empty() && stale.is_empty(),
        "the table must name exactly the document's operations: decide who may call {missing:?}; \
         remove (or document) {stale:?}"
    );

    let mut failures = Vec::new();
    for route in &table {
        let op = &doc["paths"][route.path][route.method];
        let responses = op["responses"].as_object().unwrap();
        let secured = op
            .get("security")
            .and_then(Value::as_array)
            .is_some_and(|s| !s.is_empty());
        // The document says what the table says: a secured operation refuses a caller without
        // a token, a refusal by role is documented, and so is any 401 an unsecured route gives.
        let own_credential = route.want == OWN_CREDENTIAL || route.want == CHAT_SOCKET;
        if secured != (route.want[0] == U && !own_credential) {
            failures.push(format!(
                "{} {}: security in the document ({secured}) disagrees with the table",
                route.method, route.path
            ));
        }
        if route.want.contains(&F) && !responses.contains_key("403") {
            failures.push(format!(
                "{} {}: refuses a role (403) without documenting it",
                route.method, route.path
            ));
        }
        if !secured && route.want.contains(&U) && !responses.contains_key("401") {
            failures.push(format!(
                "{} {}: answers 401 without documenting it",
                route.method, route.path
            ));
        }
        for caller in CALLERS {
            let want = route.want[caller.column()];
            let (status, text) = call(&h, &node, &fx, route, caller).await;
            let ok = match want {
                U => status == 401,
                F => status == 403,
                A => status != 401 && status != 403,
            };
            if !ok {
                failures.push(format!(
                    "{} {} as {caller:?}: want {want:?}, got {status}: {}",
                    route.method,
                    route.path,
                    text.chars().take(300).collect::<String>()
                ));
                continue;
            }
            // Whatever came back is an answer the document lists (a secured operation's 401
            // is stated by its security requirement).
            let documented =
                responses.contains_key(&status.to_string()) || (status == 401 && secured);
            if !documented {
                failures.push(format!(
                    "{} {} as {caller:?}: answered {status}, which the document does not list ({:?})",
                    route.method,
                    route.path,
                    responses.keys().collect::<Vec<_>>()
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );

    // The table's calls changed nothing they may not: Ann still holds only her ticket, Bob his.
    let (t, _, _) = held_by(&pool, &fx.ann).await;
    assert_eq!(t, fx.ann_ticket);
    let notes: Vec<(String, String)> = sqlx::query_as(
        "SELECT ticket_id::text, author FROM messages WHERE direction = 'note' AND starts_with(text, 'Checking the carrier')
         ORDER BY received_at",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    // Replies marked internal (notes never collide): Ann's on Bob's ticket and on hers, the
    // supervisor's and the admin's (as Bob) on Bob's, each as its author.
    assert_eq!(
        notes,
        vec![
            (fx.bob_ticket.clone(), fx.ann.clone()),
            (fx.ann_ticket.clone(), fx.ann.clone()),
            (fx.bob_ticket.clone(), fx.bob.clone()),
            (fx.bob_ticket.clone(), fx.bob.clone()),
        ]
    );
}
