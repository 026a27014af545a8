//! Rate expressions as the seed writes them: `N/second|minute|hour|day`.

use alloc::string::String;

use crate::json::quoted;
use core::fmt;
use core::str::FromStr;

/// A quota of `limit` requests per `period_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    limit: u32,
    period_secs: u32,
}

/// The largest quota a tier may grant; beyond it the emission interval drops below a nanosecond.
pub const MAX_LIMIT: u32 = 1_000_000;
/// [`MAX_LIMIT`] as error messages write it (a test holds the two together).
const MAX_LIMIT_TEXT: &str = "1000000";

impl Rate {
    pub fn new(limit: u32, period_secs: u32) -> Option<Self> {
        ((1..=MAX_LIMIT).contains(&limit) && period_secs >= 1).then_some(Self { limit, period_secs })
    }

    /// For parts already checked by [`Rate::new`] (a compiled rate's own).
    pub(crate) fn from_parts(limit: u32, period_secs: u32) -> Self {
        Self { limit, period_secs }
    }

    pub fn limit(self) -> u32 {
        self.limit
    }

    pub fn period_secs(self) -> u32 {
        self.period_secs
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.period_secs {
            1 => "second",
            60 => "minute",
            3600 => "hour",
            86_400 => "day",
            other => return write!(f, "{}/{}s", self.limit, other),
        };
        write!(f, "{}/{}", self.limit, unit)
    }
}

/// Why a rate expression was rejected; the text completes "`<input>` …".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateParseError(pub(crate) String);

impl fmt::Display for RateParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Rate {
    type Err = RateParseError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let shape = || RateParseError([&quoted(input), " is not N/second|minute|hour|day"].concat());
        let (count, unit) = input.split_once('/').ok_or_else(shape)?;
        let count = count.trim();
        if count.is_empty() || !count.bytes().all(|b| b.is_ascii_digit()) {
            return Err(shape());
        }
        let period_secs = match unit.trim().to_ascii_lowercase().as_str() {
            "second" | "seconds" | "s" => 1,
            "minute" | "minutes" | "m" => 60,
            "hour" | "hours" | "h" => 3600,
            "day" | "days" | "d" => 86_400,
            _ => return Err(shape()),
        };
        let limit: u32 = count.parse().map_err(|_| {
            RateParseError([&quoted(input), " has a count above the maximum of ", MAX_LIMIT_TEXT].concat())
        })?;
        Rate::new(limit, period_secs).ok_or_else(|| {
            RateParseError([&quoted(input), " must allow between 1 and ", MAX_LIMIT_TEXT, " requests"].concat())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::prelude::rust_2024::*;

    #[test]
    fn parses_every_unit_of_the_seed() {
        assert_eq!("5/minute".parse(), Ok(Rate { limit: 5, period_secs: 60 }));
        assert_eq!("10/second".parse(), Ok(Rate { limit: 10, period_secs: 1 }));
        assert_eq!("100/hour".parse(), Ok(Rate { limit: 100, period_secs: 3600 }));
        assert_eq!("1000 / days".parse(), Ok(Rate { limit: 1000, period_secs: 86_400 }));
    }

    #[test]
    fn rejects_misspellings_and_zero_with_the_input_quoted() {
        let err = "5/minit".parse::<Rate>().unwrap_err();
        assert_eq!(err.to_string(), r#""5/minit" is not N/second|minute|hour|day"#);
        assert!("0/minute".parse::<Rate>().is_err());
        assert!("-1/minute".parse::<Rate>().is_err());
        assert!("five/minute".parse::<Rate>().is_err());
        assert!("99999999999/minute".parse::<Rate>().is_err());
        assert!("5".parse::<Rate>().is_err());
    }

    #[test]
    fn displays_in_the_seed_notation() {
        assert_eq!(Rate::new(5, 60).unwrap().to_string(), "5/minute");
        assert_eq!(Rate::new(5, 7).unwrap().to_string(), "5/7s");
    }
}
