//! Istio path templates (`paths: ["/api/{*}/items/{**}"]`), matched as Envoy's
//! `UriTemplateMatchConfig` matches them: `{*}` is exactly one non-empty path segment, `{**}`
//! (only as the last segment) is one or more characters that may include `/`.

/// One segment of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    One,
    Many,
}

/// A compiled path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    source: String,
    segments: Vec<Segment>,
}

impl PathTemplate {
    /// Whether `text` uses template operators (and must be parsed with [`PathTemplate::parse`]).
    pub fn is_template(text: &str) -> bool {
        text.contains("{*}") || text.contains("{**}")
    }

    /// Parses a template; operators must be whole segments and `{**}` the last one.
    pub fn parse(text: &str) -> Result<Self, String> {
        let Some(rest) = text.strip_prefix('/') else {
            return Err(format!("path template {text:?} must start with '/'"));
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let mut segments = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            let segment = match *part {
                "{*}" => Segment::One,
                "{**}" if index + 1 == parts.len() => Segment::Many,
                "{**}" => {
                    return Err(format!(
                        "path template {text:?}: `{{**}}` must be the last segment"
                    ))
                }
                literal if literal.contains(['{', '}', '*']) => {
                    return Err(format!(
                        "path template {text:?}: `{{*}}` and `{{**}}` must be whole path segments, and `*` cannot be mixed with them"
                    ))
                }
                literal => Segment::Literal(literal.to_string()),
            };
            segments.push(segment);
        }
        Ok(PathTemplate {
            source: text.to_string(),
            segments,
        })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether the (normalized, query-less) path matches.
    pub fn matches(&self, path: &str) -> bool {
        let Some(mut rest) = path.strip_prefix('/') else {
            return false;
        };
        for (index, segment) in self.segments.iter().enumerate() {
            let last = index + 1 == self.segments.len();
            match segment {
                Segment::Many => return !rest.is_empty(),
                Segment::One | Segment::Literal(_) => {
                    let (head, tail) = match rest.split_once('/') {
                        Some((head, tail)) => (head, Some(tail)),
                        None => (rest, None),
                    };
                    let ok = match segment {
                        Segment::Literal(literal) => head == literal,
                        _ => !head.is_empty(),
                    };
                    if !ok {
                        return false;
                    }
                    match (tail, last) {
                        (None, true) => return true,
                        (None, false) | (Some(_), true) => return false,
                        (Some(tail), false) => rest = tail,
                    }
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(text: &str) -> PathTemplate {
        PathTemplate::parse(text).unwrap()
    }

    #[test]
    fn single_segment_operator() {
        let t = template("/api/{*}/items");
        assert!(t.matches("/api/v1/items"));
        assert!(!t.matches("/api/v1/v2/items"));
        assert!(!t.matches("/api//items"));
        assert!(!t.matches("/api/v1/items/"));
        assert!(!t.matches("/api/v1"));
        let tail = template("/users/{*}");
        assert!(tail.matches("/users/alice"));
        assert!(!tail.matches("/users/"));
        assert!(!tail.matches("/users/alice/"));
        assert!(!tail.matches("/users"));
    }

    #[test]
    fn multi_segment_operator() {
        let t = template("/static/{**}");
        assert!(t.matches("/static/a"));
        assert!(t.matches("/static/a/b/c.css"));
        assert!(t.matches("/static/a/"));
        assert!(!t.matches("/static/"));
        assert!(!t.matches("/static"));
        assert!(!t.matches("/staticx/a"));
        let mixed = template("/{*}/reviews/{**}");
        assert!(mixed.matches("/p1/reviews/1/2"));
        assert!(!mixed.matches("/p1/ratings/1"));
        assert_eq!(mixed.as_str(), "/{*}/reviews/{**}");
    }

    #[test]
    fn literal_templates_match_exactly() {
        let t = template("/a/b");
        assert!(t.matches("/a/b"));
        assert!(!t.matches("/a/b/"));
        assert!(!t.matches("/a"));
        assert!(!t.matches("a/b"));
    }

    #[test]
    fn invalid_templates_are_refused() {
        for bad in [
            "api/{*}",
            "/a/{**}/b",
            "/a/x{*}",
            "/a/{*}x",
            "/a/*/{*}",
            "/{***}",
        ] {
            assert!(PathTemplate::parse(bad).is_err(), "{bad}");
        }
        assert!(PathTemplate::is_template("/a/{*}"));
        assert!(!PathTemplate::is_template("/a/*"));
    }
}
