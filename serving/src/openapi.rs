//! The OpenAPI document of the serving API, generated from the handlers' `#[utoipa::path]`
//! annotations and the request/response types (`ToSchema`). The binary merges it with the
//! ingest front doors' and serves it at `GET /openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

/// Adds the bearer token scheme the `/v1` routes name, and the 401 answer to every operation
/// that needs it.
#[derive(Debug)]
pub struct Bearer;

/// Adds the 401 answer to every operation of `openapi` that names a security requirement (the
/// binary calls it again on the merged document, whose other parts did not pass [`Bearer`]).
pub fn document_unauthorized(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        for op in [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ]
        .into_iter()
        .flatten()
        {
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                op.responses
                    .responses
                    .entry("401".to_string())
                    .or_insert_with(|| {
                        utoipa::openapi::Response::new(
                            "no bearer token, or an unknown, expired or revoked one",
                        )
                        .into()
                    });
            }
        }
    }
}

impl Modify for Bearer {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        document_unauthorized(openapi);
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "the admin token, or a token an admin issued (POST /v1/tokens) for a role; \
                         issued tokens expire and can be revoked (DELETE /v1/tokens/{id})",
                    ))
                    .build(),
            ),
        );
    }
}

/// The serving routes.
#[derive(Debug, OpenApi)]
#[openapi(
    info(title = "Switchboard", description = "The real-time core of a customer-support platform: agents, tickets, customers, reports."),
    paths(
        crate::audit::list, crate::agents::create, crate::agents::directory, crate::agents::get_agent, crate::agents::update, crate::agents::deactivate, crate::agents::reactivate, crate::agents::set_status, crate::agents::assignments,
        crate::tickets::list, crate::tickets::get_ticket, crate::tickets::attachment,
        crate::work::reply, crate::work::set_status, crate::work::merge, crate::work::accept, crate::work::typing,
        crate::auth::issue, crate::auth::list, crate::auth::revoke, crate::auth::me, crate::auth::clock, crate::stream::stream,
        crate::sessions::list, crate::sessions::revoke_one, crate::sso::config, crate::sso::logout,
        crate::customers::find, crate::customers::profile, crate::customers::track, crate::customers::add_note, crate::customers::remove_note,
        crate::csat::page, crate::csat::answer, crate::csat::report,
        crate::dashboard::dashboard, crate::dashboard::agents_csv, crate::forecast::forecast, crate::forecast::staffing_plan, crate::drafts::draft_acceptance, crate::churn::at_risk, crate::churn::churn_model, crate::corrections::correct, crate::privacy::erase,
        crate::canned::list, crate::canned::create, crate::canned::update, crate::canned::remove,
        crate::kb::list, crate::kb::read, crate::kb::create, crate::kb::update, crate::kb::remove,
        crate::kb::public_search, crate::kb::public_read,
        crate::teams::list, crate::teams::read, crate::teams::create, crate::teams::update, crate::teams::remove,
        crate::views::list, crate::views::create, crate::views::update, crate::views::remove, crate::views::tickets, crate::views::counts,
        crate::tags::add, crate::tags::remove, crate::search::search, crate::assign::assign_ticket, crate::notes::add, crate::notes::mentions, crate::bulk::bulk, crate::fields::list, crate::fields::create, crate::fields::update, crate::fields::remove, crate::fields::set, crate::presence::current, crate::presence::set,
        crate::macros::list, crate::macros::create, crate::macros::update, crate::macros::remove, crate::macros::apply_route, crate::split::split,
        crate::rules::list, crate::rules::fields, crate::rules::read, crate::rules::create, crate::rules::update, crate::rules::remove, crate::rules::versions, crate::rules::fires, crate::rules::dry_run_route,
        crate::webhooks::list, crate::webhooks::event_types, crate::webhooks::read, crate::webhooks::create, crate::webhooks::update, crate::webhooks::remove, crate::webhooks::rotate, crate::webhooks::deliveries, crate::webhooks::delivery, crate::webhooks::redeliver,
        crate::notifications::read, crate::notifications::update, crate::notifications::history,
        crate::orders::detail, crate::orders::cancel, crate::orders::refund, crate::orders::address, crate::orders::resend, crate::orders::list, crate::orders::one, crate::orders::approve, crate::orders::reject,
        crate::returns::create, crate::returns::list, crate::returns::one, crate::returns::approve, crate::returns::reject, crate::returns::set_status, crate::returns::stats, crate::returns::lookup, crate::returns::customer_create,
    ),
    modifiers(&Bearer),
    tags(
        (name = "agents", description = "agents, their status, assignments and live stream"),
        (name = "tickets", description = "reading and working tickets"),
        (name = "teams", description = "teams of agents: members, supervisor, skills, calendar"),
        (name = "rules", description = "the team's own triggers (on ticket events) and automations (on time): conditions, actions, versions, what each did"),
        (name = "webhooks", description = "outbound webhooks (admins): subscriptions per event type, signed per the Standard Webhooks specification, delivered at least once; the delivery ledger, redelivery, secret rotation"),
        (name = "views", description = "built-in and saved views over the tickets, their pages and counts"),
        (name = "customers", description = "profiles, orders, erasure"),
        (name = "reports", description = "dashboard, CSAT, demand forecast and staffing plan (supervisors)"),
        (name = "access", description = "roles, tokens and sessions: an agent acts on the tickets assigned to it, a supervisor on any, an admin also manages agents, tokens and sessions. People signed in through single sign-on send the `sb_session` cookie instead of a token, and `X-CSRF-Token` (the `sb_csrf` cookie's value) with every change"),
        (name = "knowledge base", description = "articles: the bot's answers and agents' suggestions"),
        (name = "orders", description = "order actions through the shop's Admin API (cancel, refund, address change): idempotent per request_key, refunds above the caller's limit wait for a supervisor"),
        (name = "returns", description = "returns (RMA): checked per line against the policy, approved by the policy or a person, each step an event"),
        (name = "self-service", description = "customer-facing: order tracking, surveys"),
    )
)]
pub struct ServingDoc;
