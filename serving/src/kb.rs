//! Knowledge-base articles: the record in Postgres (`kb_articles`), edited here and searched by
//! keywords (Postgres full text, English stemming, title over question over body). Every
//! processors instance keeps its vector index in step with this table by revision
//! (`switchboard_processors::kb::IndexSync`), so an article written here is suggested to agents
//! and used by the bot within seconds.
//!
//! - `GET /v1/kb/articles?q=&category=&cursor=&limit=` (any role): search, or list by id.
//! - `GET /v1/kb/articles/{id}`; `POST`, `PUT /v1/kb/articles/{id}` (with the `version` read,
//!   409 when someone changed it since) and `DELETE` (supervisors).
//! - Customers: `GET /help` (the search page), `GET /help/search?q=` and
//!   `GET /help/articles/{id}`: published articles only, no token.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use switchboard_core::http::{ApiError, ApiJson, ApiQuery};
use uuid::Uuid;

use crate::audit::{self, Actor, Entry};
use crate::auth::{Principal, Role};
use crate::{parse_id, Api};

pub(crate) fn routes() -> Router<Api> {
    Router::new()
        .route("/v1/kb/articles", get(list).post(create))
        .route("/v1/kb/articles/{id}", get(read).put(update).delete(remove))
}

pub(crate) fn public_routes() -> Router<Api> {
    Router::new()
        .route("/help", get(|| async { crate::pages::serve("help.html") }))
        .route("/help/search", get(public_search))
        .route("/help/articles/{id}", get(public_read))
}

/// An article as agents and supervisors see it.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KbArticle {
    pub id: Uuid,
    pub title: String,
    pub category: Option<String>,
    pub intent: Option<String>,
    /// A question the article answers (weighs in the search and the bot's matching).
    pub question: Option<String>,
    pub body: String,
    pub source: Option<String>,
    /// Unpublished articles are neither shown to customers nor used by the bot.
    pub published: bool,
    /// Send it back on update; a stale one is refused (409).
    pub version: i64,
    pub updated_at: DateTime<Utc>,
    /// The body as a customer reads it, the shop's facts filled in (when read one by one): what
    /// an agent inserts into a reply.
    #[sqlx(skip)]
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub answer: Option<String>,
}

/// A search result.
#[derive(Debug, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct KbHit {
    pub id: Uuid,
    pub title: String,
    pub category: Option<String>,
    /// The matching passage, plain text.
    pub snippet: String,
    /// Full-text rank (higher is better; 0 when listing without a query).
    pub rank: f32,
}

/// A page of articles.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct KbPage {
    pub items: Vec<KbHit>,
    /// Pass as `cursor` for the next page (listing only; a search returns its best `limit`).
    pub next_cursor: Option<String>,
}

/// An article to create, or the changed article (with the `version` it was read at).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct KbArticleInput {
    pub title: String,
    pub body: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub intent: Option<String>,
    #[serde(default)]
    pub question: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default = "yes")]
    pub published: bool,
    /// Required on update (the version read), absent on create.
    #[serde(default)]
    pub version: Option<i64>,
}

fn yes() -> bool {
    true
}

fn optional(v: &Option<String>, field: &str, max: usize) -> Result<(), ApiError> {
    match v {
        Some(s) if s.trim().is_empty() || s.len() > max => Err(ApiError::field(
            field,
            format!("1 to {max} bytes when given"),
        )),
        _ => Ok(()),
    }
}

impl KbArticleInput {
    fn check(&self) -> Result<(), ApiError> {
        if self.title.trim().is_empty() || self.title.len() > 200 {
            return Err(ApiError::field("title", "1 to 200 bytes"));
        }
        if self.body.trim().is_empty() || self.body.len() > 64 * 1024 {
            return Err(ApiError::field("body", "1 byte to 64 KiB"));
        }
        optional(&self.question, "question", 500)?;
        optional(&self.source, "source", 500)?;
        for (v, field) in [(&self.category, "category"), (&self.intent, "intent")] {
            optional(v, field, 64)?;
            if v.as_deref().is_some_and(|c| {
                !c.chars()
                    .all(|ch| ch.is_ascii_alphanumeric() || ch == '_' || ch == '-')
            }) {
                return Err(ApiError::field(field, "letters, digits, '_' and '-' only"));
            }
        }
        Ok(())
    }
}

/// `GET /v1/kb/articles` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct KbSearch {
    /// Words to search for (web-search syntax: `"exact phrase"`, `-word`, `or`).
    pub q: Option<String>,
    pub category: Option<String>,
    /// From the previous page's `next_cursor` (listing without `q`).
    pub cursor: Option<String>,
    /// 1 to 100 (default 20).
    pub limit: Option<i64>,
}

/// `GET /help/search` query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct HelpSearch {
    pub q: String,
}

const COLUMNS: &str =
    "id, title, category, intent, question, body, source, published, version, updated_at";

fn query_text(q: Option<String>) -> Result<Option<String>, ApiError> {
    let q = q.map(|q| q.trim().to_string()).filter(|q| !q.is_empty());
    if q.as_ref().is_some_and(|q| q.len() > 200) {
        return Err(ApiError::field("q", "at most 200 bytes"));
    }
    Ok(q)
}

/// The best `limit` articles for `q` (published only when `public`).
async fn search(
    pool: &PgPool,
    q: &str,
    category: Option<&str>,
    limit: i64,
    public: bool,
) -> Result<Vec<KbHit>, ApiError> {
    Ok(sqlx::query_as(
        "SELECT id, title, category,
                ts_headline('english', body, query,
                            'StartSel=\"\", StopSel=\"\", MaxWords=30, MinWords=12, MaxFragments=1') AS snippet,
                ts_rank_cd(search, query)::real AS rank
         FROM kb_articles, websearch_to_tsquery('english', $1) AS query
         WHERE deleted_at IS NULL AND search @@ query
           AND ($2::text IS NULL OR category = $2)
           AND (published OR NOT $4)
         ORDER BY rank DESC, id LIMIT $3",
    )
    .bind(q)
    .bind(category)
    .bind(limit)
    .bind(public)
    .fetch_all(pool)
    .await?)
}

#[utoipa::path(get, path = "/v1/kb/articles", operation_id = "list_articles", tag = "knowledge base", params(KbSearch), responses((status = 200, body = KbPage), (status = 400, description = "a bad query field, named")), security(("bearer" = [])))]
async fn list(
    State(api): State<Api>,
    _who: Principal,
    ApiQuery(s): ApiQuery<KbSearch>,
) -> Result<Json<KbPage>, ApiError> {
    let limit = s.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::field("limit", "1 to 100"));
    }
    let q = query_text(s.q)?;
    if q.is_some() && s.cursor.is_some() {
        return Err(ApiError::field(
            "cursor",
            "a search returns its best results in one page",
        ));
    }
    if let Some(q) = q {
        let items = search(&api.pool, &q, s.category.as_deref(), limit, false).await?;
        return Ok(Json(KbPage {
            items,
            next_cursor: None,
        }));
    }
    let after = s
        .cursor
        .as_deref()
        .map(|c| parse_id(c, "cursor"))
        .transpose()?;
    let items: Vec<KbHit> = sqlx::query_as(
        "SELECT id, title, category, left(body, 200) AS snippet, 0::real AS rank FROM kb_articles
         WHERE deleted_at IS NULL AND ($1::uuid IS NULL OR id > $1) AND ($2::text IS NULL OR category = $2)
         ORDER BY id LIMIT $3",
    )
    .bind(after)
    .bind(s.category.as_deref())
    .bind(limit)
    .fetch_all(&api.pool)
    .await?;
    let next_cursor = (items.len() as i64 == limit)
        .then(|| items.last().map(|h| h.id.to_string()))
        .flatten();
    Ok(Json(KbPage { items, next_cursor }))
}

async fn fetch(pool: &PgPool, id: Uuid, public: bool) -> Result<KbArticle, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM kb_articles WHERE id = $1 AND deleted_at IS NULL AND (published OR NOT $2)"
    ))
    .bind(id)
    .bind(public)
    .fetch_optional(pool)
    .await?
    .ok_or_else(|| ApiError::not_found("no such article"))
}

#[utoipa::path(get, path = "/v1/kb/articles/{id}", operation_id = "read_article", tag = "knowledge base", params(("id" = Uuid, Path)), responses((status = 200, body = KbArticle), (status = 404, description = "no such article")), security(("bearer" = [])))]
async fn read(
    State(api): State<Api>,
    _who: Principal,
    Path(id): Path<String>,
) -> Result<Json<KbArticle>, ApiError> {
    let mut a = fetch(&api.pool, parse_id(&id, "id")?, false).await?;
    a.answer = Some(plain(&api.shop, &a.body));
    Ok(Json(a))
}

/// An article's audit entry: what identifies it, not its body (the article keeps its own text).
fn article_entry(action: &'static str, a: &KbArticle) -> Entry {
    Entry::config(
        action,
        format!("kb_article:{}", a.id),
        None::<()>,
        Some(
            serde_json::json!({ "title": a.title, "version": a.version, "published": a.published }),
        ),
    )
}

#[utoipa::path(post, path = "/v1/kb/articles", operation_id = "create_article", tag = "knowledge base", request_body = KbArticleInput, responses((status = 201, body = KbArticle), (status = 400, description = "a bad field, named"), (status = 403, description = "supervisors only")), security(("bearer" = [])))]
async fn create(
    State(api): State<Api>,
    actor: Actor,
    ApiJson(a): ApiJson<KbArticleInput>,
) -> Result<(StatusCode, Json<KbArticle>), ApiError> {
    let who = actor.who;
    who.require(Role::Supervisor)?;
    a.check()?;
    if a.version.is_some() {
        return Err(ApiError::field("version", "only on update"));
    }
    let mut tx = api.pool.begin().await?;
    let row: KbArticle = sqlx::query_as(&format!(
        "INSERT INTO kb_articles (id, title, body, category, intent, question, source, published)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {COLUMNS}"
    ))
    .bind(Uuid::now_v7())
    .bind(a.title.trim())
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.intent)
    .bind(&a.question)
    .bind(&a.source)
    .bind(a.published)
    .fetch_one(&mut *tx)
    .await?;
    audit::commit_with(tx, &actor, article_entry("kb_article.created", &row)).await?;
    tracing::info!(article_id = %row.id, role = ?who.role, "knowledge base article created");
    Ok((StatusCode::CREATED, Json(row)))
}

#[utoipa::path(put, path = "/v1/kb/articles/{id}", operation_id = "update_article", tag = "knowledge base", params(("id" = Uuid, Path)), request_body = KbArticleInput, responses((status = 200, body = KbArticle), (status = 400, description = "a bad field, named"), (status = 403, description = "supervisors only"), (status = 404, description = "no such article"), (status = 409, description = "changed since `version` was read")), security(("bearer" = [])))]
async fn update(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
    ApiJson(a): ApiJson<KbArticleInput>,
) -> Result<Json<KbArticle>, ApiError> {
    actor.who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    a.check()?;
    let version = a
        .version
        .ok_or_else(|| ApiError::field("version", "required: the version you read"))?;
    let mut tx = api.pool.begin().await?;
    let row: Option<KbArticle> = sqlx::query_as(&format!(
        "UPDATE kb_articles SET title = $3, body = $4, category = $5, intent = $6, question = $7,
                source = $8, published = $9, version = version + 1,
                revision = nextval('kb_revision'), updated_at = $10
         WHERE id = $1 AND version = $2 AND deleted_at IS NULL RETURNING {COLUMNS}"
    ))
    .bind(id)
    .bind(version)
    .bind(a.title.trim())
    .bind(&a.body)
    .bind(&a.category)
    .bind(&a.intent)
    .bind(&a.question)
    .bind(&a.source)
    .bind(a.published)
    .bind(switchboard_core::clock::now())
    .fetch_optional(&mut *tx)
    .await?;
    match row {
        Some(r) => {
            audit::commit_with(tx, &actor, article_entry("kb_article.updated", &r)).await?;
            Ok(Json(r))
        }
        None => {
            let current = fetch(&api.pool, id, false).await?;
            Err(ApiError {
                field: Some("version".into()),
                ..ApiError::new(
                    StatusCode::CONFLICT,
                    "conflict",
                    format!(
                        "the article is at version {}; read it again and reapply the change",
                        current.version
                    ),
                )
            })
        }
    }
}

#[utoipa::path(delete, path = "/v1/kb/articles/{id}", operation_id = "delete_article", tag = "knowledge base", params(("id" = Uuid, Path)), responses((status = 204, description = "deleted (the bot stops using it within seconds)"), (status = 403, description = "supervisors only"), (status = 404, description = "no such article")), security(("bearer" = [])))]
async fn remove(
    State(api): State<Api>,
    actor: Actor,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let who = actor.who;
    who.require(Role::Supervisor)?;
    let id = parse_id(&id, "id")?;
    let mut tx = api.pool.begin().await?;
    let r = sqlx::query(
        "UPDATE kb_articles SET deleted_at = $2, revision = nextval('kb_revision'), updated_at = $2
         WHERE id = $1 AND deleted_at IS NULL",
    )
    .bind(id)
    .bind(switchboard_core::clock::now())
    .execute(&mut *tx)
    .await?;
    if r.rows_affected() == 0 {
        return Err(ApiError::not_found("no such article"));
    }
    let entry = Entry::config(
        "kb_article.deleted",
        format!("kb_article:{id}"),
        None::<()>,
        None::<()>,
    );
    audit::commit_with(tx, &actor, entry).await?;
    tracing::info!(article_id = %id, role = ?who.role, "knowledge base article deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// An article as customers see it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HelpArticle {
    pub id: Uuid,
    pub title: String,
    /// Plain text, the shop's facts filled in.
    pub body: String,
}

#[utoipa::path(get, path = "/help/search", tag = "self-service", params(HelpSearch), responses((status = 200, body = [KbHit]), (status = 400, description = "no or too long `q`")))]
async fn public_search(
    State(api): State<Api>,
    ApiQuery(s): ApiQuery<HelpSearch>,
) -> Result<Json<Vec<KbHit>>, ApiError> {
    let q = query_text(Some(s.q))?.ok_or_else(|| ApiError::field("q", "words to search for"))?;
    let mut hits = search(&api.pool, &q, None, 10, true).await?;
    for h in &mut hits {
        h.snippet = plain(&api.shop, &h.snippet);
    }
    Ok(Json(hits))
}

#[utoipa::path(get, path = "/help/articles/{id}", tag = "self-service", params(("id" = Uuid, Path)), responses((status = 200, body = HelpArticle), (status = 404, description = "no such published article")))]
async fn public_read(
    State(api): State<Api>,
    Path(id): Path<String>,
) -> Result<Json<HelpArticle>, ApiError> {
    let a = fetch(&api.pool, parse_id(&id, "id")?, true).await?;
    Ok(Json(HelpArticle {
        id: a.id,
        title: a.title,
        body: plain(&api.shop, &a.body),
    }))
}

/// An article as customers read it: the shop's facts in its `{{shop.*}}` placeholders (any
/// other placeholder shown as its words).
fn plain(shop: &switchboard_tickets::shop::ShopConfig, text: &str) -> String {
    shop.fill_or_words(&text.replace("\r\n", "\n"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(title: &str, body: &str) -> KbArticleInput {
        KbArticleInput {
            title: title.into(),
            body: body.into(),
            category: None,
            intent: None,
            question: None,
            source: None,
            published: true,
            version: None,
        }
    }

    #[test]
    fn bad_articles_name_the_field() {
        let field = |f: KbArticleInput| f.check().err().and_then(|e| e.field);
        assert_eq!(field(fields(" ", "b")), Some("title".into()));
        assert_eq!(field(fields("t", "")), Some("body".into()));
        assert_eq!(field(fields(&"x".repeat(201), "b")), Some("title".into()));
        let mut f = fields("t", "b");
        f.category = Some("refund; drop".into());
        assert_eq!(field(f), Some("category".into()));
        let mut f = fields("t", "b");
        f.question = Some(String::new());
        assert_eq!(field(f), Some("question".into()));
        assert!(fields("Refunds", "How refunds work").check().is_ok());
    }

    #[test]
    fn unknown_fields_are_refused() {
        assert!(
            serde_json::from_str::<KbArticleInput>(r#"{"title":"t","body":"b","x":1}"#).is_err()
        );
        let u: KbArticleInput =
            serde_json::from_str(r#"{"version":3,"title":"t","body":"b"}"#).unwrap();
        assert_eq!(u.version, Some(3));
        assert!(u.published);
        let shop = switchboard_tickets::shop::ShopConfig::default();
        assert_eq!(plain(&shop, "see {{Order Number}}"), "see Order Number");
        assert_eq!(
            plain(&shop, "mail {{shop.support_email}}"),
            "mail help@shop.example.com"
        );
    }
}
