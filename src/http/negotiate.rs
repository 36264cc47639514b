//! Content negotiation for the seed's routes: the answer's format follows
//! the request's `Accept` header, as the seed's mimerender did. HTML is the
//! default; XML, JSON (`{"message": ...}`) and plain text are offered too.
//! Whatever goes into HTML or XML is escaped.

/// A format the seed's routes can answer in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Html,
    Xml,
    Json,
    Text,
}

impl Format {
    /// In order of preference when the client likes several equally.
    const ALL: [Format; 4] = [Format::Html, Format::Xml, Format::Json, Format::Text];

    pub fn content_type(self) -> &'static str {
        match self {
            Format::Html => "text/html; charset=utf-8",
            Format::Xml => "application/xml; charset=utf-8",
            Format::Json => "application/json",
            Format::Text => "text/plain; charset=utf-8",
        }
    }

    /// The media types that select this format.
    fn media_types(self) -> &'static [&'static str] {
        match self {
            Format::Html => &["text/html"],
            Format::Xml => &["application/xml", "text/xml"],
            Format::Json => &["application/json"],
            Format::Text => &["text/plain"],
        }
    }
}

/// Picks the format for an `Accept` header value. `None` means the client
/// accepts none of them (406). No header, or an empty one, means HTML.
pub fn choose(accept: Option<&str>) -> Option<Format> {
    let accept = match accept.map(str::trim) {
        None | Some("") => return Some(Format::Html),
        Some(a) => a,
    };
    let ranges: Vec<(String, f32)> = accept.split(',').filter_map(parse_range).collect();
    if ranges.is_empty() {
        // Unparseable: answer as if no preference was given.
        return Some(Format::Html);
    }
    let mut best: Option<(Format, f32, u8)> = None;
    for format in Format::ALL {
        // The most specific range that covers this format sets its quality.
        let mut quality: Option<(f32, u8)> = None;
        for mt in format.media_types() {
            let (ty, _) = mt.split_once('/').unwrap_or((mt, ""));
            for (range, q) in &ranges {
                let specificity = if range == mt {
                    3
                } else if range.strip_suffix("/*") == Some(ty) {
                    2
                } else if range == "*/*" {
                    1
                } else {
                    continue;
                };
                if quality.is_none_or(|(_, s)| specificity > s) {
                    quality = Some((*q, specificity));
                }
            }
        }
        if let Some((q, s)) = quality {
            if q > 0.0 && best.is_none_or(|(_, bq, bs)| q > bq || (q == bq && s > bs)) {
                best = Some((format, q, s));
            }
        }
    }
    best.map(|(f, _, _)| f)
}

/// Parses one media range: `type/subtype;q=0.5;...` -> (lowercased, q).
fn parse_range(part: &str) -> Option<(String, f32)> {
    let mut pieces = part.split(';');
    let range = pieces.next()?.trim().to_ascii_lowercase();
    if !range.contains('/') {
        return None;
    }
    let mut q = 1.0;
    for param in pieces {
        if let Some((name, value)) = param.split_once('=') {
            if name.trim().eq_ignore_ascii_case("q") {
                q = value
                    .trim()
                    .parse::<f32>()
                    .ok()
                    .filter(|q| (0.0..=1.0).contains(q))?;
            }
        }
    }
    Some((range, q))
}

/// Escapes text for HTML and XML, dropping characters XML cannot carry.
pub fn escape_markup(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 || c == '\u{FFFE}' || c == '\u{FFFF}' => out.push('\u{FFFD}'),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn picks_formats() {
        assert_eq!(choose(None), Some(Format::Html));
        assert_eq!(choose(Some("")), Some(Format::Html));
        assert_eq!(choose(Some("*/*")), Some(Format::Html));
        assert_eq!(choose(Some("application/json")), Some(Format::Json));
        assert_eq!(choose(Some("text/xml")), Some(Format::Xml));
        assert_eq!(choose(Some("text/plain")), Some(Format::Text));
        assert_eq!(
            choose(Some("text/*;q=0.5, application/json")),
            Some(Format::Json)
        );
        assert_eq!(
            choose(Some("application/json;q=0.2, text/plain;q=0.9")),
            Some(Format::Text)
        );
        assert_eq!(choose(Some("*/*;q=0.1, text/html;q=0")), Some(Format::Xml));
        assert_eq!(choose(Some("image/png")), None);
        assert_eq!(choose(Some("garbage")), Some(Format::Html));
        assert_eq!(choose(Some("application/*")), Some(Format::Xml));
    }

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape_markup("<script>\"x\" & 'y'\u{0}</script>"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;\u{FFFD}&lt;/script&gt;"
        );
    }

    proptest! {
        #[test]
        fn never_panics(accept in ".*") {
            let _ = choose(Some(&accept));
        }

        #[test]
        fn escaped_text_has_no_markup(text in ".*") {
            let e = escape_markup(&text);
            prop_assert!(!e.contains('<') && !e.contains('>') && !e.contains('"'));
        }
    }
}
