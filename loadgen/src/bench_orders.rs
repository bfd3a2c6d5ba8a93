//! `switchboard-sim bench orders`: the latency of order actions from the ticket, beside the
//! shop's own.
//!
//! Starts the stand-in shop ([`crate::shop`]) on `--shop-listen`, which tells the running
//! Switchboard at `--url` about `--orders` new orders (its `shop.admin_api.url` must point at
//! the shop: `http://<shop-listen>/admin/api/2024-10`, token `--shop-token`). Once they are
//! stored, it refunds part of each order through `POST /v1/orders/{id}/refund` and cancels half
//! of them through `/cancel`, `--concurrency` at a time, and times the same calls made straight
//! to the shop (calculate and refund) in the same run: p50/p99 of each, and Switchboard's cost
//! over the shop's as a ratio.

use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use futures::StreamExt as _;
use hdrhistogram::Histogram;
use serde_json::{json, Value};

use crate::shop::{Shop, API};

/// Arguments of `bench orders`.
#[derive(Debug, clap::Args)]
pub(crate) struct OrdersArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Admin token.
    #[arg(long, env = "SWITCHBOARD__HTTP__ADMIN_TOKEN")]
    token: String,
    /// Where the stand-in shop listens (Switchboard's `shop.admin_api.url` points here).
    #[arg(long, default_value = "127.0.0.1:18090")]
    shop_listen: std::net::SocketAddr,
    #[arg(long, default_value = "bench-shop-token")]
    shop_token: String,
    /// Switchboard's order webhook secret (`channels.orders.secret`).
    #[arg(long, env = "SWITCHBOARD__CHANNELS__ORDERS__SECRET")]
    webhook_secret: String,
    /// At most 100 (the orders a customer profile lists).
    #[arg(long, default_value_t = 100)]
    orders: usize,
    #[arg(long, default_value_t = 8)]
    concurrency: usize,
}

fn hist() -> Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000, 3)?)
}

fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

pub(crate) async fn orders(mut args: OrdersArgs) -> Result<()> {
    args.orders = args.orders.clamp(1, 100);
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()?;
    let run = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let shop = Shop::new(
        args.shop_token.clone(),
        Some((
            format!("{}/webhooks/orders", args.url),
            args.webhook_secret.clone(),
        )),
    );
    let addr = shop.clone().serve(args.shop_listen).await?;
    println!(
        "switchboard-sim bench orders: {} orders, {} at a time, shop at http://{addr}",
        args.orders, args.concurrency
    );
    // Orders for one bench customer; ids above any a test uses.
    let base_id = 9_000_000_000u64 + u64::from(u32::from_str_radix(&run[..6], 16)?);
    let email = format!("orders-bench-{run}@example.com");
    for i in 0..args.orders as u64 {
        let id = base_id * 1000 + i;
        let order = json!({"id": id, "name": format!("#B{run}{i}"), "email": email, "total_price": "100.00",
            "currency": "USD", "financial_status": "paid",
            "line_items": [{"id": id * 10, "title": "Bench item", "quantity": 1, "price": "100.00"}]});
        shop.put(order);
    }
    // Wait until Switchboard stored them all.
    let started = Instant::now();
    let ids: Vec<String> = loop {
        let r = http
            .get(format!("{}/v1/customers", args.url))
            .query(&[("email", email.as_str())])
            .bearer_auth(&args.token)
            .send()
            .await?;
        if r.status().is_success() {
            let v: Value = r.json().await?;
            let ids: Vec<String> = v["orders"]
                .as_array()
                .map(|o| {
                    o.iter()
                        .filter_map(|o| o["id"].as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default();
            if ids.len() >= args.orders {
                break ids;
            }
        }
        if started.elapsed() > Duration::from_secs(120) {
            bail!("the orders did not reach Switchboard in 2 minutes: is shop.admin_api.url pointing at http://{addr}{API} and channels.orders.secret set?");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    println!(
        "{} orders stored in {:.1} s",
        ids.len(),
        started.elapsed().as_secs_f64()
    );

    // Through Switchboard: refund 10.00 of each, then cancel every other one.
    let mut refund = hist()?;
    let mut cancel = hist()?;
    let mut errors = 0usize;
    let calls: Vec<(usize, &'static str, String)> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| (i, "refund", id.clone()))
        .chain(
            ids.iter()
                .enumerate()
                .filter(|(i, _)| i % 2 == 0)
                .map(|(i, id)| (i, "cancel", id.clone())),
        )
        .collect();
    let wall = Instant::now();
    let mut results = futures::stream::iter(calls.into_iter().map(|(i, kind, id)| {
        let http = http.clone();
        let (url, token) = (args.url.clone(), args.token.clone());
        async move {
            let body = match kind {
                "refund" => {
                    json!({"amount_cents": 1000, "request_key": format!("bench-{i}-refund")})
                }
                _ => json!({"refund": false, "request_key": format!("bench-{i}-cancel")}),
            };
            let t = Instant::now();
            let r = http
                .post(format!("{url}/v1/orders/{id}/{kind}"))
                .bearer_auth(&token)
                .json(&body)
                .send()
                .await;
            let ok = matches!(&r, Ok(r) if r.status().is_success());
            (kind, t.elapsed(), ok)
        }
    }))
    .buffer_unordered(args.concurrency.max(1));
    let mut n = 0usize;
    while let Some((kind, took, ok)) = results.next().await {
        n += 1;
        if !ok {
            errors += 1;
            continue;
        }
        let us = took.as_micros().max(1) as u64;
        match kind {
            "refund" => refund.record(us)?,
            _ => cancel.record(us)?,
        }
    }
    let through = wall.elapsed();

    // The same refund straight to the shop: calculate, then refund (what Switchboard sends).
    let mut direct = hist()?;
    let shop_url = format!("http://{addr}{API}");
    let orders_to_hit: Vec<u64> = (0..ids.len() as u64).map(|i| base_id * 1000 + i).collect();
    let mut direct_calls = futures::stream::iter(orders_to_hit.into_iter().map(|id| {
        let http = http.clone();
        let (shop_url, token) = (shop_url.clone(), args.shop_token.clone());
        async move {
            let t = Instant::now();
            let calc = http
                .post(format!("{shop_url}/orders/{id}/refunds/calculate.json"))
                .header("X-Shopify-Access-Token", &token)
                .json(&json!({"refund": {"shipping": {"full_refund": false}, "refund_line_items": []}}))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            if calc.is_err() {
                return None;
            }
            let r = http
                .post(format!("{shop_url}/orders/{id}/refunds.json"))
                .header("X-Shopify-Access-Token", &token)
                .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
                .json(&json!({"refund": {"transactions": [{"parent_id": 1, "amount": "1.00", "kind": "refund", "gateway": "bogus"}]}}))
                .send()
                .await
                .ok()?;
            r.status().is_success().then(|| t.elapsed())
        }
    }))
    .buffer_unordered(args.concurrency.max(1));
    while let Some(took) = direct_calls.next().await {
        if let Some(took) = took {
            direct.record(took.as_micros().max(1) as u64)?;
        }
    }

    println!(
        "{n} actions through Switchboard in {:.1} s ({:.0}/s), {errors} errors",
        through.as_secs_f64(),
        n as f64 / through.as_secs_f64().max(1e-9)
    );
    println!("{:<34} {:>9} {:>9} {:>7}", "call", "p50 ms", "p99 ms", "n");
    for (name, h) in [
        ("refund via POST /v1/orders/{id}/refund", &refund),
        ("cancel via POST /v1/orders/{id}/cancel", &cancel),
        ("refund straight to the shop", &direct),
    ] {
        println!(
            "{name:<34} {:>9.2} {:>9.2} {:>7}",
            ms(h, 0.5),
            ms(h, 0.99),
            h.len()
        );
    }
    if !direct.is_empty() && !refund.is_empty() {
        println!(
            "Switchboard over the shop (refund): p50 {:.2}x, p99 {:.2}x",
            ms(&refund, 0.5) / ms(&direct, 0.5).max(1e-9),
            ms(&refund, 0.99) / ms(&direct, 0.99).max(1e-9)
        );
    }
    if errors > 0 {
        bail!("bench orders: {errors} actions failed");
    }
    Ok(())
}
