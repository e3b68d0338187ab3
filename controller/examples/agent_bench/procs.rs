//! Processes and namespaces the benchmark owns: the agent, `nft monitor`, throwaway network
//! namespaces; reading the agent's readiness, metrics and memory.

use super::*;

pub(crate) struct Netns(pub(crate) String);

impl Netns {
    pub(crate) fn create(name: String) -> anyhow::Result<Netns> {
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip").args(["netns", "add", &name]).status()?.success();
        if !ok {
            bail!("ip netns add {name} failed");
        }
        Ok(Netns(name))
    }

    pub(crate) fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A child process killed (by its own id) when dropped.
pub(crate) struct Owned(pub(crate) Child);

impl Owned {
    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(crate) fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| repo().join("target"), PathBuf::from)
}

/// Builds the release agent, the way it ships.
pub(crate) fn build_agent() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ok = Command::new(cargo)
        .current_dir(repo())
        .args([
            "build",
            "--release",
            "-p",
            "policyc-controller",
            "--bin",
            "policyc-agent",
        ])
        .status()
        .context("running cargo")?
        .success();
    if !ok {
        bail!("cargo build of policyc-agent failed");
    }
    Ok(target_dir().join("release/policyc-agent"))
}

/// `MALLOC_ARENA_MAX` for the agent: the chart's `1`, unless the environment sets another (e.g.
/// `8`, glibc's default behaviour on this machine, to see what more arenas cost).
pub(crate) fn malloc_arena_max() -> String {
    std::env::var("MALLOC_ARENA_MAX").unwrap_or_else(|_| "1".into())
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) struct Agent {
    pub(crate) child: Owned,
    pub(crate) port: u16,
    pub(crate) log: PathBuf,
}

/// Starts the agent; `wrap` is a command line to run it under (e.g. `heaptrack -o FILE`).
pub(crate) fn start_agent(
    bin: &PathBuf,
    api: &ApiServer,
    ns: &Netns,
    node: &str,
    tag: &str,
    wrap: Option<&str>,
) -> anyhow::Result<Agent> {
    let port = free_port()?;
    let log = std::env::temp_dir().join(format!("policyc-agent-bench-{}-{tag}.log", std::process::id()));
    let mut cmd = match wrap.map(|w| w.split_whitespace().collect::<Vec<_>>()) {
        Some(w) if !w.is_empty() => {
            let mut c = Command::new(w[0]);
            c.args(&w[1..]).arg(bin);
            c
        }
        _ => Command::new(bin),
    };
    let child = cmd
        .args(["--node-name", node, "--debounce-ms", &DEBOUNCE_MS.to_string()])
        .arg("--metrics-addr")
        .arg(format!("127.0.0.1:{port}"))
        .arg("--netns")
        .arg(ns.path())
        .env("KUBECONFIG", &api.kubeconfig)
        // As the chart runs the agent: one malloc arena.
        .env("MALLOC_ARENA_MAX", malloc_arena_max())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log)?)
        .spawn()
        .context("starting policyc-agent")?;
    Ok(Agent {
        child: Owned(child),
        port,
        log,
    })
}

pub(crate) fn ready(port: u16) -> bool {
    support::http_get(port, Duration::from_secs(120), "/readyz").is_some_and(|(c, _)| c == 200)
}

/// `name value` lines of an OpenMetrics text, labels included in the name.
pub(crate) fn metrics(port: u16) -> anyhow::Result<BTreeMap<String, f64>> {
    let (code, text) = support::http_get(port, Duration::from_secs(120), "/metrics").context("GET /metrics")?;
    if code != 200 {
        bail!("/metrics answered {code}");
    }
    Ok(text
        .lines()
        .filter(|l| {
            l.starts_with("policyc_") && !l.starts_with("policyc_policy_rule") && !l.starts_with("policyc_denied")
        })
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect())
}

/// Memory of a process in KiB, from `/proc/PID/status`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Mem {
    pub(crate) rss: u64,
    pub(crate) hwm: u64,
    pub(crate) anon: u64,
    pub(crate) file: u64,
}

pub(crate) fn mem(pid: u32) -> anyhow::Result<Mem> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    Ok(Mem {
        rss: field("VmRSS:"),
        hwm: field("VmHWM:"),
        anon: field("RssAnon:"),
        file: field("RssFile:"),
    })
}
