//! The OpenAPI document served at `/openapi.json`.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::error::{ErrorBody, FieldError};
use crate::routes::{auth, health, jobs, videos};

#[derive(OpenApi)]
#[openapi(
    info(title = "Portcullis origin API", description = "The API behind the Portcullis edge."),
    paths(
        auth::login, auth::refresh, videos::transcribe, videos::list_videos, jobs::analyze,
        jobs::get_job, jobs::delete_job, jobs::schedule, health::health,
    ),
    components(schemas(ErrorBody, FieldError)),
    modifiers(&BearerAuth),
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).bearer_format("JWT").build()),
        );
    }
}
