//! How this node's pods are attached, and (plain Flannel) which bridge port each local pod is
//! behind: the part of [`CompileOptions`](policyc_compiler::CompileOptions) the cluster does not
//! say.
//!
//! ```text
//!  --attachment canal ─────────────────────────────► Canal (nothing to discover: cali + hash)
//!  --attachment flannel ───────────────────────────► Flannel ─┐
//!  --attachment auto ─► links of the node netns ─► detect ────┤ (re-detected every 2 s and on
//!                        (RTM_GETLINK)               None ─► Ready=False NoPodAttachment)
//!                                                            │
//!  Flannel: bridge ports + peer addresses ─► address → port ─┴─► sync loop: pod → port
//!   rescanned on link events (RTM_NEWLINK/DELLINK), when the local pods change, every 10 s
//!   (every 1 s while a local pod's address is on no port); br_netfilter checked and turned on.
//! ```
//!
//! # The detection rule (`--attachment auto`)
//!
//! What the node's own network namespace shows, nothing else (the agent's container mounts no
//! CNI configuration, and with `--netns` the host's files are not the node's):
//!
//! 1. A veth named with the interface prefix (`cali…`) exists → **canal**. Calico's CNI plugin
//!    (Canal's) names every pod's routed veth so; plain Flannel never does.
//! 2. Otherwise the bridge (`--bridge`, default `cni0`) exists as a bridge → **flannel**. The
//!    `bridge` CNI plugin that Flannel's plugin delegates to creates it with the node's first
//!    pod; Canal never creates it.
//! 3. Otherwise neither: a node without pods yet looks the same under both (`flannel.1` exists
//!    on both, so it tells nothing). The agent enforces nothing, reports `Ready=False` with
//!    reason `NoPodAttachment`, and looks again every 2 s and on every link change.
//!
//! A node with both `cali*` veths and the bridge (e.g. migrated from Flannel to Canal, the old
//! bridge left behind) is Canal, with a warning naming the bridge's ports, which would then not
//! be guarded. The decision stands for the agent's life: a node does not switch CNI under
//! running pods; restarting the agent detects again. `--attachment canal|flannel` skips
//! detection.
//!
//! Limit: while undecided, no ruleset is in the kernel, so a node's very first pod is not
//! filtered until its link event has been seen and the first ruleset applied (tens of
//! milliseconds; fail-closed covers every later pod). Where that matters, give the attachment
//! (`--attachment canal|flannel`): then the first ruleset is in place before any pod.
//!
//! # Flannel: ports
//!
//! `policyc_dataplane::links::bridge_ports` lists the bridge's veth ports and reads each peer's
//! addresses from the node's namespace (see there). An address found on two ports belongs to
//! neither (a pod with `NET_ADMIN` can add any address to its interface): such a pod gets no
//! port, and the compiled ruleset drops its frames (fail closed). A local pod whose addresses
//! are on no port (its CNI ADD still running, or discovery failing) is fail-closed the same
//! way, and rescans come every second until it shows up.
//!
//! # Flannel: br_netfilter
//!
//! Same-node pod traffic crosses only the bridge; it reaches the `inet` hooks only when
//! `net.bridge.bridge-nf-call-iptables` / `-ip6tables` are 1 in the node's namespace. The agent
//! reads both and writes 1 where they are 0 (per network namespace since Linux 5.3; writing
//! needs a writable `/proc/sys`, which an unprivileged container does not have, and the files
//! exist only when the `br_netfilter` module is loaded, which no pod can do). If either stays
//! off, the ruleset still fails closed (its bridge table drops pod traffic the `inet` hooks did
//! not see), and the status says `Ready=False`, reason `BrNetfilterOff`: same-node pod traffic
//! is being dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use policyc_compiler::ir::AttachmentKind;
use policyc_compiler::model::{ObjectRef, Snapshot};
use policyc_dataplane::links::{BrNetfilter, BridgePort, Link};
use tokio::sync::watch;

use crate::agent::Shared;

/// `--attachment`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    Auto,
    Canal,
    Flannel,
}

/// How pods are attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// Calico's routed `cali*` veths (Canal).
    Canal,
    /// Veths on the bridge of plain Flannel.
    Flannel,
}

impl Attachment {
    /// As the status reports it.
    pub fn as_str(self) -> &'static str {
        match self {
            Attachment::Canal => "canal",
            Attachment::Flannel => "flannel",
        }
    }
}

/// What the detection rule (module documentation) makes of a namespace's links.
pub fn detect(links: &[Link], prefix: &str, bridge: &str) -> Option<Attachment> {
    let canal = links
        .iter()
        .any(|l| l.name.starts_with(prefix) && l.kind.as_deref() == Some("veth"));
    if canal {
        return Some(Attachment::Canal);
    }
    links
        .iter()
        .any(|l| l.name == bridge && l.kind.as_deref() == Some("bridge"))
        .then_some(Attachment::Flannel)
}

/// The state before [`run`] has looked at the node.
pub fn initial() -> State {
    State {
        pending: "looking for the pod attachment".into(),
        ..State::default()
    }
}

/// What the sync loop compiles with, published by [`run`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct State {
    /// Bumped on every change; the sync loop compiles again when it moved.
    pub version: u64,
    /// `None`: not known yet (nothing is enforced).
    pub attachment: Option<Attachment>,
    /// Why `attachment` is not known, for the status.
    pub pending: String,
    /// Flannel: each pod address found on exactly one bridge port, with that port.
    pub ports: BTreeMap<IpAddr, String>,
    /// Flannel: the node namespace's br_netfilter switches, as last read.
    pub br_netfilter: Option<BrNetfilter>,
}

impl State {
    /// The compiler's attachment.
    pub fn kind(&self, bridge: &str) -> AttachmentKind {
        match self.attachment {
            Some(Attachment::Flannel) => AttachmentKind::Bridge {
                bridge: bridge.to_string(),
            },
            _ => AttachmentKind::Canal,
        }
    }

    /// Flannel: each local endpoint pod whose addresses are all on one and the same port, with
    /// that port. A pod some of whose addresses are on another port, or on none, gets none.
    pub fn pod_ports(&self, snapshot: &Snapshot, node: &str) -> BTreeMap<ObjectRef, String> {
        if self.attachment != Some(Attachment::Flannel) {
            return BTreeMap::new();
        }
        local_endpoints(snapshot, node)
            .filter_map(|(id, ips)| {
                let mut ports = ips.iter().map(|ip| self.ports.get(ip));
                let first = ports.next()??;
                ports.all(|p| p == Some(first)).then(|| (id, first.clone()))
            })
            .collect()
    }

    /// Flannel: how many local endpoint pods `ports` (from [`State::pod_ports`]) leaves without
    /// a port.
    pub fn pods_without_port(&self, snapshot: &Snapshot, node: &str, ports: &BTreeMap<ObjectRef, String>) -> usize {
        if self.attachment != Some(Attachment::Flannel) {
            return 0;
        }
        local_endpoints(snapshot, node)
            .filter(|(id, _)| !ports.contains_key(id))
            .count()
    }

    /// Why the node's traffic does not pass the ruleset as intended, beyond applying it:
    /// `(reason, message)` for `Ready=False`.
    pub fn not_ready(&self) -> Option<(&'static str, String)> {
        match (self.attachment, &self.br_netfilter) {
            (None, _) => Some(("NoPodAttachment", self.pending.clone())),
            (Some(Attachment::Flannel), Some(b)) if !b.on() => {
                let show = |v: Option<bool>| match v {
                    None => "missing (br_netfilter not loaded)",
                    Some(false) => "0",
                    Some(true) => "1",
                };
                let mut m = format!(
                    "bridged traffic skips the inet hooks, so same-node pod traffic is dropped (fail closed): \
                     net.bridge.bridge-nf-call-iptables {}, bridge-nf-call-ip6tables {}",
                    show(b.iptables),
                    show(b.ip6tables)
                );
                if let Some(e) = &b.error {
                    m.push_str(&format!("; turning them on failed: {e}"));
                }
                Some(("BrNetfilterOff", m))
            }
            _ => None,
        }
    }
}

/// The local endpoint pods (policy applies to them) and their addresses.
fn local_endpoints<'a>(snapshot: &'a Snapshot, node: &'a str) -> impl Iterator<Item = (ObjectRef, &'a [IpAddr])> {
    snapshot
        .endpoints()
        .filter(move |p| p.node.as_deref() == Some(node))
        .map(|p| (p.id(), p.ips.as_slice()))
}

/// Address → port over every port, without addresses found on more than one port (returned
/// apart, sorted).
pub fn address_map(ports: &[BridgePort]) -> (BTreeMap<IpAddr, String>, Vec<IpAddr>) {
    let mut map = BTreeMap::new();
    let mut ambiguous = BTreeSet::new();
    for p in ports {
        for ip in &p.addresses {
            if ambiguous.contains(ip) {
                continue;
            }
            if let Some(other) = map.insert(*ip, p.name.clone()) {
                if other != p.name {
                    map.remove(ip);
                    ambiguous.insert(*ip);
                }
            }
        }
    }
    (map, ambiguous.into_iter().collect())
}

/// What [`run`] needs of the agent's configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub mode: Mode,
    pub bridge: String,
    pub interface_prefix: String,
    pub node_name: String,
    pub netns: Option<PathBuf>,
}

/// Rescan intervals.
const UNDECIDED_RETRY: Duration = Duration::from_secs(2);
const PORT_RESCAN: Duration = Duration::from_secs(10);
const UNMAPPED_RESCAN: Duration = Duration::from_secs(1);

/// Decides the attachment and, for Flannel, keeps the ports current; publishes every change on
/// `tx`, starting from what it holds ([`initial`]). `index` hears of every index change (the
/// local pods).
pub async fn run(cfg: Config, shared: Arc<Shared>, mut index: watch::Receiver<u64>, tx: watch::Sender<State>) {
    let mut state = tx.borrow().clone();
    let publish = |state: &mut State, tx: &watch::Sender<State>| {
        state.version += 1;
        tx.send_replace(state.clone());
    };
    // Canal needs nothing from the links.
    let mut links_changed = match cfg.mode {
        Mode::Canal => None,
        Mode::Auto | Mode::Flannel => link_events(cfg.netns.clone()),
    };
    let decided = match cfg.mode {
        Mode::Canal => Attachment::Canal,
        Mode::Flannel => Attachment::Flannel,
        Mode::Auto => loop {
            let netns = cfg.netns.clone();
            let found = tokio::task::spawn_blocking(move || policyc_dataplane::links::links(netns.as_deref()))
                .await
                .expect("links task");
            match found {
                Ok(links) => {
                    if let Some(a) = detect(&links, &cfg.interface_prefix, &cfg.bridge) {
                        if a == Attachment::Canal {
                            warn_leftover_bridge(&links, &cfg.bridge);
                        }
                        tracing::info!(attachment = a.as_str(), "pod attachment detected");
                        break a;
                    }
                    let pending = format!(
                        "no pod attachment found on this node yet: no {}* veth (Canal) and no bridge {} (Flannel); \
                         nothing is enforced until one appears",
                        cfg.interface_prefix, cfg.bridge
                    );
                    if state.pending != pending {
                        tracing::warn!("{pending}");
                        state.pending = pending;
                        publish(&mut state, &tx);
                    }
                }
                Err(e) => {
                    let pending = format!("listing the node's links failed: {e}");
                    if state.pending != pending {
                        tracing::warn!("{pending}");
                        state.pending = pending;
                        publish(&mut state, &tx);
                    }
                }
            }
            wait_for_change(&mut links_changed, None, UNDECIDED_RETRY).await;
        },
    };
    state.attachment = Some(decided);
    state.pending.clear();
    if decided == Attachment::Canal {
        publish(&mut state, &tx);
        // Nothing more to find; the sync loop stops when the sender goes away.
        tx.closed().await;
        return;
    }
    // Flannel: keep the ports (and br_netfilter) current.
    let mut local: Vec<(ObjectRef, Vec<IpAddr>)>;
    let mut last_ambiguous = Vec::new();
    let mut first = true;
    loop {
        let netns = cfg.netns.clone();
        let bridge = cfg.bridge.clone();
        let (ports, brnf) = tokio::task::spawn_blocking(move || {
            (
                policyc_dataplane::links::bridge_ports(netns.as_deref(), &bridge),
                policyc_dataplane::links::br_netfilter(netns.as_deref(), true),
            )
        })
        .await
        .expect("ports task");
        let mut next = state.clone();
        match ports {
            Ok(Some(ports)) => {
                for p in ports.iter().filter(|p| p.error.is_some()) {
                    tracing::warn!(port = %p.name, "reading the addresses behind a bridge port failed: {}",
                        p.error.as_deref().unwrap_or_default());
                }
                let (map, ambiguous) = address_map(&ports);
                if !ambiguous.is_empty() && ambiguous != last_ambiguous {
                    tracing::warn!(
                        ?ambiguous,
                        "addresses found on more than one bridge port: their pods get no port (fail closed)"
                    );
                }
                last_ambiguous = ambiguous;
                next.ports = map;
            }
            Ok(None) => {
                tracing::warn!(bridge = %cfg.bridge, "bridge not found: no pod gets a port (fail closed)");
                next.ports.clear();
            }
            Err(e) => tracing::warn!("discovering bridge ports failed, keeping the last ones: {e}"),
        }
        match brnf {
            Ok(b) => {
                if !b.on() && state.br_netfilter.as_ref() != Some(&b) {
                    tracing::error!(
                        ?b,
                        "br_netfilter is off in the node's namespace: same-node pod traffic is dropped (fail closed)"
                    );
                }
                next.br_netfilter = Some(b);
            }
            Err(e) => tracing::warn!("reading br_netfilter failed: {e}"),
        }
        if first || next != state {
            if next.ports != state.ports {
                tracing::info!(ports = next.ports.len(), "bridge ports discovered");
            }
            state = next;
            publish(&mut state, &tx);
            first = false;
        }
        // While a local pod's address is on no port, look again soon.
        let unmapped = {
            let ix = shared.index.read().expect("index lock");
            local = local_endpoints(ix.snapshot(), &cfg.node_name)
                .map(|(id, ips)| (id, ips.to_vec()))
                .collect();
            local
                .iter()
                .any(|(_, ips)| ips.iter().any(|ip| !state.ports.contains_key(ip)))
        };
        let pause = if unmapped { UNMAPPED_RESCAN } else { PORT_RESCAN };
        wait_for_change(
            &mut links_changed,
            Some(LocalPods {
                index: &mut index,
                shared: &shared,
                node: &cfg.node_name,
                last: &local,
            }),
            pause,
        )
        .await;
    }
}

fn warn_leftover_bridge(links: &[Link], bridge: &str) {
    if let Some(br) = links
        .iter()
        .find(|l| l.name == bridge && l.kind.as_deref() == Some("bridge"))
    {
        let ports: Vec<&str> = links
            .iter()
            .filter(|l| l.master == Some(br.index))
            .map(|l| l.name.as_str())
            .collect();
        if !ports.is_empty() {
            tracing::warn!(
                bridge,
                ?ports,
                "Canal detected, but the bridge has ports too: pods behind them are not told apart by this ruleset"
            );
        }
    }
}

/// Link change notifications from a thread that listens on rtnetlink; `None` when subscribing
/// failed (then only the periodic rescans and pod changes trigger discovery).
fn link_events(netns: Option<PathBuf>) -> Option<watch::Receiver<u64>> {
    let mut events = match policyc_dataplane::links::LinkEvents::open(netns.as_deref()) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!("subscribing to link changes failed, rescanning periodically only: {e}");
            return None;
        }
    };
    let (tx, rx) = watch::channel(0u64);
    std::thread::Builder::new()
        .name("link-events".into())
        .spawn(move || loop {
            match events.wait(Duration::from_secs(3600)) {
                Ok(true) => {
                    tx.send_modify(|n| *n += 1);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!("link change subscription failed, rescanning periodically only: {e}");
                    return;
                }
            }
            if tx.is_closed() {
                return;
            }
        })
        .ok()?;
    Some(rx)
}

/// What tells [`wait_for_change`] that the local pods changed.
struct LocalPods<'a> {
    /// Hears of every index change.
    index: &'a mut watch::Receiver<u64>,
    shared: &'a Arc<Shared>,
    node: &'a str,
    /// The local endpoint pods and addresses as last scanned.
    last: &'a [(ObjectRef, Vec<IpAddr>)],
}

/// Waits for a link change, a change of the local pods (when `pods` is given), or `pause`.
async fn wait_for_change(links: &mut Option<watch::Receiver<u64>>, pods: Option<LocalPods<'_>>, pause: Duration) {
    let link_change = async {
        match links.as_mut() {
            Some(rx) => {
                if rx.changed().await.is_err() {
                    *links = None;
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    };
    let pod_change = async {
        let Some(LocalPods {
            index,
            shared,
            node,
            last,
        }) = pods
        else {
            return std::future::pending::<()>().await;
        };
        loop {
            if index.changed().await.is_err() {
                return std::future::pending::<()>().await;
            }
            let ix = shared.index.read().expect("index lock");
            let now = local_endpoints(ix.snapshot(), node);
            if !now.map(|(id, ips)| (id, ips.to_vec())).eq(last.iter().cloned()) {
                return;
            }
        }
    };
    tokio::select! {
        _ = link_change => {}
        _ = pod_change => {}
        _ = tokio::time::sleep(pause) => {}
    }
    // A burst of link events (a veth appears, is renamed, moved, enslaved, set up) is one scan.
    tokio::time::sleep(Duration::from_millis(50)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn link(index: u32, name: &str, kind: Option<&str>, master: Option<u32>) -> Link {
        Link {
            index,
            name: name.into(),
            kind: kind.map(Into::into),
            master,
            ..Link::default()
        }
    }

    fn lo() -> Link {
        link(1, "lo", None, None)
    }

    fn flannel1() -> Link {
        link(3, "flannel.1", Some("vxlan"), None)
    }

    #[test]
    fn detection_rule() {
        let eth0 = link(2, "eth0", None, None);
        // A fresh node: only the uplink and flannel's VXLAN device, under both CNIs.
        assert_eq!(detect(&[lo(), eth0.clone(), flannel1()], "cali", "cni0"), None);
        // Plain Flannel: cni0 with the pods' veths (or still without: the bridge is enough).
        let cni0 = link(4, "cni0", Some("bridge"), None);
        let port = link(5, "veth1a2b3c4d", Some("veth"), Some(4));
        assert_eq!(
            detect(
                &[lo(), eth0.clone(), flannel1(), cni0.clone(), port.clone()],
                "cali",
                "cni0"
            ),
            Some(Attachment::Flannel)
        );
        assert_eq!(detect(&[lo(), cni0.clone()], "cali", "cni0"), Some(Attachment::Flannel));
        // Canal: routed cali veths, flannel.1, no bridge.
        let cali = link(6, "cali0123456789a", Some("veth"), None);
        assert_eq!(
            detect(&[lo(), eth0.clone(), flannel1(), cali.clone()], "cali", "cni0"),
            Some(Attachment::Canal)
        );
        // Both (a leftover bridge after migrating to Canal): Canal.
        assert_eq!(
            detect(&[lo(), cni0.clone(), port, cali.clone()], "cali", "cni0"),
            Some(Attachment::Canal)
        );
        // Names alone do not decide: a cni0 that is no bridge, a cali… that is no veth.
        assert_eq!(detect(&[link(4, "cni0", Some("dummy"), None)], "cali", "cni0"), None);
        assert_eq!(
            detect(&[link(7, "calico-tunl", Some("ipip"), None)], "cali", "cni0"),
            None
        );
        // Another bridge name, another prefix.
        assert_eq!(detect(&[lo(), cni0.clone()], "cali", "cbr0"), None);
        assert_eq!(detect(std::slice::from_ref(&cali), "lxc", "cni0"), None);
        assert_eq!(
            detect(&[link(8, "lxc12ab", Some("veth"), None)], "lxc", "cni0"),
            Some(Attachment::Canal)
        );
    }

    fn port(name: &str, ips: &[&str]) -> BridgePort {
        BridgePort {
            name: name.into(),
            addresses: ips.iter().map(|i| i.parse().unwrap()).collect(),
            ..BridgePort::default()
        }
    }

    #[test]
    fn an_address_on_two_ports_is_nobodys() {
        let (map, ambiguous) = address_map(&[
            port("veth1", &["10.244.1.5", "fd00::5"]),
            port("veth2", &["10.244.1.6", "10.244.1.5"]),
            port("veth3", &["10.244.1.5"]),
        ]);
        assert_eq!(ambiguous, vec!["10.244.1.5".parse::<IpAddr>().unwrap()]);
        assert_eq!(map.len(), 2);
        assert_eq!(map[&"fd00::5".parse::<IpAddr>().unwrap()], "veth1");
        assert_eq!(map[&"10.244.1.6".parse::<IpAddr>().unwrap()], "veth2");
    }

    #[test]
    fn pods_get_ports_by_address() {
        let mut l = policyc_compiler::Loader::new();
        l.add_text(
            "t",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\nspec: {nodeName: n1}\n\
             status: {phase: Running, podIPs: [{ip: 10.244.1.5}, {ip: 'fd00::5'}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: b, namespace: x}\nspec: {nodeName: n1}\n\
             status: {phase: Running, podIP: 10.244.1.6}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: c, namespace: x}\nspec: {nodeName: n1}\n\
             status: {phase: Running, podIPs: [{ip: 10.244.1.7}, {ip: 'fd00::7'}]}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {name: d, namespace: x}\nspec: {nodeName: n2}\n\
             status: {phase: Running, podIP: 10.244.2.5}\n",
        );
        let (snap, _) = l.finish();
        let (ports, _) = address_map(&[
            port("veth1", &["10.244.1.5", "fd00::5"]),
            port("veth2", &["10.244.1.6"]),
            // c's two addresses on two ports: c gets none.
            port("veth3", &["10.244.1.7"]),
            port("veth4", &["fd00::7"]),
            port("veth5", &["10.244.2.5"]),
        ]);
        let state = State {
            attachment: Some(Attachment::Flannel),
            ports,
            ..State::default()
        };
        let got = state.pod_ports(&snap, "n1");
        assert_eq!(state.pods_without_port(&snap, "n1", &got), 1, "c");
        assert_eq!(
            got,
            BTreeMap::from([
                (ObjectRef::new("x", "a"), "veth1".to_string()),
                (ObjectRef::new("x", "b"), "veth2".to_string()),
            ])
        );
        let canal = State {
            attachment: Some(Attachment::Canal),
            ..state.clone()
        };
        assert!(canal.pod_ports(&snap, "n1").is_empty());
        assert_eq!(state.kind("cni0"), AttachmentKind::Bridge { bridge: "cni0".into() });
        assert_eq!(canal.kind("cni0"), AttachmentKind::Canal);
    }

    #[test]
    fn readiness() {
        let undecided = State {
            pending: "nothing yet".into(),
            ..State::default()
        };
        assert_eq!(undecided.not_ready(), Some(("NoPodAttachment", "nothing yet".into())));
        let mut flannel = State {
            attachment: Some(Attachment::Flannel),
            br_netfilter: Some(BrNetfilter {
                iptables: Some(true),
                ip6tables: Some(true),
                error: None,
            }),
            ..State::default()
        };
        assert_eq!(flannel.not_ready(), None);
        flannel.br_netfilter = Some(BrNetfilter {
            iptables: Some(false),
            ip6tables: None,
            error: Some("/proc/sys/net/bridge/bridge-nf-call-iptables: Read-only file system".into()),
        });
        let (reason, message) = flannel.not_ready().unwrap();
        assert_eq!(reason, "BrNetfilterOff");
        assert!(
            message.contains("bridge-nf-call-iptables 0") && message.contains("ip6tables missing"),
            "{message}"
        );
        assert!(message.contains("Read-only"), "{message}");
        let canal = State {
            attachment: Some(Attachment::Canal),
            ..State::default()
        };
        assert_eq!(canal.not_ready(), None);
    }
}
