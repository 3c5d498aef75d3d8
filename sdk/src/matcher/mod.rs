//! Matchers shared by several filters, in Envoy's proto3-JSON shape.
//!
//! Every matcher validates itself while deserializing, so a bad matcher fails
//! [`crate::config::load`] with the JSON path of the offending field.

pub mod cidr;
pub mod header;
pub mod path;
pub mod percent;
pub mod string;

pub use cidr::CidrRange;
pub use header::{match_all, HeaderMatch, HeaderMatcher, Int64Range};
pub use path::{normalize_path, PathError};
pub use percent::{Denominator, FractionalPercent, Percent, RuntimeFractionalPercent};
pub use string::{Regex, RegexMatcher, StringMatcher, StringPattern};
