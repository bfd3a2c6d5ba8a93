//! OpenID Connect single sign-on: people sign in at the organisation's identity provider.
//!
//! The authorization code flow with PKCE (S256), a one-use `state` and `nonce` kept server-side
//! (`sso_logins`), and the ID token checked by the `openidconnect` crate (signature against the
//! IdP's JWKS, issuer, audience, expiry, nonce). The IdP is found by discovery, and its metadata
//! and keys are fetched again after an hour, or at once when a token names a key they lack (a
//! key rotation), at most every [`REDISCOVER_MIN`].
//!
//! - `GET /auth/config`: whether single sign-on is on, and the sign-in button's label (public).
//! - `GET /auth/sso/login?return_to=/console/`: off to the IdP. The browser gets a binder cookie
//!   (`sb_sso`, `HttpOnly`, ten minutes) whose SHA-256 is kept with the sign-in: the callback is
//!   accepted only from the browser that started it (an attacker's own callback URL, opened in a
//!   victim's browser, signs nobody in).
//! - `GET /auth/sso/callback`: back from it. The person's groups (`groups_claim` in the ID
//!   token) map to a role, and, for someone new, to a team, skills and languages
//!   (`sso.mappings`, the highest role of any matching group, the rest from the first matching
//!   group in file order); nobody outside a mapped group gets in. A person is known by the IdP's
//!   (issuer, subject); someone new is linked to the agent with their email when the IdP has
//!   verified it, else provisioned as a new agent. Then a session ([`crate::sessions`]) and a
//!   redirect to `return_to` (a path on this site, never elsewhere). A refusal redirects to
//!   `/console/?sso_error=<reason>` and is in the audit log (`sso.refused`).
//! - `POST /auth/logout` (the session and its CSRF token): ends the session; the answer names the
//!   IdP's end-session URL, where the console goes next.
//! - Every `refresh_secs` a request with the session asks the IdP again with the refresh token
//!   ([`Sso::refresh`]): a person whose groups no longer map to a role, or whose grant the IdP
//!   withdrew, is signed out there and then. An IdP that cannot be reached does not sign the
//!   desk out; the session lives on to its idle or absolute end.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use openidconnect::core::{CoreClient, CoreIdToken, CoreResponseType, CoreTokenResponse};
use openidconnect::{
    AuthenticationFlow, AuthorizationCode, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge,
    PkceCodeVerifier, PostLogoutRedirectUrl, ProviderMetadataWithLogout, RedirectUrl, RefreshToken,
    Scope, TokenResponse,
};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use switchboard_core::config::{optional_secret, Secret};
use switchboard_core::http::ApiError;
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::sessions::{self, NewSession};
use crate::Api;

/// `sso:` in pipelines.yaml. Empty `issuer`: no single sign-on (tokens only, the embedded
/// default). The client secret comes from `SWITCHBOARD__SSO__CLIENT_SECRET`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SsoConfig {
    /// The OpenID Provider (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    #[serde(deserialize_with = "optional_secret")]
    pub client_secret: Option<Secret>,
    /// Where the IdP sends people back; empty: `<http.public_url>/auth/sso/callback`.
    pub redirect_url: String,
    /// Where the IdP sends people after signing out; empty: `<http.public_url>/console/`.
    pub post_logout_url: String,
    /// Asked for besides `openid` (add `offline_access` where the IdP needs it for a refresh
    /// token, and whatever scope carries the groups).
    pub scopes: Vec<String>,
    /// The ID token claim listing the person's groups (a list of strings, or one string).
    pub groups_claim: String,
    /// Groups to roles (and, for someone new, team, skills and languages).
    pub mappings: Vec<GroupMapping>,
    /// A session unused for this long ends.
    pub idle_secs: u32,
    /// A session ends this long after sign-in, used or not.
    pub absolute_secs: u32,
    /// How often a session asks the IdP again (refresh token) whether the person still has a role.
    pub refresh_secs: u32,
    /// `Secure` cookies (false only for plain-HTTP development off loopback).
    pub cookie_secure: bool,
    /// The console's sign-in button.
    pub button_label: String,
}

impl Default for SsoConfig {
    fn default() -> Self {
        SsoConfig {
            issuer: String::new(),
            client_id: String::new(),
            client_secret: None,
            redirect_url: String::new(),
            post_logout_url: String::new(),
            scopes: vec!["email".into(), "profile".into()],
            groups_claim: "groups".into(),
            mappings: Vec::new(),
            idle_secs: 8 * 3600,
            absolute_secs: 12 * 3600,
            refresh_secs: 300,
            cookie_secure: true,
            button_label: "Sign in with single sign-on".into(),
        }
    }
}

/// One IdP group and what its members are.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupMapping {
    pub group: String,
    /// `agent`, `supervisor` or `admin`.
    pub role: String,
    /// The team someone new joins (by name; an unknown team is skipped with a warning).
    #[serde(default)]
    pub team: Option<String>,
    #[serde(default)]
    pub skills: Vec<String>,
    #[serde(default)]
    pub languages: Vec<String>,
    /// Tickets at once for someone new (default 5).
    #[serde(default)]
    pub max_concurrent: Option<i32>,
}

/// A misconfigured `sso:` section, naming the key.
#[derive(Debug, thiserror::Error)]
#[error("sso.{field}: {message}")]
pub struct SsoConfigError {
    pub field: String,
    pub message: String,
}

fn bad(field: impl Into<String>, message: impl Into<String>) -> SsoConfigError {
    SsoConfigError {
        field: field.into(),
        message: message.into(),
    }
}

impl SsoConfig {
    /// Whether single sign-on is configured.
    pub fn enabled(&self) -> bool {
        !self.issuer.trim().is_empty()
    }

    /// Checks the section (when enabled), naming the first bad key.
    pub fn validate(&self) -> Result<(), SsoConfigError> {
        if !self.enabled() {
            return Ok(());
        }
        IssuerUrl::new(self.issuer.clone()).map_err(|e| bad("issuer", e.to_string()))?;
        if self.client_id.trim().is_empty() {
            return Err(bad("client_id", "required with an issuer"));
        }
        if self.client_secret.as_ref().is_none_or(|s| s.is_empty()) {
            return Err(bad(
                "client_secret",
                "required with an issuer (SWITCHBOARD__SSO__CLIENT_SECRET)",
            ));
        }
        for (key, url) in [
            ("redirect_url", &self.redirect_url),
            ("post_logout_url", &self.post_logout_url),
        ] {
            if !url.is_empty() {
                url::Url::parse(url).map_err(|e| bad(key, e.to_string()))?;
            }
        }
        if self.mappings.is_empty() {
            return Err(bad(
                "mappings",
                "at least one group mapped to a role (nobody could sign in)",
            ));
        }
        for (i, m) in self.mappings.iter().enumerate() {
            if m.group.trim().is_empty() {
                return Err(bad(format!("mappings[{i}].group"), "required"));
            }
            if Role::parse(&m.role).is_none() {
                return Err(bad(
                    format!("mappings[{i}].role"),
                    "one of agent, supervisor, admin",
                ));
            }
        }
        if self.idle_secs < 60 || self.absolute_secs < 60 || self.idle_secs > self.absolute_secs {
            return Err(bad(
                "idle_secs",
                "idle_secs and absolute_secs are at least 60 and idle_secs at most absolute_secs",
            ));
        }
        if self.refresh_secs == 0 {
            return Err(bad("refresh_secs", "at least 1"));
        }
        if self.groups_claim.is_empty() {
            return Err(bad("groups_claim", "required"));
        }
        Ok(())
    }
}

/// What a person's groups make them: the highest role of any mapped group, and the first
/// matching group's defaults for someone new. `None`: no mapped group, no way in.
pub fn map_groups<'m>(
    mappings: &'m [GroupMapping],
    groups: &[String],
) -> Option<(Role, &'m GroupMapping)> {
    let matching = mappings
        .iter()
        .filter(|m| groups.iter().any(|g| g == &m.group));
    let role = matching
        .clone()
        .filter_map(|m| Role::parse(&m.role))
        .max()?;
    let first = matching.clone().next()?;
    Some((role, first))
}

/// The groups in an ID token's claims: a list of strings (others skipped) or one string; at
/// most 1,000, each at most 256 bytes.
pub fn groups_of(claims: &serde_json::Value, claim: &str) -> Vec<String> {
    match claims.get(claim) {
        Some(serde_json::Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str())
            .filter(|g| g.len() <= 256)
            .take(1000)
            .map(str::to_string)
            .collect(),
        Some(serde_json::Value::String(g)) if g.len() <= 256 => vec![g.clone()],
        _ => Vec::new(),
    }
}

/// The payload of a JWT whose signature has been checked, as JSON.
fn payload(jwt: &str) -> Option<serde_json::Value> {
    use base64::Engine as _;
    let part = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(part.trim_end_matches('='))
        .ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// `return_to` when it is a path on this site (`/...`, not `//host` or `/\host`), else the
/// console.
pub fn safe_return_to(raw: Option<&str>) -> String {
    match raw {
        Some(p)
            if p.starts_with('/')
                && !p.starts_with("//")
                && !p.starts_with("/\\")
                && p.len() <= 512
                && p.bytes().all(|b| b.is_ascii_graphic() && b != b'\\') =>
        {
            p.to_string()
        }
        _ => "/console/".to_string(),
    }
}

/// Refresh tokens are sealed (AES-256-GCM, a key derived from the client secret) before they
/// are stored; a copy of the sessions table alone cannot be replayed at the IdP.
struct Sealer(ring::aead::LessSafeKey);

impl Sealer {
    fn new(client_secret: &str) -> Option<Sealer> {
        let mut h = Sha256::new();
        h.update(b"switchboard sso refresh token v1\0");
        h.update(client_secret.as_bytes());
        let key = ring::aead::UnboundKey::new(&ring::aead::AES_256_GCM, &h.finalize()).ok()?;
        Some(Sealer(ring::aead::LessSafeKey::new(key)))
    }

    fn seal(&self, plain: &str) -> Option<Vec<u8>> {
        let nonce: [u8; ring::aead::NONCE_LEN] = rand::random();
        let mut buf = plain.as_bytes().to_vec();
        self.0
            .seal_in_place_append_tag(
                ring::aead::Nonce::assume_unique_for_key(nonce),
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .ok()?;
        let mut out = nonce.to_vec();
        out.extend(buf);
        Some(out)
    }

    fn open(&self, sealed: &[u8]) -> Option<String> {
        if sealed.len() < ring::aead::NONCE_LEN {
            return None;
        }
        let (nonce, rest) = sealed.split_at(ring::aead::NONCE_LEN);
        let mut buf = rest.to_vec();
        let plain = self
            .0
            .open_in_place(
                ring::aead::Nonce::try_assume_unique_for_key(nonce).ok()?,
                ring::aead::Aad::empty(),
                &mut buf,
            )
            .ok()?;
        String::from_utf8(plain.to_vec()).ok()
    }
}

type Client = CoreClient<
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointMaybeSet,
    EndpointMaybeSet,
>;

/// The IdP as discovery found it.
struct Discovered {
    client: Client,
    end_session: Option<String>,
    at: Instant,
}

/// Metadata older than this is fetched again.
const REDISCOVER_AFTER: Duration = Duration::from_secs(3600);
/// A token naming an unknown key fetches the metadata again at most this often.
pub const REDISCOVER_MIN: Duration = Duration::from_secs(5);
/// A sign-in left at the IdP longer than this is given up.
const LOGIN_TTL_SECS: i64 = 600;

/// Why a sign-in or a refresh did not give a role.
#[derive(Debug, thiserror::Error)]
pub enum SsoError {
    /// The IdP could not be reached or answered nonsense: try again later.
    #[error("the identity provider is unavailable: {0}")]
    Unavailable(String),
    /// The IdP's answer fails a check (signature, nonce, issuer, audience, expiry).
    #[error("the identity provider's token is invalid: {0}")]
    InvalidToken(String),
    /// The IdP refused (a grant withdrawn, a refresh token no longer valid).
    #[error("the identity provider refused: {0}")]
    Refused(String),
    /// The person's groups map to no role.
    #[error("no Switchboard role for this person's groups")]
    NoRole,
    /// The store could not be reached.
    #[error("the store is unavailable: {}", .0.message)]
    Store(ApiError),
}

impl From<ApiError> for SsoError {
    fn from(e: ApiError) -> Self {
        SsoError::Store(e)
    }
}

impl SsoError {
    /// Whether trying again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, SsoError::Unavailable(_) | SsoError::Store(_))
    }

    /// A short reason for the console and the audit log.
    pub fn reason(&self) -> &'static str {
        match self {
            SsoError::Unavailable(_) => "idp_unavailable",
            SsoError::InvalidToken(_) => "invalid_token",
            SsoError::Refused(_) => "idp_refused",
            SsoError::NoRole => "no_role",
            SsoError::Store(_) => "store_unavailable",
        }
    }
}

/// Who the IdP says signed in.
#[derive(Debug, Clone)]
pub struct Identity {
    pub subject: String,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub groups: Vec<String>,
}

/// What a refresh found.
#[derive(Debug)]
pub struct Refreshed {
    /// The role the groups map to now; `None` when the IdP did not say (no ID token).
    pub role: Option<Role>,
    pub refresh_token: Option<String>,
}

/// The single sign-on client: configuration, the discovered IdP, the HTTP client.
pub struct Sso {
    pub config: SsoConfig,
    issuer: IssuerUrl,
    redirect: RedirectUrl,
    post_logout: String,
    http: openidconnect::reqwest::Client,
    discovered: RwLock<Option<Arc<Discovered>>>,
    sealer: Sealer,
}

impl std::fmt::Debug for Sso {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sso")
            .field("issuer", &self.config.issuer)
            .field("client_id", &self.config.client_id)
            .finish()
    }
}

impl Sso {
    /// The client for `config` (validated here), sending people back to `public_url`.
    pub fn new(config: SsoConfig, public_url: &str) -> Result<Sso, SsoConfigError> {
        config.validate()?;
        let base = public_url.trim_end_matches('/');
        let redirect = if config.redirect_url.is_empty() {
            format!("{base}/auth/sso/callback")
        } else {
            config.redirect_url.clone()
        };
        let post_logout = if config.post_logout_url.is_empty() {
            format!("{base}/console/")
        } else {
            config.post_logout_url.clone()
        };
        let secret = config
            .client_secret
            .as_ref()
            .map(|s| s.expose().to_string())
            .unwrap_or_default();
        let http = openidconnect::reqwest::Client::builder()
            // The IdP's endpoints answer themselves; a redirect is not followed (SSRF).
            .redirect(openidconnect::reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .map_err(|e| bad("issuer", e.to_string()))?;
        Ok(Sso {
            issuer: IssuerUrl::new(config.issuer.clone())
                .map_err(|e| bad("issuer", e.to_string()))?,
            redirect: RedirectUrl::new(redirect).map_err(|e| bad("redirect_url", e.to_string()))?,
            post_logout,
            http,
            discovered: RwLock::new(None),
            sealer: Sealer::new(&secret).ok_or_else(|| bad("client_secret", "unusable"))?,
            config,
        })
    }

    /// The IdP's metadata: cached, fetched again when older than an hour or when `stale` (a
    /// token named a key it lacks) and the last fetch is older than [`REDISCOVER_MIN`].
    async fn discovered(&self, stale: bool) -> Result<Arc<Discovered>, SsoError> {
        if let Some(d) = self.discovered.read().await.as_ref() {
            let age = d.at.elapsed();
            if age < REDISCOVER_AFTER && (!stale || age < REDISCOVER_MIN) {
                return Ok(d.clone());
            }
        }
        let mut slot = self.discovered.write().await;
        if let Some(d) = slot.as_ref() {
            // Another request fetched it meanwhile.
            if d.at.elapsed() < REDISCOVER_MIN {
                return Ok(d.clone());
            }
        }
        let meta = match ProviderMetadataWithLogout::discover_async(self.issuer.clone(), &self.http)
            .await
        {
            Ok(m) => m,
            Err(e) => {
                let e = SsoError::Unavailable(error_chain(&e));
                // What was discovered before stays in use, asked again in a minute, not on
                // every request behind this lock.
                if let Some(old) = slot.as_ref() {
                    tracing::warn!(error = %e, "identity provider discovery failed, keeping what was discovered before");
                    let kept = Arc::new(Discovered {
                        client: old.client.clone(),
                        end_session: old.end_session.clone(),
                        at: Instant::now()
                            .checked_sub(REDISCOVER_AFTER - Duration::from_secs(60))
                            .unwrap_or_else(Instant::now),
                    });
                    *slot = Some(kept.clone());
                    return Ok(kept);
                }
                return Err(e);
            }
        };
        let end_session = meta
            .additional_metadata()
            .end_session_endpoint
            .as_ref()
            .map(|u| u.url().to_string());
        let client = CoreClient::from_provider_metadata(
            meta,
            ClientId::new(self.config.client_id.clone()),
            self.config
                .client_secret
                .as_ref()
                .map(|s| ClientSecret::new(s.expose().to_string())),
        )
        .set_redirect_uri(self.redirect.clone());
        let d = Arc::new(Discovered {
            client,
            end_session,
            at: Instant::now(),
        });
        tracing::info!(issuer = %self.config.issuer, "identity provider discovered");
        *slot = Some(d.clone());
        Ok(d)
    }

    /// Where to send the browser to sign in, and what to keep until it comes back.
    async fn start(&self) -> Result<(url::Url, String, String, String), SsoError> {
        let d = self.discovered(false).await?;
        let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
        let state = sessions::random_secret();
        let nonce = sessions::random_secret();
        let (s, n) = (state.clone(), nonce.clone());
        let mut req = d
            .client
            .authorize_url(
                AuthenticationFlow::<CoreResponseType>::AuthorizationCode,
                move || CsrfToken::new(s),
                move || Nonce::new(n),
            )
            .set_pkce_challenge(challenge);
        for scope in &self.config.scopes {
            if scope != "openid" {
                req = req.add_scope(Scope::new(scope.clone()));
            }
        }
        let (url, _, _) = req.url();
        Ok((url, state, nonce, verifier.secret().clone()))
    }

    /// The verified ID token's identity; `nonce`: the one the sign-in sent (none on refresh,
    /// where `subject` must stay the same).
    fn identity(
        &self,
        d: &Discovered,
        token: &CoreIdToken,
        nonce: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Identity, ClaimsFailure> {
        let verifier = d.client.id_token_verifier();
        let claims = match nonce {
            Some(n) => token.claims(&verifier, &Nonce::new(n.to_string())),
            None => token.claims(&verifier, |_: Option<&Nonce>| Ok(())),
        };
        let claims = claims.map_err(|e| match e {
            openidconnect::ClaimsVerificationError::SignatureVerification(
                openidconnect::SignatureVerificationError::NoMatchingKey,
            ) => ClaimsFailure::UnknownKey,
            e => ClaimsFailure::Invalid(error_chain(&e)),
        })?;
        let sub = claims.subject().as_str().to_string();
        // OIDC caps `sub` at 255 ASCII characters; anything else is not a subject we store.
        if sub.is_empty() || sub.len() > 255 || sub.chars().any(char::is_control) {
            return Err(ClaimsFailure::Invalid(
                "the subject is empty, too long or has control characters".into(),
            ));
        }
        if subject.is_some_and(|s| s != sub) {
            return Err(ClaimsFailure::Invalid(
                "the subject changed on refresh".into(),
            ));
        }
        // The signature over these bytes was just checked: its payload is the IdP's word.
        let raw = payload(&token.to_string()).unwrap_or_default();
        Ok(Identity {
            subject: sub,
            email: claims.email().map(|e| e.as_str().to_string()),
            email_verified: claims.email_verified().unwrap_or(false),
            name: claims
                .name()
                .and_then(|n| n.get(None))
                .map(|n| n.as_str().to_string()),
            groups: groups_of(&raw, &self.config.groups_claim),
        })
    }

    /// Checks `token`'s ID token, fetching the IdP's keys again once if it names an unknown one.
    async fn verified(
        &self,
        d: Arc<Discovered>,
        token: &CoreTokenResponse,
        nonce: Option<&str>,
        subject: Option<&str>,
    ) -> Result<Identity, SsoError> {
        let id_token = token
            .id_token()
            .ok_or_else(|| SsoError::InvalidToken("no ID token in the answer".into()))?;
        match self.identity(&d, id_token, nonce, subject) {
            Ok(i) => Ok(i),
            Err(ClaimsFailure::UnknownKey) => {
                tracing::info!(issuer = %self.config.issuer, "id token signed with an unknown key, fetching the keys again");
                let fresh = self.discovered(true).await?;
                match self.identity(&fresh, id_token, nonce, subject) {
                    Ok(i) => Ok(i),
                    // Still unknown (or the keys were fetched too recently to fetch again): the
                    // IdP may be mid-rotation; try again later rather than sign anyone out.
                    Err(ClaimsFailure::UnknownKey) => {
                        Err(SsoError::Unavailable(ClaimsFailure::UnknownKey.to_string()))
                    }
                    Err(e) => Err(SsoError::InvalidToken(e.to_string())),
                }
            }
            Err(e) => Err(SsoError::InvalidToken(e.to_string())),
        }
    }

    /// Exchanges the code (with its PKCE verifier) and checks the ID token against `nonce`.
    async fn finish(
        &self,
        code: String,
        verifier: String,
        nonce: &str,
    ) -> Result<(Identity, CoreTokenResponse), SsoError> {
        let d = self.discovered(false).await?;
        let token = d
            .client
            .exchange_code(AuthorizationCode::new(code))
            .map_err(|e| SsoError::Unavailable(e.to_string()))?
            .set_pkce_verifier(PkceCodeVerifier::new(verifier))
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let identity = self.verified(d, &token, Some(nonce), None).await?;
        Ok((identity, token))
    }

    /// Asks the IdP again with the sealed refresh token: the person's role now (`None`: the
    /// IdP sent no ID token with the new tokens, as OpenID Connect allows, so the role stays).
    pub async fn refresh(&self, sealed: &[u8], subject: &str) -> Result<Refreshed, SsoError> {
        let refresh = self
            .sealer
            .open(sealed)
            .ok_or_else(|| SsoError::Refused("the stored refresh token cannot be opened".into()))?;
        let d = self.discovered(false).await?;
        let token = d
            .client
            .exchange_refresh_token(&RefreshToken::new(refresh))
            .map_err(|e| SsoError::Unavailable(e.to_string()))?
            .request_async(&self.http)
            .await
            .map_err(token_error)?;
        let refresh_token = token.refresh_token().map(|t| t.secret().clone());
        if token.id_token().is_none() {
            return Ok(Refreshed {
                role: None,
                refresh_token,
            });
        }
        let identity = self.verified(d, &token, None, Some(subject)).await?;
        let (role, _) =
            map_groups(&self.config.mappings, &identity.groups).ok_or(SsoError::NoRole)?;
        Ok(Refreshed {
            role: Some(role),
            refresh_token,
        })
    }

    /// `refresh` sealed for storage.
    pub fn seal(&self, refresh: &str) -> Option<Vec<u8>> {
        self.sealer.seal(refresh)
    }

    /// The IdP's end-session URL for `id_token`, if it has one.
    async fn logout_url(&self, id_token: Option<&str>) -> Option<String> {
        let d = self.discovered(false).await.ok()?;
        let end = d.end_session.as_ref()?;
        let mut url = url::Url::parse(end).ok()?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(t) = id_token {
                q.append_pair("id_token_hint", t);
            }
            q.append_pair("client_id", &self.config.client_id);
            if PostLogoutRedirectUrl::new(self.post_logout.clone()).is_ok() {
                q.append_pair("post_logout_redirect_uri", &self.post_logout);
            }
        }
        Some(url.to_string())
    }
}

/// Why an ID token's claims were refused.
#[derive(Debug, thiserror::Error)]
enum ClaimsFailure {
    #[error("signed with a key the identity provider does not list")]
    UnknownKey,
    #[error("{0}")]
    Invalid(String),
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

fn token_error<RE, T>(e: openidconnect::RequestTokenError<RE, T>) -> SsoError
where
    RE: std::error::Error + 'static,
    T: openidconnect::ErrorResponse + 'static,
{
    match e {
        openidconnect::RequestTokenError::ServerResponse(r) => {
            let text = r.to_string();
            // The IdP's own trouble (RFC 6749 error codes) is no verdict on the person.
            if text.starts_with("temporarily_unavailable") || text.starts_with("server_error") {
                SsoError::Unavailable(text)
            } else {
                SsoError::Refused(text)
            }
        }
        other => SsoError::Unavailable(error_chain(&other)),
    }
}

pub(crate) fn public_routes() -> Router<Api> {
    Router::new()
        .route("/auth/config", get(config))
        .route("/auth/sso/login", get(login))
        .route("/auth/sso/callback", get(callback))
        .route("/auth/logout", post(logout))
}

/// `GET /auth/config`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuthConfig {
    /// Whether people sign in with single sign-on.
    pub sso: bool,
    /// Where the sign-in button goes.
    pub login_url: Option<String>,
    pub button_label: Option<String>,
}

#[utoipa::path(get, path = "/auth/config", tag = "access", responses((status = 200, body = AuthConfig)))]
async fn config(State(api): State<Api>) -> Json<AuthConfig> {
    let sso = api.auth.sso();
    Json(AuthConfig {
        sso: sso.is_some(),
        login_url: sso.map(|_| "/auth/sso/login".to_string()),
        button_label: sso.map(|s| s.config.button_label.clone()),
    })
}

/// `GET /auth/sso/login` query.
#[derive(Debug, Deserialize)]
struct LoginQuery {
    return_to: Option<String>,
}

fn refused(reason: &str) -> Response {
    Redirect::to(&format!("/console/?sso_error={reason}")).into_response()
}

/// The cookie binding a sign-in to the browser that started it.
pub const BINDER_COOKIE: &str = "sb_sso";

async fn login(State(api): State<Api>, Query(q): Query<LoginQuery>) -> Response {
    let Some(sso) = api.auth.sso() else {
        return ApiError::not_found("single sign-on is not configured").into_response();
    };
    let (url, state, nonce, verifier) = match sso.start().await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a sign-in");
            return refused(e.reason());
        }
    };
    let binder = sessions::random_secret();
    let stored = sqlx::query(
        "WITH gone AS (DELETE FROM sso_logins WHERE created_at < now() - make_interval(secs => $6))
         INSERT INTO sso_logins (state_sha256, nonce, pkce_verifier, return_to, created_at, binder_sha256)
         VALUES ($1, $2, $3, $4, $5, $7)",
    )
    .bind(sessions::digest(&state))
    .bind(&nonce)
    .bind(&verifier)
    .bind(safe_return_to(q.return_to.as_deref()))
    .bind(chrono::Utc::now())
    .bind(LOGIN_TTL_SECS as f64)
    .bind(sessions::digest(&binder))
    .execute(&api.pool)
    .await;
    if let Err(e) = stored {
        tracing::warn!(error = %e, "cannot store a sign-in");
        return refused("store_unavailable");
    }
    let mut resp = Redirect::to(url.as_str()).into_response();
    let h = resp.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.append(
        header::SET_COOKIE,
        sessions::set_cookie(
            BINDER_COOKIE,
            &binder,
            LOGIN_TTL_SECS,
            true,
            sso.config.cookie_secure,
        ),
    );
    resp
}

/// A sign-in waiting for its callback: nonce, PKCE verifier, `return_to`, binder digest.
type Pending = (String, String, String, Vec<u8>);

/// What the IdP sends back.
#[derive(Debug, Deserialize)]
struct CallbackQuery {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    iss: Option<String>,
}

/// The request's caller for the audit log before anyone has signed in.
fn visitor(headers: &HeaderMap, peer: audit::Peer, who: Principal, label: String) -> Actor {
    Actor {
        who,
        ip: peer.0.map(|ip| ip.to_string()),
        user_agent: audit::user_agent(headers),
        label: Some(label),
    }
}

async fn callback(
    State(api): State<Api>,
    peer: audit::Peer,
    headers: HeaderMap,
    Query(q): Query<CallbackQuery>,
) -> Response {
    let Some(sso) = api.auth.sso().cloned() else {
        return ApiError::not_found("single sign-on is not configured").into_response();
    };
    let nobody = Principal {
        role: Role::Agent,
        agent_id: None,
        token_id: None,
        session_id: None,
    };
    let anon = visitor(&headers, peer, nobody, "sso".into());
    let refuse = |reason: &'static str, detail: String| {
        let api = api.clone();
        let actor = anon.clone();
        async move {
            tracing::warn!(reason, detail = %detail, "sign-in refused");
            if let Ok(mut conn) = api.pool.acquire().await {
                let _ = audit::record(
                    &mut conn,
                    &actor,
                    Entry {
                        action: "sso.refused",
                        subject: "sso".into(),
                        ticket_id: None,
                        before: None,
                        after: Some(serde_json::json!({ "reason": reason, "detail": detail.chars().take(500).collect::<String>() })),
                    },
                )
                .await;
            }
            refused(reason)
        }
    };
    if let Some(e) = q.error {
        let e: String = e.chars().filter(|c| !c.is_control()).take(200).collect();
        return refuse("idp_refused", e).await;
    }
    let (Some(code), Some(state)) = (q.code, q.state) else {
        return refuse("bad_callback", "code or state missing".into()).await;
    };
    if q.iss
        .as_deref()
        .is_some_and(|iss| iss != sso.issuer.as_str())
    {
        return refuse("bad_callback", "the answer names another issuer".into()).await;
    }
    if code.len() > 4096 || state.len() > 512 {
        return refuse("bad_callback", "code or state too long".into()).await;
    }
    // One use: the row goes whatever happens next.
    let pending: Result<Option<Pending>, _> = sqlx::query_as(
        "DELETE FROM sso_logins WHERE state_sha256 = $1 AND created_at > now() - make_interval(secs => $2)
         RETURNING nonce, pkce_verifier, return_to, binder_sha256",
    )
    .bind(sessions::digest(&state))
    .bind(LOGIN_TTL_SECS as f64)
    .fetch_optional(&api.pool)
    .await;
    let (nonce, verifier, return_to) = match pending {
        // Only the browser that started this sign-in may finish it.
        Ok(Some((n, v, r, binder)))
            if sessions::cookie(&headers, BINDER_COOKIE)
                .is_some_and(|b| sessions::digest(b) == binder) =>
        {
            (n, v, r)
        }
        Ok(Some(_)) => {
            return refuse(
                "unknown_state",
                "the sign-in was started in another browser (binder cookie missing or wrong)"
                    .into(),
            )
            .await
        }
        Ok(None) => {
            return refuse(
                "unknown_state",
                "no sign-in is waiting for this state (used, expired or forged)".into(),
            )
            .await
        }
        Err(e) => return refuse("store_unavailable", e.to_string()).await,
    };
    let (identity, token) = match sso.finish(code, verifier, &nonce).await {
        Ok(r) => r,
        Err(e) => return refuse(e.reason(), e.to_string()).await,
    };
    let Some((role, mapping)) = map_groups(&sso.config.mappings, &identity.groups) else {
        return refuse("no_role", format!("groups {:?}", identity.groups)).await;
    };
    match sign_in(&api, &sso, &anon, &identity, role, mapping, &token).await {
        Ok(created) => {
            let secure = sso.config.cookie_secure;
            let age = i64::from(sso.config.absolute_secs);
            let mut resp = Redirect::to(&return_to).into_response();
            let h = resp.headers_mut();
            h.append(
                header::SET_COOKIE,
                sessions::set_cookie(sessions::SESSION_COOKIE, &created.secret, age, true, secure),
            );
            h.append(
                header::SET_COOKIE,
                sessions::set_cookie(sessions::CSRF_COOKIE, &created.csrf, age, false, secure),
            );
            h.append(
                header::SET_COOKIE,
                sessions::set_cookie(BINDER_COOKIE, "", 0, true, secure),
            );
            h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            resp
        }
        Err(SignInError::Deactivated) => {
            refuse("deactivated", format!("subject {}", identity.subject)).await
        }
        Err(SignInError::Api(e)) => refuse("store_unavailable", e.message).await,
    }
}

#[derive(Debug)]
enum SignInError {
    Deactivated,
    Api(ApiError),
}

impl From<ApiError> for SignInError {
    fn from(e: ApiError) -> Self {
        SignInError::Api(e)
    }
}

impl From<sqlx::Error> for SignInError {
    fn from(e: sqlx::Error) -> Self {
        SignInError::Api(e.into())
    }
}

/// Finds (or links, or provisions) the person's agent and opens a session, in one transaction.
async fn sign_in(
    api: &Api,
    sso: &Sso,
    anon: &Actor,
    identity: &Identity,
    role: Role,
    mapping: &GroupMapping,
    token: &CoreTokenResponse,
) -> Result<sessions::Created, SignInError> {
    let issuer = sso.config.issuer.as_str();
    let mut tx = api.pool.begin().await?;
    // Two first sign-ins of one person at once provision one agent.
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 16))")
        .bind(format!("{issuer}\n{}", identity.subject))
        .execute(&mut *tx)
        .await?;
    let known: Option<Uuid> = sqlx::query_scalar(
        "SELECT agent_id FROM agent_identities WHERE issuer = $1 AND subject = $2",
    )
    .bind(issuer)
    .bind(&identity.subject)
    .fetch_optional(&mut *tx)
    .await?;
    let mut actor = anon.clone();
    actor.label = Some(format!(
        "sso:{}",
        identity.subject.chars().take(200).collect::<String>()
    ));
    let agent = match known {
        Some(a) => a,
        None => {
            // Linked by email only when the IdP vouches for it, and only to an agent no other
            // identity holds (one person, one agent).
            let by_email: Option<Uuid> = match (&identity.email, identity.email_verified) {
                (Some(e), true) => {
                    sqlx::query_scalar(
                        "SELECT a.id FROM agents a WHERE lower(a.email) = lower($1)
                           AND NOT EXISTS (SELECT 1 FROM agent_identities i WHERE i.agent_id = a.id)
                         ORDER BY a.id LIMIT 1",
                    )
                    .bind(e)
                    .fetch_optional(&mut *tx)
                    .await?
                }
                _ => None,
            };
            let agent = match by_email {
                Some(a) => a,
                None => provision(&mut tx, &actor, identity, mapping).await?,
            };
            sqlx::query(
                "INSERT INTO agent_identities (issuer, subject, agent_id, created_at) VALUES ($1, $2, $3, now())",
            )
            .bind(issuer)
            .bind(&identity.subject)
            .bind(agent)
            .execute(&mut *tx)
            .await?;
            audit::record(
                &mut tx,
                &actor,
                Entry {
                    action: "identity.linked",
                    subject: format!("agent:{agent}"),
                    ticket_id: None,
                    before: None,
                    after: Some(serde_json::json!({ "issuer": issuer, "subject": identity.subject, "by_email": by_email.is_some() })),
                },
            )
            .await?;
            agent
        }
    };
    let deactivated: Option<bool> =
        // Shared lock: a deactivation (which locks the row) either saw this session or waits.
        sqlx::query_scalar("SELECT deactivated_at IS NOT NULL FROM agents WHERE id = $1 FOR SHARE")
            .bind(agent)
            .fetch_optional(&mut *tx)
            .await?;
    if deactivated != Some(false) {
        return Err(SignInError::Deactivated);
    }
    actor.who = Principal {
        role,
        agent_id: Some(agent),
        token_id: None,
        session_id: None,
    };
    actor.label = None;
    let created = sessions::create(
        &mut tx,
        &actor,
        NewSession {
            agent_id: agent,
            role,
            issuer: issuer.to_string(),
            subject: identity.subject.clone(),
            idle_secs: i32::try_from(sso.config.idle_secs).unwrap_or(i32::MAX),
            absolute_secs: i64::from(sso.config.absolute_secs),
            refresh_token_sealed: token.refresh_token().and_then(|t| sso.seal(t.secret())),
            id_token: token.id_token().map(|t| t.to_string()),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(created)
}

/// A new agent from the IdP's word and the mapping's defaults.
async fn provision(
    conn: &mut sqlx::PgConnection,
    actor: &Actor,
    identity: &Identity,
    mapping: &GroupMapping,
) -> Result<Uuid, SignInError> {
    // An address the IdP has not verified is not stored: nobody can claim a colleague's address
    // at the IdP and have it linked to them later.
    let email = identity
        .email
        .clone()
        .filter(|_| identity.email_verified)
        .unwrap_or_else(|| {
            format!(
                "{}@sso.invalid",
                Uuid::new_v5(&Uuid::NAMESPACE_OID, identity.subject.as_bytes()).simple()
            )
        });
    let name = identity
        .name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| email.split('@').next().unwrap_or("agent").to_string());
    let req = crate::agents::NewAgent {
        name: name.chars().filter(|c| !c.is_control()).take(200).collect(),
        email,
        skills: mapping.skills.clone(),
        languages: mapping.languages.clone(),
        max_concurrent: mapping.max_concurrent.unwrap_or(5),
        level: None,
        timezone: None,
        shift_start: None,
        shift_end: None,
        skill_levels: Default::default(),
        channel_capacity: Default::default(),
    };
    let id = crate::agents::create_agent(conn, actor, req).await?;
    if let Some(team) = &mapping.team {
        let joined = sqlx::query(
            "INSERT INTO team_members (team_id, agent_id) SELECT id, $2 FROM teams WHERE name = $1
             ON CONFLICT DO NOTHING",
        )
        .bind(team)
        .bind(id)
        .execute(&mut *conn)
        .await?;
        if joined.rows_affected() == 0 {
            tracing::warn!(team = %team, agent_id = %id, "sso mapping names a team that does not exist, skipped");
        }
    }
    tracing::info!(agent_id = %id, "agent provisioned by single sign-on");
    Ok(id)
}

/// `POST /auth/logout` answer.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LoggedOut {
    /// The IdP's end-session URL (sign out there too), if it has one.
    pub logout_url: Option<String>,
}

/// `POST /auth/logout`: ends the caller's session (it needs its CSRF token like any change).
#[utoipa::path(post, path = "/auth/logout", tag = "access", responses((status = 200, body = LoggedOut), (status = 401, description = "no live session"), (status = 403, description = "the CSRF token is missing or wrong")))]
async fn logout(State(api): State<Api>, peer: audit::Peer, headers: HeaderMap) -> Response {
    let Some(secret) = sessions::cookie(&headers, sessions::SESSION_COOKIE) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no session")
            .into_response();
    };
    let live = match sessions::find(&api.pool, secret).await {
        Ok(Some(l)) => l,
        Ok(None) => {
            return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no live session")
                .into_response()
        }
        Err(e) => return e.into_response(),
    };
    if let Err(e) = crate::auth::check_csrf(&headers, &live) {
        return e.into_response();
    }
    let Some(role) = Role::parse(&live.role) else {
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", "no live session")
            .into_response();
    };
    let who = Principal {
        role,
        agent_id: Some(live.agent_id),
        token_id: None,
        session_id: Some(live.id),
    };
    let mut actor = visitor(&headers, peer, who, String::new());
    actor.label = None;
    let result: Result<Option<String>, ApiError> = async {
        let mut tx = api.pool.begin().await?;
        let id_token: Option<String> =
            sqlx::query_scalar("SELECT id_token FROM sessions WHERE id = $1")
                .bind(live.id)
                .fetch_one(&mut *tx)
                .await?;
        sessions::revoke(&mut tx, &actor, live.id, "signed_out").await?;
        tx.commit().await?;
        Ok(id_token)
    }
    .await;
    let id_token = match result {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let logout_url = match api.auth.sso() {
        Some(sso) => sso.logout_url(id_token.as_deref()).await,
        None => None,
    };
    let secure = api.auth.sso().is_none_or(|s| s.config.cookie_secure);
    let mut resp = Json(LoggedOut { logout_url }).into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        sessions::set_cookie(sessions::SESSION_COOKIE, "", 0, true, secure),
    );
    h.append(
        header::SET_COOKIE,
        sessions::set_cookie(sessions::CSRF_COOKIE, "", 0, false, secure),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mapping(group: &str, role: &str, team: Option<&str>) -> GroupMapping {
        GroupMapping {
            group: group.into(),
            role: role.into(),
            team: team.map(str::to_string),
            skills: vec![],
            languages: vec![],
            max_concurrent: None,
        }
    }

    #[test]
    fn the_highest_role_wins_and_the_first_group_gives_the_defaults() {
        let m = vec![
            mapping("support", "agent", Some("Tier 1")),
            mapping("leads", "supervisor", Some("Tier 2")),
            mapping("it", "admin", None),
        ];
        let g = |gs: &[&str]| gs.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (role, first) = map_groups(&m, &g(&["leads", "support"])).unwrap();
        assert_eq!(role, Role::Supervisor);
        assert_eq!(first.team.as_deref(), Some("Tier 1"));
        assert_eq!(map_groups(&m, &g(&["it"])).unwrap().0, Role::Admin);
        assert!(map_groups(&m, &g(&["marketing"])).is_none());
        assert!(map_groups(&m, &[]).is_none());
        // Group names match exactly: no prefix, no case folding.
        assert!(map_groups(&m, &g(&["Support", "support-x"])).is_none());
    }

    #[test]
    fn groups_are_read_as_a_list_or_one_string_and_bounded() {
        let v = serde_json::json!({"groups": ["a", 3, "b", null], "one": "x", "bad": {"a": 1}});
        assert_eq!(groups_of(&v, "groups"), vec!["a", "b"]);
        assert_eq!(groups_of(&v, "one"), vec!["x"]);
        assert!(groups_of(&v, "bad").is_empty());
        assert!(groups_of(&v, "missing").is_empty());
        let many =
            serde_json::json!({"groups": (0..5000).map(|i| i.to_string()).collect::<Vec<_>>()});
        assert_eq!(groups_of(&many, "groups").len(), 1000);
        let huge = serde_json::json!({"groups": ["x".repeat(300), "ok"]});
        assert_eq!(groups_of(&huge, "groups"), vec!["ok"]);
    }

    #[test]
    fn return_to_stays_on_this_site() {
        for (raw, want) in [
            (Some("/console/#t=1"), "/console/#t=1"),
            (Some("/console/?x=%2F%2F"), "/console/?x=%2F%2F"),
            (Some("//evil.example/x"), "/console/"),
            (Some("/\\evil.example"), "/console/"),
            (Some("https://evil.example"), "/console/"),
            (Some("/a\nb"), "/console/"),
            (Some("/caf\u{e9}"), "/console/"),
            (Some("/a b"), "/console/"),
            (Some(""), "/console/"),
            (None, "/console/"),
        ] {
            assert_eq!(safe_return_to(raw), want, "{raw:?}");
        }
        assert_eq!(
            safe_return_to(Some(&format!("/{}", "a".repeat(600)))),
            "/console/"
        );
    }

    #[test]
    fn sealed_refresh_tokens_open_only_with_the_same_secret_and_untouched() {
        let s = Sealer::new("secret one").unwrap();
        let sealed = s.seal("refresh-token-\u{e9}").unwrap();
        assert_eq!(s.open(&sealed).as_deref(), Some("refresh-token-\u{e9}"));
        assert_ne!(
            sealed,
            s.seal("refresh-token-\u{e9}").unwrap(),
            "a fresh nonce each time"
        );
        assert!(Sealer::new("secret two").unwrap().open(&sealed).is_none());
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(s.open(&flipped).is_none());
        assert!(s.open(&sealed[..5]).is_none());
        assert!(s.open(&[]).is_none());
    }

    #[test]
    fn config_is_checked_key_by_key() {
        let ok = SsoConfig {
            issuer: "https://idp.example.com".into(),
            client_id: "switchboard".into(),
            client_secret: Some(Secret::new("s3cret")),
            mappings: vec![mapping("support", "agent", None)],
            ..SsoConfig::default()
        };
        assert!(ok.validate().is_ok());
        assert!(SsoConfig::default().validate().is_ok(), "off is fine");
        let field = |c: SsoConfig| c.validate().unwrap_err().field;
        assert_eq!(
            field(SsoConfig {
                client_secret: None,
                ..ok.clone()
            }),
            "client_secret"
        );
        assert_eq!(
            field(SsoConfig {
                issuer: "not a url".into(),
                ..ok.clone()
            }),
            "issuer"
        );
        assert_eq!(
            field(SsoConfig {
                mappings: vec![],
                ..ok.clone()
            }),
            "mappings"
        );
        assert_eq!(
            field(SsoConfig {
                mappings: vec![mapping("g", "root", None)],
                ..ok.clone()
            }),
            "mappings[0].role"
        );
        assert_eq!(
            field(SsoConfig {
                idle_secs: 10,
                ..ok.clone()
            }),
            "idle_secs"
        );
        let parsed: Result<SsoConfig, _> = serde_json::from_str(r#"{"issuer": "x", "nope": 1}"#);
        assert!(parsed.is_err(), "unknown keys are refused");
    }

    #[test]
    fn a_jwt_payload_is_read_without_panicking_on_junk() {
        use base64::Engine as _;
        let p = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"groups":["a"]}"#);
        assert_eq!(payload(&format!("h.{p}.s")).unwrap()["groups"][0], "a");
        for junk in ["", ".", "a.b.c", "a.\u{e9}.c", "a..c"] {
            assert!(payload(junk).is_none(), "{junk:?}");
        }
    }
}
