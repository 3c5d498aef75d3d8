//! What Envoy's `/stats/prometheus` makes of this filter's metrics, reproduced off-proxy: tag
//! extraction with `stats_config.stats_tags` regexes, the `wasmcustom.` namespace dropped, and
//! the Prometheus text format (plus a parser for it). Used by the tests to check recorded
//! series end to end, and by anyone who wants to preview a configuration's series.
//!
//! Differences from Envoy that matter when comparing: Envoy's histograms are log-linear
//! approximations (sums and values on a bucket edge can differ slightly), and Envoy also
//! applies its built-in tag extractors (none of which match this filter's names).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use regex_lite::Regex;

/// Envoy's default histogram buckets (`stats_config.histogram_bucket_settings` changes them).
pub const ENVOY_DEFAULT_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The namespace Envoy files wasm-defined metrics under.
pub const WASM_NAMESPACE: &str = "wasmcustom.";

/// A recorded metric.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sample {
    /// A counter's value.
    Counter(u64),
    /// A gauge's value.
    Gauge(u64),
    /// Every value a histogram recorded.
    Histogram(Vec<u64>),
}

/// One `stats_tags` entry: a tag name and the regex extracting it.
#[derive(Debug, Clone)]
pub struct TagExtractor {
    name: String,
    regex: Regex,
}

impl TagExtractor {
    /// A tag extractor; the regex's first group is cut from the name, its second (or first)
    /// group is the value, as Envoy's `TagExtractorStdRegexImpl`.
    pub fn new(name: &str, regex: &str) -> Result<Self, String> {
        Ok(TagExtractor {
            name: name.to_string(),
            regex: Regex::new(regex).map_err(|error| format!("{name}: {error}"))?,
        })
    }

    /// Extractors from Envoy's `stats_tags` JSON (`[{"tag_name": .., "regex": ..}]`).
    pub fn from_stats_tags(stats_tags: &serde_json::Value) -> Result<Vec<Self>, String> {
        stats_tags
            .as_array()
            .ok_or("stats_tags must be a list")?
            .iter()
            .map(|entry| {
                let name = entry["tag_name"].as_str().ok_or("missing tag_name")?;
                let regex = entry["regex"].as_str().ok_or("missing regex")?;
                TagExtractor::new(name, regex)
            })
            .collect()
    }
}

/// Envoy's tag extraction: every extractor runs on the full name; the parts they match are cut
/// out together. Returns the tag-extracted name and the tags in extractor order.
pub fn extract_tags(name: &str, extractors: &[TagExtractor]) -> (String, Vec<(String, String)>) {
    let mut tags = Vec::new();
    let mut removed: Vec<(usize, usize)> = Vec::new();
    for extractor in extractors {
        if tags
            .iter()
            .any(|(tag, _): &(String, String)| *tag == extractor.name)
        {
            continue;
        }
        let Some(captures) = extractor.regex.captures(name) else {
            continue;
        };
        let Some(remove) = captures.get(1) else {
            continue;
        };
        let value = captures.get(2).unwrap_or(remove);
        tags.push((extractor.name.clone(), value.as_str().to_string()));
        removed.push((remove.start(), remove.end()));
    }
    let extracted: String = name
        .char_indices()
        .filter(|(index, _)| {
            !removed
                .iter()
                .any(|(start, end)| (*start..*end).contains(index))
        })
        .map(|(_, c)| c)
        .collect();
    (extracted, tags)
}

fn sanitize_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The Prometheus name Envoy gives a tag-extracted stat name: custom namespaces are dropped
/// without the `envoy_` prefix, everything else gets it.
pub fn prometheus_name(extracted: &str) -> String {
    match extracted.strip_prefix(WASM_NAMESPACE) {
        Some(custom) => sanitize_name(custom),
        None => format!("envoy_{}", sanitize_name(extracted)),
    }
}

fn labels(tags: &[(String, String)], extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = tags
        .iter()
        .map(|(name, value)| format!("{}=\"{}\"", sanitize_name(name), escape_value(value)))
        .collect();
    if let Some((name, value)) = extra {
        parts.push(format!("{name}=\"{value}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

fn number(value: f64) -> String {
    if value.is_infinite() {
        "+Inf".to_string()
    } else {
        format!("{value}")
    }
}

/// Renders metrics as `/stats/prometheus` would. `metrics` are named as the module defined them
/// (the `wasmcustom.` namespace is added, as Envoy does); `buckets` are the histogram buckets.
pub fn render(
    metrics: &[(String, Sample)],
    extractors: &[TagExtractor],
    buckets: &[f64],
) -> String {
    let mut families: BTreeMap<String, (&'static str, Vec<String>)> = BTreeMap::new();
    for (name, sample) in metrics {
        let (extracted, tags) = extract_tags(&format!("{WASM_NAMESPACE}{name}"), extractors);
        let family = prometheus_name(&extracted);
        let kind = match sample {
            Sample::Counter(_) => "counter",
            Sample::Gauge(_) => "gauge",
            Sample::Histogram(_) => "histogram",
        };
        let lines = &mut families
            .entry(family.clone())
            .or_insert((kind, Vec::new()))
            .1;
        match sample {
            Sample::Counter(value) | Sample::Gauge(value) => {
                lines.push(format!("{family}{} {value}", labels(&tags, None)));
            }
            Sample::Histogram(values) => {
                for bound in buckets.iter().copied().chain([f64::INFINITY]) {
                    #[allow(clippy::cast_precision_loss)]
                    let count = values.iter().filter(|v| **v as f64 <= bound).count();
                    let le = number(bound);
                    lines.push(format!(
                        "{family}_bucket{} {count}",
                        labels(&tags, Some(("le", &le)))
                    ));
                }
                let sum: u64 = values.iter().sum();
                lines.push(format!("{family}_sum{} {sum}", labels(&tags, None)));
                lines.push(format!(
                    "{family}_count{} {}",
                    labels(&tags, None),
                    values.len()
                ));
            }
        }
    }
    let mut text = String::new();
    for (family, (kind, lines)) in families {
        let _ = writeln!(text, "# TYPE {family} {kind}");
        for line in lines {
            let _ = writeln!(text, "{line}");
        }
    }
    text
}

/// One line of a Prometheus exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Metric name (with `_bucket`/`_sum`/`_count` for histograms).
    pub name: String,
    /// Labels.
    pub labels: BTreeMap<String, String>,
    /// Value.
    pub value: f64,
}

/// A parsed exposition: `# TYPE` declarations and series.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Exposition {
    /// Family name to type (`counter`, `gauge`, `histogram`, ...).
    pub types: BTreeMap<String, String>,
    /// Every series, in order.
    pub series: Vec<Series>,
}

impl Exposition {
    /// The series named `name` whose labels include every pair of `labels`.
    pub fn find<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&str, &str)],
    ) -> impl Iterator<Item = &'a Series> + 'a {
        self.series.iter().filter(move |series| {
            series.name == name
                && labels
                    .iter()
                    .all(|(key, value)| series.labels.get(*key).map(String::as_str) == Some(*value))
        })
    }
}

fn parse_labels(text: &str) -> Result<(BTreeMap<String, String>, &str), String> {
    let mut labels = BTreeMap::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if let Some(after) = rest.strip_prefix('}') {
            return Ok((labels, after));
        }
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in `{text}`"))?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => return Err(format!("unterminated label value in `{text}`")),
                },
                Some((index, '"')) => break index,
                Some((_, c)) => value.push(c),
                None => return Err(format!("unterminated label value in `{text}`")),
            }
        };
        labels.insert(name.trim().to_string(), value);
        rest = after.get(end + 1..).unwrap_or_default();
    }
}

/// Parses the Prometheus text format (what `/stats/prometheus` serves).
pub fn parse(text: &str) -> Result<Exposition, String> {
    let mut exposition = Exposition::default();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        if let Some(declaration) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declaration
                .split_once(' ')
                .ok_or_else(|| format!("bad TYPE line `{line}`"))?;
            exposition.types.insert(name.to_string(), kind.to_string());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let name_end = line
            .find(['{', ' '])
            .ok_or_else(|| format!("bad series line `{line}`"))?;
        let name = line.get(..name_end).unwrap_or_default().to_string();
        let rest = line.get(name_end..).unwrap_or_default();
        let (labels, rest) = match rest.strip_prefix('{') {
            Some(inner) => parse_labels(inner)?,
            None => (BTreeMap::new(), rest),
        };
        let value_text = rest
            .split_whitespace()
            .next()
            .ok_or_else(|| format!("no value in `{line}`"))?;
        let value = match value_text {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other
                .parse()
                .map_err(|_| format!("bad value `{other}` in `{line}`"))?,
        };
        exposition.series.push(Series {
            name,
            labels,
            value,
        });
    }
    Ok(exposition)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::{encode_stat_name, stats_tags};

    fn extractors(names: &[&str]) -> Vec<TagExtractor> {
        let names: Vec<String> = names.iter().map(|n| (*n).to_string()).collect();
        TagExtractor::from_stats_tags(&stats_tags(&names)).unwrap()
    }

    #[test]
    fn extraction_cuts_every_dimension_out_of_the_name() {
        let name = format!(
            "wasmcustom.{}",
            encode_stat_name(
                "istio_requests_total",
                &[
                    ("reporter", "destination"),
                    ("grpc_response_status", ""),
                    ("host", "a.b.c")
                ]
            )
        );
        let (extracted, tags) = extract_tags(
            &name,
            &extractors(&["grpc_response_status", "reporter", "host"]),
        );
        assert_eq!(extracted, "wasmcustom.istio_requests_total");
        assert_eq!(
            tags,
            [
                ("grpc_response_status".to_string(), String::new()),
                ("reporter".to_string(), "destination".to_string()),
                ("host".to_string(), "a.b.c".to_string())
            ]
        );
        assert_eq!(prometheus_name(&extracted), "istio_requests_total");
        assert_eq!(
            prometheus_name("http.ingress.rq_total"),
            "envoy_http_ingress_rq_total"
        );
    }

    #[test]
    fn renders_and_parses_counters_and_histograms() {
        let counter = encode_stat_name(
            "istio_requests_total",
            &[("reporter", "destination"), ("quote", "say \"hi\"")],
        );
        let histogram = encode_stat_name(
            "istio_request_duration_milliseconds",
            &[("reporter", "destination")],
        );
        let text = render(
            &[
                (counter, Sample::Counter(3)),
                (histogram, Sample::Histogram(vec![0, 7, 40])),
            ],
            &extractors(&["reporter", "quote"]),
            &[1.0, 10.0],
        );
        assert_eq!(
            text,
            "# TYPE istio_request_duration_milliseconds histogram\n\
             istio_request_duration_milliseconds_bucket{reporter=\"destination\",le=\"1\"} 1\n\
             istio_request_duration_milliseconds_bucket{reporter=\"destination\",le=\"10\"} 2\n\
             istio_request_duration_milliseconds_bucket{reporter=\"destination\",le=\"+Inf\"} 3\n\
             istio_request_duration_milliseconds_sum{reporter=\"destination\"} 47\n\
             istio_request_duration_milliseconds_count{reporter=\"destination\"} 3\n\
             # TYPE istio_requests_total counter\n\
             istio_requests_total{reporter=\"destination\",quote=\"say \\\"hi\\\"\"} 3\n"
        );
        let parsed = parse(&text).unwrap();
        assert_eq!(parsed.types["istio_requests_total"], "counter");
        let series: Vec<_> = parsed
            .find("istio_requests_total", &[("quote", "say \"hi\"")])
            .collect();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].value, 3.0);
        let infinite: Vec<_> = parsed
            .find(
                "istio_request_duration_milliseconds_bucket",
                &[("le", "+Inf")],
            )
            .collect();
        assert_eq!(infinite[0].value, 3.0);
        assert!(parse("name{a=\"x} 1").is_err());
        assert!(parse("name 1x").is_err());
    }
}
