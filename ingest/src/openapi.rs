//! The OpenAPI document of the ingest front doors that take JSON (the provider webhooks follow
//! their providers' formats and are described in the README).

use utoipa::OpenApi;

/// The ingest routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(crate::api::post_message, crate::chat::new_session, crate::chat::connect),
    tags((name = "channels", description = "messages in: the inbound API and the chat widget"))
)]
pub struct IngestDoc;
