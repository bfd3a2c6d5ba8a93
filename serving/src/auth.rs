//! Who is calling: roles and their tokens.
//!
//! Three roles, each allowed what the one before may do and more: `agent` (works the tickets,
//! acts only as itself), `supervisor` (acts for any agent, merges tickets, sees every agent's
//! stream), `admin` (creates agents and tokens). The configured admin token
//! (`http.admin_token`) is an admin; other tokens are issued by an admin
//! (`POST /v1/tokens {role, agent_id?, name}`), shown once, and stored only as their SHA-256.
//! No token or an unknown one: 401; a role that may not: 403.

use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use switchboard_core::http::{ApiError, ApiJson};
use uuid::Uuid;

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
    fn parse(s: &str) -> Option<Role> {
        match s {
            "agent" => Some(Role::Agent),
            "supervisor" => Some(Role::Supervisor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    fn as_str(self) -> &'static str {
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
}

fn forbidden(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "forbidden", message)
}

impl Principal {
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
        "missing or invalid bearer token",
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
        }
    }

    async fn principal(&self, token: &str) -> Result<Option<Principal>, ApiError> {
        let d = digest(token);
        // Digests are compared, so the comparison time says nothing about the token.
        if self.admins.contains(&d) {
            return Ok(Some(Principal {
                role: Role::Admin,
                agent_id: None,
            }));
        }
        let row: Option<(String, Option<Uuid>)> = sqlx::query_as(
            "SELECT role, agent_id FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        )
        .bind(&d)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.and_then(|(role, agent_id)| {
            Role::parse(&role).map(|role| Principal { role, agent_id })
        }))
    }
}

/// Middleware: resolves the bearer token to a [`Principal`] (401 when there is none).
pub async fn middleware(State(auth): State<Auth>, mut req: Request, next: Next) -> Response {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(|t| t.trim().to_string())
        // EventSource cannot send headers: the live stream also takes `?access_token=`.
        .or_else(|| {
            req.uri().query().and_then(|q| {
                form_urlencoded::parse(q.as_bytes())
                    .find(|(k, _)| k == "access_token")
                    .map(|(_, v)| v.into_owned())
            })
        });
    let principal = match token {
        Some(t) if !t.is_empty() => match auth.principal(&t).await {
            Ok(p) => p,
            Err(e) => return e.into_response(),
        },
        _ => None,
    };
    let Some(principal) = principal else {
        let mut resp = unauthorized().into_response();
        resp.headers_mut()
            .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        return resp;
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/tokens", post(issue))
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

/// `GET /v1/clock`: the time business rules run on (simulators align to it).
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

/// `GET /v1/me`: the caller's role and agent.
#[utoipa::path(get, path = "/v1/me", tag = "access", responses((status = 200, description = "{role, agent_id}")), security(("bearer" = [])))]
async fn me(who: Principal) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "role": who.role, "agent_id": who.agent_id }))
}

/// `POST /v1/tokens` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewToken {
    pub role: String,
    /// Required for (and only for) the agent role.
    #[serde(default)]
    pub agent_id: Option<Uuid>,
    pub name: String,
}

/// The issued token (shown once).
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct IssuedToken {
    pub id: Uuid,
    pub token: String,
    pub role: Role,
    pub agent_id: Option<Uuid>,
}

#[utoipa::path(post, path = "/v1/tokens", tag = "access", request_body = NewToken, responses((status = 201, body = IssuedToken), (status = 403, description = "admins only")), security(("bearer" = [])))]
async fn issue(
    State(api): State<Api>,
    who: Principal,
    ApiJson(req): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<IssuedToken>), ApiError> {
    who.require(Role::Admin)?;
    let role = Role::parse(&req.role)
        .ok_or_else(|| ApiError::field("role", "one of agent, supervisor, admin"))?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiError::field("name", "1 to 200 bytes"));
    }
    match (role, req.agent_id) {
        (Role::Agent, None) => {
            return Err(ApiError::field(
                "agent_id",
                "an agent token names its agent",
            ))
        }
        (Role::Agent, Some(a)) => {
            let exists: Option<Uuid> = sqlx::query_scalar("SELECT id FROM agents WHERE id = $1")
                .bind(a)
                .fetch_optional(&api.pool)
                .await?;
            if exists.is_none() {
                return Err(ApiError::field("agent_id", "no such agent"));
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
    sqlx::query(
        "INSERT INTO api_tokens (id, token_sha256, role, agent_id, name) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(digest(&token))
    .bind(role.as_str())
    .bind(req.agent_id)
    .bind(req.name.trim())
    .execute(&api.pool)
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedToken {
            id,
            token,
            role,
            agent_id: req.agent_id,
        }),
    ))
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
        };
        assert!(sup.require_self_or(me).is_ok());
        assert!(sup.require(Role::Admin).is_err());
    }
}
