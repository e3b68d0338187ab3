//! Never leave anything behind: every lab registers its run prefix; Ctrl-C (SIGINT, SIGTERM,
//! SIGHUP) removes the namespaces of every registered lab before the process exits, and
//! [`down`] removes what a killed run left (namespaces whose creating process is gone).
//!
//! Everything a lab creates lives in network namespaces named `pclab-<pid>-<n>-…`: its links
//! and addresses go with them, so removing those namespaces removes the whole lab. Processes a
//! lab starts (agents) are registered too, and killed first.

use std::collections::BTreeSet;
use std::sync::{Mutex, Once};

use crate::sys;
use crate::Error;

/// Prefix of every namespace any lab creates.
pub const NAME_PREFIX: &str = "pclab-";

static LIVE: Mutex<BTreeSet<String>> = Mutex::new(BTreeSet::new());
static PROCESSES: Mutex<BTreeSet<u32>> = Mutex::new(BTreeSet::new());
static HANDLER: Once = Once::new();

/// Records a running lab and makes sure the signal handler is installed.
pub fn register(prefix: &str) {
    HANDLER.call_once(|| {
        // Fails only when the program installed its own handler; that one then owns cleanup.
        let _ = ctrlc::set_handler(|| {
            let pids: Vec<u32> = PROCESSES
                .lock()
                .map(|p| p.iter().copied().collect())
                .unwrap_or_default();
            for pid in pids {
                if let Ok(pid) = i32::try_from(pid) {
                    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::SIGKILL);
                }
            }
            let live: Vec<String> = LIVE.lock().map(|l| l.iter().cloned().collect()).unwrap_or_default();
            for prefix in &live {
                let _ = remove_prefix(prefix);
            }
            if !live.is_empty() {
                eprintln!("interrupted: removed lab {}", live.join(", "));
            }
            std::process::exit(130);
        });
    });
    if let Ok(mut l) = LIVE.lock() {
        l.insert(prefix.to_string());
    }
}

/// Records a process a lab started (killed on Ctrl-C before the namespaces go).
pub fn register_process(pid: u32) {
    if let Ok(mut p) = PROCESSES.lock() {
        p.insert(pid);
    }
}

pub fn unregister_process(pid: u32) {
    if let Ok(mut p) = PROCESSES.lock() {
        p.remove(&pid);
    }
}

pub fn unregister(prefix: &str) {
    if let Ok(mut l) = LIVE.lock() {
        l.remove(prefix);
    }
}

/// Named network namespaces whose name starts with `prefix`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(sys::NETNS_DIR)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Deletes the named namespaces, in one `ip -batch`; returns how many were deleted.
pub fn delete_namespaces(names: &[String]) -> Result<usize, Error> {
    // Pods first, the underlay last: links go with whichever end's namespace goes first.
    let mut cmds: Vec<String> = names
        .iter()
        .filter(|n| n.starts_with(NAME_PREFIX))
        .map(|n| format!("netns del {n}"))
        .collect();
    cmds.sort_by_key(|c| (!c.contains("-pod-"), c.ends_with("-underlay"), c.clone()));
    let n = cmds.len();
    if n > 0 && sys::batch("ip", None, &cmds).is_err() {
        // One by one, so that one failure (a namespace that vanished meanwhile) keeps no other.
        for c in &cmds {
            let _ = sys::batch("ip", None, std::slice::from_ref(c));
        }
    }
    let left: Vec<String> = names.iter().filter(|n| sys::netns_path(n).exists()).cloned().collect();
    if !left.is_empty() {
        return Err(Error::new(format!("could not delete {}", left.join(", "))));
    }
    Ok(n)
}

/// The directory of one run's files (the flannel attachment's host-local leases).
pub fn run_dir(prefix: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(prefix)
}

/// Removes every namespace of one run, and its directory.
pub fn remove_prefix(prefix: &str) -> Result<usize, Error> {
    let _ = std::fs::remove_dir_all(run_dir(prefix));
    let prefix = format!("{prefix}-");
    delete_namespaces(&namespaces_with_prefix(&prefix))
}

/// The process that created a lab namespace: `pclab-<pid>-…`.
pub fn owner_pid(name: &str) -> Option<u32> {
    name.strip_prefix(NAME_PREFIX)?.split('-').next()?.parse().ok()
}

fn process_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// `policyc lab down`: removes what lab runs left behind (namespaces named `pclab-*`) — those
/// of runs whose process is gone, or with `include_live` also those of running labs. Returns
/// the names removed.
pub fn down(include_live: bool) -> Result<Vec<String>, Error> {
    let names: Vec<String> = namespaces_with_prefix(NAME_PREFIX)
        .into_iter()
        .filter(|n| include_live || !owner_pid(n).is_some_and(process_alive))
        .collect();
    delete_namespaces(&names)?;
    // And the run directories (host-local leases of the flannel attachment) of the same runs.
    let tmp = std::env::temp_dir();
    let dirs: Vec<std::path::PathBuf> = std::fs::read_dir(&tmp)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(NAME_PREFIX))
                .filter(|n| include_live || !owner_pid(n).is_some_and(process_alive))
                .map(|n| tmp.join(n))
                .collect()
        })
        .unwrap_or_default();
    for d in dirs.iter().filter(|d| d.is_dir()) {
        let _ = std::fs::remove_dir_all(d);
    }
    Ok(names)
}

/// Namespaces of labs whose process still runs (what `down` leaves without `include_live`).
pub fn live_namespaces() -> Vec<String> {
    namespaces_with_prefix(NAME_PREFIX)
        .into_iter()
        .filter(|n| owner_pid(n).is_some_and(process_alive))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_pid_from_name() {
        assert_eq!(owner_pid("pclab-1234-0-node-node-1"), Some(1234));
        assert_eq!(owner_pid("pclab-x"), None);
        assert_eq!(owner_pid("other-1234"), None);
    }
}
