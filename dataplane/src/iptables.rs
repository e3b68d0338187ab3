//! The iptables backend of the agent: the same decisions as the nftables ruleset, loaded with
//! `ipset restore` and `iptables-restore --noflush` (each table restore is one kernel commit; each
//! set is filled aside and swapped in), for nodes that must stay on iptables.
//!
//! Order per apply: sets (new members swapped in) → IPv4 and IPv6 rules (the `filter` table, and
//! the per-pod source guard in the `raw` table) → hooks (idempotent) → stale chains → stale
//! sets. The bridge attachment is refused: it is the nftables backend's only. Removal deletes the
//! hooks, then the chains, then the sets. A failure leaves what was already committed and is retried.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use policyc_compiler::cidr::Family;
use policyc_compiler::render::iptables;
use policyc_compiler::Ir;

use super::{ApplyStats, Dataplane, DataplaneError};

/// Loads the iptables rendering with the iptables tools, in this or another network namespace.
#[derive(Clone, Debug, Default)]
pub struct IptablesRestore {
    netns: Option<PathBuf>,
}

impl IptablesRestore {
    pub fn new(netns: Option<PathBuf>) -> Self {
        Self { netns }
    }

    fn run(&self, program: &str, args: &[&str], stdin: &str) -> Result<String, DataplaneError> {
        let mut cmd = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", ns.display())).arg(program);
                c
            }
            None => Command::new(program),
        };
        let fail = |source: std::io::Error| DataplaneError::Socket {
            op: "running the iptables tools",
            source,
        };
        let mut child = cmd
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(fail)?;
        child
            .stdin
            .take()
            .expect("piped")
            .write_all(stdin.as_bytes())
            .map_err(fail)?;
        let out = child.wait_with_output().map_err(fail)?;
        if !out.status.success() {
            return Err(DataplaneError::Rejected {
                object: format!("{program} {}", args.join(" ")),
                errno: out.status.code().unwrap_or(-1),
                more_errors: 0,
                source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Dataplane for IptablesRestore {
    /// Refuses an IR of the bridge attachment ([`iptables::unsupported`]) before loading
    /// anything.
    fn replace(&mut self, ir: &Ir) -> Result<ApplyStats, DataplaneError> {
        if let Some(why) = iptables::unsupported(ir) {
            return Err(DataplaneError::Unrepresentable(why));
        }
        let sets = iptables::render_ipset(ir);
        self.run("ipset", &["restore", "-exist"], &sets)?;
        let mut rules = 0;
        for (family, restore, save) in [
            (Family::V4, "iptables-restore", "iptables-save"),
            (Family::V6, "ip6tables-restore", "ip6tables-save"),
        ] {
            let text = iptables::render_iptables(ir, family);
            rules += text.lines().filter(|l| l.starts_with("-A ")).count();
            self.run(restore, &["-w", "--noflush"], &text)?;
            self.run("sh", &["-s"], &iptables::render_iptables_hooks(family))?;
            // The filter table's chains and the raw table's source guard.
            let saved = self.run(save, &["-t", "filter"], "")? + &self.run(save, &["-t", "raw"], "")?;
            let prune = iptables::render_iptables_prune(ir, &saved);
            if !prune.is_empty() {
                self.run(restore, &["-w", "--noflush"], &prune)?;
            }
        }
        let existing = self.run("ipset", &["list", "-n"], "")?;
        let prune = iptables::render_ipset_prune(ir, &existing);
        if !prune.trim().is_empty() {
            self.run("ipset", &["restore", "-exist"], &prune)?;
        }
        Ok(ApplyStats {
            rules,
            chains: ir.chains.len() + 1,
            sets: ir.sets.len() + ir.port_sets.len(),
            ..ApplyStats::default()
        })
    }

    fn update_elements(&mut self, _old: &Ir, _new: &Ir) -> Result<Option<ApplyStats>, DataplaneError> {
        // Set swaps already make a replace cheap and atomic per set; no separate element path.
        Ok(None)
    }

    /// Deletes the jumps from the built-in chains, then every chain of policyc's, then its
    /// ipsets (no rule refers to them any more), per family; succeeds when there are none.
    fn remove(&mut self) -> Result<(), DataplaneError> {
        for (family, restore, save) in [
            (Family::V4, "iptables-restore", "iptables-save"),
            (Family::V6, "ip6tables-restore", "ip6tables-save"),
        ] {
            self.run("sh", &["-s"], &iptables::render_iptables_unhook(family))?;
            let saved = self.run(save, &["-t", "filter"], "")? + &self.run(save, &["-t", "raw"], "")?;
            let remove = iptables::render_iptables_remove(&saved);
            if !remove.is_empty() {
                self.run(restore, &["-w", "--noflush"], &remove)?;
            }
        }
        let existing = self.run("ipset", &["list", "-n"], "")?;
        let destroy = iptables::render_ipset_prune(&Ir::default(), &existing);
        if !destroy.trim().is_empty() {
            self.run("ipset", &["restore", "-exist"], &destroy)?;
        }
        Ok(())
    }
}
