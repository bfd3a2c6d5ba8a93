//! Returns (RMA): the policy (`shop.returns`), which lines of an order may go back and why not
//! (pure), the lifecycle's allowed moves, and the store: creating a return and moving it on,
//! each step a `commerce_event` in the same transaction.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use switchboard_contracts::{CommerceEvent, CommerceKind, Envelope, LineItem};
use switchboard_core::db::EventTx;
use switchboard_core::Error;
use uuid::Uuid;

/// Why a customer sends something back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    Damaged,
    WrongItem,
    MissingItem,
    DidNotFit,
    ChangedMind,
    Other,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Damaged => "damaged",
            Reason::WrongItem => "wrong_item",
            Reason::MissingItem => "missing_item",
            Reason::DidNotFit => "did_not_fit",
            Reason::ChangedMind => "changed_mind",
            Reason::Other => "other",
        }
    }
}

/// What the customer gets back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Resolution {
    Refund,
    Exchange,
    StoreCredit,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Refund => "refund",
            Resolution::Exchange => "exchange",
            Resolution::StoreCredit => "store_credit",
        }
    }

    /// A stored resolution (refund when unknown).
    pub fn parse(s: &str) -> Resolution {
        match s {
            "exchange" => Resolution::Exchange,
            "store_credit" => Resolution::StoreCredit,
            _ => Resolution::Refund,
        }
    }
}

/// Where a return is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Requested,
    Approved,
    LabelSent,
    InTransit,
    Received,
    Refunded,
    Exchanged,
    Rejected,
    Cancelled,
}

impl Status {
    pub const ALL: [Status; 9] = [
        Status::Requested,
        Status::Approved,
        Status::LabelSent,
        Status::InTransit,
        Status::Received,
        Status::Refunded,
        Status::Exchanged,
        Status::Rejected,
        Status::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Approved => "approved",
            Status::LabelSent => "label_sent",
            Status::InTransit => "in_transit",
            Status::Received => "received",
            Status::Refunded => "refunded",
            Status::Exchanged => "exchanged",
            Status::Rejected => "rejected",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|x| x.as_str() == s)
    }

    /// Refunded, exchanged, rejected and cancelled are final.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            Status::Refunded | Status::Exchanged | Status::Rejected | Status::Cancelled
        )
    }

    /// May a return move from `self` to `to`? Forward along requested -> approved ->
    /// label_sent -> in_transit -> received -> refunded/exchanged (a step may be skipped: a
    /// missing item never travels back); rejected only before approval; cancelled before
    /// anything was received.
    pub fn may_move_to(self, to: Status) -> bool {
        use Status::*;
        let rank = |s: Status| match s {
            Requested => 0,
            Approved => 1,
            LabelSent => 2,
            InTransit => 3,
            Received => 4,
            Refunded | Exchanged => 5,
            Rejected | Cancelled => 6,
        };
        if self.is_final() || self == to {
            return false;
        }
        match to {
            Requested => false,
            Rejected => self == Requested,
            Cancelled => rank(self) <= 3,
            Approved => self == Requested,
            _ => self != Requested && rank(to) > rank(self),
        }
    }
}

/// The return policy (`shop.returns`; one shop: per brand once brands exist).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReturnPolicy {
    /// Days from delivery (from the order, if the shop never said it was delivered).
    pub window_days: u32,
    /// Lines with these SKUs or product ids cannot be returned.
    pub non_returnable_skus: Vec<String>,
    pub non_returnable_products: Vec<String>,
    /// Orders tagged so (`final-sale`) cannot be returned at all.
    pub non_returnable_tags: Vec<String>,
    /// Reasons for which the customer pays the return shipping (the others: the shop).
    pub customer_pays_shipping: Vec<Reason>,
    /// What customers may choose.
    pub resolutions: Vec<Resolution>,
    /// Reasons a return must show photos for (from the message's attachments).
    pub photos_required_for: Vec<Reason>,
    pub auto_approve: AutoApprove,
}

/// Auto-approval of simple returns: inside the window (every line eligible), one of these
/// reasons, worth at most this much.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AutoApprove {
    pub enabled: bool,
    pub reasons: Vec<Reason>,
    pub max_value_cents: i64,
}

impl Default for AutoApprove {
    fn default() -> Self {
        AutoApprove {
            enabled: true,
            reasons: vec![Reason::DidNotFit, Reason::ChangedMind, Reason::WrongItem],
            max_value_cents: 10_000,
        }
    }
}

impl Default for ReturnPolicy {
    fn default() -> Self {
        ReturnPolicy {
            window_days: 30,
            non_returnable_skus: Vec::new(),
            non_returnable_products: Vec::new(),
            non_returnable_tags: vec!["final-sale".into()],
            customer_pays_shipping: vec![Reason::DidNotFit, Reason::ChangedMind],
            resolutions: vec![
                Resolution::Refund,
                Resolution::Exchange,
                Resolution::StoreCredit,
            ],
            photos_required_for: Vec::new(),
            auto_approve: AutoApprove::default(),
        }
    }
}

/// An order as the policy sees it.
#[derive(Debug, Clone)]
pub struct OrderForReturn<'a> {
    pub created_at: DateTime<Utc>,
    /// The latest delivery the shop reported, if any.
    pub delivered_at: Option<DateTime<Utc>>,
    pub cancelled: bool,
    pub tags: &'a [String],
    pub line_items: &'a [LineItem],
}

/// One line a customer asks to return.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Requested {
    /// The shop's line item id.
    pub line_item_id: String,
    pub quantity: i64,
}

/// The policy's answer for one line of the order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LineVerdict {
    pub line_item_id: String,
    pub title: String,
    /// Bought, and already in other open or finished returns.
    pub quantity: i64,
    pub returned: i64,
    /// 0 when the shop's price could not be read (`priced` false).
    pub price_cents: i64,
    /// The shop's price was readable: a return of a line without it is never approved by the
    /// policy alone.
    pub priced: bool,
    pub eligible: bool,
    /// Why not, in words for the customer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why_not: Option<String>,
}

/// `"129.90"` -> 12990; anything else (a sign, thousands separators, more than two decimals,
/// an overflow, nothing): none, and the line's value is unknown.
pub fn price_cents(p: Option<&str>) -> Option<i64> {
    let p = p?.trim();
    let (whole, frac) = p.split_once('.').unwrap_or((p, ""));
    if whole.is_empty()
        || whole.len() > 15
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || frac.len() > 2
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let frac: i64 = format!("{frac:0<2}").parse().ok()?;
    whole
        .parse::<i64>()
        .ok()?
        .checked_mul(100)?
        .checked_add(frac)
}

impl ReturnPolicy {
    /// Each line of `order` with whether it may go back now and why not; `returned`: the
    /// quantities per line id already in returns that are not rejected or cancelled.
    pub fn lines(
        &self,
        order: &OrderForReturn<'_>,
        returned: &HashMap<String, i64>,
        now: DateTime<Utc>,
    ) -> Vec<LineVerdict> {
        let from = order.delivered_at.unwrap_or(order.created_at);
        let closes = from + chrono::Duration::days(i64::from(self.window_days));
        let order_refusal = if order.cancelled {
            Some("the order was cancelled".to_string())
        } else if let Some(tag) = order.tags.iter().find(|t| {
            self.non_returnable_tags
                .iter()
                .any(|n| n.eq_ignore_ascii_case(t))
        }) {
            Some(format!(
                "the order is marked {tag}, which cannot be returned"
            ))
        } else if now > closes {
            Some(format!(
                "the {}-day return window closed on {}",
                self.window_days,
                closes.format("%-d %B %Y")
            ))
        } else {
            None
        };
        order
            .line_items
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let id = l.id.clone().unwrap_or_else(|| format!("line-{}", i + 1));
                let quantity = l.quantity.unwrap_or(1).max(0);
                let done = returned.get(&id).copied().unwrap_or(0);
                let why_not = order_refusal.clone().or_else(|| {
                    if l.sku
                        .as_ref()
                        .is_some_and(|s| self.non_returnable_skus.contains(s))
                        || l.product_id
                            .as_ref()
                            .is_some_and(|p| self.non_returnable_products.contains(p))
                    {
                        Some("this item cannot be returned".into())
                    } else if done >= quantity {
                        Some("already being returned".into())
                    } else {
                        None
                    }
                });
                let price = price_cents(l.price.as_deref());
                LineVerdict {
                    line_item_id: id,
                    title: l.title.clone(),
                    quantity,
                    returned: done,
                    price_cents: price.unwrap_or(0),
                    priced: price.is_some(),
                    eligible: why_not.is_none(),
                    why_not,
                }
            })
            .collect()
    }

    /// Checks a request against the lines: the value of what goes back and whether every line
    /// of it had a readable price, or the field and why.
    pub fn check(
        &self,
        lines: &[LineVerdict],
        items: &[Requested],
        reason: Reason,
        resolution: Resolution,
        photos: usize,
    ) -> Result<(i64, bool), (String, String)> {
        if items.is_empty() {
            return Err(("items".into(), "name at least one line to return".into()));
        }
        if items.len() > 100 {
            return Err(("items".into(), "at most 100 lines".into()));
        }
        if !self.resolutions.contains(&resolution) {
            return Err((
                "resolution".into(),
                format!(
                    "the shop offers {:?}",
                    self.resolutions
                        .iter()
                        .map(|r| r.as_str())
                        .collect::<Vec<_>>()
                ),
            ));
        }
        if self.photos_required_for.contains(&reason) && photos == 0 {
            return Err((
                "photos".into(),
                format!("a {} return needs a photo", reason.as_str()),
            ));
        }
        let mut value = 0i64;
        let mut priced = true;
        let mut seen = std::collections::HashSet::new();
        for (i, it) in items.iter().enumerate() {
            let field = format!("items[{i}]");
            if !seen.insert(it.line_item_id.as_str()) {
                return Err((field, "the same line twice".into()));
            }
            let Some(line) = lines.iter().find(|l| l.line_item_id == it.line_item_id) else {
                return Err((
                    format!("{field}.line_item_id"),
                    "not a line of this order".into(),
                ));
            };
            if let Some(why) = &line.why_not {
                return Err((field, why.clone()));
            }
            let left = line.quantity - line.returned;
            if it.quantity < 1 || it.quantity > left {
                return Err((format!("{field}.quantity"), format!("between 1 and {left}")));
            }
            value = value.saturating_add(line.price_cents.saturating_mul(it.quantity));
            priced &= line.priced;
        }
        Ok((value, priced))
    }

    /// Does a checked request approve itself? `value_cents`: what it and the order's other
    /// returns the policy approved are worth together (splitting a return gains nothing).
    pub fn approves(&self, reason: Reason, value_cents: i64, priced: bool) -> bool {
        self.auto_approve.enabled
            && priced
            && self.auto_approve.reasons.contains(&reason)
            && value_cents <= self.auto_approve.max_value_cents
    }
}

/// A return as it is stored.
#[derive(Debug, Clone, Serialize, Deserialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct Return {
    pub id: Uuid,
    /// `RMA-1001`.
    pub number: String,
    pub order_id: Uuid,
    pub order_number: String,
    pub customer_id: Uuid,
    pub ticket_id: Option<Uuid>,
    pub status: String,
    pub reason: String,
    pub resolution: String,
    /// `[{line_item_id, title, quantity, price_cents}]`.
    #[schema(value_type = Object)]
    pub items: sqlx::types::Json<serde_json::Value>,
    /// Attachment storage keys.
    #[schema(value_type = Object)]
    pub photos: sqlx::types::Json<serde_json::Value>,
    pub note: Option<String>,
    pub value_cents: i64,
    pub currency: String,
    pub customer_pays_shipping: bool,
    /// Approved by the policy, no person.
    pub automatic: bool,
    pub source: String,
    pub decided_by: Option<String>,
    pub reject_reason: Option<String>,
    pub version: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub approved_at: Option<DateTime<Utc>>,
    pub refunded_at: Option<DateTime<Utc>>,
}

/// The columns of [`Return`], for `SELECT {RETURN_COLUMNS} FROM returns r JOIN orders o ...`.
pub const RETURN_COLUMNS: &str = "r.id, r.number, r.order_id, o.number AS order_number, r.customer_id, r.ticket_id, r.status,
    r.reason, r.resolution, r.items, r.photos, r.note, r.value_cents, o.currency, r.customer_pays_shipping,
    r.automatic, r.source, r.decided_by, r.reject_reason, r.version, r.created_at, r.updated_at, r.approved_at,
    r.refunded_at";

/// The order a return is made against, locked in the transaction.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrderRow {
    pub id: Uuid,
    pub external_id: String,
    pub number: String,
    pub customer_id: Uuid,
    pub total_cents: i64,
    pub currency: String,
    pub created_at: DateTime<Utc>,
    pub cancelled_at: Option<DateTime<Utc>>,
    pub tags: Vec<String>,
    pub fulfillment_status: Option<String>,
    pub financial_status: Option<String>,
    pub fulfillments: sqlx::types::Json<Vec<switchboard_contracts::Fulfillment>>,
    pub line_items: sqlx::types::Json<Vec<LineItem>>,
}

pub const ORDER_ROW: &str =
    "id, external_id, coalesce(number, external_id) AS number, customer_id, total_cents, currency,
    created_at, cancelled_at, tags, fulfillment_status, financial_status, fulfillments, line_items";

impl OrderRow {
    /// The latest delivery the shop reported.
    pub fn delivered_at(&self) -> Option<DateTime<Utc>> {
        self.fulfillments
            .iter()
            .filter_map(|f| {
                f.delivered_at.or_else(|| {
                    (f.shipment_status.as_deref() == Some("delivered"))
                        .then_some(f.last_event.as_ref().map(|e| e.at))
                        .flatten()
                })
            })
            .max()
    }

    /// Per line id, what is already in returns that are not rejected or cancelled.
    pub async fn returned(
        &self,
        conn: &mut sqlx::PgConnection,
    ) -> Result<HashMap<String, i64>, sqlx::Error> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT it->>'line_item_id', sum((it->>'quantity')::bigint)::bigint
               FROM returns r, jsonb_array_elements(r.items) it
              WHERE r.order_id = $1 AND r.status NOT IN ('rejected', 'cancelled')
              GROUP BY 1",
        )
        .bind(self.id)
        .fetch_all(conn)
        .await?;
        Ok(rows.into_iter().collect())
    }

    /// The policy's verdict on each line now.
    pub async fn verdicts(
        &self,
        conn: &mut sqlx::PgConnection,
        policy: &ReturnPolicy,
        now: DateTime<Utc>,
    ) -> Result<Vec<LineVerdict>, sqlx::Error> {
        let returned = self.returned(conn).await?;
        let view = OrderForReturn {
            created_at: self.created_at,
            delivered_at: self.delivered_at(),
            cancelled: self.cancelled_at.is_some(),
            tags: &self.tags,
            line_items: &self.line_items,
        };
        Ok(policy.lines(&view, &returned, now))
    }
}

/// A new return, checked.
#[derive(Debug, Clone)]
pub struct NewReturn<'a> {
    pub order: &'a OrderRow,
    pub ticket_id: Option<Uuid>,
    pub reason: Reason,
    pub resolution: Resolution,
    pub lines: &'a [LineVerdict],
    pub items: &'a [Requested],
    pub photos: Vec<String>,
    pub note: Option<String>,
    pub value_cents: i64,
    pub customer_pays_shipping: bool,
    pub automatic: bool,
    pub source: &'static str,
    pub actor: String,
}

/// Stores `r` in `tx` with its events (requested; approved too when the policy approved it):
/// the new return's id and number.
pub async fn create(tx: &mut EventTx<'_>, r: NewReturn<'_>) -> Result<(Uuid, String), Error> {
    let id = Uuid::now_v7();
    let now = switchboard_core::clock::now();
    let seq: i64 = sqlx::query_scalar("SELECT nextval('return_numbers')")
        .fetch_one(&mut **tx)
        .await?;
    let number = format!("RMA-{seq}");
    let items: Vec<serde_json::Value> = r
        .items
        .iter()
        .filter_map(|it| {
            let l = r.lines.iter().find(|l| l.line_item_id == it.line_item_id)?;
            Some(serde_json::json!({
                "line_item_id": it.line_item_id, "title": l.title,
                "quantity": it.quantity, "price_cents": l.price_cents,
            }))
        })
        .collect();
    let status = if r.automatic {
        Status::Approved
    } else {
        Status::Requested
    };
    sqlx::query(
        "INSERT INTO returns (id, number, order_id, customer_id, ticket_id, status, reason, resolution, items, photos,
                              note, value_cents, customer_pays_shipping, automatic, source, decided_by, created_at,
                              updated_at, approved_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $17, $18)",
    )
    .bind(id)
    .bind(&number)
    .bind(r.order.id)
    .bind(r.order.customer_id)
    .bind(r.ticket_id)
    .bind(status.as_str())
    .bind(r.reason.as_str())
    .bind(r.resolution.as_str())
    .bind(sqlx::types::Json(&items))
    .bind(sqlx::types::Json(&r.photos))
    .bind(&r.note)
    .bind(r.value_cents)
    .bind(r.customer_pays_shipping)
    .bind(r.automatic)
    .bind(r.source)
    .bind(r.automatic.then_some("policy"))
    .bind(now)
    .bind(r.automatic.then_some(now))
    .execute(&mut **tx)
    .await?;
    let base = Step {
        return_id: id,
        order: r.order,
        ticket_id: r.ticket_id,
        reason: r.reason.as_str(),
        value_cents: r.value_cents,
    };
    base.emit(tx, Status::Requested, None, &r.actor, false, None)
        .await?;
    if r.automatic {
        base.emit(
            tx,
            Status::Approved,
            Some(Status::Requested),
            "policy",
            true,
            None,
        )
        .await?;
    }
    metrics::counter!(crate::telemetry::RETURNS_TOTAL, "reason" => r.reason.as_str(), "automatic" => if r.automatic { "true" } else { "false" }).increment(1);
    Ok((id, number))
}

/// What every step's event says about its return.
struct Step<'a> {
    return_id: Uuid,
    order: &'a OrderRow,
    ticket_id: Option<Uuid>,
    reason: &'a str,
    value_cents: i64,
}

impl Step<'_> {
    async fn emit(
        &self,
        tx: &mut EventTx<'_>,
        status: Status,
        previous: Option<Status>,
        actor: &str,
        automatic: bool,
        why: Option<&str>,
    ) -> Result<(), Error> {
        let event = CommerceEvent {
            kind: CommerceKind::Return,
            id: self.return_id,
            order_id: self.order.id,
            order_external_id: self.order.external_id.clone(),
            order_number: self.order.number.clone(),
            customer_id: self.order.customer_id,
            ticket_id: self.ticket_id,
            status: status.as_str().into(),
            previous: previous.map(|p| p.as_str().to_string()),
            detail: self.reason.into(),
            amount_cents: Some(self.value_cents),
            automatic,
            actor: actor.into(),
            reason: why.map(str::to_string),
        };
        let event_id = switchboard_contracts::derived_id(self.return_id, status.as_str());
        tx.add(&Envelope::new(
            event_id,
            switchboard_core::clock::now(),
            event,
        ))
        .await
    }
}

/// Why a move was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MoveError {
    #[error("no such return")]
    NotFound,
    #[error("a {from} return cannot become {to}")]
    NotAllowed { from: String, to: String },
    #[error("the return changed (version {0}): read it again")]
    Stale(i32),
}

/// Moves return `id` to `to` in `tx` (locking it), with its event: the return after.
/// `expected_version`: refuse if the return moved on meanwhile.
pub async fn transition(
    tx: &mut EventTx<'_>,
    id: Uuid,
    to: Status,
    actor: &str,
    why: Option<&str>,
    resolution: Option<Resolution>,
    expected_version: Option<i32>,
) -> Result<Result<Return, MoveError>, Error> {
    let row: Option<(String, i32, String, i64, Uuid, Option<Uuid>)> = sqlx::query_as(
        "SELECT status, version, reason, value_cents, order_id, ticket_id FROM returns WHERE id = $1 FOR UPDATE",
    )
    .bind(id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((from, version, reason, value, order_id, ticket_id)) = row else {
        return Ok(Err(MoveError::NotFound));
    };
    if expected_version.is_some_and(|v| v != version) {
        return Ok(Err(MoveError::Stale(version)));
    }
    let from_s = Status::parse(&from).unwrap_or(Status::Cancelled);
    if !from_s.may_move_to(to) {
        return Ok(Err(MoveError::NotAllowed {
            from,
            to: to.as_str().into(),
        }));
    }
    let now = switchboard_core::clock::now();
    sqlx::query(
        "UPDATE returns SET status = $2, version = version + 1, updated_at = $3,
             decided_by = CASE WHEN $2 IN ('approved', 'rejected') THEN $4 ELSE decided_by END,
             reject_reason = CASE WHEN $2 = 'rejected' THEN $5 ELSE reject_reason END,
             approved_at = CASE WHEN $2 = 'approved' THEN $3 ELSE approved_at END,
             refunded_at = CASE WHEN $2 IN ('refunded', 'exchanged') THEN $3 ELSE refunded_at END,
             resolution = coalesce($6, resolution)
         WHERE id = $1",
    )
    .bind(id)
    .bind(to.as_str())
    .bind(now)
    .bind(actor)
    .bind(why)
    .bind(resolution.map(Resolution::as_str))
    .execute(&mut **tx)
    .await?;
    let order: OrderRow = sqlx::query_as(&format!("SELECT {ORDER_ROW} FROM orders WHERE id = $1"))
        .bind(order_id)
        .fetch_one(&mut **tx)
        .await?;
    Step {
        return_id: id,
        order: &order,
        ticket_id,
        reason: &reason,
        value_cents: value,
    }
    .emit(tx, to, Some(from_s), actor, false, why)
    .await?;
    let r: Return = sqlx::query_as(&format!(
        "SELECT {RETURN_COLUMNS} FROM returns r JOIN orders o ON o.id = r.order_id WHERE r.id = $1"
    ))
    .bind(id)
    .fetch_one(&mut **tx)
    .await?;
    Ok(Ok(r))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn line(id: &str, sku: &str, qty: i64, price: &str) -> LineItem {
        LineItem {
            id: Some(id.into()),
            title: format!("Item {id}"),
            sku: Some(sku.into()),
            product_id: None,
            quantity: Some(qty),
            price: Some(price.into()),
        }
    }

    #[test]
    fn each_line_is_judged_and_refusals_are_explained() {
        let policy = ReturnPolicy {
            non_returnable_skus: vec!["GIFT".into()],
            ..ReturnPolicy::default()
        };
        let items = [line("1", "TEE", 2, "20.00"), line("2", "GIFT", 1, "50")];
        let d = |day| Utc.with_ymd_and_hms(2026, 11, day, 0, 0, 0).unwrap();
        let order = OrderForReturn {
            created_at: d(1),
            delivered_at: Some(d(3)),
            cancelled: false,
            tags: &[],
            line_items: &items,
        };
        let returned = HashMap::from([("1".to_string(), 1)]);
        let v = policy.lines(&order, &returned, d(10));
        assert!(v[0].eligible && v[0].returned == 1 && v[0].price_cents == 2000);
        assert_eq!(
            v[1].why_not.as_deref(),
            Some("this item cannot be returned")
        );
        // One left of line 1.
        let one = |q| {
            [Requested {
                line_item_id: "1".into(),
                quantity: q,
            }]
        };
        assert_eq!(
            policy.check(&v, &one(1), Reason::DidNotFit, Resolution::Refund, 0),
            Ok((2000, true))
        );
        // Prices the shop wrote oddly are unknown, never negative or guessed.
        for odd in ["-5", "1,299.00", "12.345", "", "99999999999999999999"] {
            assert_eq!(price_cents(Some(odd)), None, "{odd}");
        }
        assert_eq!(price_cents(Some(" 7.5 ")), Some(750));
        assert_eq!(
            policy
                .check(&v, &one(2), Reason::DidNotFit, Resolution::Refund, 0)
                .unwrap_err()
                .0,
            "items[0].quantity"
        );
        let gift = [Requested {
            line_item_id: "2".into(),
            quantity: 1,
        }];
        assert_eq!(
            policy
                .check(&v, &gift, Reason::Damaged, Resolution::Refund, 0)
                .unwrap_err(),
            ("items[0]".into(), "this item cannot be returned".into())
        );
        // The window counts from delivery: 30 days after 3 November is open on 2 December,
        // closed on 4 December.
        assert!(policy.lines(&order, &HashMap::new(), d(30))[0].eligible);
        let late = policy.lines(
            &order,
            &HashMap::new(),
            Utc.with_ymd_and_hms(2026, 12, 4, 0, 0, 0).unwrap(),
        );
        assert!(late[0]
            .why_not
            .as_deref()
            .unwrap()
            .contains("window closed on 3 December 2026"));
        // Final sale: nothing.
        let tags = ["final-sale".to_string()];
        let sale = OrderForReturn {
            tags: &tags,
            ..order.clone()
        };
        assert!(policy
            .lines(&sale, &HashMap::new(), d(4))
            .iter()
            .all(|l| !l.eligible));
    }

    #[test]
    fn auto_approval_is_for_simple_cheap_returns_only() {
        let p = ReturnPolicy::default();
        assert!(p.approves(Reason::DidNotFit, 5_000, true));
        assert!(!p.approves(Reason::DidNotFit, 5_000, false));
        assert!(!p.approves(Reason::DidNotFit, 50_000, true));
        assert!(!p.approves(Reason::Damaged, 100, true));
    }

    #[test]
    fn the_lifecycle_moves_forward_only() {
        use Status::*;
        assert!(Requested.may_move_to(Approved));
        assert!(Requested.may_move_to(Rejected));
        assert!(!Requested.may_move_to(Received));
        assert!(Approved.may_move_to(Received));
        assert!(Received.may_move_to(Refunded));
        assert!(!Received.may_move_to(Approved));
        assert!(!Received.may_move_to(Cancelled));
        assert!(!Approved.may_move_to(Rejected));
        for s in Status::ALL {
            if s.is_final() {
                assert!(Status::ALL.iter().all(|t| !s.may_move_to(*t)));
            }
            assert_eq!(Status::parse(s.as_str()), Some(s));
        }
    }
}
