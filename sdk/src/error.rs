//! The SDK's error type.
//!
//! Every fallible SDK operation returns [`Error`] instead of panicking: a panic inside a wasm
//! filter aborts the VM, which takes down every stream on that worker.

use crate::config::ConfigError;
pub use proxy_wasm::types::Status as HostStatus;

/// Everything that can go wrong in SDK code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A hostcall returned a status other than `Ok`.
    #[error("hostcall {operation} failed with status {status:?}")]
    Host {
        /// Which hostcall, e.g. `"proxy_http_call"`.
        operation: &'static str,
        /// The status the host returned.
        status: HostStatus,
    },
    /// A compare-and-swap write to shared data lost the race (the value changed since it was read).
    #[error("shared data key {key:?} changed since it was read (CAS mismatch)")]
    CasMismatch {
        /// The shared data key.
        key: String,
    },
    /// A bounded compare-and-swap retry loop gave up.
    #[error("shared data key {key:?} still contended after {attempts} attempts")]
    CasContention {
        /// The shared data key.
        key: String,
        /// How many read-modify-write attempts were made.
        attempts: u32,
    },
    /// The plugin configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// An operation was attempted where the host does not allow it, e.g. changing request
    /// headers once they have been forwarded upstream.
    #[error("{operation} is not allowed {reason}")]
    NotAllowed {
        /// The operation, e.g. `"set_request_header"`.
        operation: &'static str,
        /// Why, e.g. `"after the request headers were forwarded"`.
        reason: &'static str,
    },
    /// An argument the SDK refused before calling the host.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
}

impl Error {
    /// Shorthand for [`Error::Host`].
    pub fn host(operation: &'static str, status: HostStatus) -> Self {
        Error::Host { operation, status }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_operation_and_key() {
        assert_eq!(
            Error::host("proxy_http_call", HostStatus::BadArgument).to_string(),
            "hostcall proxy_http_call failed with status BadArgument"
        );
        assert_eq!(
            Error::CasContention {
                key: "rl/bucket".into(),
                attempts: 8
            }
            .to_string(),
            "shared data key \"rl/bucket\" still contended after 8 attempts"
        );
        let config = ConfigError::new("deny[0].prefix", "must not be empty");
        assert_eq!(
            Error::from(config).to_string(),
            "invalid configuration: deny[0].prefix: must not be empty"
        );
    }
}
