//! Host plumbing: the environment check, `ip` batches, running code inside a network namespace,
//! and sysctls.

use std::fs::File;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::{setns, unshare, CloneFlags};

use crate::Error;

/// Where `ip netns add` puts named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether the effective user is root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn have(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// Whether this host can run the lab; the reason, in one line, when it cannot.
pub fn check_environment() -> Result<(), Error> {
    if !is_root() {
        return Err(Error::new(
            "the lab needs root (it creates network namespaces and loads nftables rules)",
        ));
    }
    for (tool, package) in [("ip", "iproute2"), ("bridge", "iproute2"), ("nft", "nftables")] {
        if !have(tool) {
            return Err(Error::new(format!(
                "{tool} is not installed (apt-get install {package})"
            )));
        }
    }
    // Load an empty ruleset into a throwaway namespace: proves nf_tables is there.
    let empty = policyc_compiler::compile(&Default::default(), &Default::default());
    let probe = std::thread::spawn(move || -> Result<(), String> {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| format!("cannot create a network namespace: {e}"))?;
        let text = policyc_compiler::render::nft::render(&empty, true).map_err(|e| e.to_string())?;
        run_stdin(&["nft", "-f", "-"], &text)
            .map(drop)
            .map_err(|e| format!("the kernel has no usable nftables support: {e}"))
    });
    match probe.join() {
        Ok(r) => r.map_err(Error::new),
        Err(_) => Err(Error::new("nftables check panicked")),
    }
}

/// Runs `f` on a new thread inside the network namespace at `path`; the calling thread never
/// changes namespace. Sockets `f` creates stay in that namespace.
pub fn in_netns<T: Send>(path: &Path, f: impl FnOnce() -> T + Send) -> Result<T, Error> {
    std::thread::scope(|s| {
        s.spawn(|| {
            enter_netns(path)?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|_| Err(Error::new(format!("thread in {} panicked", path.display()))))
    })
}

/// Moves the calling thread into the network namespace at `path`.
pub fn enter_netns(path: &Path) -> Result<(), Error> {
    let f = File::open(path).map_err(|e| Error::new(format!("cannot open {}: {e}", path.display())))?;
    setns(&f, CloneFlags::CLONE_NEWNET)
        .map_err(|e| Error::new(format!("cannot enter network namespace {}: {e}", path.display())))
}

/// Writes sysctls (`net.ipv4.ip_forward` style keys) in a network namespace.
pub fn sysctls(netns: &str, settings: &[(String, &str)]) -> Result<(), Error> {
    let path = netns_path(netns);
    in_netns(&path, || {
        for (key, value) in settings {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            match std::fs::write(&file, value) {
                Ok(()) => {}
                // A host without IPv6: IPv4 pods still work.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && key.starts_with("net.ipv6.") => {}
                Err(e) => return Err(Error::new(format!("{netns}: sysctl {key}={value}: {e}"))),
            }
        }
        Ok(())
    })?
}

/// Runs a batch of commands through one `ip -batch` (or `bridge -batch`) process, optionally
/// inside a named network namespace (`-n`). Stops at the first failing command.
pub fn batch(tool: &str, netns: Option<&str>, cmds: &[String]) -> Result<(), Error> {
    run_batch(tool, netns, cmds, false)
}

/// Like [`batch`], but goes on past failing commands (for removals of what may be gone).
pub fn batch_force(tool: &str, netns: Option<&str>, cmds: &[String]) -> Result<(), Error> {
    run_batch(tool, netns, cmds, true)
}

fn run_batch(tool: &str, netns: Option<&str>, cmds: &[String], force: bool) -> Result<(), Error> {
    if cmds.is_empty() {
        return Ok(());
    }
    let mut c = Command::new(tool);
    if let Some(ns) = netns {
        c.args(["-n", ns]);
    }
    if force {
        c.arg("-force");
    }
    c.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = c.spawn().map_err(|e| Error::new(format!("cannot run {tool}: {e}")))?;
    {
        let mut stdin = child.stdin.take().expect("piped stdin");
        let text = cmds.join("\n") + "\n";
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::new(format!("writing to {tool}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(format!("waiting for {tool}: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    let where_ = netns.map(|n| format!(" in {n}")).unwrap_or_default();
    Err(Error::new(format!(
        "{tool}{where_}: {}",
        String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
    )))
}

/// Runs a command and returns its standard output; an error carries its standard error.
pub fn output(program: &str, args: &[&str]) -> Result<String, Error> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Error::new(format!("cannot run {program}: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a command inside a named network namespace (`ip netns exec`).
pub fn netns_exec(netns: &str, args: &[&str]) -> Result<String, Error> {
    let mut all = vec!["netns", "exec", netns];
    all.extend_from_slice(args);
    output("ip", &all)
}

/// Runs a command inside a named network namespace with `input` on its standard input.
pub fn netns_exec_stdin(netns: &str, args: &[&str], input: &str) -> Result<String, Error> {
    let mut all = vec!["ip", "netns", "exec", netns];
    all.extend_from_slice(args);
    run_stdin(&all, input).map_err(|e| Error::new(format!("{e} (in {netns})")))
}

/// Runs `args[0]` with the other arguments and `input` on its standard input; its standard
/// output, or its standard error on failure.
pub fn run_stdin(args: &[&str], input: &str) -> Result<String, Error> {
    let (program, rest) = args.split_first().ok_or_else(|| Error::new("no command"))?;
    let shown = args.join(" ");
    let mut child = Command::new(program)
        .args(rest)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {shown}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::new(format!("writing to {shown}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(format!("waiting for {shown}: {e}")))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{shown}: {}",
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A random 32-bit number (std's hasher keys are seeded from the OS).
pub fn random_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
    );
    h.finish() as u32
}
