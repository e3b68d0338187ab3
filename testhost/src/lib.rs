//! What the test host can run, for every crate's tests (a dev-dependency only; no product crate
//! depends on it).
//!
//! Tests that need root (network namespaces, nftables, iptables) ask first:
//!
//! ```no_run
//! #[test]
//! fn loads_into_the_kernel() {
//!     if !policyc_testhost::needs_root(&["ip", "nft"]) {
//!         return; // printed `skipped: loads_into_the_kernel: ...`
//!     }
//!     let ns = policyc_testhost::Netns::new("load"); // `ip netns del` on drop, panics included
//!     // ... `ns.exec("nft")`, `ns.path()` ...
//! }
//! ```
//!
//! When the host cannot run the test, it is skipped visibly: `skipped: <test>: <reason>` goes
//! straight to stderr (not through the harness's capture, so `cargo test` shows it) and the test
//! returns and passes. Under CI (`CI` set in the environment) it panics instead: CI runs as root
//! with the tools installed and must run every test.

use std::fmt::Display;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

// === Requirements ===

/// Whether a test may run: `true` when `ready` is `Ok`; otherwise [`skip`]s with the reason
/// (and returns `false`), or panics under CI.
pub fn require<E: Display>(ready: Result<(), E>) -> bool {
    match ready {
        Ok(()) => true,
        Err(reason) => {
            skip(reason);
            false
        }
    }
}

/// [`require`] root and the programs `tools` on `PATH`.
pub fn needs_root(tools: &[&str]) -> bool {
    require(root().and_then(|()| on_path(tools)))
}

/// Reports the calling test as skipped: prints `skipped: <test>: <reason>` to stderr, where
/// `<test>` is the test's name (the harness names each test's thread after it). Under CI (`CI`
/// set) panics with the reason instead. The caller returns from the test afterwards.
pub fn skip(reason: impl Display) {
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("<unnamed test>");
    if std::env::var_os("CI").is_some() {
        panic!("{test}: cannot run under CI (CI is set): {reason}");
    }
    // Straight to stderr: the harness captures `eprintln!` of passing tests.
    let _ = writeln!(std::io::stderr(), "skipped: {test}: {reason}");
}

/// `Ok` when the effective user is root.
pub fn root() -> Result<(), String> {
    match euid() {
        Some(0) => Ok(()),
        Some(uid) => Err(format!("needs root (running as uid {uid})")),
        None => Err("needs root (cannot read the effective uid from /proc/self/status)".into()),
    }
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    euid() == Some(0)
}

/// `Ok` when every program in `tools` is on `PATH`; otherwise the first one missing.
pub fn on_path(tools: &[&str]) -> Result<(), String> {
    let dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    match tools.iter().find(|t| !dirs.iter().any(|d| d.join(t).is_file())) {
        Some(t) => Err(format!("needs `{t}`, which is not on PATH")),
        None => Ok(()),
    }
}

/// The effective uid: the second field of `Uid:` in /proc/self/status.
fn euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

// === Throwaway network namespaces ===

/// A named network namespace (`ip netns add pc-<tag>-<pid>-<n>`), deleted when dropped, also
/// when the test panics. The name is unique among the tests of all running test binaries.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Netns {
    /// Creates one; panics with `ip`'s message when it cannot.
    pub fn new(tag: &str) -> Netns {
        Netns::try_new(tag).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Creates one; `Err` with `ip`'s message when it cannot (e.g. not permitted in a container).
    pub fn try_new(tag: &str) -> Result<Netns, String> {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("pc-{tag}-{}-{n}", std::process::id());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("ip netns add {name}: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "ip netns add {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Netns { name })
    }

    /// The name, for `ip netns exec`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The namespace's file, `/run/netns/<name>`, for `setns` (and `--netns` flags).
    pub fn path(&self) -> PathBuf {
        PathBuf::from("/run/netns").join(&self.name)
    }

    /// `ip netns exec <name> <program>`: add the program's arguments and run it.
    pub fn exec(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The top-level blocks of an `nft list` listing (the table line, then each set, map and chain
/// with its lines in order), sorted: what the table holds whatever the order of its sets and
/// chains, which an in-place change and a replace list differently.
pub fn sorted_blocks(listing: &str) -> Vec<Vec<&str>> {
    let mut out: Vec<Vec<&str>> = Vec::new();
    for l in listing.lines().filter(|l| !l.is_empty() && *l != "}") {
        let header = l.starts_with("table ") || (l.starts_with('\t') && !l.starts_with("\t\t") && l.ends_with('{'));
        if header || out.is_empty() {
            out.push(Vec::new());
        }
        out.last_mut().expect("a block").push(l);
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tools_are_named() {
        assert_eq!(on_path(&[]), Ok(()), "nothing needed");
        assert_eq!(
            on_path(&["sh", "policyc-no-such-tool"]),
            Err("needs `policyc-no-such-tool`, which is not on PATH".into()),
            "the first missing one"
        );
    }

    #[test]
    fn root_matches_the_effective_uid() {
        assert_eq!(root().is_ok(), is_root());
    }

    #[test]
    fn netns_is_deleted_on_drop_even_on_panic() {
        if !needs_root(&["ip"]) {
            return;
        }
        let path = std::thread::spawn(|| {
            let ns = Netns::new("testhost");
            let path = ns.path();
            assert!(path.exists(), "{} created", path.display());
            std::panic::panic_any(path)
        })
        .join()
        .expect_err("the thread panics")
        .downcast::<PathBuf>()
        .expect("the path");
        assert!(!path.exists(), "{} deleted on unwind", path.display());
    }
}
