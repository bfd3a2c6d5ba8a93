//! Server-side sessions: what a person signed in through single sign-on ([`crate::sso`]) holds.
//!
//! - The browser keeps two cookies: [`SESSION_COOKIE`] (`HttpOnly`: a random secret, stored
//!   here only as its SHA-256) and [`CSRF_COOKIE`] (readable by the console's script). Both are
//!   `SameSite=Lax` and `Secure` (unless `sso.cookie_secure: false` for plain-HTTP loopback).
//! - A request that changes state (anything but GET and HEAD) made with the session cookie must
//!   carry the CSRF token in `X-CSRF-Token`; the token is checked against the SHA-256 kept with
//!   the session (a synchronizer token: another site can make the browser send the cookie, not
//!   read the token). Bearer tokens are not cookies and need none.
//! - A session ends when revoked (sign-out, `DELETE /v1/sessions/{id}`, the agent's
//!   deactivation, the IdP no longer granting a role), after `idle_secs` without a request, or at
//!   its absolute `expires_at`, whichever comes first; the live stream asks every few seconds.
//! - `GET /v1/sessions`: one's own sessions (an admin: everyone's, `?agent_id=`), newest first;
//!   `DELETE /v1/sessions/{id}`: one's own or, for an admin, anyone's. Both are in the audit log.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::routing::{delete, get};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_core::http::ApiError;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::Api;

/// The session cookie (`HttpOnly`).
pub const SESSION_COOKIE: &str = "sb_session";
/// The CSRF token's cookie (read by the console and sent back as `X-CSRF-Token`).
pub const CSRF_COOKIE: &str = "sb_csrf";
/// The header a state-changing request made with a session carries its CSRF token in.
pub const CSRF_HEADER: &str = "x-csrf-token";

/// How stale `last_seen_at` may get before a request writes it again: idle expiry is exact to
/// this much, and a busy console does not write its session on every request.
pub const TOUCH_EVERY_SECS: i64 = 60;

pub(crate) fn digest(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// 32 random bytes, URL-safe base64 (a session secret, a CSRF token, an SSO `state`).
pub(crate) fn random_secret() -> String {
    use base64::Engine as _;
    let bytes: [u8; 32] = rand::random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

pub use switchboard_core::http::cookie;

/// A `Set-Cookie` value: `http_only` for the session, not for the CSRF token; `max_age` 0
/// clears it.
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: i64,
    http_only: bool,
    secure: bool,
) -> HeaderValue {
    let mut c = format!("{name}={value}; Path=/; Max-Age={max_age}; SameSite=Lax");
    if http_only {
        c.push_str("; HttpOnly");
    }
    if secure {
        c.push_str("; Secure");
    }
    // Values are ours (base64url), so the header is always valid; an empty one is harmless.
    HeaderValue::from_str(&c).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// What a new session is for.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub agent_id: Uuid,
    pub role: Role,
    pub issuer: String,
    pub subject: String,
    pub idle_secs: i32,
    pub absolute_secs: i64,
    pub refresh_token_sealed: Option<Vec<u8>>,
    pub id_token: Option<String>,
}

/// A created session: its id and the two cookie values (shown to the browser once).
#[derive(Debug)]
pub struct Created {
    pub id: Uuid,
    pub secret: String,
    pub csrf: String,
    pub expires_at: DateTime<Utc>,
}

/// Creates a session on `conn` (the sign-in's transaction) and records it in the audit log.
pub async fn create(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    s: NewSession,
) -> Result<Created, ApiError> {
    let (id, secret, csrf) = (Uuid::now_v7(), random_secret(), random_secret());
    let expires_at: DateTime<Utc> = sqlx::query_scalar(
        "INSERT INTO sessions (id, secret_sha256, csrf_sha256, agent_id, role, issuer, subject, created_at,
                               last_seen_at, idle_secs, expires_at, refreshed_at, refresh_token_sealed, id_token,
                               ip, user_agent)
         VALUES ($1, $2, $3, $4, $5, $6, $7, now(), now(), $8, now() + make_interval(secs => $9), now(), $10, $11, $12, $13)
         RETURNING expires_at",
    )
    .bind(id)
    .bind(digest(&secret))
    .bind(digest(&csrf))
    .bind(s.agent_id)
    .bind(s.role.as_str())
    .bind(&s.issuer)
    .bind(&s.subject)
    .bind(s.idle_secs)
    .bind(s.absolute_secs as f64)
    .bind(&s.refresh_token_sealed)
    .bind(&s.id_token)
    .bind(actor.ip.as_deref().filter(|ip| !ip.is_empty()))
    .bind(&actor.user_agent)
    .fetch_one(&mut *conn)
    .await?;
    audit::record(
        conn,
        actor,
        Entry {
            action: "session.created",
            subject: format!("session:{id}"),
            ticket_id: None,
            before: None,
            after: Some(serde_json::json!({
                "agent_id": s.agent_id, "role": s.role, "issuer": s.issuer, "subject": s.subject,
                "expires_at": expires_at, "idle_secs": s.idle_secs,
            })),
        },
    )
    .await?;
    tracing::info!(session_id = %id, agent_id = %s.agent_id, role = s.role.as_str(), "session created");
    Ok(Created {
        id,
        secret,
        csrf,
        expires_at,
    })
}

/// A live session found by its cookie.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Live {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub role: String,
    pub csrf_sha256: Vec<u8>,
    pub refreshed_at: DateTime<Utc>,
    pub issuer: String,
    pub subject: String,
    /// Whether `last_seen_at` is older than [`TOUCH_EVERY_SECS`].
    pub stale: bool,
}

/// What makes a session live, in SQL (on `sessions s`).
const LIVE: &str = "s.revoked_at IS NULL AND s.expires_at > now()
                    AND s.last_seen_at + make_interval(secs => s.idle_secs) > now()";

/// The live session matching `cond` (on `sessions s`), as a [`Live`].
fn select_live(cond: &str) -> String {
    format!(
        "SELECT s.id, s.agent_id, s.role, s.csrf_sha256, s.refreshed_at, s.issuer, s.subject,
                s.last_seen_at < now() - make_interval(secs => {TOUCH_EVERY_SECS}) AS stale
         FROM sessions s WHERE {cond} AND {LIVE}"
    )
}

/// The live session whose cookie secret is `secret`, if any.
pub async fn find(pool: &sqlx::PgPool, secret: &str) -> Result<Option<Live>, ApiError> {
    Ok(sqlx::query_as(&select_live("s.secret_sha256 = $1"))
        .bind(digest(secret))
        .fetch_optional(pool)
        .await?)
}

/// Session `id`, if it is still live (the live stream asks now and then).
pub async fn find_by_id(pool: &sqlx::PgPool, id: Uuid) -> Result<Option<Live>, ApiError> {
    Ok(sqlx::query_as(&select_live("s.id = $1"))
        .bind(id)
        .fetch_optional(pool)
        .await?)
}

/// Marks the session seen now (idle expiry counts from here).
pub async fn touch(pool: &sqlx::PgPool, id: Uuid) -> Result<(), ApiError> {
    sqlx::query("UPDATE sessions SET last_seen_at = now() WHERE id = $1 AND revoked_at IS NULL")
        .bind(id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Revokes session `id` for `reason` (no-op when it already ended); whether it was live.
pub async fn revoke(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    id: Uuid,
    reason: &str,
) -> Result<bool, ApiError> {
    let agent: Option<Uuid> = sqlx::query_scalar(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2
         WHERE id = $1 AND revoked_at IS NULL RETURNING agent_id",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(agent) = agent else {
        return Ok(false);
    };
    audit::record(
        conn,
        actor,
        Entry {
            action: "session.revoked",
            subject: format!("session:{id}"),
            ticket_id: None,
            before: None,
            after: Some(serde_json::json!({ "agent_id": agent, "reason": reason })),
        },
    )
    .await?;
    tracing::info!(session_id = %id, agent_id = %agent, reason, "session revoked");
    Ok(true)
}

/// Revokes every live session of `agent` (deactivation); how many there were.
pub async fn revoke_all(
    conn: &mut sqlx::PgConnection,
    agent: Uuid,
    reason: &str,
) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query(
        "UPDATE sessions SET revoked_at = now(), revoked_reason = $2
         WHERE agent_id = $1 AND revoked_at IS NULL",
    )
    .bind(agent)
    .bind(reason)
    .execute(conn)
    .await?
    .rows_affected())
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/sessions", get(list))
        .route("/v1/sessions/{id}", delete(revoke_one))
}

/// A session as the API shows it (never its secrets).
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct SessionView {
    pub id: Uuid,
    pub agent_id: Uuid,
    pub role: String,
    pub issuer: String,
    pub subject: String,
    pub created_at: DateTime<Utc>,
    pub last_seen_at: DateTime<Utc>,
    /// When it ends unless used before: `last_seen_at` plus the idle time.
    pub idle_expires_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub revoked_reason: Option<String>,
    /// Whether it is live now.
    pub live: bool,
    /// Whether the request came with it.
    #[sqlx(default)]
    pub current: bool,
}

/// `GET /v1/sessions` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    /// Admins: this agent's sessions only (others see their own whatever this says).
    pub agent_id: Option<Uuid>,
    /// Ended sessions too (default: live ones only).
    #[serde(default)]
    pub all: bool,
    /// At most this many, newest first (1 to 500, default 100).
    pub limit: Option<i64>,
}

/// `GET /v1/sessions`: the caller's sessions; an admin's: everyone's.
#[utoipa::path(get, path = "/v1/sessions", tag = "access", params(SessionQuery), responses((status = 200, body = [SessionView]), (status = 400, description = "a field is invalid, named")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    who: Principal,
    Query(q): Query<SessionQuery>,
) -> Result<Json<Vec<SessionView>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 500"));
    }
    let agent = if who.role >= Role::Admin {
        q.agent_id
    } else {
        // Someone without an agent (the configured admin token) has no sessions of its own.
        Some(who.agent_id.unwrap_or(Uuid::nil()))
    };
    let mut rows: Vec<SessionView> = sqlx::query_as(&format!(
        "SELECT s.id, s.agent_id, s.role, s.issuer, s.subject, s.created_at, s.last_seen_at,
                s.last_seen_at + make_interval(secs => s.idle_secs) AS idle_expires_at, s.expires_at,
                s.ip, s.user_agent, s.revoked_at, s.revoked_reason, ({LIVE}) AS live
         FROM sessions s
         WHERE ($1::uuid IS NULL OR s.agent_id = $1) AND ($2 OR ({LIVE}))
         ORDER BY s.created_at DESC LIMIT $3"
    ))
    .bind(agent)
    .bind(q.all)
    .bind(limit)
    .fetch_all(&api.pool)
    .await?;
    for r in &mut rows {
        r.current = who.session_id == Some(r.id);
    }
    Ok(Json(rows))
}

/// `DELETE /v1/sessions/{id}`: signs the session out (its next request, and its open stream
/// within seconds, get 401).
#[utoipa::path(delete, path = "/v1/sessions/{id}", tag = "access", params(("id" = Uuid, Path)), responses((status = 204, description = "revoked (or had already ended)"), (status = 403, description = "someone else's session, and not an admin"), (status = 404, description = "no such session")), security(("bearer" = [])))]
async fn revoke_one(
    State(api): State<Api>,
    actor: Actor,
    Path(raw): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = crate::parse_id(&raw, "id")?;
    let mut tx = api.pool.begin().await?;
    let owner: Option<Uuid> =
        sqlx::query_scalar("SELECT agent_id FROM sessions WHERE id = $1 FOR UPDATE")
            .bind(id)
            .fetch_optional(&mut *tx)
            .await?;
    let owner = owner.ok_or_else(|| ApiError::not_found("no such session"))?;
    if actor.who.role < Role::Admin && actor.who.agent_id != Some(owner) {
        return Err(crate::auth::forbidden(
            "only an admin may sign out someone else's session",
        ));
    }
    let reason = if actor.who.session_id == Some(id) {
        "signed_out"
    } else {
        "revoked"
    };
    revoke(&mut tx, &actor, id, reason).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::{header, HeaderMap};

    #[test]
    fn cookies_are_found_by_exact_name_in_any_header() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; sb_session_x=no"),
        );
        h.append(
            header::COOKIE,
            HeaderValue::from_static("sb_csrf=tok; sb_session=\"abc\""),
        );
        assert_eq!(cookie(&h, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&h, CSRF_COOKIE), Some("tok"));
        assert_eq!(cookie(&h, "a"), Some("1"));
        assert_eq!(cookie(&h, "missing"), None);
    }

    #[test]
    fn hostile_cookie_headers_find_nothing_and_never_panic() {
        let long = format!("sb_session={}", "x".repeat(600));
        for raw in [
            "",
            ";;;;",
            "=",
            "sb_session=",
            "sb_session",
            "\u{1}sb_session=a",
            long.as_str(),
            "sb_session=\u{e9}t\u{e9}",
        ] {
            let mut h = HeaderMap::new();
            if let Ok(v) = HeaderValue::from_str(raw) {
                h.append(header::COOKIE, v);
            }
            let found = cookie(&h, SESSION_COOKIE);
            assert!(
                found.is_none() || found == Some("\u{e9}t\u{e9}"),
                "{raw:?} gave {found:?}"
            );
        }
        // A flood of pairs is read once, linearly.
        let flood = "a=b;".repeat(100_000);
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, HeaderValue::from_str(&flood).unwrap());
        assert_eq!(cookie(&h, SESSION_COOKIE), None);
    }

    #[test]
    fn the_session_cookie_is_http_only_and_both_are_lax_and_secure() {
        let s = set_cookie(SESSION_COOKIE, "v", 60, true, true);
        let s = s.to_str().unwrap();
        assert!(
            s.contains("HttpOnly") && s.contains("Secure") && s.contains("SameSite=Lax"),
            "{s}"
        );
        let c = set_cookie(CSRF_COOKIE, "v", 60, false, true);
        assert!(!c.to_str().unwrap().contains("HttpOnly"));
        let plain = set_cookie(CSRF_COOKIE, "v", 0, false, false);
        assert!(
            !plain.to_str().unwrap().contains("Secure")
                && plain.to_str().unwrap().contains("Max-Age=0")
        );
    }

    #[test]
    fn secrets_are_random_and_url_safe() {
        let (a, b) = (random_secret(), random_secret());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(a
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
    }
}
