//! Flow events: the NFLOG events the node's ruleset sends, as flow records.
//!
//! ```text
//!  kernel: log rule before a verdict ── NFLOG group G, prefix "pc:<id>", rate-limited per point
//!     │
//!  nflog-G thread (policyc_dataplane::nflog) ── batches ──► flows thread:
//!     │  id → verdict point (flows::points of the applied IR, this ruleset and the previous)
//!     │  addresses → pod (namespace, name, labels) / node / world, from the agent's index
//!     │  identical events (point, ends, protocol, port) merged over the interval (1 s)
//!     │  each interval: records ──► --flow-log (JSON lines), GET /flows (buffer + followers),
//!     │                             policyc_flow_events_total; points at their rate limit:
//!     │                             the verdict rule's kernel counter tells how many were
//!     │                             suppressed
//! ```

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io::Write as _;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use policyc_compiler::flows::{self, FlowLog, FlowPeer, FlowPoint, FlowRecord};
use policyc_dataplane::nflog::{Batch, Event, Nflog, Options, Transport};
use prometheus_client::encoding::EncodeLabelSet;

use crate::agent::Shared;

/// Records kept for `GET /flows` without `follow`.
const BUFFER: usize = 10_000;

/// What the flows thread is set up with.
#[derive(Clone, Debug)]
pub struct FlowOptions {
    pub log: FlowLog,
    /// Identical events within this interval become one record.
    pub interval: Duration,
    /// Write records as JSON lines here (`-`: stdout).
    pub output: Option<PathBuf>,
    pub netns: Option<PathBuf>,
    pub node: String,
}

/// The labels of `policyc_flow_events_total` and `policyc_flow_events_suppressed_total`:
/// bounded by the policies, never by pods or addresses.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlowLabels {
    pub verdict: String,
    pub tier: String,
    pub kind: String,
    pub namespace: String,
    pub policy: String,
    pub direction: String,
}

/// Which records a reader wants.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    pub namespace: Option<String>,
    /// `NAME` or `NS/NAME`.
    pub pod: Option<String>,
    pub verdict: Option<String>,
    /// `NAME` or `NS/NAME`: the deciding policy, or one isolating the pod of a default deny.
    pub policy: Option<String>,
    pub node: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &FlowRecord) -> bool {
        let ends = [&r.source, &r.destination];
        let pod_is = |p: &FlowPeer, want: &str| match want.split_once('/') {
            Some((ns, name)) => p.namespace == ns && p.pod == name,
            None => p.pod == want,
        };
        let policy_is = |want: &str| {
            let named = |ns: &str, name: &str| match want.split_once('/') {
                Some((wns, wname)) => ns == wns && name == wname,
                None => name == want,
            };
            r.policy.as_ref().is_some_and(|p| named(&p.namespace, &p.name))
                || r.isolated_by.iter().any(|i| {
                    let (ns, name) = i.split_once('/').unwrap_or(("", i));
                    named(ns, name)
                })
        };
        self.namespace
            .as_deref()
            .is_none_or(|ns| ends.iter().any(|p| p.namespace == ns))
            && self
                .pod
                .as_deref()
                .is_none_or(|want| ends.iter().any(|p| pod_is(p, want)))
            && self.verdict.as_deref().is_none_or(|v| r.verdict == v)
            && self.policy.as_deref().is_none_or(policy_is)
            && self.node.as_deref().is_none_or(|n| r.node == n)
    }
}

/// `GET /flows` parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    pub limit: usize,
    pub follow: bool,
}

/// Parses the query string of `GET /flows` (`limit`, `follow`, `namespace`, `pod`, `verdict`,
/// `policy`, `node`).
pub fn parse_query(q: &str) -> Result<Query, String> {
    let mut out = Query {
        filter: Filter::default(),
        limit: 1000,
        follow: false,
    };
    let mut limit = None;
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v).ok_or_else(|| format!("{k}: bad percent-encoding"))?;
        match k {
            "limit" => limit = Some(v.parse::<usize>().map_err(|_| format!("limit={v}: not a number"))?),
            "follow" => out.follow = matches!(v.as_str(), "" | "true" | "1"),
            "namespace" => out.filter.namespace = Some(v),
            "pod" => out.filter.pod = Some(v),
            "verdict" => {
                if !matches!(v.as_str(), "allowed" | "denied" | "passed") {
                    return Err(format!("verdict={v}: allowed, denied or passed"));
                }
                out.filter.verdict = Some(v);
            }
            "policy" => out.filter.policy = Some(v),
            "node" => out.filter.node = Some(v),
            _ => return Err(format!("unknown parameter {k}")),
        }
    }
    out.limit = limit.unwrap_or(if out.follow { 20 } else { 1000 });
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// The records: the last [`BUFFER`] for readers, and the followers' channels.
#[derive(Debug, Default)]
pub struct FlowHub {
    buffer: Mutex<VecDeque<Arc<FlowRecord>>>,
    followers: Mutex<Vec<(Filter, SyncSender<Arc<FlowRecord>>)>>,
    /// The verdict points of the applied ruleset and the one before it (events in flight).
    points: RwLock<(PointMap, PointMap)>,
}

/// Verdict points by id.
type PointMap = HashMap<String, Arc<FlowPoint>>;

impl FlowHub {
    /// The points of a newly applied ruleset.
    pub fn set_points(&self, points: Vec<FlowPoint>) {
        let new: PointMap = points.into_iter().map(|p| (p.id.clone(), Arc::new(p))).collect();
        let mut g = self.points.write().expect("points lock");
        let current = std::mem::replace(&mut g.0, new);
        g.1 = current;
    }

    fn point(&self, id: &str) -> Option<Arc<FlowPoint>> {
        let g = self.points.read().expect("points lock");
        g.0.get(id).or_else(|| g.1.get(id)).cloned()
    }

    /// Up to `limit` of the buffered records that match, oldest first.
    pub fn recent(&self, filter: &Filter, limit: usize) -> Vec<Arc<FlowRecord>> {
        let buf = self.buffer.lock().expect("buffer lock");
        let mut v: Vec<Arc<FlowRecord>> = buf
            .iter()
            .rev()
            .filter(|r| filter.matches(r))
            .take(limit)
            .cloned()
            .collect();
        v.reverse();
        v
    }

    /// A channel of the records published from now on that match.
    pub fn follow(&self, filter: Filter) -> Receiver<Arc<FlowRecord>> {
        let (tx, rx) = std::sync::mpsc::sync_channel(4096);
        self.followers.lock().expect("followers lock").push((filter, tx));
        rx
    }

    fn publish(&self, records: Vec<FlowRecord>) {
        let records: Vec<Arc<FlowRecord>> = records.into_iter().map(Arc::new).collect();
        {
            let mut buf = self.buffer.lock().expect("buffer lock");
            for r in &records {
                if buf.len() == BUFFER {
                    buf.pop_front();
                }
                buf.push_back(Arc::clone(r));
            }
        }
        let mut followers = self.followers.lock().expect("followers lock");
        followers.retain(|(filter, tx)| {
            for r in records.iter().filter(|r| filter.matches(r)) {
                match tx.try_send(Arc::clone(r)) {
                    Ok(()) => {}
                    // A slow reader misses records rather than holding the agent up.
                    Err(TrySendError::Full(_)) => {}
                    Err(TrySendError::Disconnected(_)) => return false,
                }
            }
            true
        });
    }
}

/// One merged flow of an interval.
#[derive(Clone, Copy, Debug)]
struct Agg {
    first: SystemTime,
    last: SystemTime,
    packets: u64,
    bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    id: String,
    src: IpAddr,
    dst: IpAddr,
    protocol: u8,
    port: Option<u16>,
}

/// Addresses → who has them, from the agent's index (rebuilt when it changed).
#[derive(Debug, Default)]
struct Peers {
    version: Option<u64>,
    by_ip: HashMap<IpAddr, FlowPeer>,
}

impl Peers {
    fn refresh(&mut self, shared: &Shared) {
        let ix = shared.index.read().expect("index lock");
        if self.version == Some(ix.version()) {
            return;
        }
        let s = ix.snapshot();
        let mut by_ip = HashMap::new();
        for n in s.nodes.values() {
            for ip in &n.addresses {
                by_ip.insert(
                    *ip,
                    FlowPeer {
                        kind: "node".into(),
                        node: n.name.clone(),
                        ..FlowPeer::default()
                    },
                );
            }
        }
        for p in s.pods.values().filter(|p| p.is_endpoint()) {
            for ip in &p.ips {
                by_ip.insert(
                    *ip,
                    FlowPeer {
                        kind: "pod".into(),
                        namespace: p.namespace.clone(),
                        pod: p.name.clone(),
                        node: p.node.clone().unwrap_or_default(),
                        labels: p.labels.clone(),
                        ..FlowPeer::default()
                    },
                );
            }
        }
        self.by_ip = by_ip;
        self.version = Some(ix.version());
    }

    fn peer(&self, ip: IpAddr, port: Option<u16>) -> FlowPeer {
        let mut p = self.by_ip.get(&ip).cloned().unwrap_or_else(|| FlowPeer {
            kind: "world".into(),
            ..FlowPeer::default()
        });
        p.ip = ip.to_string();
        p.port = port;
        p
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        1 => "ICMP".into(),
        6 => "TCP".into(),
        17 => "UDP".into(),
        58 => "ICMPv6".into(),
        132 => "SCTP".into(),
        n => n.to_string(),
    }
}

fn rfc3339(t: SystemTime) -> String {
    jiff::Timestamp::try_from(t)
        .map(|ts| ts.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

/// The running flow pipeline: the NFLOG reader and the thread merging its events.
#[derive(Debug)]
pub struct Flows {
    _listener: policyc_dataplane::nflog::Listener,
}

/// Starts reading the ruleset's flow events: binds the NFLOG group in the node's namespace and
/// starts the thread that turns events into records.
pub fn start(opts: FlowOptions, shared: Arc<Shared>) -> Result<Flows, String> {
    let nflog = Nflog::open(opts.netns.as_deref(), opts.log.group, &Options::default())
        .map_err(|e| format!("NFLOG group {}: {e}", opts.log.group))?;
    let (tx, rx) = std::sync::mpsc::sync_channel::<Batch>(256);
    let dropped = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let d = Arc::clone(&dropped);
    let listener = nflog
        .spawn(Duration::from_millis(100), move |batch| match tx.try_send(batch) {
            Ok(()) => true,
            Err(TrySendError::Full(b)) => {
                // The merging thread is behind: these events are lost, and counted.
                d.fetch_add(b.events.len() as u64, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        })
        .map_err(|e| format!("NFLOG reader: {e}"))?;
    let out: Option<Box<dyn std::io::Write + Send>> = match &opts.output {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::stdout())),
        Some(p) => Some(Box::new(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| format!("--flow-log {}: {e}", p.display()))?,
        )),
    };
    std::thread::Builder::new()
        .name("flows".into())
        .spawn(move || merge_loop(opts, shared, rx, dropped, out))
        .map_err(|e| format!("flows thread: {e}"))?;
    Ok(Flows { _listener: listener })
}

fn merge_loop(
    opts: FlowOptions,
    shared: Arc<Shared>,
    rx: Receiver<Batch>,
    dropped: Arc<std::sync::atomic::AtomicU64>,
    mut out: Option<Box<dyn std::io::Write + Send>>,
) {
    let mut peers = Peers::default();
    let mut aggs: HashMap<Key, Agg> = HashMap::new();
    let mut per_point: HashMap<String, u64> = HashMap::new();
    // The verdict rules' kernel counters at the last read, by comment.
    let mut counted: HashMap<String, u64> = HashMap::new();
    let mut next = Instant::now() + opts.interval;
    loop {
        let wait = next.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(batch) => {
                shared.metrics.flow_lost.inc_by(batch.lost + batch.overruns);
                for e in batch.events {
                    add(&mut aggs, &mut per_point, &e);
                }
                if Instant::now() < next {
                    continue;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        next = Instant::now() + opts.interval;
        let lost = dropped.swap(0, std::sync::atomic::Ordering::Relaxed);
        shared.metrics.flow_lost.inc_by(lost);
        if aggs.is_empty() {
            continue;
        }
        peers.refresh(&shared);
        let suppressed = suppressed(&opts, &shared, &per_point, &mut counted);
        let records = flush(&opts, &shared, &peers, std::mem::take(&mut aggs), &suppressed);
        per_point.clear();
        if let Some(w) = out.as_mut() {
            for r in &records {
                if let Ok(line) = serde_json::to_string(r) {
                    let _ = writeln!(w, "{line}");
                }
            }
            let _ = w.flush();
        }
        shared.flows.publish(records);
    }
}

fn add(aggs: &mut HashMap<Key, Agg>, per_point: &mut HashMap<String, u64>, e: &Event) {
    let Some(id) = flows::id_of_prefix(&e.prefix) else {
        return;
    };
    let Some(p) = &e.packet else { return };
    let port = match p.transport {
        Transport::Ports { dst, .. } => Some(dst),
        _ => None,
    };
    let now = e.timestamp.unwrap_or_else(SystemTime::now);
    *per_point.entry(id.to_string()).or_default() += 1;
    let a = aggs
        .entry(Key {
            id: id.to_string(),
            src: p.src,
            dst: p.dst,
            protocol: p.protocol,
            port,
        })
        .or_insert(Agg {
            first: now,
            last: now,
            packets: 0,
            bytes: 0,
        });
    a.last = a.last.max(now);
    a.first = a.first.min(now);
    a.packets += 1;
    a.bytes += u64::from(p.len);
}

/// For the points whose events reached their rate limit in the interval: the packets their
/// verdict rules counted beyond the events (one counter read, only then). A point that just
/// reached its limit has no earlier count yet and reports none this interval.
fn suppressed(
    opts: &FlowOptions,
    shared: &Shared,
    per_point: &HashMap<String, u64>,
    counted: &mut HashMap<String, u64>,
) -> HashMap<String, u64> {
    let secs = opts.interval.as_secs_f64();
    let at_limit = |n: u64| n as f64 >= f64::from(opts.log.rate) * secs * 0.9;
    let hot: Vec<(&String, u64, Arc<FlowPoint>)> = per_point
        .iter()
        .filter(|(_, n)| at_limit(**n))
        .filter_map(|(id, n)| Some((id, *n, shared.flows.point(id)?)))
        .collect();
    let mut out = HashMap::new();
    if hot.is_empty() {
        counted.clear();
        return out;
    }
    let rules = match crate::metrics::read_rule_counters(opts.netns.as_deref()) {
        Ok(r) => r,
        Err(e) => {
            tracing::debug!("reading counters for suppressed flow events: {e}");
            return out;
        }
    };
    let mut now: HashMap<&str, u64> = HashMap::new();
    for r in &rules {
        if let Some(c) = r.comment.as_deref() {
            *now.entry(c).or_default() += r.packets;
        }
    }
    let mut next_counted = HashMap::new();
    for (id, events, point) in hot {
        let Some(&total) = now.get(point.comment.as_str()) else {
            continue;
        };
        if let Some(&before) = counted.get(&point.comment) {
            out.insert(id.clone(), total.saturating_sub(before).saturating_sub(events));
        }
        next_counted.insert(point.comment.clone(), total);
    }
    *counted = next_counted;
    out
}

fn labels_of(p: Option<&FlowPoint>) -> FlowLabels {
    match p {
        Some(p) => FlowLabels {
            verdict: p.verdict.as_str().into(),
            tier: p.tier.as_str().into(),
            kind: p.policy.as_ref().map(|x| x.kind.clone()).unwrap_or_default(),
            namespace: p.policy.as_ref().map(|x| x.namespace.clone()).unwrap_or_default(),
            policy: p.policy.as_ref().map(|x| x.name.clone()).unwrap_or_default(),
            direction: p.direction.map(|d| d.to_string()).unwrap_or_default(),
        },
        None => FlowLabels {
            verdict: "unknown".into(),
            tier: String::new(),
            kind: String::new(),
            namespace: String::new(),
            policy: String::new(),
            direction: String::new(),
        },
    }
}

fn flush(
    opts: &FlowOptions,
    shared: &Shared,
    peers: &Peers,
    aggs: HashMap<Key, Agg>,
    suppressed: &HashMap<String, u64>,
) -> Vec<FlowRecord> {
    let mut records: Vec<FlowRecord> = Vec::with_capacity(aggs.len());
    // The record of each point with the most packets carries the point's suppressed count.
    let mut biggest: BTreeMap<String, (u64, usize)> = BTreeMap::new();
    let mut sorted: Vec<(Key, Agg)> = aggs.into_iter().collect();
    sorted.sort_by_key(|(_, a)| a.first);
    for (k, a) in sorted {
        let point = shared.flows.point(&k.id);
        let labels = labels_of(point.as_deref());
        shared.metrics.flow_events.get_or_create(&labels).inc_by(a.packets);
        let mut r = FlowRecord {
            time: rfc3339(a.first),
            last: rfc3339(a.last),
            node: opts.node.clone(),
            source: peers.peer(k.src, None),
            destination: peers.peer(k.dst, k.port),
            protocol: protocol_name(k.protocol),
            packets: a.packets,
            bytes: a.bytes,
            id: k.id.clone(),
            ..FlowRecord::default()
        };
        match &point {
            Some(p) => {
                r.verdict = p.verdict.as_str().into();
                r.direction = p.direction.map(|d| d.to_string()).unwrap_or_default();
                r.tier = p.tier.as_str().into();
                r.policy = p.policy.clone();
                r.rule = p.rule.clone();
                r.isolated_by = p.isolated_by.iter().map(ToString::to_string).collect();
            }
            None => {
                r.verdict = "unknown".into();
                r.rule = format!("verdict point {} not in this agent's rulesets", k.id);
            }
        }
        let e = biggest.entry(k.id.clone()).or_insert((0, records.len()));
        if a.packets > e.0 {
            *e = (a.packets, records.len());
        }
        records.push(r);
    }
    for (id, (_, i)) in biggest {
        if let Some(&n) = suppressed.get(&id) {
            records[i].suppressed = n;
            let labels = labels_of(shared.flows.point(&id).as_deref());
            shared.metrics.flow_suppressed.get_or_create(&labels).inc_by(n);
        }
    }
    records
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(src: (&str, &str), dst: (&str, &str), verdict: &str, policy: Option<(&str, &str)>) -> FlowRecord {
        let peer = |(ns, pod): (&str, &str)| FlowPeer {
            kind: "pod".into(),
            namespace: ns.into(),
            pod: pod.into(),
            ..FlowPeer::default()
        };
        FlowRecord {
            node: "node-1".into(),
            verdict: verdict.into(),
            source: peer(src),
            destination: peer(dst),
            policy: policy.map(|(ns, name)| flows::PolicyName {
                kind: "NetworkPolicy".into(),
                namespace: ns.into(),
                name: name.into(),
            }),
            isolated_by: if policy.is_none() {
                vec!["x/deny".into()]
            } else {
                Vec::new()
            },
            ..FlowRecord::default()
        }
    }

    #[test]
    fn queries_parse_and_filter() {
        let q = parse_query("follow=true&namespace=x&pod=y%2Fb&verdict=denied&policy=deny").unwrap();
        assert!(q.follow);
        assert_eq!(q.limit, 20);
        assert_eq!(q.filter.pod.as_deref(), Some("y/b"));
        let denied = record(("y", "b"), ("x", "a"), "denied", None);
        let allowed = record(("y", "b"), ("x", "a"), "allowed", Some(("x", "allow")));
        assert!(q.filter.matches(&denied), "isolated_by names the policy");
        assert!(!q.filter.matches(&allowed));
        let by_policy = parse_query("policy=x/allow").unwrap();
        assert!(by_policy.filter.matches(&allowed) && !by_policy.filter.matches(&denied));
        assert!(!parse_query("namespace=z").unwrap().filter.matches(&denied));
        assert_eq!(parse_query("").unwrap().limit, 1000);
        assert!(parse_query("verdict=maybe").is_err());
        assert!(parse_query("colour=red").is_err());
    }

    #[test]
    fn the_buffer_keeps_the_last_and_followers_get_what_matches() {
        let hub = FlowHub::default();
        let rx = hub.follow(parse_query("verdict=denied").unwrap().filter);
        hub.publish(vec![
            record(("y", "b"), ("x", "a"), "denied", None),
            record(("y", "b"), ("x", "a"), "allowed", Some(("x", "allow"))),
        ]);
        assert_eq!(rx.try_recv().unwrap().verdict, "denied");
        assert!(rx.try_recv().is_err());
        assert_eq!(hub.recent(&Filter::default(), 1).len(), 1);
        assert_eq!(hub.recent(&Filter::default(), 1)[0].verdict, "allowed");
        drop(rx);
        hub.publish(vec![record(("y", "b"), ("x", "a"), "denied", None)]);
        assert!(hub.followers.lock().unwrap().is_empty(), "a gone reader is dropped");
    }
}
