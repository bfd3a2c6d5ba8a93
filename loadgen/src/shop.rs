//! A stand-in for a shop's Admin API (a third party's SaaS: Shopify's REST Admin API shapes),
//! for the tests, the simulator and `bench orders`. It holds orders and enforces what the real
//! API enforces: the access token, no refund above what was paid and not yet refunded, no
//! cancel or address change after fulfilment, `Idempotency-Key` replays (the same key answers
//! as the first time and changes nothing). After every change it posts the order to
//! Switchboard's signed order webhook, as a shop does. Failure modes are injected through
//! `/_control/fail`: the next calls answer 429 with `Retry-After`, 5xx, or hang past a timeout.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};

/// The API version in the paths.
pub(crate) const API: &str = "/admin/api/2024-10";

/// `switchboard-sim shop`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ShopArgs {
    /// Where to listen (port 0: any free one; the address is printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    pub(crate) listen: SocketAddr,
    /// The access token callers must send (`X-Shopify-Access-Token`).
    #[arg(long, env = "SHOP_ACCESS_TOKEN")]
    pub(crate) token: String,
    /// Switchboard's order webhook (`http://127.0.0.1:8080/webhooks/orders`); none: not told.
    #[arg(long)]
    pub(crate) webhook: Option<String>,
    /// The webhook's signing secret.
    #[arg(long, env = "SHOP_WEBHOOK_SECRET", default_value = "")]
    pub(crate) secret: String,
}

/// An injected failure for the next admin call.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct Failure {
    /// 429, 500, 503...; 0 with `delay_ms`: hang, then answer normally.
    #[serde(default)]
    pub(crate) status: u16,
    #[serde(default)]
    pub(crate) retry_after: Option<u64>,
    #[serde(default)]
    pub(crate) delay_ms: u64,
    /// How many calls in a row (default 1).
    #[serde(default = "one")]
    pub(crate) times: u32,
}

fn one() -> u32 {
    1
}

#[derive(Default)]
struct Inner {
    orders: HashMap<String, Value>,
    /// Idempotency-Key -> (method and path, status, body).
    replies: HashMap<String, (String, u16, Value)>,
    failures: VecDeque<Failure>,
    /// Admin calls that changed something, per kind.
    applied: HashMap<String, u64>,
    calls: u64,
    /// Ignore `Idempotency-Key` (as a REST Admin API may): a retry acts again.
    ignore_idempotency: bool,
    next_id: u64,
}

/// A call past the gate: its idempotency key, and how late to answer.
pub(crate) struct Gate {
    key: Option<String>,
    late_ms: u64,
}

impl Gate {
    /// Answers `r`, late if a failure said so.
    async fn answer(&self, r: Response) -> Response {
        if self.late_ms > 0 {
            tokio::time::sleep(Duration::from_millis(self.late_ms)).await;
        }
        r
    }
}

/// The stand-in's state.
#[derive(Clone)]
pub(crate) struct Shop {
    inner: Arc<Mutex<Inner>>,
    token: String,
    webhook: Option<(String, String)>,
    http: reqwest::Client,
}

impl Shop {
    pub(crate) fn new(token: String, webhook: Option<(String, String)>) -> Shop {
        Shop {
            inner: Arc::default(),
            token,
            webhook,
            http: reqwest::Client::new(),
        }
    }

    pub(crate) fn router(self) -> Router {
        Router::new()
            .route(&format!("{API}/orders.json"), get(list).post(create))
            .route(&format!("{API}/orders/{{id}}"), get(read).put(update))
            .route(&format!("{API}/orders/{{id}}/cancel.json"), post(cancel))
            .route(
                &format!("{API}/orders/{{id}}/refunds/calculate.json"),
                post(calculate),
            )
            .route(
                &format!("{API}/orders/{{id}}/refunds.json"),
                get(refunds).post(refund),
            )
            .route("/_control/mode", post(mode))
            .route("/_control/orders", post(put_order))
            .route("/_control/fail", post(fail))
            .route("/_control/stats", get(stats))
            .with_state(self)
    }

    /// Adds or replaces an order and tells Switchboard (as `POST /_control/orders`).
    pub(crate) fn put(&self, mut order: Value) {
        let id = order["id"]
            .as_u64()
            .map(|n| n.to_string())
            .or_else(|| order["id"].as_str().map(str::to_string))
            .unwrap_or_default();
        if order["updated_at"].is_null() {
            order["updated_at"] = json!(now());
        }
        self.inner.lock().orders.insert(id, order.clone());
        self.tell(order);
    }

    /// Serves on `listen`: the address it listens on.
    pub(crate) async fn serve(self, listen: SocketAddr) -> anyhow::Result<SocketAddr> {
        let listener = tokio::net::TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, self.router()).await });
        Ok(addr)
    }

    /// Tells Switchboard the order changed (a signed order webhook), in the background.
    fn tell(&self, order: Value) {
        let Some((url, secret)) = self.webhook.clone() else {
            return;
        };
        let http = self.http.clone();
        tokio::spawn(async move {
            let raw = serde_json::to_vec(&order).unwrap_or_default();
            for attempt in 0..5u64 {
                let sent = http
                    .post(&url)
                    .header("content-type", "application/json")
                    .header(
                        "x-shopify-hmac-sha256",
                        switchboard_ingest::orders::sign(&secret, &raw),
                    )
                    .body(raw.clone())
                    .send()
                    .await;
                if sent.is_ok_and(|r| r.status().is_success()) {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(200 * (attempt + 1))).await;
            }
        });
    }

    /// Checks the token, takes an injected failure, and replays a known idempotency key.
    async fn gate(&self, headers: &HeaderMap, what: &str) -> Result<Gate, Response> {
        let token = headers
            .get("x-shopify-access-token")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default();
        if token != self.token {
            return Err(shopify_error(
                StatusCode::UNAUTHORIZED,
                "[API] Invalid API key or access token",
            ));
        }
        // Injected failures hit the calls that change something (a read goes through).
        let mutating = !matches!(what, "read" | "calculate");
        let failure = {
            let mut inner = self.inner.lock();
            inner.calls += 1;
            if !mutating {
                drop(inner);
                return Ok(Gate {
                    key: None,
                    late_ms: 0,
                });
            }
            let f = inner.failures.front_mut().map(|f| {
                f.times = f.times.saturating_sub(1);
                f.clone()
            });
            if inner.failures.front().is_some_and(|f| f.times == 0) {
                inner.failures.pop_front();
            }
            f
        };
        let mut late_ms = 0;
        if let Some(f) = failure {
            // A failure status answers after the delay; none: the call is applied, and the
            // answer comes that late (a caller that gave up has still been served).
            if f.status < 400 {
                late_ms = f.delay_ms;
            } else if f.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
            }
            if f.status >= 400 {
                let mut r = shopify_error(
                    StatusCode::from_u16(f.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                    "Exceeded 2 calls per second for api client. Reduce request rates to resume uninterrupted service.",
                )
                .into_response();
                if let Some(s) = f.retry_after {
                    r.headers_mut().insert(
                        "retry-after",
                        axum::http::HeaderValue::from_str(&s.to_string())
                            .unwrap_or(axum::http::HeaderValue::from_static("1")),
                    );
                }
                return Err(r);
            }
        }
        let key = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let key = key.filter(|_| !self.inner.lock().ignore_idempotency);
        if let Some(k) = &key {
            if let Some((w, status, body)) = self.inner.lock().replies.get(k).cloned() {
                if w == what {
                    return Err((
                        StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
                        Json(body),
                    )
                        .into_response());
                }
                return Err(shopify_error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Idempotency-Key was used for another request",
                ));
            }
        }
        Ok(Gate { key, late_ms })
    }

    /// Remembers the answer to `key` and counts what was applied.
    fn done(
        &self,
        key: Option<String>,
        what: &str,
        kind: &str,
        status: StatusCode,
        body: Value,
    ) -> Response {
        let mut inner = self.inner.lock();
        if let Some(k) = key {
            inner
                .replies
                .insert(k, (what.to_string(), status.as_u16(), body.clone()));
        }
        if status.is_success() {
            *inner.applied.entry(kind.to_string()).or_default() += 1;
        }
        (status, Json(body)).into_response()
    }
}

fn shopify_error(status: StatusCode, errors: &str) -> Response {
    (status, Json(json!({ "errors": errors }))).into_response()
}

fn cents(v: &Value) -> i64 {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        _ => return 0,
    };
    switchboard_ingest::orders::cents(&s).unwrap_or(0)
}

fn money(c: i64) -> String {
    format!("{}.{:02}", c / 100, c % 100)
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

fn shipped(o: &Value) -> bool {
    o["fulfillment_status"]
        .as_str()
        .is_some_and(|s| s == "fulfilled" || s == "partial")
        || o["fulfillments"].as_array().is_some_and(|f| !f.is_empty())
}

fn refunded(o: &Value) -> i64 {
    o["refunds"]
        .as_array()
        .map(|r| r.iter().map(|x| cents(&x["amount"])).sum())
        .unwrap_or(0)
}

fn order_id(id: &str) -> String {
    id.trim_end_matches(".json").to_string()
}

async fn read(State(shop): State<Shop>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = shop.gate(&headers, "read").await {
        return r;
    }
    match shop.inner.lock().orders.get(&order_id(&id)) {
        Some(o) => Json(json!({ "order": o })).into_response(),
        None => shopify_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

async fn update(
    State(shop): State<Shop>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let id = order_id(&id);
    let what = format!("PUT {id}");
    let gate = match shop.gate(&headers, &what).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let key = gate.key.clone();
    let changed: Result<Value, Response> = {
        let mut inner = shop.inner.lock();
        match inner.orders.get_mut(&id) {
            None => Err(shopify_error(StatusCode::NOT_FOUND, "Not Found")),
            Some(o) if body["order"]["shipping_address"].is_object()
                && (shipped(o) || o["cancelled_at"].is_string()) =>
            {
                Err((
                    StatusCode::UNPROCESSABLE_ENTITY,
                    Json(json!({"errors": {"shipping_address": ["cannot be changed after the order is fulfilled or cancelled"]}})),
                )
                    .into_response())
            }
            Some(o) => {
                if body["order"]["shipping_address"].is_object() {
                    o["shipping_address"] = body["order"]["shipping_address"].clone();
                }
                o["updated_at"] = json!(now());
                Ok(o.clone())
            }
        }
    };
    let changed = match changed {
        Ok(c) => c,
        Err(r) if r.status() == StatusCode::NOT_FOUND => return r,
        Err(_) => {
            let r = shop.done(key, &what, "address", StatusCode::UNPROCESSABLE_ENTITY, json!({"errors": {"shipping_address": ["cannot be changed after the order is fulfilled or cancelled"]}}));
            return gate.answer(r).await;
        }
    };
    shop.tell(changed.clone());
    shop.done(
        key,
        &what,
        "address",
        StatusCode::OK,
        json!({ "order": changed }),
    )
}

async fn cancel(
    State(shop): State<Shop>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let what = format!("cancel {id}");
    let gate = match shop.gate(&headers, &what).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let key = gate.key.clone();
    let outcome = {
        let mut inner = shop.inner.lock();
        inner.next_id += 1;
        let refund_id = inner.next_id;
        match inner.orders.get_mut(&id) {
            None => Err((StatusCode::NOT_FOUND, json!({"errors": "Not Found"}))),
            Some(o) if o["cancelled_at"].is_string() => Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": "Order has already been cancelled"}),
            )),
            Some(o) if shipped(o) => Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": "Cannot cancel an order that has been fulfilled"}),
            )),
            Some(o) => {
                let paid = cents(&o["total_price"]);
                let amount = cents(&body["amount"]);
                if amount > paid - refunded(o) {
                    Err((
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"errors": "Amount cannot be greater than the refundable amount"}),
                    ))
                } else {
                    let t = now();
                    o["cancelled_at"] = json!(t);
                    o["cancel_reason"] = body["reason"].clone();
                    if amount > 0 {
                        let mut refunds = o["refunds"].as_array().cloned().unwrap_or_default();
                        refunds.push(
                            json!({"id": refund_id, "amount": money(amount), "created_at": t}),
                        );
                        o["refunds"] = json!(refunds);
                        o["financial_status"] = json!(if refunded(o) >= paid {
                            "refunded"
                        } else {
                            "partially_refunded"
                        });
                    }
                    o["updated_at"] = json!(t);
                    Ok(o.clone())
                }
            }
        }
    };
    let r = match outcome {
        Ok(o) => {
            shop.tell(o.clone());
            shop.done(key, &what, "cancel", StatusCode::OK, json!({ "order": o }))
        }
        Err((s, b)) => shop.done(key, &what, "cancel", s, b),
    };
    gate.answer(r).await
}

async fn calculate(
    State(shop): State<Shop>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = shop.gate(&headers, "calculate").await {
        return r;
    }
    let inner = shop.inner.lock();
    let Some(o) = inner.orders.get(&id) else {
        return shopify_error(StatusCode::NOT_FOUND, "Not Found");
    };
    let left = cents(&o["total_price"]) - refunded(o);
    Json(json!({"refund": {"shipping": {"amount": "0.00"}, "refund_line_items": [], "transactions": [{
        "order_id": id, "kind": "suggested_refund", "gateway": "bogus", "parent_id": 1,
        "amount": money(left), "maximum_refundable": money(left), "currency": o["currency"],
    }]}}))
    .into_response()
}

async fn refund(
    State(shop): State<Shop>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Response {
    let what = format!("refund {id}");
    let gate = match shop.gate(&headers, &what).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let key = gate.key.clone();
    let amount: i64 = body["refund"]["transactions"]
        .as_array()
        .map(|t| t.iter().map(|x| cents(&x["amount"])).sum())
        .unwrap_or(0);
    let outcome = {
        let mut inner = shop.inner.lock();
        inner.next_id += 1;
        let refund_id = inner.next_id;
        match inner.orders.get_mut(&id) {
            None => Err((StatusCode::NOT_FOUND, json!({"errors": "Not Found"}))),
            Some(_) if amount <= 0 => Err((
                StatusCode::UNPROCESSABLE_ENTITY,
                json!({"errors": {"transactions": ["amount must be greater than 0"]}}),
            )),
            Some(o) => {
                let paid = cents(&o["total_price"]);
                if amount > paid - refunded(o) {
                    Err((
                        StatusCode::UNPROCESSABLE_ENTITY,
                        json!({"errors": {"transactions": ["Amount cannot be greater than the refundable amount"]}}),
                    ))
                } else {
                    let t = now();
                    let mut refunds = o["refunds"].as_array().cloned().unwrap_or_default();
                    refunds.push(json!({"id": refund_id, "amount": money(amount), "created_at": t, "note": body["refund"]["note"]}));
                    o["refunds"] = json!(refunds);
                    o["financial_status"] = json!(if refunded(o) >= paid {
                        "refunded"
                    } else {
                        "partially_refunded"
                    });
                    o["updated_at"] = json!(t);
                    Ok((refund_id, o.clone()))
                }
            }
        }
    };
    let r = match outcome {
        Ok((rid, o)) => {
            shop.tell(o.clone());
            shop.done(key, &what, "refund", StatusCode::CREATED, json!({"refund": {"id": rid, "order_id": id, "transactions": [{"kind": "refund", "amount": money(amount), "status": "success"}]}}))
        }
        Err((s, b)) => shop.done(key, &what, "refund", s, b),
    };
    gate.answer(r).await
}

/// Adds or replaces an order (and tells Switchboard).
/// A new order (Shopify's `POST orders.json`): a replacement shipment is one, its lines at no
/// charge. It needs lines and an email; it gets the next id and name, and Switchboard is told.
async fn create(State(shop): State<Shop>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    let what = "create".to_string();
    let gate = match shop.gate(&headers, &what).await {
        Ok(g) => g,
        Err(r) => return r,
    };
    let key = gate.key.clone();
    let o = &body["order"];
    let lines = o["line_items"].as_array().cloned().unwrap_or_default();
    let r = if lines.is_empty()
        || lines.iter().any(|l| {
            l["title"].as_str().is_none_or(str::is_empty)
                || l["quantity"].as_u64().is_none_or(|q| q == 0)
        }) {
        shop.done(
            key,
            &what,
            "create",
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"errors": {"line_items": ["must have a title and a quantity"]}}),
        )
    } else if o["email"].as_str().is_none_or(|e| !e.contains('@')) {
        shop.done(
            key,
            &what,
            "create",
            StatusCode::UNPROCESSABLE_ENTITY,
            json!({"errors": {"email": ["is invalid"]}}),
        )
    } else {
        let order = {
            let mut inner = shop.inner.lock();
            inner.next_id += 1;
            let id = 900_000 + inner.next_id;
            let total: i64 = lines
                .iter()
                .map(|l| cents(&l["price"]) * l["quantity"].as_i64().unwrap_or(1))
                .sum();
            let t = now();
            let order = json!({"id": id, "name": format!("#R{id}"), "email": o["email"],
                "line_items": lines.iter().enumerate().map(|(i, l)| json!({"id": id * 1000 + i as u64, "title": l["title"],
                    "sku": l["sku"], "quantity": l["quantity"], "price": l["price"]})).collect::<Vec<_>>(),
                "total_price": money(total), "currency": o["currency"].as_str().unwrap_or("USD"),
                "financial_status": o["financial_status"].as_str().unwrap_or("paid"),
                "fulfillment_status": Value::Null, "fulfillments": [],
                "shipping_address": o["shipping_address"], "tags": o["tags"], "note": o["note"],
                "customer": o["customer"], "created_at": t, "updated_at": t});
            inner.orders.insert(id.to_string(), order.clone());
            order
        };
        shop.tell(order.clone());
        shop.done(
            key,
            &what,
            "create",
            StatusCode::CREATED,
            json!({ "order": order }),
        )
    };
    gate.answer(r).await
}

/// Orders (Shopify's `GET orders.json`), newest first; `created_at_min` filters.
async fn list(
    State(shop): State<Shop>,
    headers: HeaderMap,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    if let Err(r) = shop.gate(&headers, "read").await {
        return r;
    }
    let since = q
        .get("created_at_min")
        .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
    let mut orders: Vec<Value> = shop
        .inner
        .lock()
        .orders
        .values()
        .filter(|o| {
            let created = o["created_at"]
                .as_str()
                .and_then(|s| chrono::DateTime::parse_from_rfc3339(s).ok());
            match (since, created) {
                (Some(s), Some(c)) => c >= s,
                (Some(_), None) => false,
                (None, _) => true,
            }
        })
        .cloned()
        .collect();
    orders.sort_by(|a, b| b["created_at"].as_str().cmp(&a["created_at"].as_str()));
    orders.truncate(250);
    Json(json!({ "orders": orders })).into_response()
}

async fn put_order(State(shop): State<Shop>, Json(mut order): Json<Value>) -> Response {
    let Some(id) = order["id"]
        .as_u64()
        .map(|n| n.to_string())
        .or_else(|| order["id"].as_str().map(str::to_string))
    else {
        return shopify_error(StatusCode::BAD_REQUEST, "id");
    };
    if order["updated_at"].is_null() {
        order["updated_at"] = json!(now());
    }
    shop.inner.lock().orders.insert(id, order.clone());
    shop.tell(order);
    StatusCode::CREATED.into_response()
}

/// The order's refunds (Shopify's `GET orders/{id}/refunds.json`).
async fn refunds(State(shop): State<Shop>, headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(r) = shop.gate(&headers, "read").await {
        return r;
    }
    match shop.inner.lock().orders.get(&id) {
        Some(o) => Json(json!({ "refunds": o["refunds"].as_array().cloned().unwrap_or_default() }))
            .into_response(),
        None => shopify_error(StatusCode::NOT_FOUND, "Not Found"),
    }
}

/// `{"idempotency": false}`: the shop ignores `Idempotency-Key` from now on.
async fn mode(State(shop): State<Shop>, Json(m): Json<Value>) -> StatusCode {
    if let Some(on) = m["idempotency"].as_bool() {
        shop.inner.lock().ignore_idempotency = !on;
    }
    StatusCode::NO_CONTENT
}

async fn fail(State(shop): State<Shop>, Json(f): Json<Failure>) -> StatusCode {
    shop.inner.lock().failures.push_back(f);
    StatusCode::NO_CONTENT
}

/// How many admin calls came in and how many changes each kind applied.
async fn stats(State(shop): State<Shop>) -> Json<Value> {
    let inner = shop.inner.lock();
    Json(json!({"calls": inner.calls, "applied": inner.applied}))
}

/// `switchboard-sim shop`: serves until interrupted, printing its address first.
pub(crate) async fn run(args: ShopArgs) -> anyhow::Result<()> {
    let webhook = args.webhook.map(|u| (u, args.secret));
    let addr = Shop::new(args.token, webhook).serve(args.listen).await?;
    println!("listening on http://{addr}");
    tokio::signal::ctrl_c().await?;
    Ok(())
}
