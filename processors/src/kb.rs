//! The knowledge base: articles in Qdrant, searched by meaning and by keywords at once.
//!
//! Each article is one point with two vectors: the sentence embedding of its question and title
//! (dense, cosine) and a BM25 sparse vector of its whole text (IDF applied by Qdrant). A search
//! runs both and fuses the rankings (reciprocal rank fusion), so an exact product or policy word
//! counts as much as a paraphrase. The bot's confidence is the cosine similarity of the best
//! fused hit, which is calibrated where rank fusion scores are not.
//!
//! [`KnowledgeBase`] is the seam: [`EdgeKb`] runs Qdrant in process (qdrant-edge) under the
//! data directory and is the default; [`ServerKb`] talks to a Qdrant server through qdrant-client
//! when `services.qdrant.url` is set (the collection `<prefix>kb`, the same vectors, payload and
//! fusion; BM25 vectors are computed here in both cases, so the two rank alike).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;
use qdrant_edge::bm25_embed::{EdgeBm25, EdgeBm25Config};
use qdrant_edge::external::ordered_float::OrderedFloat;
use qdrant_edge::{
    Distance, EdgeConfig, EdgeShard, EdgeSparseVectorParams, EdgeVectorParamsBuilder, Fusion,
    Modifier, NamedQuery, PointId, PointInsertOperations, PointOperations, PointStruct, Prefetch,
    QueryEnum, QueryRequest, ScoringQuery, UpdateOperation, VectorInternal, VectorStructInternal,
    Vectors, WithPayloadInterface, WithVector,
};
use serde::{Deserialize, Serialize};
use switchboard_core::Error;
use uuid::Uuid;

/// The knowledge base and its bot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KbConfig {
    pub enabled: bool,
    /// Articles loaded into an empty knowledge base at start (JSON lines).
    pub seed_file: PathBuf,
    /// The bot answers when the best article's similarity is at least this.
    pub answer_threshold: f32,
    /// Suggestions attached to every new ticket for the agent.
    pub suggestions: usize,
    /// Channels the bot answers on (it never answers where no reply can go back). A list, or
    /// one comma-separated string (so the environment can set it).
    #[serde(deserialize_with = "switchboard_core::config::string_list")]
    pub bot_channels: Vec<String>,
    /// A bot answer with no customer reply for this long counts as resolved by the bot.
    pub bot_resolve_after_secs: u64,
    /// Reply drafts from solved tickets (their own index beside the articles').
    pub drafts: crate::drafts::DraftsConfig,
}

impl Default for KbConfig {
    fn default() -> Self {
        KbConfig {
            enabled: true,
            seed_file: PathBuf::from("processors/kb/helpcentre.jsonl"),
            answer_threshold: 0.8,
            suggestions: 3,
            bot_channels: vec!["chat".into(), "email".into(), "sms".into(), "social".into()],
            bot_resolve_after_secs: 86_400,
            drafts: crate::drafts::DraftsConfig::default(),
        }
    }
}

const DENSE: &str = "dense";
const SPARSE: &str = "bm25";

/// An article.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Article {
    pub id: Uuid,
    pub title: String,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub intent: Option<String>,
    /// A question the article answers (embedded with the title).
    #[serde(default)]
    pub question: Option<String>,
    pub body: String,
    #[serde(default)]
    pub source: Option<String>,
    /// The Postgres revision this copy was indexed from (none: not from Postgres yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<i64>,
}

impl Article {
    /// The text the dense vector is made of.
    pub fn semantic_text(&self) -> String {
        match &self.question {
            Some(q) => format!("{}. {q}", self.title),
            None => self.title.clone(),
        }
    }

    /// The text the keyword vector is made of.
    pub fn keyword_text(&self) -> String {
        format!(
            "{} {} {}",
            self.title,
            self.question.as_deref().unwrap_or_default(),
            self.body
        )
    }

    /// The body as sent, before the shop's facts fill its `{{shop.*}}` placeholders.
    pub fn answer_text(&self) -> String {
        self.body.replace("\r\n", "\n")
    }
}

/// One search result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hit {
    pub article_id: Uuid,
    pub title: String,
    /// Cosine similarity of the query to the article (the bot's confidence).
    pub similarity: f32,
    /// The fused rank score.
    pub score: f32,
}

/// A boxed future of the knowledge base.
pub type KbFuture<'a, T> = futures::future::BoxFuture<'a, Result<T, Error>>;

/// Where articles are stored and searched.
pub trait KnowledgeBase: Send + Sync + std::fmt::Debug {
    /// Inserts or replaces articles with their dense embeddings (same order).
    fn upsert<'a>(
        &'a self,
        articles: &'a [Article],
        embeddings: &'a [Vec<f32>],
        encoder: &'a str,
    ) -> KbFuture<'a, ()>;
    /// Hybrid search; `embedding` must come from the encoder the index was built with.
    fn search<'a>(
        &'a self,
        embedding: &'a [f32],
        text: &'a str,
        limit: usize,
    ) -> KbFuture<'a, Vec<Hit>>;
    fn get(&self, id: Uuid) -> KbFuture<'_, Option<Article>>;
    fn delete(&self, id: Uuid) -> KbFuture<'_, ()>;
    fn count(&self) -> KbFuture<'_, usize>;
    /// Every article (for re-embedding with a new encoder).
    fn all(&self) -> KbFuture<'_, Vec<Article>>;
    /// The encoder version the stored embeddings came from (None: empty).
    fn encoder(&self) -> KbFuture<'_, Option<String>>;
}

/// Qdrant in process.
pub struct EdgeKb {
    path: PathBuf,
    shard: EdgeShard,
    bm25: EdgeBm25,
    encoder: Mutex<Option<String>>,
}

impl std::fmt::Debug for EdgeKb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeKb").field("path", &self.path).finish()
    }
}

fn vector_error(e: impl std::fmt::Display) -> Error {
    Error::VectorStore(e.to_string())
}

impl EdgeKb {
    /// Opens (or creates) the store at `path` for embeddings of `dim` dimensions.
    pub fn open(path: &Path, dim: usize) -> Result<EdgeKb, Error> {
        std::fs::create_dir_all(path).map_err(vector_error)?;
        let config = EdgeConfig {
            vectors: [(
                DENSE.to_string(),
                EdgeVectorParamsBuilder::new(dim, Distance::Cosine).build(),
            )]
            .into_iter()
            .collect(),
            sparse_vectors: [(
                SPARSE.to_string(),
                EdgeSparseVectorParams {
                    modifier: Some(Modifier::Idf),
                    ..Default::default()
                },
            )]
            .into_iter()
            .collect(),
            ..Default::default()
        };
        let shard = if path.join("segments").exists() {
            EdgeShard::load(path, Some(config)).map_err(vector_error)?
        } else {
            EdgeShard::new(path, config).map_err(vector_error)?
        };
        let bm25 = EdgeBm25::new(EdgeBm25Config {
            language: Some("english".into()),
            ..Default::default()
        })
        .map_err(vector_error)?;
        let encoder = std::fs::read_to_string(path.join("encoder.txt"))
            .ok()
            .map(|s| s.trim().to_string());
        Ok(EdgeKb {
            path: path.to_path_buf(),
            shard,
            bm25,
            encoder: Mutex::new(encoder),
        })
    }

    fn article_of(payload: &serde_json::Map<String, serde_json::Value>) -> Option<Article> {
        serde_json::from_value(payload.get("article")?.clone()).ok()
    }
}

impl EdgeKb {
    fn upsert_sync(
        &self,
        articles: &[Article],
        embeddings: &[Vec<f32>],
        encoder: &str,
    ) -> Result<(), Error> {
        if articles.len() != embeddings.len() {
            return Err(Error::Invalid("one embedding per article".into()));
        }
        let points = articles
            .iter()
            .zip(embeddings)
            .map(|(a, e)| {
                let payload = serde_json::json!({
                    "article": a,
                    "category": a.category,
                    "intent": a.intent,
                    "encoder": encoder,
                });
                PointStruct::new(
                    PointId::Uuid(a.id),
                    Vectors::new_named([
                        (DENSE, qdrant_edge::Vector::from(e.clone())),
                        (
                            SPARSE,
                            qdrant_edge::Vector::from(self.bm25.embed_document(&a.keyword_text())),
                        ),
                    ]),
                    payload,
                )
                .into()
            })
            .collect();
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::UpsertPoints(PointInsertOperations::PointsList(points)),
            ))
            .map_err(vector_error)?;
        self.shard.flush();
        std::fs::write(self.path.join("encoder.txt"), encoder).map_err(vector_error)?;
        *self.encoder.lock() = Some(encoder.to_string());
        Ok(())
    }

    fn search_sync(&self, embedding: &[f32], text: &str, limit: usize) -> Result<Vec<Hit>, Error> {
        let dense = || {
            ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
                query: VectorInternal::from(embedding.to_vec()),
                using: Some(DENSE.to_string()),
            }))
        };
        let prefetch = |query, limit| Prefetch {
            prefetches: vec![],
            query: Some(query),
            limit,
            params: None,
            filter: None,
            score_threshold: None,
        };
        let sparse = ScoringQuery::Vector(QueryEnum::Nearest(NamedQuery {
            query: VectorInternal::from(self.bm25.embed_query(text)),
            using: Some(SPARSE.to_string()),
        }));
        let fused = self
            .shard
            .query(QueryRequest {
                prefetches: vec![prefetch(dense(), limit * 4), prefetch(sparse, limit * 4)],
                query: Some(ScoringQuery::Fusion(Fusion::Rrf {
                    k: 60,
                    // Meaning first: the dense ranking weighs twice the keyword one.
                    weights: Some(vec![OrderedFloat(2.0), OrderedFloat(1.0)]),
                })),
                filter: None,
                score_threshold: None,
                limit,
                offset: 0,
                params: None,
                // The dense vectors come back so the bot's confidence can be the cosine.
                with_vector: WithVector::Bool(true),
                with_payload: WithPayloadInterface::Bool(true),
            })
            .map_err(vector_error)?;
        Ok(fused
            .into_iter()
            .filter_map(|p| {
                let article = Self::article_of(&p.payload.as_ref()?.0)?;
                let similarity = match &p.vector {
                    Some(VectorStructInternal::Named(m)) => match m.get(DENSE) {
                        Some(VectorInternal::Dense(v)) => cosine(embedding, v),
                        _ => 0.0,
                    },
                    _ => 0.0,
                };
                Some(Hit {
                    article_id: article.id,
                    title: article.title,
                    similarity,
                    score: p.score,
                })
            })
            .collect())
    }

    fn get_sync(&self, id: Uuid) -> Result<Option<Article>, Error> {
        let recs = self
            .shard
            .retrieve(
                &[PointId::Uuid(id)],
                Some(WithPayloadInterface::Bool(true)),
                Some(WithVector::Bool(false)),
            )
            .map_err(vector_error)?;
        Ok(recs
            .first()
            .and_then(|r| Self::article_of(&r.payload.as_ref()?.0)))
    }

    fn delete_sync(&self, id: Uuid) -> Result<(), Error> {
        self.shard
            .update(UpdateOperation::PointOperation(
                PointOperations::DeletePoints {
                    ids: vec![PointId::Uuid(id)],
                },
            ))
            .map_err(vector_error)?;
        Ok(())
    }

    fn count_sync(&self) -> Result<usize, Error> {
        Ok(self.shard.info().points_count)
    }

    fn all_sync(&self) -> Result<Vec<Article>, Error> {
        let mut out = Vec::new();
        let mut offset = None;
        loop {
            let (recs, next) = self
                .shard
                .scroll(qdrant_edge::ScrollRequest {
                    offset,
                    limit: Some(256),
                    ..Default::default()
                })
                .map_err(vector_error)?;
            out.extend(
                recs.iter()
                    .filter_map(|r| Self::article_of(&r.payload.as_ref()?.0)),
            );
            match next {
                Some(n) => offset = Some(n),
                None => return Ok(out),
            }
        }
    }
}

// The embedded store works in memory and on local files in microseconds to milliseconds: it runs
// inline rather than on the blocking pool.
impl KnowledgeBase for EdgeKb {
    fn upsert<'a>(
        &'a self,
        articles: &'a [Article],
        embeddings: &'a [Vec<f32>],
        encoder: &'a str,
    ) -> KbFuture<'a, ()> {
        Box::pin(async move { self.upsert_sync(articles, embeddings, encoder) })
    }

    fn search<'a>(
        &'a self,
        embedding: &'a [f32],
        text: &'a str,
        limit: usize,
    ) -> KbFuture<'a, Vec<Hit>> {
        Box::pin(async move { self.search_sync(embedding, text, limit) })
    }

    fn get(&self, id: Uuid) -> KbFuture<'_, Option<Article>> {
        Box::pin(async move { self.get_sync(id) })
    }

    fn delete(&self, id: Uuid) -> KbFuture<'_, ()> {
        Box::pin(async move { self.delete_sync(id) })
    }

    fn count(&self) -> KbFuture<'_, usize> {
        Box::pin(async move { self.count_sync() })
    }

    fn all(&self) -> KbFuture<'_, Vec<Article>> {
        Box::pin(async move { self.all_sync() })
    }

    fn encoder(&self) -> KbFuture<'_, Option<String>> {
        Box::pin(async move { Ok(self.encoder.lock().clone()) })
    }
}

/// A Qdrant server, through qdrant-client (gRPC).
pub struct ServerKb {
    client: qdrant_client::Qdrant,
    collection: String,
    dim: usize,
    bm25: EdgeBm25,
    /// The encoder of the stored vectors: read once at connect, kept by `upsert` (every message
    /// asks for it, so it must not cost a round trip).
    encoder: Mutex<Option<String>>,
}

impl std::fmt::Debug for ServerKb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerKb")
            .field("collection", &self.collection)
            .finish()
    }
}

fn server_error(e: impl std::fmt::Display) -> Error {
    Error::VectorStore(format!("qdrant server: {e}"))
}

impl ServerKb {
    /// Connects and creates the collection (dense cosine `dim` + BM25 sparse with IDF) if missing.
    pub async fn connect(
        url: &str,
        api_key: Option<String>,
        collection: &str,
        dim: usize,
    ) -> Result<ServerKb, Error> {
        use qdrant_client::qdrant::{
            CreateCollectionBuilder, Distance as QDistance, Modifier as QModifier,
            SparseVectorParamsBuilder, SparseVectorsConfigBuilder, VectorParamsBuilder,
            VectorsConfigBuilder,
        };
        let client = qdrant_client::Qdrant::from_url(url)
            .api_key(api_key)
            .build()
            .map_err(server_error)?;
        if !client
            .collection_exists(collection)
            .await
            .map_err(server_error)?
        {
            let mut vectors = VectorsConfigBuilder::default();
            vectors.add_named_vector_params(
                DENSE,
                VectorParamsBuilder::new(dim as u64, QDistance::Cosine),
            );
            let mut sparse = SparseVectorsConfigBuilder::default();
            sparse.add_named_vector_params(
                SPARSE,
                SparseVectorParamsBuilder::default().modifier(QModifier::Idf as i32),
            );
            client
                .create_collection(
                    CreateCollectionBuilder::new(collection)
                        .vectors_config(vectors)
                        .sparse_vectors_config(sparse),
                )
                .await
                .map_err(server_error)?;
        }
        let bm25 = EdgeBm25::new(EdgeBm25Config {
            language: Some("english".into()),
            ..Default::default()
        })
        .map_err(vector_error)?;
        let encoder = Self::stored_encoder(&client, collection).await?;
        Ok(ServerKb {
            client,
            collection: collection.to_string(),
            dim,
            bm25,
            encoder: Mutex::new(encoder),
        })
    }

    /// The encoder named in the payload of a stored article, if any.
    async fn stored_encoder(
        client: &qdrant_client::Qdrant,
        collection: &str,
    ) -> Result<Option<String>, Error> {
        use qdrant_client::qdrant::ScrollPointsBuilder;
        let r = client
            .scroll(
                ScrollPointsBuilder::new(collection)
                    .limit(1)
                    .with_payload(true),
            )
            .await
            .map_err(server_error)?;
        Ok(r.result
            .first()
            .and_then(|p| match p.payload.get("encoder")?.kind.as_ref()? {
                qdrant_client::qdrant::value::Kind::StringValue(s) => Some(s.clone()),
                _ => None,
            }))
    }

    fn article_of(
        payload: &std::collections::HashMap<String, qdrant_client::qdrant::Value>,
    ) -> Option<Article> {
        let v = serde_json::to_value(payload.get("article")?.clone()).ok()?;
        serde_json::from_value(v).ok()
    }
}

impl KnowledgeBase for ServerKb {
    fn upsert<'a>(
        &'a self,
        articles: &'a [Article],
        embeddings: &'a [Vec<f32>],
        encoder: &'a str,
    ) -> KbFuture<'a, ()> {
        Box::pin(async move {
            use qdrant_client::qdrant::{
                NamedVectors, PointStruct as QPoint, UpsertPointsBuilder, Vector as QVector,
            };
            if articles.len() != embeddings.len() {
                return Err(Error::Invalid("one embedding per article".into()));
            }
            let mut points = Vec::with_capacity(articles.len());
            for (a, e) in articles.iter().zip(embeddings) {
                if e.len() != self.dim {
                    return Err(Error::Invalid(format!(
                        "embedding of {} dimensions, the collection has {}",
                        e.len(),
                        self.dim
                    )));
                }
                let sparse = self.bm25.embed_document(&a.keyword_text());
                let vectors = NamedVectors::default()
                    .add_vector(DENSE, QVector::new_dense(e.clone()))
                    .add_vector(SPARSE, QVector::new_sparse(sparse.indices, sparse.values));
                let payload = serde_json::json!({
                    "article": a, "category": a.category, "intent": a.intent, "encoder": encoder,
                });
                let payload = qdrant_client::Payload::try_from(payload).map_err(server_error)?;
                points.push(QPoint::new(a.id.to_string(), vectors, payload));
            }
            self.client
                .upsert_points(UpsertPointsBuilder::new(&self.collection, points).wait(true))
                .await
                .map_err(server_error)?;
            *self.encoder.lock() = Some(encoder.to_string());
            Ok(())
        })
    }

    fn search<'a>(
        &'a self,
        embedding: &'a [f32],
        text: &'a str,
        limit: usize,
    ) -> KbFuture<'a, Vec<Hit>> {
        Box::pin(async move {
            use qdrant_client::qdrant::{
                Fusion as QFusion, PrefetchQueryBuilder, Query, QueryPointsBuilder, VectorInput,
            };
            let sparse = self.bm25.embed_query(text);
            let request = QueryPointsBuilder::new(&self.collection)
                .add_prefetch(
                    PrefetchQueryBuilder::default()
                        .query(Query::new_nearest(VectorInput::new_dense(
                            embedding.to_vec(),
                        )))
                        .using(DENSE)
                        .limit((limit * 4) as u64),
                )
                .add_prefetch(
                    PrefetchQueryBuilder::default()
                        .query(Query::new_nearest(VectorInput::new_sparse(
                            sparse.indices,
                            sparse.values,
                        )))
                        .using(SPARSE)
                        .limit((limit * 4) as u64),
                )
                .query(Query::new_fusion(QFusion::Rrf))
                .limit(limit as u64)
                .with_payload(true)
                .with_vectors(true);
            let found = self.client.query(request).await.map_err(server_error)?;
            Ok(found
                .result
                .into_iter()
                .filter_map(|p| {
                    let article = Self::article_of(&p.payload)?;
                    let similarity =
                        match p.vectors.as_ref().and_then(|v| v.get_vector_by_name(DENSE)) {
                            Some(qdrant_client::qdrant::vector_output::Vector::Dense(d)) => {
                                cosine(embedding, &d.data)
                            }
                            _ => 0.0,
                        };
                    Some(Hit {
                        article_id: article.id,
                        title: article.title,
                        similarity,
                        score: p.score,
                    })
                })
                .collect())
        })
    }

    fn get(&self, id: Uuid) -> KbFuture<'_, Option<Article>> {
        Box::pin(async move {
            use qdrant_client::qdrant::GetPointsBuilder;
            let r = self
                .client
                .get_points(
                    GetPointsBuilder::new(&self.collection, vec![id.to_string().into()])
                        .with_payload(true),
                )
                .await
                .map_err(server_error)?;
            Ok(r.result.first().and_then(|p| Self::article_of(&p.payload)))
        })
    }

    fn delete(&self, id: Uuid) -> KbFuture<'_, ()> {
        Box::pin(async move {
            use qdrant_client::qdrant::{DeletePointsBuilder, PointsIdsList};
            self.client
                .delete_points(
                    DeletePointsBuilder::new(&self.collection)
                        .points(PointsIdsList {
                            ids: vec![id.to_string().into()],
                        })
                        .wait(true),
                )
                .await
                .map_err(server_error)?;
            Ok(())
        })
    }

    fn count(&self) -> KbFuture<'_, usize> {
        Box::pin(async move {
            use qdrant_client::qdrant::CountPointsBuilder;
            let r = self
                .client
                .count(CountPointsBuilder::new(&self.collection).exact(true))
                .await
                .map_err(server_error)?;
            Ok(r.result.map_or(0, |c| c.count as usize))
        })
    }

    fn all(&self) -> KbFuture<'_, Vec<Article>> {
        Box::pin(async move {
            use qdrant_client::qdrant::ScrollPointsBuilder;
            let mut out = Vec::new();
            let mut offset = None;
            loop {
                let mut req = ScrollPointsBuilder::new(&self.collection)
                    .limit(256)
                    .with_payload(true);
                if let Some(o) = offset.take() {
                    req = req.offset(o);
                }
                let r = self.client.scroll(req).await.map_err(server_error)?;
                out.extend(r.result.iter().filter_map(|p| Self::article_of(&p.payload)));
                match r.next_page_offset {
                    Some(n) => offset = Some(n),
                    None => return Ok(out),
                }
            }
        })
    }

    fn encoder(&self) -> KbFuture<'_, Option<String>> {
        Box::pin(async move { Ok(self.encoder.lock().clone()) })
    }
}

/// Loads `seed` (JSON lines) into Postgres when the knowledge base has never had an article
/// (deleted ones are tombstones, so deleting every article does not bring the seed back).
/// Returns how many were added. Safe to run from many instances at once.
pub async fn seed_articles(pool: &sqlx::PgPool, seed: &Path) -> Result<u64, Error> {
    let any: Option<i32> = sqlx::query_scalar("SELECT 1 FROM kb_articles LIMIT 1")
        .fetch_optional(pool)
        .await?;
    if any.is_some() {
        return Ok(0);
    }
    let mut added = 0;
    let mut tx = pool.begin().await?;
    for a in read_articles(seed)? {
        added += sqlx::query(
            "INSERT INTO kb_articles (id, title, category, intent, question, body, source)
             VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (id) DO NOTHING",
        )
        .bind(a.id)
        .bind(&a.title)
        .bind(&a.category)
        .bind(&a.intent)
        .bind(&a.question)
        .bind(&a.body)
        .bind(&a.source)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    }
    tx.commit().await?;
    Ok(added)
}

/// Keeps one vector index in step with the articles in Postgres.
#[derive(Debug)]
pub struct IndexSync {
    kb: SharedKb,
    pool: sqlx::PgPool,
    /// The highest revision and the encoder the index was last brought up to.
    synced: Mutex<Option<(i64, String)>>,
}

/// What one sync changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncReport {
    pub embedded: usize,
    pub removed: usize,
}

impl IndexSync {
    pub fn new(kb: SharedKb, pool: sqlx::PgPool) -> Self {
        IndexSync {
            kb,
            pool,
            synced: Mutex::new(None),
        }
    }

    /// Brings the index up to Postgres for `predictor`'s encoder: embeds the published articles
    /// whose revision the index lacks (every one when the encoder changed: a model hot swap)
    /// and removes the rest. Cheap when nothing changed (one `max(revision)` query).
    pub async fn sync(
        &self,
        predictor: &switchboard_models::predictor::Predictor,
    ) -> Result<SyncReport, Error> {
        let encoder = encoder_version(predictor);
        let head: Option<i64> = sqlx::query_scalar("SELECT max(revision) FROM kb_articles")
            .fetch_one(&self.pool)
            .await?;
        let head = head.unwrap_or(0);
        if self.synced.lock().as_ref() == Some(&(head, encoder.clone())) {
            return Ok(SyncReport::default());
        }
        let rows = sqlx::query(
            "SELECT id, title, category, intent, question, body, source, revision FROM kb_articles
             WHERE deleted_at IS NULL AND published",
        )
        .fetch_all(&self.pool)
        .await?;
        let mut live = Vec::with_capacity(rows.len());
        for r in rows {
            use sqlx::Row;
            live.push(Article {
                id: r.try_get("id")?,
                title: r.try_get("title")?,
                category: r.try_get("category")?,
                intent: r.try_get("intent")?,
                question: r.try_get("question")?,
                body: r.try_get("body")?,
                source: r.try_get("source")?,
                revision: Some(r.try_get("revision")?),
            });
        }
        let same_encoder = self.kb.encoder().await?.as_deref() == Some(encoder.as_str());
        let indexed: std::collections::HashMap<Uuid, Option<i64>> = if same_encoder {
            self.kb
                .all()
                .await?
                .into_iter()
                .map(|a| (a.id, a.revision))
                .collect()
        } else {
            Default::default()
        };
        let live_ids: std::collections::HashSet<Uuid> = live.iter().map(|a| a.id).collect();
        let stale: Vec<Article> = live
            .into_iter()
            .filter(|a| indexed.get(&a.id) != Some(&a.revision))
            .collect();
        let mut report = SyncReport::default();
        // Everything the index holds that Postgres no longer publishes (also, with a new encoder,
        // leftovers the store never listed).
        let gone: Vec<Uuid> = if same_encoder {
            indexed
                .keys()
                .filter(|id| !live_ids.contains(id))
                .copied()
                .collect()
        } else {
            self.kb
                .all()
                .await?
                .into_iter()
                .map(|a| a.id)
                .filter(|id| !live_ids.contains(id))
                .collect()
        };
        for id in gone {
            self.kb.delete(id).await?;
            report.removed += 1;
        }
        report.embedded += embed_and_upsert(
            &*self.kb,
            predictor,
            &stale,
            Article::semantic_text,
            &encoder,
        )
        .await?;
        if report != SyncReport::default() {
            tracing::info!(
                embedded = report.embedded,
                removed = report.removed,
                revision = head,
                encoder = encoder.as_str(),
                "knowledge base index synced"
            );
        }
        *self.synced.lock() = Some((head, encoder));
        Ok(report)
    }

    /// Syncs every `every` until shutdown (failures are logged and retried next time).
    pub async fn run(
        self: Arc<Self>,
        predictor: switchboard_models::predictor::Predictor,
        every: std::time::Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        while switchboard_core::runtime::pause(every, &shutdown).await {
            if let Err(e) = self.sync(&predictor).await {
                tracing::warn!(error = %e, "knowledge base sync failed");
            }
        }
    }
}

/// The encoder version `predictor` embeds with (empty without one): what an index built from
/// its embeddings is stamped with.
pub fn encoder_version(predictor: &switchboard_models::predictor::Predictor) -> String {
    predictor
        .versions()
        .get("encoder")
        .cloned()
        .unwrap_or_default()
}

/// Embeds `articles` (the text `text` gives of each) with `predictor` and upserts them into
/// `kb` under `encoder`, 64 at a time: how many. Stops at the first failure (the chunks before it
/// stay upserted; upserting them again is harmless).
pub async fn embed_and_upsert(
    kb: &dyn KnowledgeBase,
    predictor: &switchboard_models::predictor::Predictor,
    articles: &[Article],
    text: fn(&Article) -> String,
    encoder: &str,
) -> Result<usize, Error> {
    let mut done = 0;
    for chunk in articles.chunks(64) {
        let embeddings: Vec<Vec<f32>> = predictor
            .predict_many(chunk.iter().map(text).collect())
            .await
            .map_err(|e| Error::VectorStore(format!("cannot embed: {e}")))?
            .into_iter()
            .map(|p| p.embedding)
            .collect();
        kb.upsert(chunk, &embeddings, encoder).await?;
        done += chunk.len();
    }
    Ok(done)
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let (mut dot, mut na, mut nb) = (0.0f32, 0.0f32, 0.0f32);
    for (x, y) in a.iter().zip(b) {
        dot += x * y;
        na += x * x;
        nb += y * y;
    }
    if na == 0.0 || nb == 0.0 {
        0.0
    } else {
        dot / (na.sqrt() * nb.sqrt())
    }
}

/// Reads a JSON-lines article file, naming the line of a bad record.
pub fn read_articles(path: &Path) -> Result<Vec<Article>, Error> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| Error::Invalid(format!("cannot read {}: {e}", path.display())))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l)
                .map_err(|e| Error::Invalid(format!("{}:{}: {e}", path.display(), i + 1)))
        })
        .collect()
}

/// A shared handle.
pub type SharedKb = Arc<dyn KnowledgeBase>;
