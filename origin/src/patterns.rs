//! The patterns of the API's text rules, each kept as its source text: [`crate::domain`]'s types
//! check values with them and publish the same text in their OpenAPI schemas.

use std::sync::OnceLock;

use regex::Regex;

/// No control characters (Unicode `Cc`: NUL, which PostgreSQL cannot store, among them).
pub static NO_CONTROL: Pattern = Pattern::new(r"^[^\x00-\x1F\x7F-\x9F]*$");

/// `https://`, a DNS host name whose last label starts with a letter, an optional port, then
/// any path and query without spaces or control characters. No user info and no IP literals:
/// the job executor fetches this URL, and an address such as `https://169.254.169.254/` or
/// `https://10.0.0.1/` must not be a way into the origin's network.
pub static SOURCE_URL: Pattern = Pattern::new(concat!(
    r"^https://",
    r"([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+",
    r"[A-Za-z]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?",
    r"(:([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5]))?",
    r"([/?#][^\s\x00-\x1F\x7F-\x9F]*)?$",
));

/// A `GET /videos` cursor: the last item's creation time in µs and its id, canonical spelling only.
pub static CURSOR: Pattern =
    Pattern::new(r"^[0-9]{1,16}_[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$");

/// A BCP 47 language tag's shape: `en`, `pt-BR`, `zh-Hant-TW`.
pub static LANGUAGE: Pattern = Pattern::new(r"^[A-Za-z0-9]{1,8}(-[A-Za-z0-9]{1,8})*$");

/// A regular expression kept as its source text (what the schema publishes) and compiled on
/// first use.
pub struct Pattern {
    pub text: &'static str,
    compiled: OnceLock<Regex>,
}

impl Pattern {
    const fn new(text: &'static str) -> Self {
        Self { text, compiled: OnceLock::new() }
    }

    pub fn matches(&self, text: &str) -> bool {
        // The patterns are constants, each compiled by the unit tests below.
        #[allow(clippy::expect_used)]
        let regex = self.compiled.get_or_init(|| Regex::new(self.text).expect("a valid constant pattern"));
        regex.is_match(text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_urls_are_public_host_names_over_https() {
        for good in
            ["https://media.example/a.mp4", "https://a.b:8443/x?y=1#z", "https://x-1.example.com", "https://a.io/ä"]
        {
            assert!(SOURCE_URL.matches(good), "{good}");
        }
        for bad in [
            "http://media.example/a.mp4",
            "https://10.0.0.1/a",
            "https://169.254.169.254/latest/meta-data",
            "https://[::1]/a",
            "https://localhost/a",
            "https://user@media.example/a",
            "https://media.example:0/a",
            "https://media.example:65536/a",
            "https://-a.example/",
            "https://media.example/a b",
            "https://media.example/a\u{85}",
            "https://media.example\n",
        ] {
            assert!(!SOURCE_URL.matches(bad), "{bad}");
        }
    }

    #[test]
    fn control_characters_are_refused_everywhere_in_the_text() {
        assert!(NO_CONTROL.matches("Zoë's talk — ok"));
        // The pattern is exactly Unicode's `Cc` category.
        for c in (0..=0x10FFFF).filter_map(char::from_u32) {
            assert_eq!(NO_CONTROL.matches(&c.to_string()), !c.is_control(), "{c:?}");
        }
        for bad in ["a\u{0}", "\u{1f}", "x\u{7f}y", "\u{9f}"] {
            assert!(!NO_CONTROL.matches(bad), "{bad:?}");
        }
    }

    #[test]
    fn language_tags() {
        assert!(LANGUAGE.matches("pt-BR") && LANGUAGE.matches("zh-Hant-TW"));
        assert!(!LANGUAGE.matches("pt_BR") && !LANGUAGE.matches("toolongpart9") && !LANGUAGE.matches("a-"));
    }
}
