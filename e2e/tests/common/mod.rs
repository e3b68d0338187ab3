//! Shared by the lab's test suites: whether this machine can run them.

/// Whether the lab can run here ([`policyc_lab::sys::check_environment`]: root, `ip`, `bridge`,
/// `nft` and a working nf_tables). Otherwise the test is skipped with the reason, except under
/// CI (`CI` set), where it fails: CI runs as root and must send real packets.
pub fn lab_available() -> bool {
    policyc_testhost::require(policyc_lab::sys::check_environment())
}

/// Skips the calling test (returns from it) when the lab cannot run.
#[macro_export]
macro_rules! require_lab {
    () => {
        if !common::lab_available() {
            return;
        }
    };
}
