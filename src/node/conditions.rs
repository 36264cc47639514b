//! Conditional requests: `If-Match` and `If-None-Match` against the current
//! version of a key, as RFC 9110 defines them for a store whose ETags are
//! versions. The http layer parses headers into `Preconditions`; the write
//! path checks them under the key's lock, so check and write are atomic.

use super::version::Version;
use super::NodeError;

/// An `If-Match` / `If-None-Match` value: `*` or a list of entity tags.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EtagList {
    Any,
    /// Opaque tags, without quotes; `true` marks a weak one (`W/"..."`).
    Tags(Vec<(String, bool)>),
}

impl EtagList {
    /// Whether the list matches a key whose live version is `current`
    /// (`None` when the key is absent or deleted), by strong comparison
    /// (`If-Match`): a weak tag never matches.
    pub fn matches_strong(&self, current: Option<&Version>) -> bool {
        self.matches(current, false)
    }

    /// The same by weak comparison (`If-None-Match`): `W/"x"` matches `"x"`.
    pub fn matches_weak(&self, current: Option<&Version>) -> bool {
        self.matches(current, true)
    }

    fn matches(&self, current: Option<&Version>, weak_ok: bool) -> bool {
        match (self, current) {
            (_, None) => false,
            (EtagList::Any, Some(_)) => true,
            (EtagList::Tags(tags), Some(v)) => {
                let etag = v.to_string();
                tags.iter()
                    .any(|(t, weak)| *t == etag && (weak_ok || !weak))
            }
        }
    }

    /// Parses a header value: `*`, or comma-separated quoted tags
    /// (`"a", W/"b"`). Returns `None` when the value is malformed.
    pub fn parse(value: &str) -> Option<EtagList> {
        let value = value.trim();
        if value == "*" {
            return Some(EtagList::Any);
        }
        let mut tags = Vec::new();
        for part in value.split(',') {
            let part = part.trim();
            if part.is_empty() {
                continue;
            }
            let (weak, part) = match part.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, part),
            };
            let inner = part.strip_prefix('"')?.strip_suffix('"')?;
            if inner.contains('"') {
                return None;
            }
            tags.push((inner.to_owned(), weak));
        }
        if tags.is_empty() {
            return None;
        }
        Some(EtagList::Tags(tags))
    }
}

/// The conditions of one request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Option<EtagList>,
    pub if_none_match: Option<EtagList>,
}

impl Preconditions {
    /// Checks a write's conditions against the key's live version.
    pub fn check(&self, current: Option<&Version>) -> Result<(), NodeError> {
        if let Some(list) = &self.if_match {
            if !list.matches_strong(current) {
                return Err(NodeError::PreconditionFailed(
                    "If-Match does not match the current version",
                ));
            }
        }
        if let Some(list) = &self.if_none_match {
            if list.matches_weak(current) {
                return Err(NodeError::PreconditionFailed(
                    "If-None-Match matches the current version",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(ts: u64) -> Version {
        Version {
            ts,
            node: "n1".into(),
        }
    }

    #[test]
    fn parses_star_and_lists() {
        assert_eq!(EtagList::parse("*"), Some(EtagList::Any));
        assert_eq!(
            EtagList::parse(r#""a-n1", W/"b-n2""#),
            Some(EtagList::Tags(vec![
                ("a-n1".into(), false),
                ("b-n2".into(), true)
            ]))
        );
        assert_eq!(EtagList::parse("a-n1"), None);
        assert_eq!(EtagList::parse(r#""a"b""#), None);
        assert_eq!(EtagList::parse(""), None);
    }

    #[test]
    fn if_match_needs_a_live_matching_version() {
        let pre = Preconditions {
            if_match: Some(EtagList::Tags(vec![(v(10).to_string(), false)])),
            ..Default::default()
        };
        assert!(pre.check(Some(&v(10))).is_ok());
        assert!(pre.check(Some(&v(11))).is_err());
        assert!(pre.check(None).is_err());
        let any = Preconditions {
            if_match: Some(EtagList::Any),
            ..Default::default()
        };
        assert!(any.check(Some(&v(1))).is_ok());
        assert!(any.check(None).is_err());
    }

    #[test]
    fn if_match_is_strong_and_if_none_match_weak() {
        let weak = EtagList::Tags(vec![(v(10).to_string(), true)]);
        assert!(!weak.matches_strong(Some(&v(10))));
        assert!(weak.matches_weak(Some(&v(10))));
    }

    #[test]
    fn if_none_match_star_means_create_only() {
        let pre = Preconditions {
            if_none_match: Some(EtagList::Any),
            ..Default::default()
        };
        assert!(pre.check(None).is_ok());
        assert!(pre.check(Some(&v(1))).is_err());
    }
}
