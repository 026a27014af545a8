//! Request values as parsed types: a [`SourceUrl`] or a [`Username`] can only hold text its rule
//! admits, and its OpenAPI schema is built from that same rule (length bounds and pattern), so
//! what the schema publishes and what the API takes cannot drift apart. Request bodies carry the
//! raw text (their schemas point here with `value_type = …, inline`); handlers get these types.

use chrono::{DateTime, Utc};
use secrecy::SecretString;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::{KnownFormat, RefOr, SchemaFormat};
use uuid::Uuid;

use crate::error::FieldError;
use crate::patterns::{self, Pattern};

/// A text rule: a length in characters (as JSON Schema counts them) and an optional pattern,
/// each with the message a refused value gets.
pub struct TextRule {
    pub min_chars: usize,
    pub max_chars: usize,
    pub length_message: &'static str,
    pub pattern: Option<(&'static Pattern, &'static str)>,
    /// Published as `format: password` (never echoed, never logged).
    pub secret: bool,
}

impl TextRule {
    pub fn check(&self, text: &str) -> Result<(), &'static str> {
        if !(self.min_chars..=self.max_chars).contains(&text.chars().count()) {
            return Err(self.length_message);
        }
        match self.pattern {
            Some((pattern, message)) if !pattern.matches(text) => Err(message),
            _ => Ok(()),
        }
    }

    /// The JSON Schema of a string this rule admits.
    pub fn schema(&self) -> RefOr<Schema> {
        let mut schema = ObjectBuilder::new().schema_type(Type::String).max_length(Some(self.max_chars));
        if self.min_chars > 0 {
            schema = schema.min_length(Some(self.min_chars));
        }
        if let Some((pattern, _)) = self.pattern {
            schema = schema.pattern(Some(pattern.text));
        }
        if self.secret {
            schema = schema.format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)));
        }
        schema.into()
    }
}

/// A text newtype with its rule, `parse`, `as_str` and an OpenAPI schema read from the rule.
macro_rules! text_type {
    ($(#[$doc:meta])* $name:ident, $rule:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq)]
        pub struct $name(String);

        impl $name {
            pub const RULE: TextRule = $rule;

            pub fn parse(text: impl Into<String>) -> Result<Self, &'static str> {
                let text = text.into();
                Self::RULE.check(&text).map(|()| Self(text))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                Self::RULE.schema()
            }
        }

        impl utoipa::ToSchema for $name {}
    };
}

const NO_CONTROL: (&Pattern, &str) = (&patterns::NO_CONTROL, "must not contain control characters");

text_type!(
    /// An `https://` URL of a public host name ([`patterns::SOURCE_URL`]): what the job
    /// executor fetches.
    SourceUrl,
    TextRule {
        min_chars: 0,
        max_chars: 2048,
        length_message: "must be at most 2048 characters",
        pattern: Some((
            &patterns::SOURCE_URL,
            "must be an https:// URL of a host name (no IP address, user or port 0), without spaces or control characters",
        )),
        secret: false,
    }
);

text_type!(
    /// A video's title.
    Title,
    TextRule {
        min_chars: 0,
        max_chars: 512,
        length_message: "must be at most 512 characters",
        pattern: Some(NO_CONTROL),
        secret: false
    }
);

const LANGUAGE_MESSAGE: &str = "must be a BCP 47 language tag such as en or pt-BR";

text_type!(
    /// A spoken language as a BCP 47 tag (`en`, `pt-BR`).
    Language,
    TextRule {
        min_chars: 2,
        max_chars: 16,
        length_message: LANGUAGE_MESSAGE,
        pattern: Some((&patterns::LANGUAGE, LANGUAGE_MESSAGE)),
        secret: false,
    }
);

text_type!(
    /// A user's login name.
    Username,
    TextRule {
        min_chars: 1,
        max_chars: 128,
        length_message: "must be 1 to 128 characters",
        pattern: Some(NO_CONTROL),
        secret: false
    }
);

text_type!(
    /// An opaque refresh token as a client presents it.
    RefreshToken,
    TextRule {
        min_chars: 1,
        max_chars: 256,
        length_message: "must be 1 to 256 characters",
        pattern: None,
        secret: false
    }
);

/// A password as presented at login; kept secret from the moment it is parsed.
pub struct Password;

impl Password {
    pub const RULE: TextRule = TextRule {
        min_chars: 1,
        max_chars: 1024,
        length_message: "must be 1 to 1024 characters",
        pattern: None,
        secret: true,
    };

    /// A new user's password (`user add`): at least 12 characters.
    pub const NEW_RULE: TextRule = TextRule {
        min_chars: 12,
        max_chars: 1024,
        length_message: "must be 12 to 1024 characters",
        pattern: None,
        secret: true,
    };

    pub fn parse(text: String) -> Result<SecretString, &'static str> {
        Self::RULE.check(&text).map(|()| SecretString::from(text))
    }

    pub fn parse_new(text: String) -> Result<SecretString, &'static str> {
        Self::NEW_RULE.check(&text).map(|()| SecretString::from(text))
    }
}

impl utoipa::PartialSchema for Password {
    fn schema() -> RefOr<Schema> {
        Self::RULE.schema()
    }
}

impl utoipa::ToSchema for Password {}

/// A position in `GET /videos`: the last item's creation time and id, spelt `{µs}_{uuid}`
/// ([`patterns::CURSOR`]) and taken only in that canonical spelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

impl Cursor {
    pub const MESSAGE: &str = "is not a cursor this API issued";

    pub fn parse(text: &str) -> Result<Self, &'static str> {
        let parsed = || {
            if !patterns::CURSOR.matches(text) {
                return None;
            }
            let (micros, id) = text.split_once('_')?;
            Some(Self {
                created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?,
                id: Uuid::try_parse(id).ok()?,
            })
        };
        parsed().ok_or(Self::MESSAGE)
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}_{}", self.created_at.timestamp_micros(), self.id)
    }
}

impl utoipa::PartialSchema for Cursor {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new().schema_type(Type::String).pattern(Some(patterns::CURSOR.text)).into()
    }
}

impl utoipa::ToSchema for Cursor {}

/// Collects the problems of a body's fields, so one answer names every field that is wrong.
#[derive(Default)]
pub struct Problems(Vec<FieldError>);

impl Problems {
    /// The parsed value, or `None` with the problem noted under `field`.
    pub fn field<T>(&mut self, field: &str, parsed: Result<T, &'static str>) -> Option<T> {
        parsed.map_err(|message| self.0.push(FieldError::new(field, message))).ok()
    }

    /// An optional field: absent is fine, present must parse.
    pub fn optional<T>(&mut self, field: &str, parsed: Option<Result<T, &'static str>>) -> Option<Option<T>> {
        match parsed {
            None => Some(None),
            Some(parsed) => self.field(field, parsed).map(Some),
        }
    }

    pub fn into_errors(self) -> Vec<FieldError> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_takes_exactly_what_its_rule_admits() {
        assert_eq!(SourceUrl::parse("https://media.example/a.mp4").unwrap().as_str(), "https://media.example/a.mp4");
        assert_eq!(SourceUrl::parse("https://10.0.0.1/a"), Err(SourceUrl::RULE.pattern.unwrap().1));
        assert_eq!(
            SourceUrl::parse(format!("https://a.example/{}", "x".repeat(2048))),
            Err(SourceUrl::RULE.length_message)
        );
        assert!(
            Title::parse("").is_ok() && Title::parse("bell\u{7}").is_err() && Title::parse("t".repeat(513)).is_err()
        );
        assert!(Language::parse("pt-BR").is_ok() && Language::parse("e").is_err() && Language::parse("pt_BR").is_err());
        assert!(Username::parse("").is_err() && Username::parse("zoë").is_ok() && Username::parse("a\u{0}").is_err());
        assert!(RefreshToken::parse("t".repeat(256)).is_ok() && RefreshToken::parse("t".repeat(257)).is_err());
        assert!(Password::parse(String::new()).is_err() && Password::parse_new("short".into()).is_err());
        assert!(Password::parse_new("correct horse battery".into()).is_ok());
    }

    #[test]
    fn cursors_are_taken_only_in_their_canonical_spelling() {
        let id = "0195a4b2-7c1d-7e3f-8a9b-0c1d2e3f4a5b";
        let cursor = Cursor::parse(&format!("1764352345123456_{id}")).expect("canonical");
        assert_eq!((cursor.created_at.timestamp_micros(), cursor.id.to_string().as_str()), (1_764_352_345_123_456, id));
        assert_eq!(cursor.to_string(), format!("1764352345123456_{id}"), "spelt back as issued");
        for forged in [
            format!("_{id}"),
            format!("12345678901234567_{id}"),
            format!("-5_{id}"),
            format!("+5_{id}"),
            format!("5_{}", id.to_uppercase()),
            format!("5_{{{id}}}"),
            format!("5_{}", id.replace('-', "")),
            "5_".into(),
            "forged".into(),
        ] {
            assert_eq!(Cursor::parse(&forged), Err(Cursor::MESSAGE), "{forged}");
        }
    }

    #[test]
    fn schemas_publish_the_rule_itself() {
        let schema = serde_json::to_value(<SourceUrl as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!(schema["pattern"], patterns::SOURCE_URL.text);
        assert_eq!(schema["maxLength"], 2048);
        let schema = serde_json::to_value(<Password as utoipa::PartialSchema>::schema()).unwrap();
        assert_eq!((schema["format"].as_str(), schema["minLength"].as_u64()), (Some("password"), Some(1)));
    }
}
