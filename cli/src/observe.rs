//! `policyc observe`: the flow records of the agents (`GET /flows` on each agent's metrics
//! address), merged, filtered and printed as a table or NDJSON — what `hubble observe` is for
//! Cilium.
//!
//! ```text
//!  --agents host:port,...        → http://host:port/flows?...       (a small HTTP/1.1 client)
//!  otherwise (the API server)    → agent pods (namespace, selector, --node)
//!                                  → /api/v1/namespaces/NS/pods/POD:PORT/proxy/flows?...
//!  each source: one task sending its lines to one channel
//!     without --follow: all records, sorted by time, the last --last of them
//!     with --follow:    printed as they arrive, until every source ends or Ctrl-C
//! ```
//!
//! An agent that cannot be read is named on stderr and the others go on; the exit status is 2
//! only when none could be read.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;
use kube::Api;
use policyc_compiler::flows::{FlowPeer, FlowRecord};
use tokio::io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::sync::mpsc;

#[derive(Debug, clap::Args)]
pub struct ObserveArgs {
    /// Only this node's agent (and its records).
    #[arg(long)]
    pub node: Option<String>,
    /// Flows with either end in this namespace.
    #[arg(long)]
    pub namespace: Option<String>,
    /// Flows with either end this pod: NAME or NAMESPACE/NAME.
    #[arg(long)]
    pub pod: Option<String>,
    #[arg(long, value_parser = ["allowed", "denied", "passed"])]
    pub verdict: Option<String>,
    /// Flows this policy decided (NAME or NAMESPACE/NAME), or isolated in a default deny.
    #[arg(long)]
    pub policy: Option<String>,
    /// After the buffered records, print new ones as they come (Ctrl-C ends).
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// At most the last N records (per agent, and of the merged output); with --follow,
    /// `--last 0` prints only new records. Default: what the agents keep (1000 each).
    #[arg(long, value_name = "N")]
    pub last: Option<usize>,
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Kubeconfig; default: KUBECONFIG, ~/.kube/config, or in-cluster.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Read these agents directly (HOST:PORT of their metrics address, comma-separated) instead
    /// of through the API server's pod proxy.
    #[arg(long, value_delimiter = ',', value_name = "ADDR")]
    pub agents: Vec<String>,
    /// Where the agent pods run.
    #[arg(long, default_value = "kube-system", value_name = "NS")]
    pub agent_namespace: String,
    /// The agent pods' label selector.
    #[arg(long, default_value = "app.kubernetes.io/name=policyc", value_name = "SELECTOR")]
    pub agent_selector: String,
    /// The agents' metrics port (serving /flows).
    #[arg(long, default_value_t = 9108, value_name = "PORT")]
    pub agent_port: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// What the records must match; the agents apply the same filters, the client again.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub node: Option<String>,
    pub namespace: Option<String>,
    pub pod: Option<String>,
    pub verdict: Option<String>,
    pub policy: Option<String>,
}

impl Filter {
    fn of(args: &ObserveArgs) -> Filter {
        Filter {
            node: args.node.clone(),
            namespace: args.namespace.clone(),
            pod: args.pod.clone(),
            verdict: args.verdict.clone(),
            policy: args.policy.clone(),
        }
    }

    pub fn matches(&self, r: &FlowRecord) -> bool {
        let ends = [&r.source, &r.destination];
        if self.node.as_ref().is_some_and(|n| &r.node != n) {
            return false;
        }
        if self.verdict.as_ref().is_some_and(|v| &r.verdict != v) {
            return false;
        }
        if let Some(ns) = &self.namespace {
            if !ends.iter().any(|e| &e.namespace == ns) {
                return false;
            }
        }
        if let Some(pod) = &self.pod {
            let is = |e: &FlowPeer| {
                e.kind == "pod"
                    && match pod.split_once('/') {
                        Some((ns, name)) => e.namespace == ns && e.pod == name,
                        None => &e.pod == pod,
                    }
            };
            if !ends.iter().any(|e| is(e)) {
                return false;
            }
        }
        if let Some(p) = &self.policy {
            let (ns, name) = match p.split_once('/') {
                Some((ns, name)) => (Some(ns), name),
                None => (None, p.as_str()),
            };
            let deciding = r
                .policy
                .as_ref()
                .is_some_and(|q| q.name == name && ns.is_none_or(|ns| q.namespace == ns));
            let isolating = r.isolated_by.iter().any(|i| match i.split_once('/') {
                Some((ins, iname)) => iname == name && ns.is_none_or(|ns| ins == ns),
                None => i == name && ns.is_none(),
            });
            if !deciding && !isolating {
                return false;
            }
        }
        true
    }
}

/// `/flows?...`: the filters and the limit, URL-encoded.
pub fn query(f: &Filter, last: Option<usize>, follow: bool) -> String {
    let mut q: Vec<(&str, String)> = Vec::new();
    if let Some(n) = last {
        q.push(("limit", n.to_string()));
    }
    if follow {
        q.push(("follow", "true".into()));
    }
    for (k, v) in [
        ("namespace", &f.namespace),
        ("pod", &f.pod),
        ("verdict", &f.verdict),
        ("policy", &f.policy),
        ("node", &f.node),
    ] {
        if let Some(v) = v {
            q.push((k, v.clone()));
        }
    }
    let mut out = String::from("/flows");
    for (i, (k, v)) in q.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        out.push_str(&encode(v));
    }
    out
}

/// Percent-encodes a query value (RFC 3986 unreserved characters stay).
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// What a source task reports.
enum Msg {
    /// The source answered: its records follow.
    Open,
    Line(String),
    /// The source could not be read (or broke off), and why.
    Failed(String),
    /// A followed source ended its stream (an agent restarting, say).
    Ended,
}

/// One source of records: a name for messages, and how to read it.
#[derive(Clone, Debug)]
enum Source {
    Direct {
        addr: String,
    },
    Proxy {
        namespace: String,
        pod: String,
        node: String,
    },
}

impl Source {
    fn name(&self) -> String {
        match self {
            Source::Direct { addr } => format!("agent {addr}"),
            Source::Proxy { namespace, pod, node } => format!("agent {namespace}/{pod} (node {node})"),
        }
    }
}

/// How long a source may take to send its buffered records (without --follow).
const READ_TIMEOUT: Duration = Duration::from_secs(30);

pub fn run(args: ObserveArgs) -> Result<ExitCode> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(observe(args))
}

async fn observe(args: ObserveArgs) -> Result<ExitCode> {
    let filter = Filter::of(&args);
    let path = query(&filter, args.last, args.follow);
    let (client, sources) = if args.agents.is_empty() {
        let config = crate::cluster::config(args.kubeconfig.as_deref()).await?;
        let sources = agent_pods(&kube::Client::try_from(config.clone())?, &args).await?;
        // The pod proxy answers 503 for an agent it cannot reach: say so now, not after the
        // client's retries (up to 15, with backoff).
        let mut no_retry = config;
        no_retry.default_retry = false;
        let proxy = kube::Client::try_from(no_retry)?;
        (Some(proxy), sources)
    } else {
        // HOST:PORT; a pasted http://HOST:PORT/ is taken too.
        let sources: Vec<Source> = args
            .agents
            .iter()
            .map(|a| a.trim().trim_start_matches("http://").trim_end_matches('/'))
            .filter(|a| !a.is_empty())
            .map(|a| Source::Direct { addr: a.to_string() })
            .collect();
        if sources.is_empty() {
            bail!("--agents: no address (HOST:PORT,...)");
        }
        (None, sources)
    };
    let (tx, mut rx) = mpsc::unbounded_channel::<(usize, Msg)>();
    for (i, s) in sources.iter().enumerate() {
        let (tx, path, s, client) = (tx.clone(), path.clone(), s.clone(), client.clone());
        let (follow, port) = (args.follow, args.agent_port);
        tokio::spawn(async move {
            let send = |m: Msg| tx.send((i, m)).is_ok();
            let read = async {
                match (&s, client) {
                    (Source::Direct { addr }, _) => read_direct(addr, &path, &send).await,
                    (Source::Proxy { namespace, pod, .. }, Some(c)) => {
                        read_proxy(&c, namespace, pod, port, &path, &send).await
                    }
                    (Source::Proxy { .. }, None) => Err(anyhow!("no client")),
                }
            };
            // Without --follow an agent answers at once; a stalled one is reported, not waited for.
            let r = if follow {
                read.await
            } else {
                tokio::time::timeout(READ_TIMEOUT, read)
                    .await
                    .unwrap_or_else(|_| Err(anyhow!("no complete answer within {}s", READ_TIMEOUT.as_secs())))
            };
            match r {
                Err(e) => send(Msg::Failed(format!("{e:#}"))),
                Ok(()) if follow => send(Msg::Ended),
                Ok(()) => true,
            };
        });
    }
    drop(tx);

    let mut opened = vec![false; sources.len()];
    let mut printer = Printer::new(args.output);
    // Each record with its line as received (what -o json prints: fields the client does not
    // know and their order kept).
    let mut records: Vec<(String, FlowRecord)> = Vec::new();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let (i, msg) = tokio::select! {
            m = rx.recv() => match m { Some(m) => m, None => break },
            _ = &mut ctrl_c => break,
        };
        match msg {
            Msg::Open => opened[i] = true,
            Msg::Failed(why) => eprintln!("{}: {why}", sources[i].name()),
            Msg::Ended => eprintln!("{}: the stream ended", sources[i].name()),
            Msg::Line(line) => {
                let line = line.trim();
                if line.is_empty() {
                    continue;
                }
                let record = match serde_json::from_str::<FlowRecord>(line) {
                    Ok(p) => p,
                    Err(e) => {
                        let shown: String = line.chars().take(200).collect();
                        eprintln!("{}: not a flow record ({e}): {shown}", sources[i].name());
                        continue;
                    }
                };
                if !filter.matches(&record) {
                    continue;
                }
                if args.follow {
                    printer.print(line, &record)?;
                } else {
                    records.push((line.to_string(), record));
                }
            }
        }
    }
    if !args.follow {
        records.sort_by(|a, b| (&a.1.time, &a.1.node).cmp(&(&b.1.time, &b.1.node)));
        if let Some(n) = args.last {
            let skip = records.len().saturating_sub(n);
            records.drain(..skip);
        }
        printer.print_all(&records)?;
    }
    if !sources.is_empty() && !opened.iter().any(|o| *o) {
        eprintln!("error: no agent could be read");
        return Ok(ExitCode::from(2));
    }
    Ok(ExitCode::SUCCESS)
}

/// The running agent pods (with --node: that node's), as sources.
async fn agent_pods(client: &kube::Client, args: &ObserveArgs) -> Result<Vec<Source>> {
    let pods = Api::<Pod>::namespaced(client.clone(), &args.agent_namespace)
        .list(&ListParams::default().labels(&args.agent_selector))
        .await
        .with_context(|| {
            format!(
                "listing the agent pods ({} in namespace {})",
                args.agent_selector, args.agent_namespace
            )
        })?;
    let mut out = Vec::new();
    for p in pods {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        let running = p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running");
        if !running || node.is_empty() || args.node.as_ref().is_some_and(|n| n != &node) {
            continue;
        }
        out.push(Source::Proxy {
            namespace: args.agent_namespace.clone(),
            pod: p.metadata.name.unwrap_or_default(),
            node,
        });
    }
    if out.is_empty() {
        match &args.node {
            Some(n) => bail!(
                "no running agent pod ({} in namespace {}) on node {n}",
                args.agent_selector,
                args.agent_namespace
            ),
            None => bail!(
                "no running agent pod ({} in namespace {})",
                args.agent_selector,
                args.agent_namespace
            ),
        }
    }
    Ok(out)
}

async fn read_proxy(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
    send: &impl Fn(Msg) -> bool,
) -> Result<()> {
    let uri = format!("/api/v1/namespaces/{namespace}/pods/{pod}:{port}/proxy{path}");
    let req = http::Request::get(&uri).body(Vec::new())?;
    let body = client.request_stream(req).await.map_err(|e| match e {
        kube::Error::Api(s) => anyhow!(
            "the API server's pod proxy answered {} {}: {}",
            s.code,
            s.reason,
            s.message
        ),
        e => anyhow::Error::from(e).context("through the API server's pod proxy"),
    })?;
    send(Msg::Open);
    let mut lines = futures::AsyncBufReadExt::lines(body);
    while let Some(line) = futures::StreamExt::next(&mut lines).await {
        if !send(Msg::Line(line.context("reading the response")?)) {
            break;
        }
    }
    Ok(())
}

/// `GET http://ADDR/PATH` over HTTP/1.1: the body's lines as they come (chunked or not).
async fn read_direct(addr: &str, path: &str, send: &impl Fn(Msg) -> bool) -> Result<()> {
    let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .map_err(|_| anyhow!("connecting: timed out after 5s"))?
        .context("connecting")?;
    let mut stream = BufReader::new(stream);
    let host = addr;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/x-ndjson\r\nUser-Agent: policyc-observe\r\nConnection: close\r\n\r\n"
    );
    stream
        .get_mut()
        .write_all(req.as_bytes())
        .await
        .context("sending the request")?;
    read_response(&mut stream, send).await
}

async fn read_response<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, send: &impl Fn(Msg) -> bool) -> Result<()> {
    let mut status = String::new();
    r.read_line(&mut status).await.context("reading the response")?;
    if status.is_empty() {
        bail!("the connection closed without a response");
    }
    let code = status.split_whitespace().nth(1).unwrap_or("");
    let (mut chunked, mut length) = (false, None::<u64>);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).await? == 0 {
            bail!("the connection closed in the response's headers");
        }
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            let (k, v) = (k.trim().to_ascii_lowercase(), v.trim());
            if k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked") {
                chunked = true;
            } else if k == "content-length" {
                length = v.parse().ok();
            }
        }
    }
    if code != "200" {
        let mut body = Vec::new();
        let _ = body_bytes(r, chunked, length, &mut |b: &[u8]| {
            body.extend_from_slice(b);
            body.len() < 4096
        })
        .await;
        let text = String::from_utf8_lossy(&body);
        let first = text.lines().next().unwrap_or("").trim();
        bail!(
            "HTTP {}{}",
            status.trim().split_once(' ').map_or(code, |(_, s)| s),
            if first.is_empty() {
                String::new()
            } else {
                format!(": {first}")
            }
        );
    }
    send(Msg::Open);
    let mut pending: Vec<u8> = Vec::new();
    let mut open = true;
    body_bytes(r, chunked, length, &mut |b: &[u8]| {
        pending.extend_from_slice(b);
        while let Some(nl) = pending.iter().position(|c| *c == b'\n') {
            let line: Vec<u8> = pending.drain(..=nl).collect();
            open = send(Msg::Line(String::from_utf8_lossy(&line).into_owned()));
        }
        open
    })
    .await?;
    if !pending.is_empty() {
        send(Msg::Line(String::from_utf8_lossy(&pending).into_owned()));
    }
    Ok(())
}

/// Feeds the body to `sink` as it arrives until it ends (or `sink` returns false).
async fn body_bytes<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    chunked: bool,
    length: Option<u64>,
    sink: &mut impl FnMut(&[u8]) -> bool,
) -> Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    if chunked {
        loop {
            let mut size = String::new();
            if r.read_line(&mut size).await? == 0 {
                bail!("the connection closed in a chunked body");
            }
            let hex = size.trim().split(';').next().unwrap_or("").trim();
            let mut left = u64::from_str_radix(hex, 16).map_err(|_| anyhow!("bad chunk size {:?}", size.trim()))?;
            if left == 0 {
                return Ok(()); // trailers, if any, are not needed
            }
            while left > 0 {
                let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
                let n = r.read(&mut buf[..want]).await?;
                if n == 0 {
                    bail!("the connection closed in a chunk");
                }
                left -= n as u64;
                if !sink(&buf[..n]) {
                    return Ok(());
                }
            }
            let mut crlf = String::new();
            r.read_line(&mut crlf).await?;
        }
    }
    let mut left = length.unwrap_or(u64::MAX);
    while left > 0 {
        let want = usize::try_from(left.min(buf.len() as u64)).unwrap_or(buf.len());
        let n = r.read(&mut buf[..want]).await?;
        if n == 0 {
            if length.is_some() {
                bail!("the connection closed {left} bytes before the body's end");
            }
            return Ok(());
        }
        left -= n as u64;
        if !sink(&buf[..n]) {
            return Ok(());
        }
    }
    Ok(())
}

// === output ===

/// The table's columns, in order.
const HEADER: [&str; 10] = [
    "TIME",
    "NODE",
    "SOURCE",
    "",
    "DESTINATION",
    "PROTO",
    "VERDICT",
    "TIER",
    "POLICY",
    "RULE",
];

/// Prints records; in table mode the columns widen as longer values come and never shrink, so
/// follow output stays aligned without being buffered.
struct Printer {
    output: Output,
    widths: [usize; 10],
    header: bool,
}

impl Printer {
    fn new(output: Output) -> Printer {
        // Room for typical names, so the first lines of a follow rarely shift.
        let widths = [12, 8, 28, 2, 34, 5, 7, 13, 24, 20];
        Printer {
            output,
            widths,
            header: false,
        }
    }

    fn print_all(&mut self, records: &[(String, FlowRecord)]) -> Result<()> {
        if self.output == Output::Table {
            for (_, r) in records {
                self.widen(&cells(r));
            }
        }
        for (v, r) in records {
            self.print(v, r)?;
        }
        Ok(())
    }

    fn widen(&mut self, cells: &[String; 11]) {
        for (w, c) in self.widths.iter_mut().zip(cells.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }

    fn print(&mut self, line: &str, r: &FlowRecord) -> Result<()> {
        use std::io::Write as _;
        let mut out = std::io::stdout().lock();
        let written = match self.output {
            Output::Json => writeln!(out, "{line}"),
            Output::Table => {
                let c = cells(r);
                self.widen(&c);
                let mut text = String::new();
                if !self.header {
                    self.header = true;
                    let mut h: Vec<String> = HEADER.iter().map(|s| s.to_string()).collect();
                    h.push("PACKETS".into());
                    text.push_str(&self.line(&h));
                }
                text.push_str(&self.line(&c));
                write!(out, "{text}")
            }
        };
        match written.and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            // A closed pipe (`| head`) ends the output quietly.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => Err(e.into()),
        }
    }

    fn line(&self, cells: &[String]) -> String {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$} ", w = self.widths[i]);
            }
        }
        s.truncate(s.trim_end().len());
        s.push('\n');
        s
    }
}

/// A record's table cells: TIME NODE SOURCE -> DESTINATION:PORT PROTO VERDICT TIER POLICY RULE PACKETS.
fn cells(r: &FlowRecord) -> [String; 11] {
    let mut dst = peer(&r.destination);
    if let Some(p) = r.destination.port {
        let _ = write!(dst, ":{p}");
    }
    let or_dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
    let policy = match &r.policy {
        Some(p) => {
            let kind = match p.kind.as_str() {
                "NetworkPolicy" => "",
                "ClusterNetworkPolicy" => "cnp/",
                "AdminNetworkPolicy" => "anp/",
                "BaselineAdminNetworkPolicy" => "banp/",
                other => other,
            };
            if p.namespace.is_empty() {
                format!("{kind}{}", p.name)
            } else {
                format!("{kind}{}/{}", p.namespace, p.name)
            }
        }
        None => "-".into(),
    };
    let mut packets = r.packets.to_string();
    if r.suppressed > 0 {
        let _ = write!(packets, " (+{} suppressed)", r.suppressed);
    }
    [
        clock(&r.time),
        or_dash(&r.node),
        peer(&r.source),
        "->".into(),
        dst,
        or_dash(&r.protocol),
        or_dash(&r.verdict).to_uppercase(),
        or_dash(&r.tier),
        policy,
        or_dash(&r.rule),
        packets,
    ]
}

/// `HH:MM:SS.mmm` of an RFC 3339 time (the text itself when it is not one).
fn clock(t: &str) -> String {
    match t.split_once('T') {
        Some((_, rest)) => {
            let end = rest.find(['Z', '+', '-']).unwrap_or(rest.len());
            let mut c = rest[..end].to_string();
            match c.find('.') {
                Some(dot) => {
                    c.truncate(dot + 4);
                    while c.len() < dot + 4 {
                        c.push('0');
                    }
                }
                None => c.push_str(".000"),
            }
            c
        }
        None => t.to_string(),
    }
}

/// `ns/pod`, a node's name, or the address.
fn peer(p: &FlowPeer) -> String {
    match p.kind.as_str() {
        "pod" if !p.pod.is_empty() => format!("{}/{}", p.namespace, p.pod),
        "node" if !p.node.is_empty() => p.node.clone(),
        _ => p.ip.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use policyc_compiler::flows::PolicyName;

    fn record() -> FlowRecord {
        FlowRecord {
            time: "2026-12-05T05:03:51.123Z".into(),
            node: "node-1".into(),
            verdict: "denied".into(),
            direction: "ingress".into(),
            tier: "Default".into(),
            rule: "default deny: isolated by shop/default-deny-all, shop/database".into(),
            isolated_by: vec!["shop/default-deny-all".into(), "shop/database".into()],
            source: FlowPeer {
                ip: "10.244.1.10".into(),
                kind: "pod".into(),
                namespace: "shop".into(),
                pod: "frontend-7c9d8-abcde".into(),
                ..Default::default()
            },
            destination: FlowPeer {
                ip: "10.244.1.30".into(),
                port: Some(5432),
                kind: "pod".into(),
                namespace: "shop".into(),
                pod: "database-0".into(),
                ..Default::default()
            },
            protocol: "TCP".into(),
            packets: 3,
            bytes: 180,
            id: "0123456789ab".into(),
            ..Default::default()
        }
    }

    #[test]
    fn filters_match_either_end_and_the_isolating_policies() {
        let r = record();
        let f = |f: Filter| f.matches(&r);
        assert!(f(Filter::default()));
        assert!(f(Filter {
            namespace: Some("shop".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            namespace: Some("kube-system".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            pod: Some("database-0".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            pod: Some("shop/frontend-7c9d8-abcde".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            pod: Some("other/database-0".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            policy: Some("database".into()),
            ..Default::default()
        }));
        assert!(f(Filter {
            policy: Some("shop/default-deny-all".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            policy: Some("x/database".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            verdict: Some("allowed".into()),
            ..Default::default()
        }));
        assert!(!f(Filter {
            node: Some("node-2".into()),
            ..Default::default()
        }));
        let mut allowed = record();
        allowed.policy = Some(PolicyName {
            kind: "NetworkPolicy".into(),
            namespace: "shop".into(),
            name: "database".into(),
        });
        allowed.isolated_by.clear();
        assert!(Filter {
            policy: Some("shop/database".into()),
            ..Default::default()
        }
        .matches(&allowed));
    }

    #[test]
    fn the_query_is_encoded() {
        let f = Filter {
            pod: Some("shop/web 1".into()),
            verdict: Some("denied".into()),
            ..Default::default()
        };
        assert_eq!(
            query(&f, Some(5), true),
            "/flows?limit=5&follow=true&pod=shop%2Fweb%201&verdict=denied"
        );
        assert_eq!(query(&Filter::default(), None, false), "/flows");
    }

    #[test]
    fn table_cells() {
        let c = cells(&record());
        assert_eq!(c[0], "05:03:51.123");
        assert_eq!(c[2], "shop/frontend-7c9d8-abcde");
        assert_eq!(c[4], "shop/database-0:5432");
        assert_eq!(c[6], "DENIED");
        assert_eq!(c[8], "-");
        assert_eq!(clock("2026-12-05T05:03:51Z"), "05:03:51.000");
        assert_eq!(clock("2026-12-05T05:03:51.5+00:00"), "05:03:51.500");
    }
}
