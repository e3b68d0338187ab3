//! The iptables backend against the real tools: every rendered ipset and iptables/ip6tables
//! ruleset is loaded into a throwaway network namespace and read back, and one scenario sends
//! real TCP connections from pod namespaces through a node namespace, over veths named as the
//! IR names the pods' interfaces.
//!
//! Needs root and `ip`, `ipset`, `iptables-restore`, `ip6tables-restore`, `iptables-save`,
//! `ip6tables-save` (and `python3` and `sysctl` for the packet test). Without them the tests
//! print why and pass, unless `CI` is set, in which case they fail.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Output, Stdio};

use policyc_compiler::cidr::Family;
use policyc_compiler::ir::Ir;
use policyc_compiler::model::Protocol;
use policyc_compiler::render::iptables::{self as ipt, render_ipset, render_iptables, render_iptables_hooks};
use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions, Evaluator, Flow, Loader, Snapshot};

// === Environment ===

/// `Ok` when the test can run; otherwise the reason it cannot.
fn requirements(extra: &[&str]) -> Result<(), String> {
    policyc_testhost::root()?;
    policyc_testhost::on_path(&[
        "ip",
        "ipset",
        "iptables-restore",
        "ip6tables-restore",
        "iptables-save",
        "ip6tables-save",
    ])?;
    policyc_testhost::on_path(extra)?;
    // Network namespaces must be creatable here (not in every container).
    let ns = Netns::new().map_err(|e| format!("cannot create a network namespace: {e}"))?;
    drop(ns);
    Ok(())
}

/// Returns whether to run; skips (or, under `CI`, fails) when the requirements are missing.
fn should_run(extra: &[&str]) -> bool {
    policyc_testhost::require(requirements(extra))
}

// === Namespaces and commands ===

/// A throwaway network namespace with loopback up, deleted on drop.
struct Netns(policyc_testhost::Netns);

impl Netns {
    fn new() -> Result<Netns, String> {
        let ns = Netns(policyc_testhost::Netns::try_new("ipt")?);
        ns.run(&["ip", "link", "set", "lo", "up"], None);
        Ok(ns)
    }

    fn name(&self) -> &str {
        self.0.name()
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut c = self.0.exec(args[0]);
        c.args(&args[1..]);
        c
    }

    /// Runs a command in the namespace; panics with its output when it fails.
    fn run(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.output(args, stdin);
        assert!(
            out.status.success(),
            "{} in {} failed: {}\n{}",
            args.join(" "),
            self.name(),
            String::from_utf8_lossy(&out.stderr),
            stdin.unwrap_or_default()
        );
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = self
            .command(args)
            .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ip netns exec");
        if let Some(text) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(text.as_bytes())
                .expect("write stdin");
        }
        child.wait_with_output().expect("wait")
    }
}

/// A process started in a namespace, killed (by its own handle) on drop.
struct Background {
    child: Child,
}

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// === Inputs ===

fn ir_of(yaml: &str) -> Ir {
    let mut l = Loader::new();
    l.add_text("test.yaml", yaml);
    let (snap, diags) = l.finish();
    assert!(diags.is_empty(), "{diags:?}");
    compile(&snap, &CompileOptions::default())
}

const PODS: &str = "\
apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {team: y}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports:
    - {name: http, containerPort: 8080}
    - {name: dns, containerPort: 53, protocol: UDP}
    - {name: sig, containerPort: 3868, protocol: SCTP}
status: {phase: Running, podIPs: [{ip: 10.10.1.2}, {ip: 'fd10::1:2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec:
  nodeName: n1
  containers:
  - name: c
    ports: [{name: http, containerPort: 8081}]
status: {phase: Running, podIPs: [{ip: 10.10.2.2}, {ip: 'fd10::2:2'}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.10.3.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: y, labels: {app: d}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 'fd10::4:2'}]}
";

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{spec}"
    )
}

fn scenarios() -> Vec<(&'static str, String)> {
    vec![
        (
            "default deny",
            policy("x", "deny", "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n"),
        ),
        (
            "named ports",
            policy(
                "x",
                "named",
                "  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {matchLabels: {team: y}}}, {podSelector: {matchLabels: {app: a}}}]
    ports: [{port: http}, {port: dns, protocol: UDP}, {port: sig, protocol: SCTP}]
",
            ),
        ),
        (
            "ipBlock with except",
            policy(
                "x",
                "blocks",
                "  podSelector: {matchLabels: {app: a}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 10.10.0.0/16, except: [10.10.3.0/24, 10.10.2.7/32]}
    - ipBlock: {cidr: 'fd10::/32', except: ['fd10::4:0/112']}
  egress:
  - to: [{ipBlock: {cidr: 0.0.0.0/0, except: [10.10.0.0/16]}}, {ipBlock: {cidr: '::/0', except: ['fd00::/8']}}]
",
            ),
        ),
        (
            "dual-stack pods",
            format!(
                "{}{}",
                policy(
                    "y",
                    "from-x",
                    "  podSelector: {}\n  ingress: [{from: [{namespaceSelector: {matchLabels: {team: x}}}]}]\n"
                ),
                policy(
                    "x",
                    "to-y",
                    "  podSelector: {matchLabels: {app: b}}\n  policyTypes: [Egress]\n  egress: [{to: [{namespaceSelector: {matchLabels: {team: y}}, podSelector: {matchLabels: {app: d}}}]}]\n"
                )
            ),
        ),
        (
            "multi-protocol ports",
            policy(
                "y",
                "protos",
                "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: 80}, {port: 53, protocol: UDP}, {protocol: SCTP}, {port: 443}, {port: 53}]
  egress:
  - to: [{podSelector: {}}]
    ports: [{protocol: UDP}, {protocol: TCP, port: 1}, {port: 2}, {port: 3}, {port: 4}, {port: 5}, {port: 6},
            {port: 7}, {port: 8}, {port: 9}, {port: 10}, {port: 11}, {port: 12}, {port: 13}, {port: 14}, {port: 15},
            {port: 16}, {port: 18}]
",
            ),
        ),
        (
            "endPort",
            policy(
                "x",
                "ranges",
                "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: 8000, endPort: 8100}, {port: 9000, endPort: 9001, protocol: UDP}, {port: 9500, endPort: 9600, protocol: UDP}]
  egress:
  - ports: [{port: 1000, endPort: 2000, protocol: SCTP}]
",
            ),
        ),
    ]
}

// === Reading back ===

/// `-A` lines of policyc's chains, grouped by chain, in order.
fn our_rules(text: &str) -> BTreeMap<String, Vec<String>> {
    let mut m: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for l in text.lines() {
        if let Some(rest) = l.strip_prefix("-A ") {
            let chain = rest.split(' ').next().unwrap_or_default();
            if chain.starts_with(ipt::CHAIN_PREFIX) || chain.starts_with("POLICYC-") {
                // iptables-save escapes an apostrophe in a comment ("the pod\'s").
                m.entry(chain.to_string()).or_default().push(l.replace("\\'", "'"));
            }
        }
    }
    m
}

/// Declared chains (`:NAME ...`) of policyc.
fn our_chains(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter_map(|l| l.strip_prefix(':'))
        .filter_map(|l| l.split(' ').next())
        .filter(|c| c.starts_with(ipt::CHAIN_PREFIX) || c.starts_with("POLICYC-"))
        .map(str::to_string)
        .collect()
}

fn builtin_rules(saved: &str, chain: &str) -> Vec<String> {
    let prefix = format!("-A {chain} ");
    saved
        .lines()
        .filter(|l| l.starts_with(&prefix))
        .map(str::to_string)
        .collect()
}

/// Members as `ipset list` prints them, per set. Host routes `/32` and `/128` print as bare
/// addresses.
fn listed_sets(list: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut current = None;
    let mut in_members = false;
    for l in list.lines() {
        if let Some(name) = l.strip_prefix("Name: ") {
            current = Some(name.to_string());
            m.entry(name.to_string()).or_default();
            in_members = false;
        } else if l == "Members:" {
            in_members = true;
        } else if l.trim().is_empty() {
            in_members = false;
        } else if in_members {
            let member = l.split_whitespace().next().unwrap_or_default();
            m.get_mut(current.as_ref().expect("set name before members"))
                .expect("set")
                .insert(normalize_member(member));
        }
    }
    m
}

fn normalize_member(m: &str) -> String {
    let (addr, rest) = match m.split_once(',') {
        Some((a, r)) => (a, Some(r)),
        None => (m, None),
    };
    let (ip, prefix) = match addr.split_once('/') {
        Some((ip, p)) => (ip, Some(p)),
        None => (addr, None),
    };
    let ip: IpAddr = ip.parse().unwrap_or_else(|_| panic!("bad member {m}"));
    let host = if ip.is_ipv4() { "32" } else { "128" };
    let mut s = ip.to_string();
    if let Some(p) = prefix.filter(|p| *p != host) {
        s = format!("{s}/{p}");
    }
    if let Some(r) = rest {
        s = format!("{s},{r}");
    }
    s
}

/// The members the rendered text adds, per final set name.
fn rendered_sets(text: &str) -> BTreeMap<String, BTreeSet<String>> {
    let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for l in text.lines() {
        let words: Vec<&str> = l.split_whitespace().collect();
        match words[..] {
            ["create", name, ..] if !name.ends_with("-tmp") => {
                m.entry(name.to_string()).or_default();
            }
            ["add", tmp, member] => {
                let name = tmp.strip_suffix("-tmp").expect("filled through the temporary set");
                m.entry(name.to_string()).or_default().insert(normalize_member(member));
            }
            _ => {}
        }
    }
    m
}

/// Loads everything for one IR into `ns`, twice, and checks what the kernel holds. Returns the
/// number of rules and set members loaded.
fn load_and_check(label: &str, ns: &Netns, ir: &Ir) -> (usize, usize) {
    let mut rule_count = 0;
    let sets = render_ipset(ir);
    for _ in 0..2 {
        ns.run(&["ipset", "restore"], Some(&sets));
    }
    for (family, restore, save) in [
        (Family::V4, "iptables-restore", "iptables-save"),
        (Family::V6, "ip6tables-restore", "ip6tables-save"),
    ] {
        let rules = render_iptables(ir, family);
        let hooks = render_iptables_hooks(family);
        for _ in 0..2 {
            ns.run(&[restore, "-w", "--noflush"], Some(&rules));
            ns.run(&["sh", "-c", &hooks], None);
        }
        // The filter table's chains and the raw table's source guard.
        let saved = ns.run(&[save, "-t", "filter"], None) + &ns.run(&[save, "-t", "raw"], None);
        let want = our_rules(&rules);
        let got = our_rules(&saved);
        assert_eq!(
            got, want,
            "{label} {family:?}: the kernel holds exactly the rendered rules"
        );
        assert_eq!(our_chains(&saved), our_chains(&rules), "{label} {family:?}: chains");
        let n = want.values().map(Vec::len).sum::<usize>();
        assert!(n >= 8, "{label}: base chains present");
        rule_count += n;
        assert_eq!(
            builtin_rules(&saved, "FORWARD"),
            ["-A FORWARD -j POLICYC-FORWARD"],
            "{label}"
        );
        assert_eq!(builtin_rules(&saved, "INPUT"), ["-A INPUT -j POLICYC-INPUT"], "{label}");
        assert_eq!(
            builtin_rules(&saved, "PREROUTING"),
            ["-A PREROUTING -j POLICYC-GUARD"],
            "{label}"
        );
    }
    let list = ns.run(&["ipset", "list"], None);
    let listed = listed_sets(&list);
    let want = rendered_sets(&sets);
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        ipt::ipset_names(ir).iter().collect::<Vec<_>>(),
        "{label}: exactly the rendered sets, no temporaries left"
    );
    assert_eq!(listed, want, "{label}: set members");
    (rule_count, want.values().map(BTreeSet::len).sum())
}

#[test]
fn rendered_rules_and_sets_load() {
    if !should_run(&[]) {
        return;
    }
    for (label, policies) in scenarios() {
        let ir = ir_of(&format!("{PODS}{policies}"));
        assert!(!ir.chains.is_empty() || label == "default deny", "{label}");
        let ns = Netns::new().expect("netns");
        load_and_check(label, &ns, &ir);
        drop(ns);
    }
}

/// Larger inputs: the edge-case golden input, the three-tier example and synthetic clusters, for
/// the whole cluster and per node.
#[test]
fn larger_inputs_load() {
    if !should_run(&[]) {
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut snapshots: Vec<(String, Snapshot)> = Vec::new();
    for (label, files) in [
        ("edge-cases", vec![root.join("tests/golden/edge-cases/input.yaml")]),
        (
            "three-tier",
            vec![
                root.join("../examples/three-tier/cluster.yaml"),
                root.join("../examples/three-tier/policies.yaml"),
            ],
        ),
    ] {
        let mut l = Loader::new();
        let mut found = true;
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => l.add_text(&f.display().to_string(), &text),
                Err(_) => found = false,
            }
        }
        if found {
            snapshots.push((label.to_string(), l.finish().0));
        } else {
            eprintln!("{label}: input not found, not loaded");
        }
    }
    for seed in 1..=3 {
        let shape = Shape {
            pods: 200,
            namespaces: 10,
            policies: 60,
            nodes: 2,
            dual_stack_every: 3,
        };
        let mut snap = cluster(shape, seed);
        if seed == 2 {
            add_admin_policies(&mut snap, 12, seed);
        }
        snapshots.push((format!("synthetic seed {seed}"), snap));
    }
    snapshots.push(("empty".into(), Snapshot::default()));
    let (mut rulesets, mut rules, mut members) = (0, 0, 0);
    for (label, snap) in &snapshots {
        let mut irs = vec![(format!("{label} (all)"), compile(snap, &CompileOptions::default()))];
        for (node, ir) in compile_all_nodes(snap, &CompileOptions::default()) {
            irs.push((format!("{label} node {node}"), ir));
        }
        for (what, ir) in irs {
            let ns = Netns::new().expect("netns");
            let (r, m) = load_and_check(&what, &ns, &ir);
            rulesets += 1;
            rules += r;
            members += m;
        }
    }
    eprintln!("loaded {rulesets} rulesets: {rules} rules, {members} set members");
    assert!(
        rules > 1000 && members > 100,
        "the synthetic clusters give sizeable rulesets"
    );
}

#[test]
fn sets_are_per_namespace() {
    if !should_run(&[]) {
        return;
    }
    let ir = ir_of(&format!("{PODS}{}", scenarios()[1].1));
    let one = Netns::new().expect("netns");
    let two = Netns::new().expect("netns");
    one.run(&["ipset", "restore"], Some(&render_ipset(&ir)));
    assert!(!one.run(&["ipset", "list", "-n"], None).trim().is_empty());
    assert_eq!(
        two.run(&["ipset", "list", "-n"], None).trim(),
        "",
        "another namespace sees no sets"
    );
}

#[test]
fn reload_with_other_policies_and_prune() {
    if !should_run(&[]) {
        return;
    }
    let all = scenarios();
    let first = ir_of(&format!("{PODS}{}{}", all[1].1, all[2].1));
    let second = ir_of(&format!("{PODS}{}", all[4].1));
    let ns = Netns::new().expect("netns");
    load_and_check("first", &ns, &first);
    // The second ruleset replaces the first; what only the first used is left over.
    let sets = render_ipset(&second);
    ns.run(&["ipset", "restore"], Some(&sets));
    for (family, restore, save) in [
        (Family::V4, "iptables-restore", "iptables-save"),
        (Family::V6, "ip6tables-restore", "ip6tables-save"),
    ] {
        ns.run(&[restore, "-w", "--noflush"], Some(&render_iptables(&second, family)));
        let saved = ns.run(&[save, "-t", "filter"], None) + &ns.run(&[save, "-t", "raw"], None);
        let prune = ipt::render_iptables_prune(&second, &saved);
        assert!(prune.contains("-X PC-NP-"), "{prune}");
        ns.run(&[restore, "-w", "--noflush"], Some(&prune));
        let saved = ns.run(&[save, "-t", "filter"], None) + &ns.run(&[save, "-t", "raw"], None);
        assert_eq!(our_chains(&saved), our_chains(&render_iptables(&second, family)));
        assert_eq!(ipt::render_iptables_prune(&second, &saved), "");
    }
    let names = ns.run(&["ipset", "list", "-n"], None);
    let prune = ipt::render_ipset_prune(&second, &names);
    assert!(prune.contains("destroy pc-cidr_"), "{prune}");
    ns.run(&["ipset", "restore"], Some(&prune));
    let names: BTreeSet<String> = ns
        .run(&["ipset", "list", "-n"], None)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(names, ipt::ipset_names(&second));
    // And the second ruleset, as loaded from scratch, is what is there now.
    load_and_check("second", &ns, &second);
}

// === Real packets ===

const LISTENER: &str = "
import socket, sys, threading
def serve(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('0.0.0.0', port))
    s.listen(64)
    while True:
        c, _ = s.accept()
        try:
            c.sendall(b'ok')
        finally:
            c.close()
for p in sys.argv[1:]:
    threading.Thread(target=serve, args=(int(p),), daemon=True).start()
print('ready', flush=True)
threading.Event().wait()
";

const PROBE: &str = "
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.settimeout(1.5)
try:
    s.connect((sys.argv[1], int(sys.argv[2])))
    print('connected' if s.recv(2) == b'ok' else 'no greeting')
except socket.timeout:
    print('timeout')
except OSError as e:
    print('error', e)
";

const PORTS: [u16; 2] = [8080, 9090];

fn listen(ns: &Netns) -> Background {
    let mut args = vec!["python3", "-c", LISTENER];
    let ports: Vec<String> = PORTS.iter().map(u16::to_string).collect();
    args.extend(ports.iter().map(String::as_str));
    let mut child = ns
        .command(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start listener");
    let stdout: ChildStdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).expect("listener output");
    assert_eq!(line.trim(), "ready", "listener in {}", ns.name());
    Background { child }
}

#[test]
fn real_packets_follow_the_evaluator() {
    if !should_run(&["python3", "sysctl"]) {
        return;
    }
    let yaml = "\
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.201.1.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: x, labels: {app: b}}
spec:
  nodeName: n1
  containers: [{name: c, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIPs: [{ip: 10.201.2.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: c, namespace: y, labels: {app: c}}
spec: {nodeName: n1, containers: [{name: c}]}
status: {phase: Running, podIPs: [{ip: 10.201.3.2}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: b-from-a, namespace: x}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: a}}}], ports: [{port: http}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: a-out, namespace: x}
spec:
  podSelector: {matchLabels: {app: a}}
  policyTypes: [Egress]
  egress:
  - to: [{ipBlock: {cidr: 10.201.0.0/16, except: [10.201.3.0/24]}}]
    ports: [{port: 8080, endPort: 8081}]
";
    let ir = ir_of(yaml);
    let node = Netns::new().expect("netns");
    // Pods: one namespace each, eth0 inside, the IR's interface name on the node side, a /24
    // per pod with the node side as gateway.
    let mut pods = Vec::new();
    let mut node_ips = Vec::new();
    for ep in &ir.endpoints {
        let ns = Netns::new().expect("netns");
        let ip = ep.ips[0].to_string();
        let gw = ip.rsplit_once('.').map(|(net, _)| format!("{net}.1")).expect("ipv4");
        node.run(
            &[
                "ip",
                "link",
                "add",
                &ep.interface,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns.name(),
            ],
            None,
        );
        node.run(&["ip", "addr", "add", &format!("{gw}/24"), "dev", &ep.interface], None);
        node.run(&["ip", "link", "set", &ep.interface, "up"], None);
        ns.run(&["ip", "addr", "add", &format!("{ip}/24"), "dev", "eth0"], None);
        ns.run(&["ip", "link", "set", "eth0", "up"], None);
        ns.run(&["ip", "route", "add", "default", "via", &gw], None);
        node_ips.push(gw);
        pods.push((ep.ips[0], ns));
    }
    node.run(&["sysctl", "-qw", "net.ipv4.ip_forward=1"], None);

    node.run(&["ipset", "restore"], Some(&render_ipset(&ir)));
    node.run(
        &["iptables-restore", "-w", "--noflush"],
        Some(&render_iptables(&ir, Family::V4)),
    );
    node.run(&["sh", "-c", &render_iptables_hooks(Family::V4)], None);

    let mut listeners = vec![listen(&node)];
    listeners.extend(pods.iter().map(|(_, ns)| listen(ns)));

    // Every pod to every other pod and to the node side of pod a's link, on both ports.
    let node_ip: IpAddr = node_ips[0].parse().expect("ip");
    let mut probes = Vec::new();
    for (src, ns) in &pods {
        let dsts = pods.iter().map(|(ip, _)| *ip).filter(|ip| ip != src).chain([node_ip]);
        for dst in dsts {
            for port in PORTS {
                probes.push((*src, ns, dst, port));
            }
        }
    }
    let results: Vec<(IpAddr, IpAddr, u16, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = probes
            .iter()
            .map(|(src, ns, dst, port)| {
                s.spawn(move || {
                    let out = ns.run(&["python3", "-c", PROBE, &dst.to_string(), &port.to_string()], None);
                    (*src, *dst, *port, out.trim().to_string())
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("probe")).collect()
    });
    drop(listeners);

    let ev = Evaluator::new(&ir);
    let mut allowed = 0;
    let mut failures = Vec::new();
    for (src, dst, port, outcome) in &results {
        let want = ev
            .evaluate(&Flow {
                src: *src,
                dst: *dst,
                protocol: Protocol::Tcp,
                port: *port,
            })
            .allowed;
        let expected = if want { "connected" } else { "timeout" };
        if outcome != expected {
            failures.push(format!("{src} -> {dst}:{port}: expected {expected}, got {outcome}"));
        }
        allowed += usize::from(want);
    }
    assert!(failures.is_empty(), "{failures:#?}");
    // The scenario exercises both outcomes, both hooks and both directions.
    let outcome = |src: &str, dst: &str, port: u16| {
        let (s, d): (IpAddr, IpAddr) = (src.parse().unwrap(), dst.parse().unwrap());
        results
            .iter()
            .find(|r| r.0 == s && r.1 == d && r.2 == port)
            .map(|r| r.3.as_str())
            .expect("probed")
    };
    assert_eq!(outcome("10.201.1.2", "10.201.2.2", 8080), "connected", "a → b:http");
    assert_eq!(outcome("10.201.1.2", "10.201.2.2", 9090), "timeout", "a egress port");
    assert_eq!(outcome("10.201.1.2", "10.201.3.2", 8080), "timeout", "a egress except");
    assert_eq!(
        outcome("10.201.3.2", "10.201.2.2", 8080),
        "timeout",
        "b ingress from a only"
    );
    assert_eq!(
        outcome("10.201.3.2", "10.201.1.2", 9090),
        "connected",
        "a not ingress-isolated"
    );
    assert_eq!(
        outcome("10.201.1.2", "10.201.1.1", 8080),
        "connected",
        "a → node, allowed"
    );
    assert_eq!(
        outcome("10.201.1.2", "10.201.1.1", 9090),
        "timeout",
        "a → node, INPUT hook"
    );
    assert_eq!(outcome("10.201.3.2", "10.201.1.1", 9090), "connected", "c not isolated");
    assert!(allowed > 0 && allowed < results.len());
    drop(pods);
}
