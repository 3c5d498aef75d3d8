//! `envoy.type.v3.FractionalPercent`, `RuntimeFractionalPercent` and `Percent`.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

use crate::config::proto;

/// `FractionalPercent.DenominatorType`. Default `HUNDRED`, as in protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Denominator {
    /// 100.
    #[default]
    Hundred,
    /// 10,000.
    TenThousand,
    /// 1,000,000.
    Million,
}

impl Denominator {
    /// The denominator's value.
    pub fn value(self) -> u64 {
        match self {
            Denominator::Hundred => 100,
            Denominator::TenThousand => 10_000,
            Denominator::Million => 1_000_000,
        }
    }
}

impl<'de> Deserialize<'de> for Denominator {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct DenominatorVisitor;
        impl Visitor<'_> for DenominatorVisitor {
            type Value = Denominator;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("one of \"HUNDRED\", \"TEN_THOUSAND\", \"MILLION\" (or 0, 1, 2)")
            }
            fn visit_str<E: de::Error>(self, value: &str) -> Result<Denominator, E> {
                match value {
                    "HUNDRED" => Ok(Denominator::Hundred),
                    "TEN_THOUSAND" => Ok(Denominator::TenThousand),
                    "MILLION" => Ok(Denominator::Million),
                    other => Err(E::invalid_value(de::Unexpected::Str(other), &self)),
                }
            }
            // proto3 JSON also accepts an enum's number.
            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Denominator, E> {
                match value {
                    0 => Ok(Denominator::Hundred),
                    1 => Ok(Denominator::TenThousand),
                    2 => Ok(Denominator::Million),
                    other => Err(E::invalid_value(de::Unexpected::Unsigned(other), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Denominator, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
                }
            }
        }
        deserializer.deserialize_any(DenominatorVisitor)
    }
}

/// `{"numerator": 5, "denominator": "TEN_THOUSAND"}`: numerator/denominator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FractionalPercent {
    /// Numerator; a value above the denominator means 100%.
    #[serde(default, deserialize_with = "proto::uint32")]
    pub numerator: u32,
    /// Denominator.
    #[serde(default)]
    pub denominator: Denominator,
}

impl FractionalPercent {
    /// `numerator / denominator`.
    pub fn new(numerator: u32, denominator: Denominator) -> Self {
        FractionalPercent {
            numerator,
            denominator,
        }
    }

    /// Whether a request drawing `random_value` is selected, computed exactly as Envoy's
    /// `ProtobufPercentHelper::evaluateFractionalPercent`:
    /// `random_value % denominator < numerator`. Deterministic, so tests can pin outcomes.
    pub fn hits(&self, random_value: u64) -> bool {
        random_value % self.denominator.value() < u64::from(self.numerator)
    }

    /// The fraction as a number in `[0, 1]` (clamped).
    pub fn ratio(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let ratio = f64::from(self.numerator) / self.denominator.value() as f64;
        ratio.min(1.0)
    }
}

/// `{"default_value": FractionalPercent, "runtime_key": "..."}`.
///
/// wasm filters have no access to Envoy's runtime layer, so `runtime_key` is accepted (for
/// config compatibility) but never overrides `default_value`; Envoy behaves the same when
/// the key is absent from the runtime.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeFractionalPercent {
    /// The percentage applied.
    #[serde(default)]
    pub default_value: FractionalPercent,
    /// Runtime key (not consulted, see above).
    #[serde(default)]
    pub runtime_key: String,
}

impl RuntimeFractionalPercent {
    /// See [`FractionalPercent::hits`].
    pub fn hits(&self, random_value: u64) -> bool {
        self.default_value.hits(random_value)
    }
}

/// `envoy.type.v3.Percent`: `{"value": 12.5}`, a double in `[0, 100]`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(try_from = "RawPercent")]
pub struct Percent {
    value: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPercent {
    #[serde(default)]
    value: f64,
}

impl TryFrom<RawPercent> for Percent {
    type Error = String;
    fn try_from(raw: RawPercent) -> Result<Self, String> {
        Percent::new(raw.value)
    }
}

impl Percent {
    /// A percentage; `Err` outside `[0, 100]` (or NaN).
    pub fn new(value: f64) -> Result<Self, String> {
        if (0.0..=100.0).contains(&value) {
            Ok(Percent { value })
        } else {
            Err(format!(
                "percent value must be between 0 and 100, got {value}"
            ))
        }
    }

    /// The percentage, `0..=100`.
    pub fn value(&self) -> f64 {
        self.value
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, Validate};

    #[test]
    fn hits_follow_envoy_modulo_rule_for_each_denominator() {
        let hundred: FractionalPercent = serde_json::from_str(r#"{"numerator": 25}"#).unwrap();
        assert_eq!(hundred.denominator, Denominator::Hundred);
        assert!(hundred.hits(24));
        assert!(!hundred.hits(25));
        assert!(hundred.hits(124));
        assert_eq!((0..100).filter(|v| hundred.hits(*v)).count(), 25);

        let ten_thousand: FractionalPercent =
            serde_json::from_str(r#"{"numerator": 5, "denominator": "TEN_THOUSAND"}"#).unwrap();
        assert_eq!((0..10_000).filter(|v| ten_thousand.hits(*v)).count(), 5);
        assert!(ten_thousand.hits(10_004));

        let million: FractionalPercent =
            serde_json::from_str(r#"{"numerator": "1", "denominator": 2}"#).unwrap();
        assert_eq!(million.denominator, Denominator::Million);
        assert!(million.hits(0));
        assert!(!million.hits(1));
        assert!(million.hits(1_000_000));
    }

    #[test]
    fn edge_numerators() {
        let zero = FractionalPercent::new(0, Denominator::Hundred);
        assert!(!(0..1000).any(|v| zero.hits(v)));
        let over = FractionalPercent::new(150, Denominator::Hundred);
        assert!((0..1000).all(|v| over.hits(v)));
        assert!((over.ratio() - 1.0).abs() < f64::EPSILON);
        assert!(
            (FractionalPercent::new(5, Denominator::TenThousand).ratio() - 0.0005).abs() < 1e-12
        );
        assert!(!FractionalPercent::default().hits(0));
    }

    #[test]
    fn bad_denominators_are_refused() {
        for bad in [
            r#"{"numerator": 1, "denominator": "THOUSAND"}"#,
            r#"{"numerator": 1, "denominator": 3}"#,
            r#"{"numerator": 1, "denominator": "hundred"}"#,
            r#"{"numerator": -1}"#,
        ] {
            assert!(
                serde_json::from_str::<FractionalPercent>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn runtime_fractional_percent_uses_default_value() {
        let runtime: RuntimeFractionalPercent = serde_json::from_str(
            r#"{"default_value": {"numerator": 100}, "runtime_key": "fault.enabled"}"#,
        )
        .unwrap();
        assert!(runtime.hits(99));
        assert_eq!(runtime.runtime_key, "fault.enabled");
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Sampling {
        #[allow(dead_code)]
        overall_sampling: Percent,
    }
    impl Validate for Sampling {}

    #[test]
    fn percent_out_of_range_names_its_path() {
        let ok: Percent = serde_json::from_str(r#"{"value": 12.5}"#).unwrap();
        assert!((ok.value() - 12.5).abs() < f64::EPSILON);
        let error = load::<Sampling>(br#"{"overall_sampling": {"value": 150}}"#).unwrap_err();
        assert_eq!(
            error.to_string(),
            "overall_sampling: percent value must be between 0 and 100, got 150"
        );
        assert!(Percent::new(-0.1).is_err());
        assert!(Percent::new(f64::NAN).is_err());
    }
}
