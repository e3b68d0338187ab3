//! Kernel commits, as `nft monitor` reports them, and measuring a change until its commit.

use super::*;

/// One committed transaction: the objects `nft monitor` printed for it, and when the kernel
/// announced the new generation.
#[derive(Debug)]
pub(crate) struct Commit {
    pub(crate) at: Instant,
    pub(crate) lines: Vec<String>,
}

impl Commit {
    pub(crate) fn mentions(&self, s: &str) -> bool {
        self.lines.iter().any(|l| l.contains(s))
    }

    /// The first object that is not a set or map element (a table, chain, rule or set).
    pub(crate) fn structural(&self) -> Option<&String> {
        self.lines.iter().find(|l| {
            !["add element", "create element", "delete element"]
                .iter()
                .any(|p| l.starts_with(p))
        })
    }
}

pub(crate) fn monitor(ns: &Netns) -> anyhow::Result<(Owned, mpsc::UnboundedReceiver<Commit>)> {
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns.0, "nft", "monitor"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("nft monitor")?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        let mut lines = Vec::new();
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("# new generation") {
                let commit = Commit {
                    at: Instant::now(),
                    lines: std::mem::take(&mut lines),
                };
                if tx.send(commit).is_err() {
                    return;
                }
            } else {
                lines.push(line);
            }
        }
    });
    Ok((Owned(child), rx))
}

pub(crate) const ELEMENTS: &str = "elements only";
pub(crate) const IN_PLACE: &str = "chains in place";
pub(crate) const REPLACE: &str = "full replace";

#[derive(Clone, Debug)]
pub(crate) struct Sample {
    /// The first object of the commit that is not a set element, if any.
    pub(crate) structural: Option<String>,
    /// API acknowledgement → kernel commit.
    pub(crate) latency: Duration,
    /// The request's round trip.
    pub(crate) request: Duration,
    /// What the kernel was sent: `elements only`, `chains in place` or `full replace`.
    pub(crate) commit: &'static str,
    /// The commit did not contain what the change should have produced.
    pub(crate) unexpected: bool,
    /// Further commits within the settle time (a change should make exactly one).
    pub(crate) extra_commits: usize,
    /// The commit was announced before the API acknowledgement arrived.
    pub(crate) before_ack: bool,
    /// The agent's own time from the end of the debounce to the kernel's answer (`sync_ms` of
    /// its "ruleset applied" line), when it logs one.
    pub(crate) agent_sync: Option<Duration>,
}

pub(crate) async fn settle(rx: &mut mpsc::UnboundedReceiver<Commit>) -> usize {
    tokio::time::sleep(SETTLE).await;
    let mut n = 0;
    while rx.try_recv().is_ok() {
        n += 1;
    }
    n
}

/// Sends one change, waits for the kernel to commit it, and checks the commit with `expect`.
pub(crate) async fn measure<F>(
    rx: &mut mpsc::UnboundedReceiver<Commit>,
    what: &str,
    expect: impl Fn(&Commit) -> bool,
    change: F,
) -> anyhow::Result<Sample>
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    while rx.try_recv().is_ok() {}
    let sent = Instant::now();
    change.await?;
    let ack = Instant::now();
    let commit = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .with_context(|| format!("no kernel commit within 10 s after {what}"))?
        .context("nft monitor ended")?;
    let extra_commits = settle(rx).await;
    Ok(Sample {
        latency: commit.at.saturating_duration_since(ack),
        request: ack - sent,
        commit: match commit.structural() {
            None => ELEMENTS,
            Some(_) if commit.mentions("add table") => REPLACE,
            Some(_) => IN_PLACE,
        },
        structural: commit.structural().cloned(),
        unexpected: !expect(&commit),
        extra_commits,
        before_ack: commit.at < ack,
        agent_sync: None,
    })
}
