//! Who is calling: roles and their tokens, and what each role may act on.
//!
//! Three roles, each allowed what the one before may do and more: `agent` (works the tickets
//! assigned to it, acts only as itself), `supervisor` (acts on any ticket and for any agent,
//! merges tickets, sees every agent's stream, edits canned replies and articles, reads reports),
//! `admin` (creates agents, issues, lists and revokes tokens, erases customers). The configured
//! admin token (`http.admin_token`) is an admin and never expires; other tokens are issued by an
//! admin (`POST /v1/tokens {role, agent_id?, name, expires_in_secs?}`), shown once, stored only
//! as their SHA-256, expire (90 days by default, a year at most) and can be revoked
//! (`DELETE /v1/tokens/{id}`): an expired or revoked token is refused on its next request.
//!
//! The token travels in `Authorization: Bearer`. Only the live stream
//! (`GET /v1/agents/{id}/stream`) also takes it as `?access_token=` (a browser's `EventSource`
//! cannot send headers); on every other route a query-string token is ignored.
//! No token, an unknown, expired or revoked one: 401; a role or a ticket the caller may not act
//! on: 403 ([`Principal::may_act_on_ticket`]).

use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use uuid::Uuid;

use crate::sessions::{self, Live};
use crate::Api;

/// A role, in increasing power.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Agent,
    Supervisor,
    Admin,
}

impl Role {
    pub(crate) fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "supervisor" => Some(Role::Supervisor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Role::Agent => "agent",
            Role::Supervisor => "supervisor",
            Role::Admin => "admin",
        }
    }
}

/// The caller of a request (put there by [`middleware`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// The agent an agent token belongs to.
    pub agent_id: Option<Uuid>,
    /// The issued token the request carried (none for the configured admin token).
    pub token_id: Option<Uuid>,
    /// The single sign-on session the request came with ([`crate::sessions`]).
    pub session_id: Option<Uuid>,
}

pub(crate) fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl Principal {
    /// `agent:<id>` (by token or session), `token:<id>`, or `admin` (the configured token): how
    /// the audit log and the events name the caller.
    pub fn name(&self) -> String {
        match (self.agent_id, self.token_id) {
            (Some(a), _) => format!("agent:{a}"),
            (None, Some(t)) => format!("token:{t}"),
            (None, None) => "admin".into(),
        }
    }

    /// The caller as the author of a transaction's changes.
    pub fn change_actor(&self) -> switchboard_core::db::ChangeActor {
        switchboard_core::db::ChangeActor {
            name: self.name(),
            role: self.role.as_str().to_string(),
            person: true,
        }
    }

    /// 403 unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(forbidden(format!(
                "this needs the {} role (the token is {})",
                role.as_str(),
                self.role.as_str()
            )))
        }
    }

    /// 403 unless the caller is `agent` itself or a supervisor or admin.
    pub fn require_self_or(&self, agent: Uuid) -> Result<(), ApiError> {
        if self.role >= Role::Supervisor || self.agent_id == Some(agent) {
            Ok(())
        } else {
            Err(forbidden("an agent may act only as itself"))
        }
    }

    /// 403 unless the caller may act on a ticket whose current assignee is `assignee`: an agent
    /// only on a ticket assigned to it, a supervisor or admin on any. For a caller that holds
    /// the ticket's row lock (the decision cannot go stale before the change commits).
    pub fn check_assignee(&self, assignee: Option<Uuid>) -> Result<(), ApiError> {
        if self.role >= Role::Supervisor || (assignee.is_some() && assignee == self.agent_id) {
            Ok(())
        } else {
            Err(forbidden(
                "an agent may act only on tickets assigned to it (ask a supervisor)",
            ))
        }
    }

    /// Locks the ticket's row in `conn`'s transaction and returns its assignee (404 when there
    /// is no such ticket): what [`Principal::check_assignee`] decides on, under the lock.
    pub async fn locked_assignee(
        conn: &mut sqlx::PgConnection,
        ticket: Uuid,
    ) -> Result<Option<Uuid>, ApiError> {
        let assignee: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT assigned_agent_id FROM tickets WHERE id = $1 FOR UPDATE")
                .bind(ticket)
                .fetch_optional(conn)
                .await?;
        assignee.ok_or_else(|| ApiError::not_found("no such ticket"))
    }

    /// Whether the caller may act on (change the status of, reply or type on, accept) the
    /// ticket `ticket`: one query for its current assignee. 404 when there is no such ticket,
    /// 403 when an agent does not hold it.
    pub async fn may_act_on_ticket<'e, E>(&self, db: E, ticket: Uuid) -> Result<(), ApiError>
    where
        E: sqlx::PgExecutor<'e>,
    {
        let assignee: Option<Option<Uuid>> =
            sqlx::query_scalar("SELECT assigned_agent_id FROM tickets WHERE id = $1")
                .bind(ticket)
                .fetch_optional(db)
                .await?;
        match assignee {
            None => Err(ApiError::not_found("no such ticket")),
            Some(a) => self.check_assignee(a),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Principal {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Principal>()
            .copied()
            .ok_or_else(unauthorized)
    }
}

fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "missing or invalid bearer token or session",
    )
}

fn digest(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// What the middleware checks tokens against.
#[derive(Debug, Clone)]
pub struct Auth {
    pool: PgPool,
    /// SHA-256 of the configured admin tokens.
    admins: Arc<Vec<Vec<u8>>>,
    /// Single sign-on, when configured: people's sessions.
    sso: Option<Arc<crate::sso::Sso>>,
}

impl Auth {
    pub fn new(pool: PgPool, admin_tokens: Vec<String>) -> Self {
        Auth {
            pool,
            admins: Arc::new(
                admin_tokens
                    .iter()
                    .filter(|t| !t.is_empty())
                    .map(|t| digest(t))
                    .collect(),
            ),
            sso: None,
        }
    }

    /// People also sign in through `sso` (sessions in cookies).
    pub fn with_sso(mut self, sso: crate::sso::Sso) -> Self {
        self.sso = Some(Arc::new(sso));
        self
    }

    /// The single sign-on client, when configured.
    pub fn sso(&self) -> Option<&Arc<crate::sso::Sso>> {
        self.sso.as_ref()
    }

    /// The live session with cookie secret `secret`: its principal and CSRF digest, after
    /// asking the IdP again when `refresh_secs` have passed (a person who lost their role
    /// there is signed out here: `None`).
    async fn session(&self, secret: &str) -> Result<Option<(Principal, Live)>, ApiError> {
        let Some(live) = sessions::find(&self.pool, secret).await? else {
            return Ok(None);
        };
        let Some(mut role) = Role::parse(&live.role) else {
            return Ok(None);
        };
        if let Some(r) = self.recheck(&live).await? {
            match r {
                Some(now) => role = now,
                None => return Ok(None),
            }
        }
        if live.stale {
            sessions::touch(&self.pool, live.id).await?;
        }
        Ok(Some((
            Principal {
                role,
                agent_id: Some(live.agent_id),
                token_id: None,
                session_id: Some(live.id),
            },
            live,
        )))
    }

    /// When the session is due for a refresh and this request wins the claim on it: asks the
    /// IdP. `Some(Some(role))`: still in, with this role; `Some(None)`: signed out now;
    /// `None`: nothing to do (not due, another request refreshes, no SSO, the IdP unreachable).
    async fn recheck(&self, live: &Live) -> Result<Option<Option<Role>>, ApiError> {
        let Some(sso) = &self.sso else {
            return Ok(None);
        };
        let due = live.refreshed_at + chrono::Duration::seconds(i64::from(sso.config.refresh_secs));
        if chrono::Utc::now() < due {
            return Ok(None);
        }
        // One request refreshes; the others go on with the session as it is.
        let claimed: Option<Option<Vec<u8>>> = sqlx::query_scalar(
            "UPDATE sessions SET refreshed_at = now() WHERE id = $1 AND refreshed_at = $2
             RETURNING refresh_token_sealed",
        )
        .bind(live.id)
        .bind(live.refreshed_at)
        .fetch_optional(&self.pool)
        .await?;
        let Some(sealed) = claimed else {
            return Ok(None);
        };
        let Some(sealed) = sealed else {
            // The IdP gave no refresh token: the session lives to its idle or absolute end.
            return Ok(None);
        };
        // The IdP call and the store of what it answered run to the end on their own task: a
        // request or stream dropped meanwhile must not lose a rotated refresh token.
        let (pool, sso, live) = (self.pool.clone(), sso.clone(), live.clone());
        tokio::spawn(async move { apply_refresh(&pool, &sso, &live, &sealed).await })
            .await
            .map_err(|e| ApiError::internal(format!("session refresh task: {e}")))?
    }

    /// The token's principal and whether it may only read.
    async fn principal(&self, token: &str) -> Result<Option<(Principal, bool)>, ApiError> {
        let d = digest(token);
        // Digests are compared, so the comparison time says nothing about the token.
        if self.admins.contains(&d) {
            return Ok(Some((
                Principal {
                    role: Role::Admin,
                    agent_id: None,
                    token_id: None,
                    session_id: None,
                },
                false,
            )));
        }
        let row: Option<(Uuid, String, Option<Uuid>, String)> = sqlx::query_as(
            "SELECT id, role, agent_id, scope FROM api_tokens
             WHERE token_sha256 = $1 AND revoked_at IS NULL AND expires_at > now()",
        )
        .bind(&d)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(id, role, agent_id, scope)| {
            Role::parse(&role).map(|role| {
                (
                    Principal {
                        role,
                        agent_id,
                        token_id: Some(id),
                        session_id: None,
                    },
                    scope == "read",
                )
            })
        }))
    }

    /// The role session `id` has now, if it is still live (and, when due, still granted a role
    /// by the IdP): the live stream asks, and ends when this is `None` or the role no longer
    /// lets its caller watch.
    pub async fn session_role(&self, id: Uuid) -> Result<Option<Role>, ApiError> {
        let Some(live) = sessions::find_by_id(&self.pool, id).await? else {
            return Ok(None);
        };
        Ok(match self.recheck(&live).await? {
            Some(now) => now,
            None => Role::parse(&live.role),
        })
    }

    /// Whether the issued token `id` is still valid (not revoked, not expired). Long-lived
    /// responses (the live stream) ask again now and then.
    pub async fn still_valid(&self, id: Uuid) -> Result<bool, ApiError> {
        let ok: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM api_tokens WHERE id = $1 AND revoked_at IS NULL AND expires_at > now()",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(ok.is_some())
    }
}

/// Asks the IdP again for `live` with its sealed refresh token and stores the answer: a role
/// (changed: audited), an end (revoked with the reason), or nothing (the IdP unreachable: the
/// session goes on). See [`Auth::recheck`].
async fn apply_refresh(
    pool: &PgPool,
    sso: &crate::sso::Sso,
    live: &Live,
    sealed: &[u8],
) -> Result<Option<Option<Role>>, ApiError> {
    let actor = crate::audit::Actor::local("sso");
    match sso.refresh(sealed, &live.subject).await {
        Ok(r) => {
            let Some(role) = r.role.or_else(|| Role::parse(&live.role)) else {
                return Ok(Some(None));
            };
            let mut tx = pool.begin().await?;
            sqlx::query(
                "UPDATE sessions SET role = $2, refresh_token_sealed = COALESCE($3, refresh_token_sealed)
                 WHERE id = $1",
            )
            .bind(live.id)
            .bind(role.as_str())
            .bind(r.refresh_token.as_deref().and_then(|t| sso.seal(t)))
            .execute(&mut *tx)
            .await?;
            // The IdP moved the person to another group: a role change, audited.
            if role.as_str() != live.role {
                crate::audit::record(
                    &mut tx,
                    &actor,
                    crate::audit::Entry {
                        action: "session.role_changed",
                        subject: format!("session:{}", live.id),
                        ticket_id: None,
                        before: Some(serde_json::json!({ "role": live.role })),
                        after: Some(serde_json::json!({ "role": role, "agent_id": live.agent_id })),
                    },
                )
                .await?;
                tracing::info!(session_id = %live.id, from = %live.role, to = role.as_str(), "session role changed by the identity provider");
            }
            tx.commit().await?;
            Ok(Some(Some(role)))
        }
        Err(e) if e.is_retryable() => {
            tracing::warn!(session_id = %live.id, error = %e, "cannot ask the identity provider again, the session goes on");
            Ok(None)
        }
        Err(e) => {
            let mut conn = pool.acquire().await?;
            sessions::revoke(&mut conn, &actor, live.id, e.reason()).await?;
            tracing::info!(session_id = %live.id, reason = e.reason(), error = %e, "the identity provider refused the session, ended");
            Ok(Some(None))
        }
    }
}

/// Whether `path` is the live stream's (`/v1/agents/{id}/stream`), the one route that takes
/// its token in the query string.
pub fn query_token_allowed(path: &str) -> bool {
    let mut parts = path.split('/');
    matches!(
        (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next()
        ),
        (Some(""), Some("v1"), Some("agents"), Some(id), Some("stream"), None) if !id.is_empty()
    )
}

/// 403 unless the request carries the session's CSRF token in `X-CSRF-Token`.
pub(crate) fn check_csrf(headers: &axum::http::HeaderMap, live: &Live) -> Result<(), ApiError> {
    let sent = headers
        .get(sessions::CSRF_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Digests are compared, so the time taken says nothing about the token.
    if !sent.is_empty() && sessions::digest(sent) == live.csrf_sha256 {
        Ok(())
    } else {
        Err(ApiError {
            field: Some(sessions::CSRF_HEADER.into()),
            ..forbidden("a change made with a session cookie needs its CSRF token in X-CSRF-Token")
        })
    }
}

/// Middleware: resolves the bearer token, or else the session cookie, to a [`Principal`] (401
/// when there is none). A change made with a session needs its CSRF token.
pub async fn middleware(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let header_token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string());
    // EventSource cannot send headers: the live stream (and nothing else) also takes
    // `?access_token=`.
    let token = header_token.or_else(|| {
        if !query_token_allowed(req.uri().path()) {
            return None;
        }
        req.uri().query().and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "access_token")
                .map(|(_, v)| v.into_owned())
        })
    });
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD);
    let principal = match token {
        Some(t) if !t.is_empty() => match auth.principal(&t).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        },
        // No bearer token: a person's session cookie.
        _ => match sessions::cookie(req.headers(), sessions::SESSION_COOKIE) {
            Some(secret) => match auth.session(secret).await {
                Ok(Some((p, live))) => {
                    if changes {
                        if let Err(e) = check_csrf(req.headers(), &live) {
                            return e.into_response();
                        }
                    }
                    Some((p, false))
                }
                Ok(None) => None,
                Err(e) => return e.into_response(),
            },
            None => None,
        },
    };
    let Some((principal, read_only)) = principal else {
        let mut resp = unauthorized().into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    // A read-only token reads: every other method is refused before any handler runs.
    if read_only && changes {
        return ApiError {
            field: Some("scope".into()),
            ..forbidden("this token is read-only")
        }
        .into_response();
    }
    req.extensions_mut().insert(principal);
    next.run(req).await
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tokens", post(issue).get(list))
        .route("/v1/tokens/{id}", axum::routing::delete(revoke))
        .route("/v1/me", axum::routing::get(me))
        .route("/v1/clock", axum::routing::get(clock))
}

/// The business clock (`switchboard_core::clock`).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClockInfo {
    /// Now, as SLA clocks and shifts see it.
    pub now: chrono::DateTime<chrono::Utc>,
    /// Whether a simulation's compressed clock runs (never in production).
    pub simulated: bool,
    /// Simulated seconds per wall second (1 when not simulated).
    pub speed: f64,
    /// The wall time and the simulated time the simulation began.
    pub anchor: Option<chrono::DateTime<chrono::Utc>>,
    pub start: Option<chrono::DateTime<chrono::Utc>>,
}

/// `GET /v1/clock`: the time business rules run on (simulators align to it; any role).
#[utoipa::path(get, path = "/v1/clock", tag = "access", responses((status = 200, body = ClockInfo)), security(("bearer" = [])))]
async fn clock(_who: Principal) -> Json<ClockInfo> {
    let sim = switchboard_core::clock::simulated();
    Json(ClockInfo {
        now: switchboard_core::clock::now(),
        simulated: sim.is_some(),
        speed: sim.map_or(1.0, |s| s.speed),
        anchor: sim.map(|s| s.anchor),
        start: sim.map(|s| s.start),
    })
}

/// `GET /v1/me`: the caller's role, agent, and token or session (any role).
#[utoipa::path(get, path = "/v1/me", tag = "access", responses((status = 200, description = "{role, agent_id, token_id, session_id}: token_id is null for the configured admin token and for a session")), security(("bearer" = [])))]
async fn me(who: Principal) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "role": who.role, "agent_id": who.agent_id, "token_id": who.token_id, "session_id": who.session_id,
    }))
}

/// How long an issued token lives when `expires_in_secs` is not given: 90 days.
pub const DEFAULT_TOKEN_SECS: i64 = 90 * 24 * 3600;
/// The longest life a token may be issued with: a year.
pub const MAX_TOKEN_SECS: i64 = 365 * 24 * 3600;
/// The shortest: a minute.
pub const MIN_TOKEN_SECS: i64 = 60;

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    /// `agent`, `supervisor` or `admin`.
    pub role: String,
    /// Required for (and only for) the agent role.
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    pub name: String,
    /// Seconds until the token expires: 60 to 31536000 (a year); default 7776000 (90 days).
    #[serde(default)]
    pub expires_in_secs: Option<i64>,
    /// `full` (default: whatever the role may do) or `read` (GET only: reports, dashboards).
    #[serde(default)]
    pub scope: Option<String>,
}

/// The issued token (shown once).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedToken {
    pub id: Uuid,
    pub token: String,
    pub role: Role,
    pub agent_id: Option<Uuid>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub scope: String,
}

#[utoipa::path(post, path = "/v1/tokens", operation_id = "issue_token", tag = "access", request_body = NewToken, responses((status = 201, body = IssuedToken), (status = 400, description = "a field is invalid, named"), (status = 403, description = "admins only"), (status = 409, description = "the agent is deactivated")), security(("bearer" = [])))]
async fn issue(
    State(api): State<Api>,
    actor: crate::audit::Actor,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    actor.who.require(Role::Admin)?;
    let role = Role::parse(&req.role)
        .ok_or_else(|| ApiError::field("role", "one of agent, supervisor, admin"))?;
    let scope = req.scope.as_deref().unwrap_or("full");
    if !matches!(scope, "full" | "read") {
        return Err(ApiError::field("scope", "full or read"));
    }
    if req.name.trim().is_empty() || req.name.len() > 200 || req.name.chars().any(char::is_control)
    {
        return Err(ApiError::field(
            "name",
            "1 to 200 bytes, no control characters",
        ));
    }
    let secs = req.expires_in_secs.unwrap_or(DEFAULT_TOKEN_SECS);
    if !(MIN_TOKEN_SECS..=MAX_TOKEN_SECS).contains(&secs) {
        return Err(ApiError::field(
            "expires_in_secs",
            format!("{MIN_TOKEN_SECS} to {MAX_TOKEN_SECS} seconds"),
        ));
    }
    match (role, req.agent_id) {
        (Role::Agent, None) => {
            return Err(ApiError::field(
                "agent_id",
                "an agent token names its agent",
            ))
        }
        (Role::Agent, Some(a)) => {
            let active: Option<bool> =
                sqlx::query_scalar("SELECT deactivated_at IS NULL FROM agents WHERE id = $1")
                    .bind(a)
                    .fetch_optional(&api.pool)
                    .await?;
            match active {
                None => return Err(ApiError::field("agent_id", "no such agent")),
                Some(false) => {
                    return Err(ApiError {
                        field: Some("agent_id".into()),
                        ..ApiError::new(
                            StatusCode::CONFLICT,
                            "conflict",
                            "the agent is deactivated: reactivate it first",
                        )
                    })
                }
                Some(true) => {}
            }
        }
        (_, Some(_)) => {
            return Err(ApiError::field(
                "agent_id",
                "only agent tokens name an agent",
            ))
        }
        (_, None) => {}
    }
    let token = format!("sbt_{}{}", Uuid::new_v4().simple(), Uuid::new_v4().simple());
    let id = Uuid::now_v7();
    let mut tx = api.pool.begin().await?;
    let expires_at: chrono::DateTime<chrono::Utc> = sqlx::query_scalar(
        "INSERT INTO api_tokens (id, token_sha256, role, agent_id, name, expires_at, scope)
         VALUES ($1, $2, $3, $4, $5, now() + make_interval(secs => $6), $7)
         RETURNING expires_at",
    )
    .bind(id)
    .bind(digest(&token))
    .bind(role.as_str())
    .bind(req.agent_id)
    .bind(req.name.trim())
    .bind(secs as f64)
    .bind(scope)
    .fetch_one(&mut *tx)
    .await?;
    crate::audit::record(
        &mut tx,
        &actor,
        crate::audit::Entry {
            action: "token.issued",
            subject: format!("token:{id}"),
            ticket_id: None,
            before: None,
            after: Some(serde_json::json!({
                "name": req.name.trim(), "role": role.as_str(), "agent_id": req.agent_id,
                "scope": scope, "expires_at": expires_at,
            })),
        },
    )
    .await?;
    tx.commit().await?;
    tracing::info!(token_id = %id, role = role.as_str(), agent_id = ?req.agent_id, scope, %expires_at, "token issued");
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            id,
            token,
            role,
            agent_id: req.agent_id,
            expires_at,
            scope: scope.to_string(),
        }),
    ))
}

/// An issued token as admins see it (never its secret, which is not kept).
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct TokenView {
    pub id: Uuid,
    pub name: String,
    pub role: String,
    pub agent_id: Option<Uuid>,
    pub created_at: chrono::DateTime<chrono::Utc>,
    pub expires_at: chrono::DateTime<chrono::Utc>,
    pub revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    /// Neither revoked nor expired: requests carrying it are accepted.
    pub active: bool,
    /// `full` or `read` (GET only).
    pub scope: String,
}

/// `GET /v1/tokens` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// Only this agent's tokens.
    pub agent_id: Option<Uuid>,
    /// Include revoked and expired tokens (default false).
    pub all: Option<bool>,
    /// 1 to 1000 (default 200), newest first.
    pub limit: Option<i64>,
}

/// `GET /v1/tokens`: the issued tokens, newest first (admins).
#[utoipa::path(get, path = "/v1/tokens", operation_id = "list_tokens", tag = "access", params(TokenQuery), responses((status = 200, body = [TokenView]), (status = 400, description = "a bad query field, named"), (status = 403, description = "admins only")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    who: Principal,
    ApiQuery(q): ApiQuery<TokenQuery>,
) -> Result<Json<Vec<TokenView>>, ApiError> {
    who.require(Role::Admin)?;
    let limit = q.limit.unwrap_or(200);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 1000"));
    }
    Ok(Json(
        sqlx::query_as(
            "SELECT id, name, role, agent_id, created_at, expires_at, revoked_at,
                    (revoked_at IS NULL AND expires_at > now()) AS active, scope
             FROM api_tokens
             WHERE ($1::uuid IS NULL OR agent_id = $1)
               AND ($2 OR (revoked_at IS NULL AND expires_at > now()))
             ORDER BY created_at DESC, id DESC LIMIT $3",
        )
        .bind(q.agent_id)
        .bind(q.all.unwrap_or(false))
        .bind(limit)
        .fetch_all(&api.pool)
        .await?,
    ))
}

/// `DELETE /v1/tokens/{id}`: revokes an issued token (admins); every later request carrying it
/// is refused (401), an open live stream ends. Revoking a revoked token changes nothing. The
/// configured admin token is not issued and cannot be revoked here: change the configuration.
#[utoipa::path(delete, path = "/v1/tokens/{id}", operation_id = "revoke_token", tag = "access", params(("id" = Uuid, Path, description = "the token's id (not its secret)")), responses((status = 204, description = "revoked"), (status = 403, description = "admins only"), (status = 404, description = "no such token")), security(("bearer" = [])))]
async fn revoke(
    State(api): State<Api>,
    actor: crate::audit::Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = actor.who;
    who.require(Role::Admin)?;
    let id = crate::parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    // The old revocation time alongside the new: a second revoke changes nothing and logs nothing.
    let found: Option<(chrono::DateTime<chrono::Utc>, bool)> = sqlx::query_as(
        "UPDATE api_tokens t SET revoked_at = COALESCE(t.revoked_at, now())
         FROM (SELECT id, revoked_at IS NULL AS fresh FROM api_tokens WHERE id = $1 FOR UPDATE) old
         WHERE t.id = old.id RETURNING t.revoked_at, old.fresh",
    )
    .bind(id)
    .fetch_optional(&mut *tx)
    .await?;
    let Some((revoked_at, fresh)) = found else {
        return Err(ApiError::not_found("no such token"));
    };
    if fresh {
        crate::audit::record(
            &mut tx,
            &actor,
            crate::audit::Entry {
                action: "token.revoked",
                subject: format!("token:{id}"),
                ticket_id: None,
                before: None,
                after: Some(serde_json::json!({ "revoked_at": revoked_at })),
            },
        )
        .await?;
    }
    tx.commit().await?;
    tracing::info!(token_id = %id, by = ?who.token_id, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_are_ordered_and_agents_act_as_themselves() {
        let me = Uuid::now_v7();
        let agent = Principal {
            role: Role::Agent,
            agent_id: Some(me),
            token_id: None,
            session_id: None,
        };
        assert!(agent.require(Role::Agent).is_ok());
        assert_eq!(
            agent.require(Role::Supervisor).map_err(|e| e.status),
            Err(StatusCode::FORBIDDEN)
        );
        assert!(agent.require_self_or(me).is_ok());
        assert!(agent.require_self_or(Uuid::now_v7()).is_err());
        let sup = Principal {
            role: Role::Supervisor,
            agent_id: None,
            token_id: None,
            session_id: None,
        };
        assert!(sup.require_self_or(me).is_ok());
        assert!(sup.require(Role::Admin).is_err());
    }

    #[test]
    fn agents_act_only_on_tickets_they_hold() {
        let me = Uuid::now_v7();
        let other = Uuid::now_v7();
        let agent = Principal {
            role: Role::Agent,
            agent_id: Some(me),
            token_id: None,
            session_id: None,
        };
        assert!(agent.check_assignee(Some(me)).is_ok());
        for held_by in [Some(other), None] {
            assert_eq!(
                agent.check_assignee(held_by).map_err(|e| e.status),
                Err(StatusCode::FORBIDDEN)
            );
        }
        // An agent token without an agent (never issued, but never a wildcard either).
        let odd = Principal {
            agent_id: None,
            ..agent
        };
        assert!(odd.check_assignee(None).is_err());
        for role in [Role::Supervisor, Role::Admin] {
            let p = Principal {
                role,
                agent_id: None,
                token_id: None,
                session_id: None,
            };
            assert!(p.check_assignee(Some(other)).is_ok());
            assert!(p.check_assignee(None).is_ok());
        }
    }

    #[test]
    fn only_the_stream_takes_a_query_string_token() {
        let id = Uuid::now_v7();
        assert!(query_token_allowed(&format!("/v1/agents/{id}/stream")));
        for p in [
            "/v1/tickets".to_string(),
            format!("/v1/agents/{id}"),
            format!("/v1/agents/{id}/status"),
            format!("/v1/agents/{id}/stream/x"),
            "/v1/agents//stream".to_string(),
            format!("/v2/agents/{id}/stream"),
            format!("//v1/agents/{id}/stream"),
            "/v1/tokens".to_string(),
        ] {
            assert!(!query_token_allowed(&p), "{p}");
        }
    }
}
