//! The OpenAPI document served at `/openapi.json`.

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, Schema};
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
    modifiers(&BearerAuth, &ClosedVariants),
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

/// `deny_unknown_fields` on an internally tagged enum reaches serde but not the variants' schemas
/// utoipa writes; say it there too, so the schema admits only bodies the API takes.
struct ClosedVariants;

impl Modify for ClosedVariants {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let schemas = openapi.components.iter_mut().flat_map(|c| c.schemas.values_mut());
        for schema in schemas {
            if let RefOr::T(Schema::OneOf(one_of)) = schema {
                for variant in &mut one_of.items {
                    if let RefOr::T(Schema::Object(object)) = variant {
                        object.additional_properties = Some(Box::new(AdditionalProperties::FreeForm(false)));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::ApiDoc;
    use crate::patterns::{CURSOR, LANGUAGE, NO_CONTROL, SOURCE_URL};
    use utoipa::OpenApi;

    fn patterns_in(value: &serde_json::Value, found: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(serde_json::Value::String(pattern)) = map.get("pattern") {
                    found.push(pattern.clone());
                }
                map.values().for_each(|v| patterns_in(v, found));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| patterns_in(v, found)),
            _ => {}
        }
    }

    /// Every rule reaches the document through its domain type (`value_type = …, inline`), and
    /// nothing else publishes a pattern: a field still typed as plain text would show here.
    #[test]
    fn the_published_patterns_are_the_checked_ones() {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap();
        let mut found = Vec::new();
        patterns_in(&document, &mut found);
        let checked = [&NO_CONTROL, &SOURCE_URL, &LANGUAGE, &CURSOR].map(|p| p.text);
        for pattern in &found {
            assert!(checked.contains(&pattern.as_str()), "published but not checked: {pattern}");
        }
        for pattern in checked {
            assert!(found.iter().any(|f| f == pattern), "checked but not published: {pattern}");
        }
        assert_eq!(found.iter().filter(|f| **f == SOURCE_URL.text).count(), 2, "/transcribe and /schedule: {found:?}");
    }
}
