//! Shared by the lab's test suites: whether this machine can run them.

/// `Some(reason)` when the lab cannot run here. Without root (or nftables) the suites print the
/// reason and pass, except under CI (`CI` set), where they fail: CI runs as root and must send
/// real packets.
pub fn skip_reason() -> Option<String> {
    match policyc_lab::sys::check_environment() {
        Ok(()) => None,
        Err(e) if std::env::var_os("CI").is_some() => panic!("CI is set but the lab cannot run: {e}"),
        Err(e) => Some(e.to_string()),
    }
}

/// Skips the calling test (returns from it) when the lab cannot run.
#[macro_export]
macro_rules! require_lab {
    () => {
        if let Some(reason) = common::skip_reason() {
            eprintln!("skipped: {reason}");
            return;
        }
    };
}
