//! The OpenAPI document of the ingest front doors that take JSON (the providers' message
//! webhooks follow their providers' formats and are described in the README).

use utoipa::OpenApi;

/// The ingest routes.
#[derive(Debug, OpenApi)]
#[openapi(
    paths(
        crate::api::post_message,
        crate::chat::new_session,
        crate::chat::connect,
        crate::orders::inbound
    ),
    tags((name = "channels", description = "messages in: the inbound API and the chat widget; the shop's orders"))
)]
pub struct IngestDoc;
