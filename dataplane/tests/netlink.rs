//! The netlink writer against the text loader, in throwaway network namespaces (needs root,
//! `ip` and `nft`).
//!
//! For each input, namespace A gets `render::nft::render(&ir, true)` through `nft -f -` and
//! namespace B gets the IR through [`NetlinkWriter`]; then both must list the same:
//!
//! * `nft list table inet policyc` byte for byte;
//! * `nft -a list table inet policyc` (object handles, which follow creation order);
//! * `nft --debug=netlink list table inet policyc`: every rule's expressions and registers, its
//!   userdata, every set element with flags and data. Only the order of elements within a set is
//!   normalized: hash sets dump in an order that depends on a per-set random seed.
//!
//! Inputs cover NetworkPolicies and the admin tiers (ClusterNetworkPolicy, AdminNetworkPolicy,
//! BaselineAdminNetworkPolicy: interval verdict maps of addresses and ports, `goto` and `return`
//! verdicts), from YAML here and in `tests/tiers/`, and from the synthetic cluster generator.
//!
//! Without root, `ip` or `nft` the tests print `skipped: <test>: <reason>` and pass, unless `CI` is
//! set: then they fail.

use std::collections::HashMap;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use policyc_compiler::cidr::{Family, IpRange};
use policyc_compiler::ir::{compile, AttachmentKind, CompileOptions, Ir};
use policyc_compiler::model::{ObjectRef, Protocol};
use policyc_compiler::nft::{
    print, Action, BaseHook, Chain, End, Hook, Limit, Log, Match, RateUnit, Rule, Table, TableFamily, Verdict,
};
use policyc_compiler::render::nft::render;
use policyc_compiler::synth::{add_admin_policies, cluster, Shape};
use policyc_compiler::{Loader, Severity};
use policyc_dataplane::{ApplyStats, Dataplane, DataplaneError, NetlinkWriter};

// === environment ===

fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("{cmd}: {e}"))?;
    let mut input = child.stdin.take().expect("piped stdin");
    if let Some(s) = stdin {
        input.write_all(s.as_bytes()).map_err(|e| format!("{cmd}: {e}"))?;
    }
    drop(input);
    let out = child.wait_with_output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd} {}: {}\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Whether to run: root, `ip` and `nft`; otherwise skipped with the reason (or, under `CI`,
/// failing).
fn available() -> bool {
    policyc_testhost::needs_root(&["ip", "nft"])
}

/// A throwaway network namespace, deleted on drop.
struct Netns(policyc_testhost::Netns);

impl Netns {
    fn new(side: &str) -> Netns {
        Netns(policyc_testhost::Netns::new(&format!("nl-{side}")))
    }

    /// A pair: A for the text loader, B for the writer.
    fn pair() -> (Netns, Netns) {
        (Netns::new("a"), Netns::new("b"))
    }

    fn writer(&self) -> NetlinkWriter {
        NetlinkWriter::in_netns(self.0.path())
    }

    fn nft(&self, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
        let mut full = vec!["netns", "exec", self.0.name(), "nft"];
        full.extend_from_slice(args);
        run("ip", &full, stdin)
    }

    fn load_text(&self, ir: &Ir) {
        let text = render(ir, true).expect("a compiled IR is valid");
        if let Err(e) = self.nft(&["-f", "-"], Some(&text)) {
            panic!("nft -f rejected the rendered ruleset: {e}\n{text}");
        }
    }

    fn list(&self, extra: &[&str]) -> String {
        self.list_family("inet", extra)
    }

    fn list_family(&self, family: &str, extra: &[&str]) -> String {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["list", "table", family, "policyc"]);
        self.nft(&args, None).expect("nft list")
    }

    /// `nft list ruleset`: every table of the namespace (inet and, for the bridge attachment,
    /// bridge).
    fn ruleset(&self, extra: &[&str]) -> String {
        let mut args = extra.to_vec();
        args.extend_from_slice(&["list", "ruleset"]);
        self.nft(&args, None).expect("nft list ruleset")
    }

    fn has_bridge_table(&self) -> bool {
        self.nft(&["list", "tables"], None)
            .expect("nft list tables")
            .contains("bridge policyc")
    }

    fn has_table(&self) -> bool {
        self.nft(&["list", "tables"], None)
            .expect("nft list tables")
            .contains("inet policyc")
    }

    /// The listings the two sides must agree on: the inet table, and the whole ruleset (the
    /// bridge table too, and no table left over).
    fn listings(&self) -> [String; 6] {
        [
            self.list(&[]),
            self.list(&["-a"]),
            sort_elements(&self.list(&["--debug=netlink"])),
            self.ruleset(&[]),
            self.ruleset(&["-a"]),
            sort_elements(&self.ruleset(&["--debug=netlink"])),
        ]
    }
}

/// Sorts each run of `element` lines of a `--debug=netlink` listing.
fn sort_elements(s: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    let mut run: Vec<&str> = Vec::new();
    for line in s.lines() {
        if line.starts_with("\telement ") {
            run.push(line);
            continue;
        }
        run.sort();
        out.append(&mut run);
        out.push(line);
    }
    run.sort();
    out.append(&mut run);
    out.join("\n")
}

fn assert_same(a: &Netns, b: &Netns, what: &str) {
    let (la, lb) = (a.listings(), b.listings());
    for (i, kind) in [
        "nft list",
        "nft -a list",
        "nft --debug=netlink list",
        "nft list ruleset",
        "nft -a list ruleset",
        "nft --debug=netlink list ruleset",
    ]
    .iter()
    .enumerate()
    {
        if la[i] != lb[i] {
            let diff: Vec<String> = la[i]
                .lines()
                .zip(lb[i].lines())
                .enumerate()
                .filter(|(_, (x, y))| x != y)
                .take(10)
                .map(|(n, (x, y))| format!("line {}:\n  text:    {x}\n  netlink: {y}", n + 1))
                .collect();
            panic!(
                "{what}: `{kind}` differs ({} vs {} lines)\n{}\n--- text-loaded ---\n{}\n--- netlink ---\n{}",
                la[i].lines().count(),
                lb[i].lines().count(),
                diff.join("\n"),
                la[i],
                lb[i]
            );
        }
    }
}

// === inputs ===

fn ir_from_yaml(yaml: &str, node: Option<&str>) -> Ir {
    let opts = CompileOptions {
        node: node.map(str::to_string),
        ..CompileOptions::default()
    };
    ir_with_options(yaml, &opts)
}

fn ir_with_options(yaml: &str, opts: &CompileOptions) -> Ir {
    let mut l = Loader::new();
    l.add_text("test.yaml", yaml);
    let (snapshot, diags) = l.finish();
    let errors: Vec<_> = diags.iter().filter(|d| d.severity == Severity::Error).collect();
    assert!(errors.is_empty(), "{errors:?}");
    compile(&snapshot, opts)
}

/// Text-loaded and netlink-written rulesets for `ir` list the same.
fn check(name: &str, ir: &Ir) {
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    a.load_text(ir);
    let stats = b.writer().replace(ir).expect("netlink replace");
    assert!(stats.messages > 0);
    assert_same(&a, &b, name);
}

const NAMESPACES: &str = "
apiVersion: v1
kind: Namespace
metadata: {name: prod, labels: {env: prod}}
---
apiVersion: v1
kind: Namespace
metadata: {name: dev, labels: {env: dev}}
";

/// A running pod with container ports (`{name: .., containerPort: ..}` items).
fn pod(ns: &str, name: &str, labels: &str, node: &str, ips: &[&str], ports: &str) -> String {
    let ips: Vec<String> = ips.iter().map(|ip| format!("{{ip: \"{ip}\"}}")).collect();
    format!(
        "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}
spec:
  nodeName: {node}
  containers:
  - name: c
    ports: [{ports}]
status:
  phase: Running
  podIPs: [{}]
",
        ips.join(", ")
    )
}

fn policy(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: {name}, namespace: {ns}}}
spec:
{spec}"
    )
}

fn basic_pods() -> String {
    [
        NAMESPACES.to_string(),
        pod(
            "prod",
            "web",
            "app: web",
            "n1",
            &["10.0.0.5"],
            "{name: http, containerPort: 8080}, {name: dns, containerPort: 53, protocol: UDP}, {name: sig, containerPort: 3868, protocol: SCTP}",
        ),
        pod("prod", "db", "app: db", "n1", &["10.0.0.9"], "{name: pg, containerPort: 5432}"),
        // Next to web's address: selector sets hold single addresses, never merged ranges.
        pod("prod", "cache", "app: cache", "n1", &["10.0.0.6"], ""),
        pod("dev", "tool", "app: tool", "n2", &["10.0.1.7"], "{name: http, containerPort: 8081}"),
    ]
    .concat()
}

// === equivalence with the text loader ===

#[test]
fn empty_ruleset() {
    check("empty_ruleset", &ir_from_yaml(NAMESPACES, None));
}

#[test]
fn pods_without_policies() {
    check("pods_without_policies", &ir_from_yaml(&basic_pods(), None));
}

#[test]
fn default_deny() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "deny-all",
            "  podSelector: {}\n  policyTypes: [Ingress, Egress]\n",
        );
    check("default_deny", &ir_from_yaml(&yaml, None));
}

#[test]
fn allow_from_selector() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "db-from-web",
            "  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    - namespaceSelector: {matchLabels: {env: dev}}
      podSelector: {matchExpressions: [{key: app, operator: In, values: [tool, web]}]}
",
        );
    check("allow_from_selector", &ir_from_yaml(&yaml, None));
}

#[test]
fn named_ports_all_protocols() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "named",
            "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports: [{port: http}, {port: dns, protocol: UDP}, {port: sig, protocol: SCTP}]
  - from: [{namespaceSelector: {}}]
    ports: [{port: pg}]
  egress:
  - ports: [{port: http}]
",
        );
    check("named_ports_all_protocols", &ir_from_yaml(&yaml, None));
}

#[test]
fn port_ranges() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "ranges",
            "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - ports:
    - {port: 9000, endPort: 9010}
    - {port: 443}
    - {port: 80}
    - {port: 1, endPort: 10, protocol: UDP}
    - {port: 53, protocol: UDP}
    - {port: 60000, endPort: 65535, protocol: UDP}
    - {port: 5000, endPort: 5001, protocol: SCTP}
  - ports: [{port: 22}]
  - ports: [{port: 1, endPort: 65535, protocol: SCTP}]
  - ports: [{protocol: TCP}, {port: 7, protocol: UDP}, {port: 9, protocol: UDP}]
  egress:
  - ports: [{port: 100, endPort: 200}, {port: 201, endPort: 300}]
",
        );
    check("port_ranges", &ir_from_yaml(&yaml, None));
}

#[test]
fn ip_blocks_with_excepts() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "blocks",
            "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - ipBlock: {cidr: 192.168.0.0/16, except: [192.168.1.0/24, 192.168.7.7/32]}
    - ipBlock: {cidr: \"2001:db8::/32\", except: [\"2001:db8:1::/48\"]}
    - ipBlock: {cidr: 172.16.0.0/12}
    ports: [{port: 443}, {port: 8000, endPort: 8100}]
  egress:
  - to:
    - ipBlock: {cidr: 0.0.0.0/0, except: [10.0.0.0/8, 255.255.255.255/32]}
    - ipBlock: {cidr: \"::/0\", except: [\"fd00::/8\"]}
    - ipBlock: {cidr: 0.0.0.0/0, except: [0.0.0.0/8]}
  - to:
    - ipBlock: {cidr: \"::/0\"}
    ports: [{port: http}]
",
        );
    check("ip_blocks_with_excepts", &ir_from_yaml(&yaml, None));
}

#[test]
fn dual_stack_pods() {
    let yaml = [
        NAMESPACES.to_string(),
        pod(
            "prod",
            "web",
            "app: web",
            "n1",
            &["10.0.0.5", "fd00::5"],
            "{name: http, containerPort: 8080}",
        ),
        pod("prod", "db", "app: db", "n1", &["10.0.0.9", "fd00::9"], ""),
        // Several addresses of one family: the hairpin rule needs an anonymous set.
        pod(
            "prod",
            "multi",
            "app: db",
            "n1",
            &["10.0.0.20", "10.0.0.22", "fd00::20", "fd00::22"],
            "{name: http, containerPort: 8080}",
        ),
        pod("dev", "v6only", "app: tool", "n1", &["fd00::1:7"], ""),
        policy(
            "prod",
            "web",
            "  podSelector: {}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}, {port: 5432}]
  - from: [{namespaceSelector: {}}]
  egress:
  - to: [{namespaceSelector: {matchLabels: {env: dev}}}]
",
        ),
        policy("dev", "deny", "  podSelector: {}\n  policyTypes: [Egress]\n"),
    ]
    .concat();
    check("dual_stack_pods", &ir_from_yaml(&yaml, None));
}

#[test]
fn multiple_policies_per_pod() {
    let yaml = basic_pods()
        + &policy("prod", "a-deny", "  podSelector: {}\n  policyTypes: [Ingress]\n")
        + &policy(
            "prod",
            "b-web",
            "  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {}}]
    ports: [{port: 8080}]
",
        )
        + &policy(
            "prod",
            "c-web-dns",
            "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
  egress:
  - to: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: 5432}]
  - ports: [{port: 53, protocol: UDP}, {port: 53, protocol: TCP}]
",
        )
        + &policy(
            "prod",
            "d-comment-\"quotes\"",
            "  podSelector: {matchLabels: {app: db}}\n  ingress: [{}]\n",
        );
    check("multiple_policies_per_pod", &ir_from_yaml(&yaml, None));
}

#[test]
fn per_node_ir() {
    let yaml = basic_pods()
        + &policy(
            "prod",
            "all",
            "  podSelector: {}
  ingress:
  - from: [{namespaceSelector: {}}]
    ports: [{port: http}]
",
        );
    check("per_node_ir", &ir_from_yaml(&yaml, Some("n1")));
}

fn large_ir() -> Ir {
    let shape = Shape {
        pods: 200,
        namespaces: 8,
        policies: 50,
        nodes: 1,
        dual_stack_every: 3,
    };
    compile(&cluster(shape, 7), &CompileOptions::default())
}

#[test]
fn large_cluster() {
    let ir = large_ir();
    assert!(
        ir.endpoints.len() >= 200 && ir.chains.len() >= 30,
        "{} chains",
        ir.chains.len()
    );
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    a.load_text(&ir);
    let stats = b.writer().replace(&ir).expect("netlink replace");
    // Big enough to span several batch pages, which must still go out in one write.
    assert!(stats.bytes > 256 * 1024, "{stats:?}");
    assert_same(&a, &b, "large_cluster");
}

// === transactions ===

#[test]
fn replace_is_idempotent() {
    if !available() {
        return;
    }
    let yaml = basic_pods() + &policy("prod", "deny", "  podSelector: {}\n");
    let ir = ir_from_yaml(&yaml, None);
    let (a, b) = Netns::pair();
    a.load_text(&ir);
    a.load_text(&ir);
    let mut w = b.writer();
    let first = w.replace(&ir).expect("first replace");
    let second = w.replace(&ir).expect("second replace");
    // The same batch both times; only the timings differ.
    let sent = |s: ApplyStats| ApplyStats {
        plan_time: Duration::ZERO,
        kernel_time: Duration::ZERO,
        ..s
    };
    assert_eq!(sent(first), sent(second));
    assert_same(&a, &b, "replace twice");
}

#[test]
fn replace_with_different_ir() {
    if !available() {
        return;
    }
    let ir1 = large_ir();
    let yaml = basic_pods() + &policy("prod", "deny", "  podSelector: {}\n  policyTypes: [Egress]\n");
    let ir2 = ir_from_yaml(&yaml, None);
    let (a, b) = Netns::pair();
    a.load_text(&ir1);
    a.load_text(&ir2);
    let mut w = b.writer();
    w.replace(&ir1).expect("replace 1");
    w.replace(&ir2).expect("replace 2");
    assert_same(&a, &b, "replace with another IR");
    assert!(!b.list(&[]).contains("np_"), "old policy chains must be gone");
}

/// Local endpoints on n1 fixed; pods elsewhere come and go, which changes set contents only.
fn node_ir(remote_pods: &[(&str, &str, &str)]) -> Ir {
    ir_from_yaml(&node_yaml(remote_pods), Some("n1"))
}

fn node_yaml(remote_pods: &[(&str, &str, &str)]) -> String {
    let mut yaml = basic_pods();
    for (name, labels, ip) in remote_pods {
        yaml += &pod("dev", name, labels, "n9", &[ip], "{name: http, containerPort: 9000}");
    }
    yaml += &policy(
        "prod",
        "web",
        "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{namespaceSelector: {matchLabels: {env: dev}}}]
  - from: [{podSelector: {matchLabels: {app: db}}}]
    ports: [{port: http}]
  egress:
  - to: [{namespaceSelector: {}, podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}}]
",
    );
    yaml
}

#[test]
fn element_only_update() {
    if !available() {
        return;
    }
    let ir1 = node_ir(&[("a1", "app: api", "10.0.3.1"), ("a2", "app: api", "fd00::3:2")]);
    let ir2 = node_ir(&[
        ("a2", "app: api", "fd00::3:2"),
        ("a3", "app: api", "10.0.3.3"),
        ("a4", "app: x", "10.0.3.9"),
    ]);
    let (a, b) = Netns::pair();
    a.load_text(&ir2);
    let mut w = b.writer();
    w.replace(&ir1).expect("replace");
    let stats = w
        .update_elements(&ir1, &ir2)
        .expect("element update")
        .expect("same structure");
    assert!(stats.elements_added > 0 && stats.elements_removed > 0, "{stats:?}");
    assert_eq!(stats.chains + stats.rules, 0);
    assert_same(&a, &b, "element update");

    // Nothing changed: nothing sent.
    let none = w.update_elements(&ir2, &ir2).expect("no-op").expect("same structure");
    assert_eq!(none.messages, 0);

    // A new local endpoint adds chains: not an element update.
    let yaml = basic_pods() + &pod("prod", "new", "app: web", "n1", &["10.0.0.40"], "");
    let ir3 = ir_from_yaml(&yaml, Some("n1"));
    assert!(w.update_elements(&ir2, &ir3).expect("structure check").is_none());
    // Still as before.
    assert_same(&a, &b, "after refused update");

    // Stale `old`: the kernel does not hold these elements, so nothing changes.
    let err = w.update_elements(&ir1, &ir2).expect_err("stale old ruleset");
    assert!(err.errno().is_some(), "{err}");
    assert_same(&a, &b, "after failed update");

    // apply() from the stale `old`: in place when the kernel accepts the batch (here the
    // stale elements are in sets the change deletes anyway), otherwise a full replace
    // (`stale_in_place_change_falls_back_to_replace`); either way the table holds what the
    // rendered text gives.
    w.apply(Some(&ir1), &ir3).expect("apply");
    let (c, _) = Netns::pair();
    c.load_text(&ir3);
    assert_eq!(sorted_blocks(&c.list(&[])), sorted_blocks(&b.list(&[])));
    assert_eq!(netlink_records(&c), netlink_records(&b));
}

/// `nft --debug=netlink list` without what differs between a table created at once and one
/// changed in place: rule handles, the kernel's names of anonymous sets, element order.
fn netlink_listing(ns: &Netns) -> String {
    normalized_netlink(&ns.list(&["--debug=netlink"]))
}

/// [`netlink_listing`] of the whole ruleset.
fn netlink_ruleset(ns: &Netns) -> String {
    normalized_netlink(&ns.ruleset(&["--debug=netlink"]))
}

fn normalized_netlink(listing: &str) -> String {
    let text = sort_elements(listing);
    text.lines()
        .map(|l| {
            let words: Vec<String> = l
                .split_whitespace()
                .map(|w| match w.split_once("__set") {
                    Some((at, n)) if n.chars().all(|c| c.is_ascii_digit()) => format!("{at}__set"),
                    _ => w.to_string(),
                })
                .collect();
            // Rule headers: `inet policyc CHAIN HANDLE POSITION` (or `bridge ...`).
            match words.as_slice() {
                [f, t, chain, handle, ..]
                    if (f == "inet" || f == "bridge") && t == "policyc" && handle.parse::<u64>().is_ok() =>
                {
                    format!("{f} policyc {chain}")
                }
                _ => words.join(" "),
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A policy's ports change and a remote pod comes: the NetworkPolicy port maps and classes are
/// named after the rules, so new ones come and the old ones go, in place; the table holds what
/// loading the rendered text gives.
#[test]
fn policy_port_edit_in_place() {
    if !available() {
        return;
    }
    let ir1 = node_ir(&[("a1", "app: api", "10.0.3.1")]);
    let yaml2 = node_yaml(&[("a1", "app: api", "10.0.3.1"), ("a2", "app: api", "10.0.3.2")]).replacen(
        "ports: [{port: http}]",
        "ports: [{port: 8443}, {port: 9000, endPort: 9100, protocol: UDP}, {port: 53, protocol: UDP}]",
        1,
    );
    let ir2 = ir_from_yaml(&yaml2, Some("n1"));
    assert_ne!(ir1.chains, ir2.chains);
    let (_a, b) = Netns::pair();
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    let stats = apply_in_place(&mut w, &b, &ir1, &ir2, "ports edited");
    assert!(stats.chains > 0 && stats.rules > 0, "{stats:?}");

    // And back, twice: the writer compares with what it committed.
    apply_in_place(&mut w, &b, &ir2, &ir1, "back");
    apply_in_place(&mut w, &b, &ir1, &ir2, "again");
    // Nothing changed: nothing sent.
    assert_eq!(w.apply(Some(&ir2), &ir2).expect("no-op").messages, 0);
}

#[test]
fn element_update_large() {
    let shape = Shape {
        pods: 200,
        namespaces: 8,
        policies: 50,
        nodes: 2,
        dual_stack_every: 3,
    };
    let before = cluster(shape, 11);
    // Pods on the other node go away or get new addresses.
    let mut after = before.clone();
    let remote: Vec<_> = after
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some("node-1"))
        .map(|p| p.id())
        .collect();
    for (i, id) in remote.iter().enumerate() {
        match i % 3 {
            0 => {
                after.pods.remove(id);
            }
            1 => {
                let pod = after.pods.get_mut(id).expect("pod");
                pod.ips = vec![format!("10.200.{}.{}", i / 200, i % 200 + 1).parse().expect("ip")];
            }
            _ => {}
        }
    }
    let opts = CompileOptions {
        node: Some("node-0".into()),
        ..CompileOptions::default()
    };
    let (ir1, ir2) = (compile(&before, &opts), compile(&after, &opts));
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    a.load_text(&ir2);
    let mut w = b.writer();
    w.replace(&ir1).expect("replace");
    let stats = w.update_elements(&ir1, &ir2).expect("update").expect("same structure");
    assert!(stats.elements_removed > 20 && stats.elements_added > 20, "{stats:?}");
    assert_same(&a, &b, "large element update");
}

#[test]
fn rejected_batch_changes_nothing() {
    if !available() {
        return;
    }
    let spec = "  podSelector: {}
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}]
";
    let good = ir_from_yaml(&(basic_pods() + &policy("prod", "blocks", spec)), None);
    let (a, b) = Netns::pair();
    a.load_text(&good);
    let mut w = b.writer();
    w.replace(&good).expect("replace");
    // Overlapping intervals, which the compiler never produces: the kernel refuses them.
    let mut bad = good.clone();
    let (name, set) = bad.sets.iter_mut().next().expect("the ipBlock set");
    let name = name.clone();
    let first = set.members[0];
    set.members.insert(
        1,
        IpRange {
            start: first.start + 1,
            ..first
        },
    );
    let err = w.replace(&bad).expect_err("kernel must reject");
    let cause = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    eprintln!("rejected as expected: {err}: {cause}");
    match &err {
        DataplaneError::Rejected { object, errno, .. } => {
            assert_eq!(object, &format!("elements of set {name}_v4"), "{err}");
            assert!(*errno > 0);
        }
        e => panic!("unexpected error {e}"),
    }
    assert_same(&a, &b, "after rejected replace");
}

#[test]
fn remove_table() {
    if !available() {
        return;
    }
    let ir = ir_from_yaml(&(basic_pods() + &policy("prod", "deny", "  podSelector: {}\n")), None);
    let (_, b) = Netns::pair();
    let mut w = b.writer();
    w.remove().expect("remove without a table");
    w.replace(&ir).expect("replace");
    assert!(b.has_table());
    w.remove().expect("remove");
    assert!(!b.has_table());
    w.remove().expect("remove twice");
}

#[test]
fn other_namespace_only() {
    if !available() {
        return;
    }
    // The test's own namespace: its policyc table (normally none) must stay as it is.
    let host = || run("nft", &["list", "table", "inet", "policyc"], None).map_err(|_| "no table");
    let before = host();
    let ir = ir_from_yaml(&(basic_pods() + &policy("prod", "deny", "  podSelector: {}\n")), None);
    let (_, b) = Netns::pair();
    b.writer().replace(&ir).expect("replace");
    assert!(b.has_table());
    assert_eq!(before, host(), "the test's own namespace must not change");
    let missing = NetlinkWriter::in_netns("/run/netns/pc-nl-does-not-exist").replace(&ir);
    assert!(matches!(missing, Err(DataplaneError::Netns { .. })), "{missing:?}");
}

#[test]
fn fail_closed_ruleset() {
    if !available() {
        return;
    }
    let mut snap_yaml = basic_pods();
    snap_yaml.push_str(&policy("prod", "deny", "  podSelector: {}\n  policyTypes: [Ingress]\n"));
    let mut loader = policyc_compiler::Loader::new();
    loader.add_text("test", &snap_yaml);
    let (snap, diags) = loader.finish();
    assert!(diags.is_empty(), "{diags:?}");
    let ir = compile(
        &snap,
        &CompileOptions {
            fail_closed: true,
            ..CompileOptions::default()
        },
    );
    assert!(ir.fail_closed);
    check("fail_closed", &ir);
}

/// A pod selected by many policies gets a drop comment cut to the longest comment both nft and
/// the writer accept. See: the lab benchmark's 1,000-policy ruleset failing over netlink.
#[test]
fn longest_comments_load() {
    if !available() {
        return;
    }
    let mut yaml = basic_pods();
    for i in 0..40 {
        yaml.push_str(&policy(
            "prod",
            &format!("a-rather-long-policy-name-number-{i:02}"),
            "  podSelector: {}\n  policyTypes: [Ingress]\n  ingress: [{ports: [{port: 80}]}]\n",
        ));
    }
    let ir = ir_from_yaml(&yaml, None);
    let text = policyc_compiler::render::nft::render(&ir, true).expect("a compiled IR is valid");
    let longest = text
        .lines()
        .filter_map(|l| l.split_once("comment \"").map(|(_, c)| c.len() - 1))
        .max()
        .unwrap();
    assert!(
        longest >= 120,
        "the test must reach the comment limit, longest is {longest}"
    );
    check("longest_comments", &ir);
}

// === admin tiers ===

/// The ClusterNetworkPolicy example: Admin tier with Pass, a named port and a Deny, a Baseline
/// tier; a tier table with adjacent single addresses going to different port classes.
const CNP_EXAMPLE: &str = include_str!("tiers/cnp_example.yaml");
/// Both families; CIDRs running to the end of the address space; adjacent ranges with
/// different verdicts; port maps ending at 65535 or starting above 0; Admin and Baseline egress.
const DUAL_STACK_OPEN: &str = include_str!("tiers/dual_stack_open.yaml");
/// Baseline tier next to a NetworkPolicy, AdminNetworkPolicy / BaselineAdminNetworkPolicy.
const BASELINE_FAIL_CLOSED: &str = include_str!("tiers/baseline_fail_closed.yaml");

/// `ir` has admin tiers: tier tables, port classes, admin rules.
fn assert_tiers(ir: &Ir) {
    assert!(
        !ir.tier_tables.is_empty() && !ir.port_classes.is_empty() && !ir.admin_rules.is_empty(),
        "the input must exercise admin tiers"
    );
}

#[test]
fn admin_tiers_example() {
    let ir = ir_from_yaml(CNP_EXAMPLE, Some("n1"));
    assert_tiers(&ir);
    let text = render(&ir, true).expect("a compiled IR is valid");
    for construct in [
        "flags interval",
        ": goto pc_",
        ": goto ar_",
        "counter return comment",
        "meta l4proto sctp return",
        "\t\tgoto ar_",
        "jump bl_",
    ] {
        assert!(text.contains(construct), "{construct} missing from\n{text}");
    }
    check("admin_tiers_example", &ir);
}

#[test]
fn admin_tiers_dual_stack_open_intervals() {
    let ir = ir_from_yaml(DUAL_STACK_OPEN, Some("n1"));
    assert_tiers(&ir);
    let text = render(&ir, true).expect("a compiled IR is valid");
    for construct in [
        "type ipv6_addr : verdict",
        // Open intervals in both families, and a port range running to 65535.
        "-255.255.255.255 : goto",
        "-ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff : goto",
        "-65535 : goto",
        // Adjacent ranges with different verdicts.
        "10.1.0.5-10.1.0.9 : goto ar_",
        "ip6 daddr vmap @",
        "jump bl_",
    ] {
        assert!(text.contains(construct), "{construct} missing from\n{text}");
    }
    check("admin_tiers_dual_stack_open_intervals", &ir);
    // Every endpoint everywhere (pods of both nodes).
    check("admin_tiers_dual_stack_all_nodes", &ir_from_yaml(DUAL_STACK_OPEN, None));
}

#[test]
fn baseline_tier_fail_closed() {
    let ir = ir_with_options(
        BASELINE_FAIL_CLOSED,
        &CompileOptions {
            node: Some("n1".into()),
            fail_closed: true,
            ..CompileOptions::default()
        },
    );
    assert_tiers(&ir);
    assert!(ir.fail_closed);
    let text = render(&ir, true).expect("a compiled IR is valid");
    for construct in ["jump bl_", "jump adm_", "jump npg_", "counter drop comment", ": accept"] {
        assert!(text.contains(construct), "{construct} missing from\n{text}");
    }
    check("baseline_tier_fail_closed", &ir);
}

/// Random admin policies of every kind over a synthetic cluster, per node and for all
/// endpoints: many tier tables and port classes, node and network peers, named ports.
#[test]
fn admin_tiers_synthetic() {
    let shape = Shape {
        pods: 120,
        namespaces: 8,
        policies: 30,
        nodes: 3,
        dual_stack_every: 3,
    };
    for seed in [3, 17] {
        let mut snap = cluster(shape, seed);
        add_admin_policies(&mut snap, 12, seed);
        for node in [Some("node-0".to_string()), None] {
            let ir = compile(
                &snap,
                &CompileOptions {
                    node: node.clone(),
                    ..CompileOptions::default()
                },
            );
            assert_tiers(&ir);
            check(&format!("admin_tiers_synthetic seed {seed} node {node:?}"), &ir);
        }
    }
}

/// Admin and Baseline tiers whose peers are the pods of namespace x; a NetworkPolicy in y whose
/// peers are pods `app=extra` of y. `pods` are remote pods: `(name, namespace, ip)`.
fn tiers_with_remote_pods(pods: &[(&str, &str, &str)]) -> Ir {
    ir_from_yaml(&tiers_yaml(pods), Some("n1"))
}

/// The manifests of [`tiers_with_remote_pods`].
fn tiers_yaml(pods: &[(&str, &str, &str)]) -> String {
    let mut yaml = "apiVersion: v1
kind: Namespace
metadata: {name: x, labels: {team: x}}
---
apiVersion: v1
kind: Namespace
metadata: {name: y, labels: {env: dev}}
---
apiVersion: v1
kind: Pod
metadata: {name: a, namespace: x, labels: {app: a}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.0.1.10}
---
apiVersion: v1
kind: Pod
metadata: {name: b, namespace: y, labels: {app: b}}
spec: {nodeName: n1}
status: {phase: Running, podIP: 10.0.1.11}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-extra, namespace: y}
spec:
  podSelector: {matchLabels: {app: b}}
  ingress: [{from: [{podSelector: {matchLabels: {app: extra}}}]}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: team-x}
spec:
  tier: Admin
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - name: no-ssh-from-x
    action: Deny
    from: [{namespaces: {matchLabels: {team: x}}}]
    protocols: [{tcp: {destinationPort: {number: 22}}}]
  - name: x-passes
    action: Pass
    from: [{namespaces: {matchLabels: {team: x}}}]
---
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: floor}
spec:
  tier: Baseline
  priority: 1
  subject: {namespaces: {}}
  ingress:
  - name: x-denied
    action: Deny
    from: [{namespaces: {matchLabels: {team: x}}}]
"
    .to_string();
    for (name, ns, ip) in pods {
        yaml += &format!(
            "---
apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {ns}, labels: {{app: extra}}}}
spec: {{nodeName: n9}}
status: {{phase: Running, podIP: {ip}}}
"
        );
    }
    yaml
}

/// Named sets changing under admin tiers that stay as they are: an element update. A tier
/// table changing (its name follows its contents) is a structural change: not an element
/// update, but `apply` makes it in place.
#[test]
fn element_update_with_admin_tiers() {
    // A pod of x moves: the tier tables change (and so do their names).
    let ir1 = tiers_with_remote_pods(&[("mover", "x", "10.0.1.12")]);
    let ir2 = tiers_with_remote_pods(&[("mover", "x", "10.0.7.1")]);
    assert_tiers(&ir1);
    assert_ne!(ir1.tier_tables, ir2.tier_tables);
    // A pod of y, outside every admin peer, joins the NetworkPolicy's set only.
    let ir3 = tiers_with_remote_pods(&[("mover", "x", "10.0.7.1"), ("extra", "y", "10.0.9.9")]);
    assert_eq!(
        ir2.tier_tables, ir3.tier_tables,
        "a pod outside every admin peer must not change the tier tables"
    );
    assert_ne!(ir2.sets, ir3.sets);
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    w.replace(&ir1).expect("replace");
    assert!(
        w.update_elements(&ir1, &ir2).expect("structure check").is_none(),
        "tier tables changed: not an element update"
    );
    let before = listed(&b);
    let stats = w.apply(Some(&ir1), &ir2).expect("apply");
    assert!(stats.in_place, "{stats:?}");
    assert_in_place(&b, &before, &ir2, "tier tables changed");

    let before = listed(&b);
    let stats = w
        .update_elements(&ir2, &ir3)
        .expect("element update")
        .expect("same structure");
    assert!(stats.elements_added > 0 && stats.chains + stats.rules == 0, "{stats:?}");
    assert_in_place(&b, &before, &ir3, "element update next to tier tables");
}

/// `apply` with the plan the writer committed, through admin-tier changes: an admin rule's
/// action changes (its chain is rewritten in place, the tier maps stay), a pod moves (the tier
/// maps change: new maps and chains added, the old ones deleted, in place), a pod outside every
/// admin peer comes (elements only). After each step the table holds what loading the rendered
/// text gives (in the listing order `assert_in_place` checks).
#[test]
fn admin_tiers_through_apply() {
    let pods = [("mover", "x", "10.0.1.12")];
    let ir1 = tiers_with_remote_pods(&pods);
    let accept = ir_from_yaml(&tiers_yaml(&pods).replace("action: Pass", "action: Accept"), Some("n1"));
    assert_eq!(ir1.tier_tables, accept.tier_tables);
    assert_ne!(ir1.admin_rules, accept.admin_rules);
    let moved = tiers_with_remote_pods(&[("mover", "x", "10.0.7.1")]);
    let extra = tiers_with_remote_pods(&[("mover", "x", "10.0.7.1"), ("extra", "y", "10.0.9.9")]);
    if !available() {
        return;
    }
    let (_, b) = Netns::pair();
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    let steps: [(&Ir, &Ir, &str); 5] = [
        (&ir1, &accept, "chains"),
        (&accept, &moved, "structural"),
        (&moved, &extra, "elements"),
        (&extra, &ir1, "structural"),
        (&ir1, &accept, "chains"),
    ];
    for (i, (from, to, mode)) in steps.into_iter().enumerate() {
        let before = listed(&b);
        let stats = w.apply(Some(from), to).expect("apply");
        let names = |listing: &str| {
            let mut v: Vec<String> = blocks(listing).into_iter().map(|(n, _)| n).collect();
            v.sort();
            v
        };
        // Whether the table keeps its sets and chains (by name).
        let same_objects = names(&before.0) == names(&b.list(&[]));
        let got = match (stats.in_place, stats.rules) {
            (false, _) => "replace",
            (true, 0) if same_objects => "elements",
            (true, _) if same_objects => "chains",
            (true, _) => "structural",
        };
        assert_eq!(got, mode, "step {i}: {stats:?}");
        assert_in_place(&b, &before, to, &format!("step {i}"));
    }
}

/// Element updates never touch interval verdict maps: a changed map, even under the same name,
/// is not an element update; `apply` refills it in place (flushed and filled anew in the same
/// transaction), which the kernel accepts where an element-by-element delta overlaps.
#[test]
fn changed_tier_map_is_refilled() {
    let ir1 = ir_from_yaml(DUAL_STACK_OPEN, Some("n1"));
    let mut ir2 = ir1.clone();
    // Split a range in two with different verdicts, keeping the table's name.
    let (_, table) = ir2
        .tier_tables
        .iter_mut()
        .find(|(_, t)| t.v4.len() > 2)
        .expect("a table with several v4 ranges");
    let (first, target) = table.v4[0].clone();
    let other = table
        .v4
        .iter()
        .map(|(_, t)| t.clone())
        .find(|t| *t != target)
        .expect("a second target");
    let mid = first.start + (first.end - first.start) / 2;
    table.v4[0].0.end = mid;
    table.v4.insert(
        1,
        (
            IpRange {
                start: mid + 1,
                ..first
            },
            other,
        ),
    );
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    let mut w = b.writer();
    w.replace(&ir1).expect("replace");
    assert!(
        w.update_elements(&ir1, &ir2).expect("structure check").is_none(),
        "a changed interval verdict map is not an element update"
    );
    // Lowered from `ir1` (the writer forgot its plan after the refused update).
    let before = listed(&b);
    let stats = w.apply(Some(&ir1), &ir2).expect("apply");
    assert!(stats.in_place && stats.chains == 0, "{stats:?}");
    // Nothing but the map's elements changed: the listing is the rendered text's, in order.
    a.load_text(&ir1);
    a.load_text(&ir2);
    assert_eq!(a.list(&[]), b.list(&[]), "changed tier map");
    assert_in_place(&b, &before, &ir2, "changed tier map");

    // The same from the plan the writer committed: the map's contents are compared, not its
    // name, and it is not taken over.
    w.replace(&ir1).expect("replace");
    let before = listed(&b);
    let stats = w.apply(Some(&ir1), &ir2).expect("apply");
    assert!(stats.in_place && stats.chains == 0, "{stats:?}");
    assert_in_place(&b, &before, &ir2, "changed tier map from the committed plan");
}

// === source guards and the bridge attachment ===

/// Canal: every local pod gets a source guard (`prerouting_guard`, the `source_guard` map, a
/// `guard_*` chain with `ip6 saddr fe80::/10` and `ip6 saddr ::`), written like `nft -f` does.
#[test]
fn canal_source_guard() {
    let yaml = basic_pods() + &pod("prod", "v6", "app: v6", "n1", &["10.0.0.20", "fd00::20"], "");
    let ir = ir_from_yaml(&(yaml + &policy("prod", "deny", "  podSelector: {}\n")), Some("n1"));
    if !available() {
        return;
    }
    check("canal_source_guard", &ir);
    let (_, b) = Netns::pair();
    b.writer().replace(&ir).expect("replace");
    let listing = b.list(&[]);
    for want in [
        "chain prerouting_guard",
        "iifname vmap @source_guard",
        "ip6 saddr fe80::/10 accept",
        "ip6 saddr fd00::20 accept",
        "ip6 saddr :: accept",
    ] {
        assert!(listing.contains(want), "{want} missing:\n{listing}");
    }
    assert!(!b.has_bridge_table());
}

/// The bridge attachment (plain Flannel) on node n1 with these pods' ports.
fn bridge_opts(bridge: &str, ports: &[(&str, &str, &str)]) -> CompileOptions {
    CompileOptions {
        node: Some("n1".into()),
        attachment: AttachmentKind::Bridge { bridge: bridge.into() },
        ports: ports
            .iter()
            .map(|(ns, name, port)| (ObjectRef::new(*ns, *name), port.to_string()))
            .collect(),
        fail_closed: true,
        ..CompileOptions::default()
    }
}

/// basic_pods with a dual-stack pod and an IPv6-only one on n1, and a policy for web.
fn bridge_yaml() -> String {
    basic_pods()
        + &pod(
            "prod",
            "dual",
            "app: api",
            "n1",
            &["10.0.0.30", "fd00::30"],
            "{name: http, containerPort: 8080}",
        )
        + &pod("prod", "six", "app: api", "n1", &["fd00::31"], "")
        + &policy(
            "prod",
            "web",
            "  podSelector: {matchLabels: {app: web}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: http}]
  egress:
  - to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.9.0.0/16]}}]
",
        )
}

const BRIDGE_PORTS: [(&str, &str, &str); 4] = [
    ("prod", "web", "veth1a2b3c4d"),
    ("prod", "db", "veth00000001"),
    ("prod", "dual", "veth00000002"),
    ("prod", "six", "veth00000003"),
];

fn assert_bridge_table(ns: &Netns) {
    let listing = ns.list_family("bridge", &[]);
    for want in [
        "chain prerouting_guard",
        "chain forward_unseen",
        "arp saddr ip",
        "ip6 saddr fe80::/10 accept",
        "meta mark & 0x",
    ] {
        assert!(listing.contains(want), "{want} missing:\n{listing}");
    }
}

/// The bridge attachment: `table inet policyc` dispatching by address, and `table bridge
/// policyc` with the per-port guard, written in one batch like `nft -f` of the rendered text.
#[test]
fn bridge_attachment() {
    // cache (10.0.0.6) has no port yet: no guard chain, dropped by the unknown-port rule.
    let ir = ir_with_options(&bridge_yaml(), &bridge_opts("cni0", &BRIDGE_PORTS));
    if !available() {
        return;
    }
    check("bridge_attachment", &ir);
    let (_, b) = Netns::pair();
    let mut w = b.writer();
    let first = w.replace(&ir).expect("replace");
    assert_bridge_table(&b);
    let inet = b.list(&[]);
    assert!(inet.contains("meta mark set meta mark | 0x"), "{inet}");
    assert!(inet.contains("icmpv6 type {"), "{inet}");
    // Replacing again sends the same batch.
    let second = w.replace(&ir).expect("replace again");
    assert_eq!(first.messages, second.messages);
    assert_eq!(first.chains, second.chains);
}

/// Admin tiers under the bridge attachment: address dispatch and the tier maps together.
#[test]
fn bridge_attachment_admin_tiers() {
    let ir = ir_with_options(
        &tiers_yaml(&[("e1", "y", "10.0.9.1"), ("e2", "y", "fd00::9:2")]),
        &bridge_opts("cni0", &[("x", "a", "vethaaaa"), ("y", "b", "vethbbbb")]),
    );
    assert_tiers(&ir);
    check("bridge_attachment_admin_tiers", &ir);
}

/// Through `apply`: pods and ports change (the bridge table is replaced, the inet table changed
/// in place), the bridge is renamed (another attachment), then the node goes back to Canal,
/// which deletes the bridge table. After each step both tables list as the rendered text
/// loaded into a fresh namespace.
#[test]
fn bridge_attachment_updates() {
    let yaml1 = bridge_yaml();
    let ir1 = ir_with_options(&yaml1, &bridge_opts("cni0", &BRIDGE_PORTS));
    // cache gets its port, web's veth is renamed, a new pod comes with its port, dual leaves.
    let yaml2 = bridge_yaml().replace("podIPs: [{ip: \"10.0.0.30\"}, {ip: \"fd00::30\"}]", "podIPs: []")
        + &pod("prod", "new", "app: api", "n1", &["10.0.0.40", "fd00::40"], "");
    let ports2 = [
        ("prod", "web", "veth99999999"),
        ("prod", "db", "veth00000001"),
        ("prod", "cache", "veth00000005"),
        ("prod", "six", "veth00000003"),
        ("prod", "new", "veth00000004"),
    ];
    let ir2 = ir_with_options(&yaml2, &bridge_opts("cni0", &ports2));
    let ir3 = ir_with_options(&yaml2, &bridge_opts("br-pods", &ports2));
    let canal = ir_from_yaml(&yaml2, Some("n1"));
    assert_ne!(ir1.endpoints, ir2.endpoints);
    if !available() {
        return;
    }
    let (_, b) = Netns::pair();
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");

    // Only a port renamed: the inet table stays as it is (same handle, nothing sent for it),
    // the bridge table is replaced.
    let mut ports1b = BRIDGE_PORTS;
    ports1b[0].2 = "veth77777777";
    let ir1b = ir_with_options(&yaml1, &bridge_opts("cni0", &ports1b));
    let table_line = |ns: &Netns| ns.list(&["-a"]).lines().next().unwrap_or_default().to_string();
    let before = table_line(&b);
    let stats = w.apply(Some(&ir1), &ir1b).expect("port renamed");
    assert_eq!(table_line(&b), before, "the inet table was not replaced");
    let bridge_chains = b.list_family("bridge", &[]).matches("\tchain ").count();
    assert_eq!(
        stats.chains, bridge_chains,
        "only the bridge table is created: {stats:?}"
    );
    let a = Netns::new("a");
    a.load_text(&ir1b);
    assert_eq!(a.ruleset(&[]), b.ruleset(&[]), "port renamed: nft list ruleset");
    assert_eq!(
        netlink_ruleset(&a),
        netlink_ruleset(&b),
        "port renamed: nft --debug=netlink list ruleset"
    );
    drop(a);

    let steps = [
        (&ir1b, &ir2, "pods and ports"),
        (&ir2, &ir3, "bridge renamed"),
        (&ir3, &canal, "back to Canal"),
    ];
    for (from, to, what) in steps {
        w.apply(Some(from), to).expect(what);
        let a = Netns::new("a");
        a.load_text(to);
        assert_eq!(a.ruleset(&[]), b.ruleset(&[]), "{what}: nft list ruleset");
        assert_eq!(
            netlink_ruleset(&a),
            netlink_ruleset(&b),
            "{what}: nft --debug=netlink list ruleset"
        );
    }
    assert!(!b.has_bridge_table(), "back to Canal: the bridge table is gone");

    // Nothing changed: nothing sent, in either attachment.
    assert_eq!(w.apply(Some(&canal), &canal).expect("no-op").messages, 0);
    w.apply(Some(&canal), &ir2).expect("to the bridge again");
    assert_bridge_table(&b);
    assert_eq!(w.apply(Some(&ir2), &ir2).expect("no-op").messages, 0);
    // An element-only update refuses a changed bridge table.
    assert!(w.update_elements(&ir2, &ir1).expect("structure check").is_none());

    // A new writer (it knows nothing) replacing with Canal deletes the leftover bridge table.
    NetlinkWriter::in_netns(b.0.path()).replace(&canal).expect("replace");
    assert!(!b.has_bridge_table());
    let a = Netns::new("a");
    a.load_text(&canal);
    assert_eq!(a.ruleset(&[]), b.ruleset(&[]));

    // remove() deletes both tables.
    let mut w = b.writer();
    w.replace(&ir2).expect("replace");
    assert!(b.has_bridge_table());
    w.remove().expect("remove");
    assert!(!b.has_table() && !b.has_bridge_table());
}

/// The guard's counted drops in `table bridge policyc` read like those of the inet table.
#[test]
fn bridge_guard_counters() {
    use policyc_dataplane::counters::{rule_counters_of, TableFamily};
    let ir = ir_with_options(&bridge_yaml(), &bridge_opts("cni0", &BRIDGE_PORTS));
    if !available() {
        return;
    }
    let (_, b) = Netns::pair();
    b.writer().replace(&ir).expect("replace");
    let rules = rule_counters_of(Some(&b.0.path()), TableFamily::Bridge, "policyc").expect("bridge counters");
    let listing = b.list_family("bridge", &[]);
    assert_eq!(
        rules.len(),
        listing.matches("counter packets").count(),
        "{rules:?}\n{listing}"
    );
    assert!(
        rules
            .iter()
            .any(|r| r.chain.starts_with("guard_") && r.comment.is_some()),
        "{rules:?}"
    );
    assert!(rules.iter().all(|r| r.packets == 0));
}

// === log and limit statements ===

fn chain(name: &str, hook: Option<BaseHook>, rules: Vec<Rule>) -> Arc<Chain> {
    Arc::new(Chain {
        name: name.into(),
        hook,
        rules,
    })
}

fn from_pod(family: Family, addr: &str) -> Match {
    Match::AddrIn {
        family,
        end: End::Source,
        addrs: vec![addr.parse().expect("an address")],
    }
}

/// Every form of the two statements: a rate-limited log rule before its verdict rule, a log
/// and a verdict in one rule, `goto` a chain that limits, logs and decides, burst, units,
/// snaplen, queue threshold, a log without prefix.
fn logging_inet_table() -> Table {
    let v4 = || vec![from_pod(Family::V4, "10.0.0.1")];
    let dns = || {
        vec![Match::Dport {
            protocol: Protocol::Udp,
            ports: vec![(53, 53)],
        }]
    };
    let input = vec![
        Rule::log_only(v4(), Log::group(1, "pc:42").with_limit(Limit::per_second(100)), None),
        Rule {
            matches: v4(),
            counter: true,
            log: Some(Log::group(1, "pc:123")),
            action: Action::Verdict(Verdict::Accept),
            comment: Some("ns/web ingress[0]".into()),
        },
        Rule {
            matches: dns(),
            counter: true,
            log: Some(Log {
                limit: Some(Limit {
                    rate: 1000,
                    unit: RateUnit::Minute,
                    burst: 1,
                }),
                prefix: Some("pc:7 dns".into()),
                group: 2,
                snaplen: Some(128),
                queue_threshold: Some(10),
            }),
            action: Action::Continue,
            comment: None,
        },
        Rule {
            matches: vec![from_pod(Family::V6, "fd00::1")],
            counter: false,
            log: None,
            action: Action::Verdict(Verdict::Goto("log_9".into())),
            comment: None,
        },
        Rule {
            matches: Vec::new(),
            counter: true,
            log: Some(Log {
                limit: Some(Limit {
                    rate: 3,
                    unit: RateUnit::Hour,
                    burst: 20,
                }),
                prefix: None,
                group: 65535,
                snaplen: Some(0),
                queue_threshold: Some(0),
            }),
            action: Action::Continue,
            comment: Some("every endpoint's final drop".into()),
        },
    ];
    let per_rule = vec![
        Rule {
            matches: Vec::new(),
            counter: false,
            log: Some(Log::group(3, "pc:9").with_limit(Limit {
                rate: 1,
                unit: RateUnit::Week,
                burst: 5,
            })),
            action: Action::Continue,
            comment: None,
        },
        Rule::always(true, Verdict::Drop, None),
    ];
    Table {
        family: TableFamily::Inet,
        summary: "log statements".into(),
        sets: Vec::new(),
        chains: vec![
            chain(
                "input",
                Some(BaseHook {
                    hook: Hook::Input,
                    priority: 0,
                }),
                input,
            ),
            chain("log_9", None, per_rule),
        ],
    }
}

/// The bridge family: network dependencies (`meta protocol`, `ether type arp`) before the log.
fn logging_bridge_table() -> Table {
    let rules = vec![
        Rule::log_only(
            vec![from_pod(Family::V4, "10.0.0.1")],
            Log::group(4, "pc:spoof").with_limit(Limit {
                rate: 10,
                unit: RateUnit::Second,
                burst: 2,
            }),
            None,
        ),
        Rule {
            matches: vec![Match::ArpSenderIn(vec!["10.0.0.1".parse().unwrap()])],
            counter: true,
            log: Some(Log::group(4, "pc:arp")),
            action: Action::Verdict(Verdict::Drop),
            comment: Some("forged ARP".into()),
        },
        Rule {
            matches: vec![from_pod(Family::V6, "fd00::1")],
            counter: true,
            log: Some(Log::group(4, "pc:spoof6").with_limit(Limit::per_second(50))),
            action: Action::Verdict(Verdict::Drop),
            comment: None,
        },
    ];
    Table {
        family: TableFamily::Bridge,
        summary: "log statements, bridge".into(),
        sets: Vec::new(),
        chains: vec![chain(
            "prerouting_guard",
            Some(BaseHook {
                hook: Hook::Prerouting,
                priority: 0,
            }),
            rules,
        )],
    }
}

/// `log` and `limit` written by the writer list like `nft -f` of the printed model, in both
/// families: text, handles, and every expression (`limit rate 100/second burst 5 type packets
/// flags 0x0`, `log prefix pc:42 group 1 snaplen 0 qthreshold 0`). And the printer writes each
/// rule as `nft list` prints it back.
#[test]
fn log_and_limit_statements() {
    if !available() {
        return;
    }
    let tables = [logging_inet_table(), logging_bridge_table()];
    let (a, b) = Netns::pair();
    let mut writer = b.writer();
    for t in &tables {
        let text = print(t, true);
        if let Err(e) = a.nft(&["-f", "-"], Some(&text)) {
            panic!("nft -f rejected the printed model: {e}\n{text}");
        }
        writer.replace_table(t).expect("netlink replace of the model");
    }
    assert_same(&a, &b, "log_and_limit_statements");

    // From the first log or limit statement on (the printer writes a one-address match as a
    // set, which nft lists as a comparison).
    let listed = a.ruleset(&[]);
    for t in &tables {
        for line in print(t, false).lines().filter(|l| l.starts_with("\t\t")) {
            let Some(at) = line.find("limit rate").or_else(|| line.find("log ")) else {
                continue;
            };
            let want = &line[at..];
            assert!(
                listed.lines().any(|l| l.ends_with(want)),
                "`{want}` not listed:\n{listed}"
            );
        }
    }
    let debug = b.ruleset(&["--debug=netlink"]);
    for want in [
        "[ limit rate 100/second burst 5 type packets flags 0x0 ]",
        "[ log prefix pc:42 group 1 snaplen 0 qthreshold 0 ]",
        "[ limit rate 1000/minute burst 1 type packets flags 0x0 ]",
        "[ log prefix pc:7 dns group 2 snaplen 128 qthreshold 10 ]",
        "[ log group 65535 snaplen 0 qthreshold 0 ]",
        "[ limit rate 1/week burst 5 type packets flags 0x0 ]",
    ] {
        assert!(debug.contains(want), "{want} missing:\n{debug}");
    }
}

/// What nft refuses, the writer refuses too, and sends nothing.
#[test]
fn unloadable_log_statements_are_refused() {
    let with_log = |log: Log| Table {
        chains: vec![chain("c", None, vec![Rule::log_only(Vec::new(), log, None)])],
        ..logging_inet_table()
    };
    let bad = [
        Log::group(1, "pc:1").with_limit(Limit {
            burst: 0,
            ..Limit::per_second(1)
        }),
        Log::group(1, "pc:1").with_limit(Limit::per_second(0)),
        Log::group(1, "x".repeat(128)),
        Log::group(1, "a\"b"),
    ];
    let mut writer = NetlinkWriter::in_netns("/nonexistent/netns");
    for log in bad {
        match writer.replace_table(&with_log(log.clone())) {
            Err(DataplaneError::Unrepresentable(_)) => {}
            other => panic!("{log:?}: {other:?}"),
        }
    }
    // The longest prefix the kernel takes is planned (and fails only on opening the namespace).
    match writer.replace_table(&with_log(Log::group(1, "x".repeat(127)))) {
        Err(DataplaneError::Netns { .. }) => {}
        other => panic!("{other:?}"),
    }
}

// === structural changes in place ===

/// The top-level blocks of `nft list table ...` (with or without `-a`), in listing order: each
/// block's name (`set NAME`, `map NAME`, `chain NAME`) and its text, header line included.
fn blocks(listing: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut cur: Option<(String, Vec<&str>)> = None;
    for line in listing.lines() {
        let Some(rest) = line.strip_prefix('\t') else {
            continue;
        };
        if !rest.starts_with('\t') {
            if rest == "}" {
                if let Some((name, mut body)) = cur.take() {
                    body.push(line);
                    out.push((name, body.join("\n")));
                }
                continue;
            }
            if let Some((name, _)) = rest.split_once(" {") {
                cur = Some((name.to_string(), vec![line]));
                continue;
            }
        }
        if let Some((_, body)) = &mut cur {
            body.push(line);
        }
    }
    out
}

/// The blocks as a multiset: what the table holds whatever the order of its sets and chains
/// (the rules' order within a chain is part of its block).
fn sorted_blocks(listing: &str) -> Vec<(String, String)> {
    let mut b = blocks(listing);
    b.sort();
    b
}

/// [`normalized_netlink`]'s records (a set with its elements, a rule with its expressions),
/// sorted: the same objects and expressions whatever the listing order.
fn netlink_records(ns: &Netns) -> Vec<String> {
    let text = netlink_listing(ns);
    let mut records: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.starts_with("table ") {
            break;
        }
        match records.last_mut() {
            Some(r) if !line.starts_with("inet policyc") && !line.starts_with("bridge policyc") => {
                r.push('\n');
                r.push_str(line);
            }
            _ => records.push(line.to_string()),
        }
    }
    records.sort();
    records
}

/// The listing order the writer promises after an in-place change from a table listing
/// `before` to one whose rendered text lists `rendered`: sets and maps, then chains; in each,
/// the kept ones in their old order, then the added ones in the rendered order.
fn in_place_order(before: &str, rendered: &str) -> Vec<String> {
    let old: Vec<String> = blocks(before).into_iter().map(|(n, _)| n).collect();
    let new: Vec<String> = blocks(rendered).into_iter().map(|(n, _)| n).collect();
    let is_chain = |n: &String| n.starts_with("chain ");
    let mut order = Vec::new();
    for chains in [false, true] {
        order.extend(old.iter().filter(|n| is_chain(n) == chains && new.contains(n)).cloned());
        order.extend(
            new.iter()
                .filter(|n| is_chain(n) == chains && !old.contains(n))
                .cloned(),
        );
    }
    order
}

/// The table's handle (`nft -a list`): a replace creates a new table, with another handle.
fn table_handle(listing_a: &str) -> String {
    listing_a.lines().next().unwrap_or_default().to_string()
}

/// Checks a change the writer made in place on `b`, from a table that listed `before` (`nft
/// list` and `nft -a list`): the table holds the same sets, maps, chains and rules (in the same
/// order within each chain) as loading the rendered text of `to` gives, listed in the promised
/// order; the table was not recreated, and every chain whose text did not change kept its
/// handles (its rules were neither rewritten nor recreated, so their counters were kept); in a
/// chain that changed, a rule listed once before and once after with the same text kept its
/// handle (it was not touched). Returns how many such rules of changed chains there were.
fn assert_in_place(b: &Netns, before: &(String, String), to: &Ir, what: &str) -> usize {
    let a = Netns::new("a");
    a.load_text(to);
    let (want, got, got_a) = (a.list(&[]), b.list(&[]), b.list(&["-a"]));
    assert_eq!(
        sorted_blocks(&got),
        sorted_blocks(&want),
        "{what}: not the rendered text's sets and chains\n--- text-loaded ---\n{want}\n--- in place ---\n{got}"
    );
    assert_eq!(
        netlink_records(b),
        netlink_records(&a),
        "{what}: nft --debug=netlink list"
    );
    let order: Vec<String> = blocks(&got).into_iter().map(|(n, _)| n).collect();
    assert_eq!(order, in_place_order(&before.0, &want), "{what}: listing order");
    assert_eq!(
        table_handle(&before.1),
        table_handle(&got_a),
        "{what}: the table was recreated"
    );
    let old: HashMap<String, String> = blocks(&before.0).into_iter().collect();
    let old_a: HashMap<String, String> = blocks(&before.1).into_iter().collect();
    let mut untouched = 0;
    let mut kept_rules = 0;
    for ((name, text), (_, text_a)) in blocks(&got).into_iter().zip(blocks(&got_a)) {
        if name.starts_with("chain ") && old.get(&name) == Some(&text) {
            assert_eq!(old_a.get(&name), Some(&text_a), "{what}: {name} unchanged but touched");
            untouched += 1;
        } else if let Some(old_text_a) = old_a.get(&name).filter(|_| name.starts_with("chain ")) {
            let (old_rules, new_rules) = (rule_handles(old_text_a), rule_handles(&text_a));
            for (rule, handle) in &new_rules {
                let once = |v: &[(String, String)]| v.iter().filter(|(r, _)| r == rule).count() == 1;
                if once(&new_rules) && once(&old_rules) {
                    let old_handle = &old_rules.iter().find(|(r, _)| r == rule).expect("listed").1;
                    assert_eq!(old_handle, handle, "{what}: {name}: unchanged rule {rule} recreated");
                    kept_rules += 1;
                }
            }
        }
    }
    assert!(untouched > 0, "{what}: no chain left untouched");
    kept_rules
}

/// The rules of a chain block of `nft -a list`: (text, handle).
fn rule_handles(block: &str) -> Vec<(String, String)> {
    block
        .lines()
        .filter_map(|l| l.trim().rsplit_once(" # handle "))
        .filter(|(rule, _)| !rule.starts_with("chain ") && !rule.starts_with("type "))
        .map(|(r, h)| (r.to_string(), h.to_string()))
        .collect()
}

fn listed(b: &Netns) -> (String, String) {
    (b.list(&[]), b.list(&["-a"]))
}

/// One `apply` from `from` to `to` that must go in place; returns its figures.
fn apply_in_place(w: &mut NetlinkWriter, b: &Netns, from: &Ir, to: &Ir, what: &str) -> ApplyStats {
    apply_in_place_kept(w, b, from, to, what).0
}

/// [`apply_in_place`], and how many unchanged rules of changed chains were left untouched.
fn apply_in_place_kept(w: &mut NetlinkWriter, b: &Netns, from: &Ir, to: &Ir, what: &str) -> (ApplyStats, usize) {
    let before = listed(b);
    let stats = w.apply(Some(from), to).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(stats.in_place, "{what}: a full replace: {stats:?}");
    assert!(stats.messages > 0, "{what}: nothing sent");
    let kept = assert_in_place(b, &before, to, what);
    (stats, kept)
}

/// A NetworkPolicy with ports, peers and an ipBlock for the local `app: db` pods.
fn with_db_policy(yaml: &str, except: &str) -> String {
    yaml.to_string()
        + &policy(
            "prod",
            "db",
            &format!(
                "  podSelector: {{matchLabels: {{app: db}}}}
  policyTypes: [Ingress, Egress]
  ingress:
  - from: [{{podSelector: {{matchLabels: {{app: web}}}}}}]
    ports: [{{port: 5432}}]
  egress:
  - to: [{{ipBlock: {{cidr: 172.16.0.0/12, except: [{except}]}}}}]
    ports: [{{port: 443}}, {{port: 53, protocol: UDP}}]
"
            ),
        )
}

/// A policy created, its ipBlock changed, deleted, and created again, all in place: new chains
/// and sets come with their elements and rules, the old ones go, and what did not change keeps
/// its handles and counters. Then a fresh writer (a restart) replaces, restoring the rendered
/// order.
#[test]
fn policy_create_change_delete_in_place() {
    let base = node_yaml(&[("a1", "app: api", "10.0.3.1"), ("a2", "app: api", "fd00::3:2")]);
    let ir1 = ir_from_yaml(&base, Some("n1"));
    let ir2 = ir_from_yaml(&with_db_policy(&base, "172.16.9.0/24"), Some("n1"));
    let ir3 = ir_from_yaml(&with_db_policy(&base, "172.16.9.0/24, 172.17.0.0/16"), Some("n1"));
    assert_ne!(ir1.chains, ir2.chains);
    assert_ne!(ir2.sets, ir3.sets, "the ipBlock's set changes");
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");

    let created = apply_in_place(&mut w, &b, &ir1, &ir2, "policy created");
    assert!(
        created.chains > 0 && created.rules > 0 && created.sets > 0,
        "{created:?}"
    );
    let changed = apply_in_place(&mut w, &b, &ir2, &ir3, "ipBlock changed");
    assert!(changed.elements_added > 0, "{changed:?}");
    let deleted = apply_in_place(&mut w, &b, &ir3, &ir1, "policy deleted");
    assert_eq!(deleted.chains, 0, "{deleted:?}");
    // Nothing of the policy is left: no orphan set or chain (the blocks compared above are the
    // rendered text's exactly).
    let listing = b.list(&[]);
    let rendered: Vec<String> = {
        let a = Netns::new("a");
        a.load_text(&ir1);
        blocks(&a.list(&[])).into_iter().map(|(n, _)| n).collect()
    };
    let mut got: Vec<String> = blocks(&listing).into_iter().map(|(n, _)| n).collect();
    got.sort();
    let mut want = rendered.clone();
    want.sort();
    assert_eq!(got, want, "sets and chains after the delete");

    apply_in_place(&mut w, &b, &ir1, &ir3, "policy created again");
    // Nothing changed: nothing sent.
    let none = w.apply(Some(&ir3), &ir3).expect("no-op");
    assert_eq!(none.messages, 0);
    assert!(none.in_place);

    // A new writer does not know the kernel: a replace, in the rendered order.
    let mut fresh = b.writer();
    let stats = fresh.apply(None, &ir3).expect("replace");
    assert!(!stats.in_place);
    let a = Netns::new("a");
    a.load_text(&ir3);
    assert_eq!(a.list(&[]), b.list(&[]), "a replace lists in the rendered order");
}

/// A node's IR, and the same with one more policy (`prod/extra`) for the `app: web` pods, which
/// `prod/web` isolates already.
fn with_and_without_extra_web_policy() -> (Ir, Ir) {
    let base = node_yaml(&[("a1", "app: api", "10.0.3.1")]);
    let with = base.clone()
        + &policy(
            "prod",
            "extra",
            "  podSelector: {matchLabels: {app: web}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: api}}}]
    ports: [{port: 7000}]
",
        );
    (ir_from_yaml(&base, Some("n1")), ir_from_yaml(&with, Some("n1")))
}

/// A policy created for endpoints other policies isolate already, then deleted: their chains
/// change rule by rule (the jump to their NetworkPolicy rules, the drop naming the policies),
/// and the rules that stay (a pod reaching itself, the named-port rules) keep their handles and
/// counters. Also after a replace by another writer, whose rule handles it learns.
#[test]
fn policy_on_isolated_endpoints_edits_rules() {
    let (ir1, ir2) = with_and_without_extra_web_policy();
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    for (from, to, what) in [(&ir1, &ir2, "created"), (&ir2, &ir1, "deleted"), (&ir1, &ir2, "again")] {
        let (stats, kept) = apply_in_place_kept(&mut w, &b, from, to, what);
        assert!(
            kept > 0,
            "{what}: every rule of the changed chains recreated: {stats:?}"
        );
    }
    // A writer that replaced the table learns its handles from the kernel, too.
    let mut fresh = b.writer();
    assert!(!fresh.apply(None, &ir2).expect("replace").in_place);
    let (stats, kept) = apply_in_place_kept(&mut fresh, &b, &ir2, &ir1, "after a replace");
    assert!(kept > 0, "after a replace: {stats:?}");
}

/// Thirty random changes of a synthetic cluster, each applied in place on one node's table:
/// policies copied for whole namespaces (new groups for endpoints isolated already), deleted,
/// their ports changed (numeric and named: rules added and removed in the middle of endpoint
/// chains), pods relabelled and deleted. After each, the table holds exactly the rendered
/// ruleset, and the rules of changed chains that stayed kept their handles.
#[test]
fn random_changes_edit_rules_in_place() {
    use policyc_compiler::model::{LabelSelector, PortRef, PortSpec};
    use policyc_compiler::synth::Rng;
    let shape = Shape {
        pods: 150,
        namespaces: 6,
        policies: 40,
        nodes: 2,
        dual_stack_every: 4,
    };
    let mut snap = cluster(shape, 11);
    let opts = CompileOptions {
        node: Some("node-0".into()),
        fail_closed: true,
        ..CompileOptions::default()
    };
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    let mut ir = compile(&snap, &opts);
    w.apply(None, &ir).expect("first apply");
    let mut rng = Rng::new(5);
    let (mut kept_total, mut edits) = (0, 0);
    for step in 0..30u16 {
        let policies: Vec<ObjectRef> = snap.policies.keys().cloned().collect();
        let pods: Vec<ObjectRef> = snap.pods.keys().cloned().collect();
        let policy = policies[rng.below(policies.len())].clone();
        match step % 5 {
            0 => {
                let mut copy = snap.policies[&policy].clone();
                copy.name = format!("copy-{step}");
                copy.pod_selector = LabelSelector::default();
                snap.policies.insert(copy.id(), copy);
            }
            1 => {
                snap.policies.remove(&policy);
            }
            2 => {
                let named = rng.chance(50);
                let p = snap.policies.get_mut(&policy).expect("listed");
                for r in p.ingress.iter_mut().chain(p.egress.iter_mut()) {
                    r.ports = vec![PortSpec {
                        protocol: Protocol::Tcp,
                        port: match named {
                            true => PortRef::Named("http".into()),
                            false => PortRef::Range {
                                first: 3000 + step,
                                last: 3000 + step,
                            },
                        },
                    }];
                }
            }
            3 => {
                let pod = snap.pods.get_mut(&pods[rng.below(pods.len())]).expect("listed");
                pod.labels.insert("tier".into(), format!("moved-{step}"));
            }
            _ => {
                snap.pods.remove(&pods[rng.below(pods.len())]);
            }
        }
        let new = compile(&snap, &opts);
        let what = format!("step {step}");
        let before = listed(&b);
        let stats = w.apply(Some(&ir), &new).unwrap_or_else(|e| panic!("{what}: {e}"));
        assert!(stats.in_place, "{what}: a full replace: {stats:?}");
        if stats.messages > 0 {
            let kept = assert_in_place(&b, &before, &new, &what);
            kept_total += kept;
            edits += usize::from(kept > 0);
        }
        ir = new;
    }
    assert!(
        edits >= 5 && kept_total > 0,
        "{edits} steps kept {kept_total} rules of changed chains"
    );
}

/// Rule handles belong to one table: when another writer replaced the table (same rules, new
/// handles), or a rule the writer would replace was deleted by hand, the writer does not change
/// rules by handles it learnt from another table: it replaces the table, which then holds
/// exactly the rendered ruleset.
#[test]
fn rule_edits_only_in_the_table_they_know() {
    let (ir1, ir2) = with_and_without_extra_web_policy();
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    // The same ruleset, loaded anew by someone else: a new table whose rules happen to have the
    // same handles (both were created in the same order), which an edit would get away with.
    // Still another table than the one the writer created: it replaces it.
    b.writer().replace(&ir1).expect("another writer");
    let stats = w.apply(Some(&ir1), &ir2).expect("apply");
    assert!(!stats.in_place, "edited rules of a table it did not create: {stats:?}");
    a.load_text(&ir2);
    assert_eq!(a.list(&[]), b.list(&[]));
    // Its own table again: in place.
    apply_in_place(&mut w, &b, &ir2, &ir1, "deleted");

    // A rule the change would replace is deleted by hand: the kernel refuses the batch (no
    // such handle), and the writer replaces the table.
    apply_in_place(&mut w, &b, &ir1, &ir2, "created again");
    let listing = b.list(&["-a"]);
    let a = Netns::new("a");
    let (chain, handle) = blocks(&listing)
        .into_iter()
        .filter(|(name, _)| name.starts_with("chain ep_"))
        .find_map(|(name, text)| {
            let jump = rule_handles(&text)
                .into_iter()
                .find(|(r, _)| r.starts_with("jump npg_"))?;
            Some((name.trim_start_matches("chain ").to_string(), jump.1))
        })
        .expect("an endpoint chain jumping to its NetworkPolicy group");
    b.nft(&["delete", "rule", "inet", "policyc", &chain, "handle", &handle], None)
        .expect("delete by hand");
    let stats = w.apply(Some(&ir2), &ir1).expect("apply");
    assert!(!stats.in_place, "{stats:?}");
    a.load_text(&ir1);
    assert_eq!(a.list(&[]), b.list(&[]));
}

/// Deleting every policy and endpoint chain but the base chains: every set and regular chain
/// goes in one transaction, verdict-map elements jumping to them first.
#[test]
fn delete_leaves_no_orphans() {
    let base = node_yaml(&[("a1", "app: api", "10.0.3.1")]);
    let ir1 = ir_from_yaml(&with_db_policy(&base, "172.16.9.0/24"), Some("n1"));
    // The same pods, no policy at all.
    let ir2 = ir_from_yaml(&basic_pods(), Some("n1"));
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    let stats = w.apply(Some(&ir1), &ir2).expect("delete");
    let a = Netns::new("a");
    a.load_text(&ir2);
    assert_eq!(sorted_blocks(&b.list(&[])), sorted_blocks(&a.list(&[])), "{stats:?}");
    assert!(!b.list(&[]).contains("np_"), "policy chains must be gone");
    // And back.
    let before = listed(&b);
    let back = w.apply(Some(&ir2), &ir1).expect("back");
    assert!(back.in_place, "{back:?}");
    assert_in_place(&b, &before, &ir1, "policies back");
}

/// Admin tiers: a pod moving changes the tier tables (interval verdict maps, renamed after
/// their contents, and the chains they jump to), and a tier map changed under its own name is
/// refilled; both in place, through the plan the writer committed.
#[test]
fn admin_tier_changes_in_place() {
    let ir1 = tiers_with_remote_pods(&[("mover", "x", "10.0.1.12")]);
    let ir2 = tiers_with_remote_pods(&[("mover", "x", "10.0.7.1")]);
    assert_ne!(ir1.tier_tables, ir2.tier_tables);
    // A map split under its own name (as `changed_tier_map_is_refilled` does).
    let open = ir_from_yaml(DUAL_STACK_OPEN, Some("n1"));
    let split = split_first_tier_range(&open);
    if !available() {
        return;
    }
    let b = Netns::new("b");
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    let moved = apply_in_place(&mut w, &b, &ir1, &ir2, "tier tables renamed");
    assert!(moved.sets > 0 && moved.elements_added > 0, "{moved:?}");
    apply_in_place(&mut w, &b, &ir2, &ir1, "and back");

    let b = Netns::new("b");
    let mut w = b.writer();
    w.apply(None, &open).expect("first apply");
    let refilled = apply_in_place(&mut w, &b, &open, &split, "tier map refilled");
    assert_eq!(refilled.chains, 0, "{refilled:?}");
    assert!(refilled.elements_added > 0, "{refilled:?}");
    apply_in_place(&mut w, &b, &split, &open, "refilled back");
}

/// `ir` with its first tier table's first v4 range split in two with different targets, under
/// the same name.
fn split_first_tier_range(ir: &Ir) -> Ir {
    let mut ir2 = ir.clone();
    let (_, table) = ir2
        .tier_tables
        .iter_mut()
        .find(|(_, t)| t.v4.len() > 2)
        .expect("a table with several v4 ranges");
    let (first, target) = table.v4[0].clone();
    let other = table
        .v4
        .iter()
        .map(|(_, t)| t.clone())
        .find(|t| *t != target)
        .expect("a second target");
    let mid = first.start + (first.end - first.start) / 2;
    table.v4[0].0.end = mid;
    table.v4.insert(
        1,
        (
            IpRange {
                start: mid + 1,
                ..first
            },
            other,
        ),
    );
    ir2
}

/// The kernel holds something else than the writer committed (another writer replaced the
/// table): chains and sets an in-place change would create exist already, the kernel refuses
/// the batch, and the writer falls back to a replace, in the rendered order.
#[test]
fn stale_in_place_change_falls_back_to_replace() {
    let base = node_yaml(&[("a1", "app: api", "10.0.3.1")]);
    let ir1 = ir_from_yaml(&base, Some("n1"));
    let ir2 = ir_from_yaml(&with_db_policy(&base, "172.16.9.0/24"), Some("n1"));
    let other = ir_from_yaml(&with_db_policy(&base, "172.16.8.0/24"), Some("n1"));
    if !available() {
        return;
    }
    let (a, b) = Netns::pair();
    let mut w = b.writer();
    w.apply(None, &ir1).expect("first apply");
    b.writer().replace(&other).expect("another writer");
    let stats = w.apply(Some(&ir1), &ir2).expect("apply");
    assert!(!stats.in_place, "{stats:?}");
    a.load_text(&ir2);
    assert_eq!(a.list(&[]), b.list(&[]));
}
