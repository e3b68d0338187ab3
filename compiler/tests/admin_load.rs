//! Loading ClusterNetworkPolicy (v1alpha2), AdminNetworkPolicy and BaselineAdminNetworkPolicy
//! (v1alpha1) objects: the model they become, the objects that are rejected (naming the field),
//! and the peers that fail closed.

use std::net::IpAddr;

use policyc_compiler::cidr::Cidr;
use policyc_compiler::model::*;
use policyc_compiler::{Diagnostic, Loader, Severity};

fn load(text: &str) -> (Snapshot, Vec<Diagnostic>) {
    let mut l = Loader::new();
    l.add_text("admin.yaml", text);
    l.finish()
}

fn errors(diags: &[Diagnostic]) -> Vec<&Diagnostic> {
    diags.iter().filter(|d| d.severity == Severity::Error).collect()
}

fn warnings(diags: &[Diagnostic]) -> Vec<String> {
    diags
        .iter()
        .filter(|d| d.severity == Severity::Warning)
        .map(|d| d.to_string())
        .collect()
}

fn sel(pairs: &[(&str, &str)]) -> LabelSelector {
    LabelSelector {
        match_labels: pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        match_expressions: Vec::new(),
    }
}

fn cidr(s: &str) -> Cidr {
    s.parse().unwrap()
}

fn port(protocol: Protocol, first: u16, last: u16) -> PortSpec {
    PortSpec {
        protocol,
        port: PortRef::Range { first, last },
    }
}

fn named(name: &str) -> Vec<PortSpec> {
    [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
        .into_iter()
        .map(|protocol| PortSpec {
            protocol,
            port: PortRef::Named(name.into()),
        })
        .collect()
}

fn rule(name: Option<&str>, action: AdminAction, peers: Vec<AdminPeer>, ports: Vec<PortSpec>) -> AdminRule {
    AdminRule {
        name: name.map(str::to_string),
        action,
        peers,
        ports,
    }
}

fn only_policy(snap: &Snapshot) -> &AdminPolicy {
    assert_eq!(snap.admin_policies.len(), 1, "{:?}", snap.admin_policies.keys());
    snap.admin_policies.values().next().unwrap()
}

const CNP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata:
  name: cluster-guard
  generation: 3
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchExpressions:
      - {key: kubernetes.io/metadata.name, operator: NotIn, values: [kube-system]}
  ingress:
  - name: deny-from-sandbox
    action: Deny
    from:
    - namespaces: {matchLabels: {zone: sandbox}}
  - name: accept-monitoring
    action: Accept
    from:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}
        podSelector: {matchLabels: {app: prometheus}}
    - pods:
        podSelector: {matchLabels: {app: scraper}}
    protocols:
    - tcp: {destinationPort: {number: 9090}}
    - udp: {destinationPort: {range: {start: 8000, end: 8010}}}
  egress:
  - name: pass-to-nodes
    action: Pass
    to:
    - nodes: {matchLabels: {node-role.kubernetes.io/control-plane: ""}}
  - action: Accept
    to:
    - networks: [10.0.0.1/8, "fd00::/64", 192.168.0.0/16]
    - domainNames: [example.com, "*.example.org"]
    protocols:
    - sctp: {destinationPort: {number: 3868}}
  - name: metrics
    action: Accept
    to:
    - namespaces: {}
    protocols:
    - destinationNamedPort: metrics
"#;

#[test]
fn cluster_network_policy() {
    let (snap, diags) = load(CNP);
    assert!(errors(&diags).is_empty(), "{diags:?}");
    let got = &snap.admin_policies[&AdminRef::new(AdminKind::ClusterNetworkPolicy, "cluster-guard")];
    let want = AdminPolicy {
        kind: AdminKind::ClusterNetworkPolicy,
        name: "cluster-guard".into(),
        generation: Some(3),
        tier: Tier::Admin,
        priority: 10,
        subject: AdminSubject::Namespaces(LabelSelector {
            match_labels: Labels::new(),
            match_expressions: vec![Requirement {
                key: "kubernetes.io/metadata.name".into(),
                operator: Operator::NotIn,
                values: vec!["kube-system".into()],
            }],
        }),
        ingress: vec![
            rule(
                Some("deny-from-sandbox"),
                AdminAction::Deny,
                vec![AdminPeer::Namespaces(sel(&[("zone", "sandbox")]))],
                vec![],
            ),
            rule(
                Some("accept-monitoring"),
                AdminAction::Accept,
                vec![
                    AdminPeer::Pods {
                        namespace_selector: sel(&[("kubernetes.io/metadata.name", "monitoring")]),
                        pod_selector: sel(&[("app", "prometheus")]),
                    },
                    AdminPeer::Pods {
                        namespace_selector: LabelSelector::default(),
                        pod_selector: sel(&[("app", "scraper")]),
                    },
                ],
                vec![port(Protocol::Tcp, 9090, 9090), port(Protocol::Udp, 8000, 8010)],
            ),
        ],
        egress: vec![
            rule(
                Some("pass-to-nodes"),
                AdminAction::Pass,
                vec![AdminPeer::Nodes(sel(&[("node-role.kubernetes.io/control-plane", "")]))],
                vec![],
            ),
            rule(
                None,
                AdminAction::Accept,
                vec![
                    AdminPeer::Networks(vec![cidr("10.0.0.0/8"), cidr("192.168.0.0/16"), cidr("fd00::/64")]),
                    AdminPeer::Nothing,
                ],
                vec![port(Protocol::Sctp, 3868, 3868)],
            ),
            rule(
                Some("metrics"),
                AdminAction::Accept,
                vec![AdminPeer::Namespaces(LabelSelector::default())],
                named("metrics"),
            ),
        ],
    };
    assert_eq!(got, &want);

    let warns = warnings(&diags);
    assert_eq!(warns.len(), 2, "{warns:?}");
    assert!(
        warns[0].contains("ClusterNetworkPolicy cluster-guard: spec.egress[1].to[0].networks[0]: \"10.0.0.1/8\" has host bits set; using 10.0.0.0/8"),
        "{warns:?}"
    );
    assert!(
        warns[1].contains(
            "spec.egress[1].to[1].domainNames: domain names are not resolved by policyc; this peer matches nothing"
        ),
        "{warns:?}"
    );
}

#[test]
fn baseline_cluster_network_policy() {
    let (snap, diags) = load(
        "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: bl}\n\
         spec:\n  tier: Baseline\n  priority: 0\n  subject: {pods: {podSelector: {}}}\n\
         \x20 egress: [{action: Deny, to: [{networks: [0.0.0.0/0]}]}]\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    let p = only_policy(&snap);
    assert_eq!((p.tier, p.priority, p.generation), (Tier::Baseline, 0, None));
    assert_eq!(
        p.subject,
        AdminSubject::Pods {
            namespace_selector: LabelSelector::default(),
            pod_selector: LabelSelector::default(),
        }
    );
    assert!(p.ingress.is_empty());
    assert_eq!(
        p.egress,
        vec![rule(
            None,
            AdminAction::Deny,
            vec![AdminPeer::Networks(vec![cidr("0.0.0.0/0")])],
            vec![]
        )]
    );
}

const ANP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: tenants, generation: 7}
spec:
  priority: 50
  subject:
    pods:
      podSelector: {matchLabels: {tier: backend}}
  ingress:
  - name: allow-frontends
    action: Allow
    from:
    - pods:
        namespaceSelector: {matchLabels: {tenant: a}}
        podSelector: {matchLabels: {tier: frontend}}
    ports:
    - portNumber: {port: 8080}
    - portNumber: {protocol: UDP, port: 53}
    - portRange: {protocol: SCTP, start: 9000, end: 9100}
    - portRange: {start: 30000, end: 30100}
  - action: Pass
    from:
    - namespaces: {matchLabels: {tenant: a}}
  egress:
  - name: dns
    action: Allow
    to:
    - pods:
        namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
        podSelector: {matchLabels: {k8s-app: kube-dns}}
    ports:
    - namedPort: dns
  - action: Deny
    to:
    - networks: [169.254.169.254/32]
    - nodes: {}
"#;

#[test]
fn admin_network_policy() {
    let (snap, diags) = load(ANP);
    assert!(diags.is_empty(), "{diags:?}");
    let want = AdminPolicy {
        kind: AdminKind::AdminNetworkPolicy,
        name: "tenants".into(),
        generation: Some(7),
        tier: Tier::Admin,
        priority: 50,
        subject: AdminSubject::Pods {
            namespace_selector: LabelSelector::default(),
            pod_selector: sel(&[("tier", "backend")]),
        },
        ingress: vec![
            rule(
                Some("allow-frontends"),
                AdminAction::Accept,
                vec![AdminPeer::Pods {
                    namespace_selector: sel(&[("tenant", "a")]),
                    pod_selector: sel(&[("tier", "frontend")]),
                }],
                vec![
                    port(Protocol::Tcp, 8080, 8080),
                    port(Protocol::Udp, 53, 53),
                    port(Protocol::Sctp, 9000, 9100),
                    port(Protocol::Tcp, 30000, 30100),
                ],
            ),
            rule(
                None,
                AdminAction::Pass,
                vec![AdminPeer::Namespaces(sel(&[("tenant", "a")]))],
                vec![],
            ),
        ],
        egress: vec![
            rule(
                Some("dns"),
                AdminAction::Accept,
                vec![AdminPeer::Pods {
                    namespace_selector: sel(&[("kubernetes.io/metadata.name", "kube-system")]),
                    pod_selector: sel(&[("k8s-app", "kube-dns")]),
                }],
                named("dns"),
            ),
            rule(
                None,
                AdminAction::Deny,
                vec![
                    AdminPeer::Networks(vec![cidr("169.254.169.254/32")]),
                    AdminPeer::Nodes(LabelSelector::default()),
                ],
                vec![],
            ),
        ],
    };
    assert_eq!(only_policy(&snap), &want);
}

const BANP: &str = r#"
apiVersion: policy.networking.k8s.io/v1alpha1
kind: BaselineAdminNetworkPolicy
metadata: {name: default}
spec:
  subject:
    namespaces: {matchLabels: {isolated: "true"}}
  ingress:
  - name: default-deny
    action: Deny
    from:
    - namespaces: {}
  egress:
  - action: Allow
    to:
    - namespaces: {matchLabels: {isolated: "true"}}
    ports:
    - portNumber: {protocol: TCP, port: 443}
"#;

#[test]
fn baseline_admin_network_policy() {
    let (snap, diags) = load(BANP);
    assert!(diags.is_empty(), "{diags:?}");
    let want = AdminPolicy {
        kind: AdminKind::BaselineAdminNetworkPolicy,
        name: "default".into(),
        generation: None,
        tier: Tier::Baseline,
        priority: 1000,
        subject: AdminSubject::Namespaces(sel(&[("isolated", "true")])),
        ingress: vec![rule(
            Some("default-deny"),
            AdminAction::Deny,
            vec![AdminPeer::Namespaces(LabelSelector::default())],
            vec![],
        )],
        egress: vec![rule(
            None,
            AdminAction::Accept,
            vec![AdminPeer::Namespaces(sel(&[("isolated", "true")]))],
            vec![port(Protocol::Tcp, 443, 443)],
        )],
    };
    assert_eq!(only_policy(&snap), &want);
    assert_eq!(want.id().to_string(), "banp/default");
}

#[test]
fn all_kinds_together_with_network_policies() {
    let (snap, diags) = load(&format!(
        "{CNP}---{ANP}---{BANP}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np}}\nspec: {{}}\n"
    ));
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert_eq!(snap.admin_policies.len(), 3);
    assert_eq!(snap.policies.len(), 1);
    let order: Vec<String> = {
        let mut ps: Vec<&AdminPolicy> = snap.admin_policies.values().collect();
        ps.sort_by_key(|p| (p.tier, p.order_key()));
        ps.iter().map(|p| p.id().to_string()).collect()
    };
    assert_eq!(order, ["cnp/cluster-guard", "anp/tenants", "banp/default"]);
}

const CNP_HEAD: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha2\nkind: ClusterNetworkPolicy\nmetadata: {name: bad}\nspec:\n";
const ANP_HEAD: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: AdminNetworkPolicy\nmetadata: {name: bad}\nspec:\n";
const BANP_HEAD: &str =
    "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {name: default}\nspec:\n";

const CNP_BASE: &str = "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n";
const ANP_BASE: &str = "  priority: 1\n  subject: {namespaces: {}}\n";
const BANP_BASE: &str = "  subject: {namespaces: {}}\n";

/// Loads one object that must be rejected; returns its single error, rendered.
fn rejected(text: &str) -> String {
    let (snap, diags) = load(text);
    assert!(snap.admin_policies.is_empty(), "should be rejected:\n{text}");
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:?}");
    errs[0].to_string()
}

fn check(head: &str, object: &str, cases: &[(String, &str)]) {
    for (spec, want) in cases {
        let got = rejected(&format!("{head}{spec}"));
        assert!(got.contains(object), "want {object:?} in {got:?}");
        assert!(got.contains(want), "want {want:?} in {got:?}\nspec:\n{spec}");
        assert!(got.ends_with("; object ignored"), "{got}");
    }
}

fn rules(key: &str, n: usize, rule: &str) -> String {
    format!("  {key}:\n{}", format!("  - {rule}\n").repeat(n))
}

#[test]
fn cluster_network_policy_errors() {
    let b = CNP_BASE;
    let peers26 = format!("[{}]", vec!["{namespaces: {}}"; 26].join(", "));
    let cases = [
        (
            "  tier: Admin\n  subject: {namespaces: {}}\n".to_string(),
            "spec.priority: required",
        ),
        (
            "  tier: Admin\n  priority: 1001\n  subject: {namespaces: {}}\n".into(),
            "spec.priority: priority 1001 is out of range 0-1000",
        ),
        (
            "  tier: Admin\n  priority: -1\n  subject: {namespaces: {}}\n".into(),
            "spec.priority: priority -1 is out of range",
        ),
        (
            "  tier: Admin\n  priority: high\n  subject: {namespaces: {}}\n".into(),
            "spec.priority: must be an integer",
        ),
        (
            "  priority: 1\n  subject: {namespaces: {}}\n".into(),
            "spec.tier: required",
        ),
        (
            "  tier: NetworkPolicy\n  priority: 1\n  subject: {namespaces: {}}\n".into(),
            "spec.tier: invalid tier \"NetworkPolicy\" (expected Admin or Baseline)",
        ),
        ("  tier: Admin\n  priority: 1\n".into(), "spec.subject: required"),
        (
            "  tier: Admin\n  priority: 1\n  subject: {}\n".into(),
            "spec.subject: exactly one of namespaces, pods must be set",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}, pods: {podSelector: {}}}\n".into(),
            "spec.subject: exactly one of namespaces, pods must be set, found namespaces and pods",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {namespaceSelector: {}}\n".into(),
            "spec.subject.namespaceSelector: unknown field",
        ),
        (
            "  tier: Admin\n  priority: 1\n  subject: {pods: {namespaceSelector: {}}}\n".into(),
            "spec.subject.pods.podSelector: required",
        ),
        (format!("{b}  egres: []\n"), "spec.egres: unknown field"),
        (
            format!("{b}  ingress:\n  - {{action: Allow, from: [{{namespaces: {{}}}}]}}\n"),
            "spec.ingress[0].action: invalid action \"Allow\" for ClusterNetworkPolicy (expected Accept, Deny or Pass); v1alpha2 spells Allow as Accept",
        ),
        (
            format!("{b}  ingress:\n  - {{from: [{{namespaces: {{}}}}]}}\n"),
            "spec.ingress[0].action: required",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: []}}\n"),
            "spec.ingress[0].from: required: list at least one peer",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny}}\n"),
            "spec.egress[0].to: required: list at least one peer",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: {peers26}}}\n"),
            "spec.egress[0].to: at most 25 peers are allowed, found 26",
        ),
        (
            format!("{b}{}", rules("ingress", 26, "{action: Deny, from: [{namespaces: {}}]}")),
            "spec.ingress: at most 25 rules are allowed, found 26",
        ),
        (
            format!("{b}  ingress:\n  - {{name: {}, action: Deny, from: [{{namespaces: {{}}}}]}}\n", "x".repeat(101)),
            "spec.ingress[0].name: must be at most 100 characters long",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{networks: [10.0.0.0/8]}}]}}\n"),
            "spec.ingress[0].from[0].networks: networks is only allowed in egress peers",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{nodes: {{}}}}]}}\n"),
            "spec.ingress[0].from[0].nodes: nodes is only allowed in egress peers",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Accept, from: [{{domainNames: [example.com]}}]}}\n"),
            "spec.ingress[0].from[0].domainNames: domainNames is only allowed in egress peers",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{namespaces: {{}}, pods: {{podSelector: {{}}}}}}]}}\n"),
            "spec.egress[0].to[0]: exactly one of namespaces, pods, nodes, networks, domainNames must be set, found namespaces and pods",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{namespaces: {{}}, cidrs: [10.0.0.0/8]}}]}}\n"),
            "spec.egress[0].to[0].cidrs: unknown field",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{namespaces: {{sameLabels: [tenant]}}}}]}}\n"),
            "spec.egress[0].to[0].namespaces.sameLabels: unknown field",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: []}}]}}\n"),
            "spec.egress[0].to[0].networks: must list at least one entry",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: [10.0.0.0/33]}}]}}\n"),
            "spec.egress[0].to[0].networks[0]: invalid CIDR",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: [10.0.0.0/8, 'nope']}}]}}\n"),
            "spec.egress[0].to[0].networks[1]: invalid CIDR \"nope\"",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: ['::ffff:10.0.0.0/104']}}]}}\n"),
            "spec.egress[0].to[0].networks[0]: invalid CIDR \"::ffff:10.0.0.0/104\": IPv4 addresses embedded",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{domainNames: ['exa mple.com']}}]}}\n"),
            "spec.egress[0].to[0].domainNames[0]: invalid domain name",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: []}}\n"),
            "spec.egress[0].protocols: must list at least one entry",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 0}}}}}}]}}\n"),
            "spec.egress[0].protocols[0].tcp.destinationPort.number: port 0 is out of range 1-65535",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{udp: {{destinationPort: {{number: 65536}}}}}}]}}\n"),
            "spec.egress[0].protocols[0].udp.destinationPort.number: port 65536 is out of range 1-65535",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 90, end: 90}}}}}}}}]}}\n"),
            "spec.egress[0].protocols[0].tcp.destinationPort.range.end: end 90 must be greater than start 90",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{range: {{start: 90, end: 80}}}}}}}}]}}\n"),
            "range.end: end 80 must be greater than start 90",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80, range: {{start: 1, end: 2}}}}}}}}]}}\n"),
            "spec.egress[0].protocols[0].tcp.destinationPort: exactly one of number, range must be set",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{}}}}]}}\n"),
            "spec.egress[0].protocols[0].tcp.destinationPort: required",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}, udp: {{destinationPort: {{number: 80}}}}}}]}}\n"),
            "spec.egress[0].protocols[0]: exactly one of tcp, udp, sctp, destinationNamedPort must be set",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{icmp: {{}}}}]}}\n"),
            "spec.egress[0].protocols[0].icmp: unknown field",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}], protocols: [{{destinationNamedPort: HTTP}}]}}\n"),
            "spec.egress[0].protocols[0].destinationNamedPort: invalid port name \"HTTP\"",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}, {{networks: [10.0.0.0/8]}}], protocols: [{{tcp: {{destinationPort: {{number: 80}}}}}}, {{destinationNamedPort: http}}]}}\n"),
            "spec.egress[0].protocols[1].destinationNamedPort: a named port cannot be used in a rule with the peer spec.egress[0].to[1].networks",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{nodes: {{}}}}], protocols: [{{destinationNamedPort: http}}]}}\n"),
            "spec.egress[0].protocols[0].destinationNamedPort: a named port cannot be used in a rule with the peer spec.egress[0].to[0].nodes",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{domainNames: [example.com]}}], protocols: [{{destinationNamedPort: https}}]}}\n"),
            "a named port cannot be used in a rule with the peer spec.egress[0].to[0].domainNames",
        ),
    ];
    check(CNP_HEAD, "ClusterNetworkPolicy bad", &cases);
}

#[test]
fn admin_network_policy_errors() {
    let b = ANP_BASE;
    let cases = [
        ("  subject: {namespaces: {}}\n".to_string(), "spec.priority: required"),
        (
            "  priority: 2000\n  subject: {namespaces: {}}\n".into(),
            "spec.priority: priority 2000 is out of range 0-1000",
        ),
        (
            format!("  tier: Admin\n{b}"),
            "spec.tier: unknown field \"tier\"",
        ),
        (
            "  priority: 1\n  subject: {namespaceSelector: {}}\n".into(),
            "spec.subject.namespaceSelector: unknown field",
        ),
        (
            "  priority: 1\n  subject: {}\n".into(),
            "spec.subject: exactly one of namespaces, pods must be set",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Accept, from: [{{namespaces: {{}}}}]}}\n"),
            "spec.ingress[0].action: invalid action \"Accept\" for AdminNetworkPolicy (expected Allow, Deny or Pass); v1alpha1 spells Accept as Allow",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Allow, from: []}}\n"),
            "spec.ingress[0].from: required",
        ),
        (
            format!("{b}{}", rules("egress", 101, "{action: Deny, to: [{namespaces: {}}]}")),
            "spec.egress: at most 100 rules are allowed, found 101",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{networks: [10.0.0.0/8]}}]}}\n"),
            "spec.ingress[0].from[0].networks: networks is only allowed in egress peers",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 0}}}}]}}\n"),
            "spec.ingress[0].ports[0].portNumber.port: port 0 is out of range 1-65535",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 70000, protocol: UDP}}}}]}}\n"),
            "spec.ingress[0].ports[0].portNumber.port: port 70000 is out of range",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 80, protocol: ICMP}}}}]}}\n"),
            "spec.ingress[0].ports[0].portNumber.protocol: unsupported protocol \"ICMP\"",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portRange: {{start: 100}}}}]}}\n"),
            "spec.ingress[0].ports[0].portRange.end: required",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{portNumber: {{port: 80}}, namedPort: http}}]}}\n"),
            "spec.ingress[0].ports[0]: exactly one of portNumber, namedPort, portRange must be set",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: [{{port: 80}}]}}\n"),
            "spec.ingress[0].ports[0].port: unknown field",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], ports: {{allPorts: true}}}}\n"),
            "spec.ingress[0].ports: must be a list",
        ),
        (
            format!("{b}  ingress:\n  - {{action: Deny, from: [{{namespaces: {{}}}}], protocols: [{{tcp: {{}}}}]}}\n"),
            "spec.ingress[0].protocols: unknown field",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{nodes: {{}}}}], ports: [{{namedPort: http}}]}}\n"),
            "spec.egress[0].ports[0].namedPort: a named port cannot be used in a rule with the peer spec.egress[0].to[0].nodes",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: [10.0.0.0/8]}}], ports: [{{namedPort: http}}]}}\n"),
            "spec.egress[0].ports[0].namedPort: a named port cannot be used",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{namespaces: {{notSameLabels: [tenant]}}}}]}}\n"),
            "spec.egress[0].to[0].namespaces.notSameLabels: unknown field",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{pods: {{namespaces: {{sameLabels: [tenant]}}, pods: {{}}}}}}]}}\n"),
            "spec.egress[0].to[0].pods.namespaces: unknown field",
        ),
    ];
    check(ANP_HEAD, "AdminNetworkPolicy bad", &cases);
}

#[test]
fn baseline_admin_network_policy_errors() {
    let b = BANP_BASE;
    let cases = [
        (format!("  priority: 1\n{b}"), "spec.priority: unknown field"),
        (
            format!("{b}  ingress:\n  - {{action: Pass, from: [{{namespaces: {{}}}}]}}\n"),
            "spec.ingress[0].action: invalid action \"Pass\" for BaselineAdminNetworkPolicy (expected Allow or Deny); the baseline is the last tier",
        ),
        (
            format!("{b}  egress:\n  - {{action: Accept, to: [{{namespaces: {{}}}}]}}\n"),
            "spec.egress[0].action: invalid action \"Accept\" for BaselineAdminNetworkPolicy (expected Allow or Deny)",
        ),
        (
            format!("{b}  egress:\n  - {{action: Deny, to: [{{networks: [10.0.0.0/8]}}], ports: [{{namedPort: dns}}]}}\n"),
            "spec.egress[0].ports[0].namedPort: a named port cannot be used",
        ),
    ];
    check(BANP_HEAD, "BaselineAdminNetworkPolicy default", &cases);

    let got = rejected(&format!(
        "apiVersion: policy.networking.k8s.io/v1alpha1\nkind: BaselineAdminNetworkPolicy\nmetadata: {{name: mine}}\nspec:\n{b}"
    ));
    assert!(
        got.contains(
            "BaselineAdminNetworkPolicy mine: metadata.name: a BaselineAdminNetworkPolicy must be named \"default\""
        ),
        "{got}"
    );
}

#[test]
fn wrong_api_versions() {
    let got = rejected(&CNP.replace("v1alpha2", "v1alpha1"));
    assert!(got.contains("apiVersion: unsupported apiVersion"), "{got}");
    let got = rejected(&ANP.replace("v1alpha1", "v1alpha2"));
    assert!(got.contains("apiVersion: unsupported apiVersion"), "{got}");
}

#[test]
fn one_bad_admin_policy_does_not_stop_others() {
    let text = format!(
        "{CNP}---\n{CNP_HEAD}{CNP_BASE}  ingress: [{{action: Allow, from: [{{namespaces: {{}}}}]}}]\n---\n{ANP}---\n\
         {ANP_HEAD}  priority: 5000\n  subject: {{namespaces: {{}}}}\n---\n{BANP}"
    );
    let (snap, diags) = load(&text);
    let errs = errors(&diags);
    assert_eq!(errs.len(), 2, "{diags:?}");
    assert!(errs[0]
        .to_string()
        .contains("ClusterNetworkPolicy bad: spec.ingress[0].action"));
    assert!(errs[1].to_string().contains("AdminNetworkPolicy bad: spec.priority"));
    let ids: Vec<String> = snap.admin_policies.keys().map(|k| k.to_string()).collect();
    assert_eq!(ids, ["cnp/cluster-guard", "anp/tenants", "banp/default"]);

    // A List works the same way.
    let (snap, diags) = load(
        "apiVersion: v1\nkind: List\nitems:\n\
         - {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: a}, spec: {tier: Admin, priority: 1, subject: {}}}\n\
         - {apiVersion: policy.networking.k8s.io/v1alpha2, kind: ClusterNetworkPolicy, metadata: {name: b}, spec: {tier: Admin, priority: 1, subject: {namespaces: {}}}}\n",
    );
    assert_eq!(errors(&diags).len(), 1);
    assert!(snap
        .admin_policies
        .contains_key(&AdminRef::new(AdminKind::ClusterNetworkPolicy, "b")));
}

#[test]
fn unreadable_peers_fail_closed() {
    let (snap, diags) = load(&format!(
        "{CNP_HEAD}{CNP_BASE}  egress:\n\
         \x20 - name: accept-with-future-peer\n    action: Accept\n    to:\n    - namespaces: {{}}\n    - serviceAccounts: {{name: x}}\n    protocols: [{{tcp: {{destinationPort: {{number: 443}}}}}}]\n\
         \x20 - name: deny-with-empty-peer\n    action: Deny\n    to:\n    - {{}}\n    - namespaces: {{}}\n    protocols: [{{tcp: {{destinationPort: {{number: 443}}}}}}]\n\
         \x20 - action: Pass\n    to:\n    - networks: null\n      externalNetworkSet: corp\n\
         \x20 ingress:\n\
         \x20 - action: Accept\n    from:\n    - {{}}\n"
    ));
    assert!(errors(&diags).is_empty(), "{diags:?}");
    let p = only_policy(&snap);
    assert_eq!(
        p.egress,
        vec![
            rule(
                Some("accept-with-future-peer"),
                AdminAction::Accept,
                vec![AdminPeer::Namespaces(LabelSelector::default()), AdminPeer::Nothing],
                vec![port(Protocol::Tcp, 443, 443)],
            ),
            rule(
                Some("deny-with-empty-peer"),
                AdminAction::Deny,
                vec![AdminPeer::Everything],
                vec![]
            ),
            rule(None, AdminAction::Deny, vec![AdminPeer::Everything], vec![]),
        ]
    );
    assert_eq!(
        p.ingress,
        vec![rule(None, AdminAction::Accept, vec![AdminPeer::Nothing], vec![])]
    );
    let warns = warnings(&diags);
    assert_eq!(warns.len(), 4, "{warns:?}");
    assert!(
        warns[0].contains("spec.ingress[0].from[0]: no field is set: not a peer policyc can read (expected one of namespaces, pods); failing closed: this peer matches nothing"),
        "{warns:?}"
    );
    assert!(
        warns[1].contains("spec.egress[0].to[1]: only unknown fields (\"serviceAccounts\")")
            && warns[1].ends_with("failing closed: this peer matches nothing"),
        "{warns:?}"
    );
    assert!(
        warns[2].contains("spec.egress[1].to[0]: no field is set")
            && warns[2].ends_with("failing closed: this Deny rule denies all traffic instead"),
        "{warns:?}"
    );
    assert!(
        warns[3].contains("spec.egress[2].to[0]: only unknown fields (\"externalNetworkSet\")")
            && warns[3].ends_with("failing closed: this Pass rule denies all traffic instead"),
        "{warns:?}"
    );

    // The older v1alpha1 peer shape (`namespacedPods`) is such a peer.
    let (snap, diags) = load(&format!(
        "{ANP_HEAD}{ANP_BASE}  ingress:\n  - action: Pass\n    from:\n    - namespacedPods: {{namespaces: {{}}, pods: {{}}}}\n"
    ));
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert_eq!(
        only_policy(&snap).ingress,
        vec![rule(None, AdminAction::Deny, vec![AdminPeer::Everything], vec![])]
    );
    assert_eq!(warnings(&diags).len(), 1);

    // domainNames is not a v1alpha1 peer: in a BaselineAdminNetworkPolicy Allow rule it matches nothing.
    let (snap, diags) = load(&format!(
        "{BANP_HEAD}{BANP_BASE}  egress:\n  - action: Allow\n    to:\n    - domainNames: [example.com]\n"
    ));
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert_eq!(
        only_policy(&snap).egress,
        vec![rule(None, AdminAction::Accept, vec![AdminPeer::Nothing], vec![])]
    );
    assert!(warnings(&diags)[0].contains("only unknown fields (\"domainNames\")"));
}

#[test]
fn named_ports_expand_to_every_protocol() {
    let (snap, diags) = load(&format!(
        "{CNP_HEAD}{CNP_BASE}  ingress:\n  - action: Accept\n    from: [{{namespaces: {{}}}}]\n    protocols:\n    - destinationNamedPort: http\n    - tcp: {{destinationPort: {{number: 22}}}}\n    - destinationNamedPort: dns\n"
    ));
    assert!(diags.is_empty(), "{diags:?}");
    let mut want = named("http");
    want.push(port(Protocol::Tcp, 22, 22));
    want.extend(named("dns"));
    assert_eq!(only_policy(&snap).ingress[0].ports, want);
    let shown: Vec<String> = want.iter().map(|p| p.to_string()).collect();
    assert_eq!(shown[..3], ["http/TCP", "http/UDP", "http/SCTP"]);

    let (snap, diags) = load(&format!(
        "{ANP_HEAD}{ANP_BASE}  egress:\n  - action: Allow\n    to: [{{pods: {{podSelector: {{}}}}}}]\n    ports: [{{namedPort: grpc}}]\n"
    ));
    assert!(diags.is_empty(), "{diags:?}");
    assert_eq!(only_policy(&snap).egress[0].ports, named("grpc"));
}

/// v1alpha1 stores inverted port ranges (its CRD has no start < end rule): they match no port,
/// and a rule whose every entry is one matches nothing, instead of the policy being dropped.
#[test]
fn inverted_v1alpha1_ranges_match_no_port() {
    let (snap, diags) = load(
        "apiVersion: policy.networking.k8s.io/v1alpha1
kind: AdminNetworkPolicy
metadata: {name: odd}
spec:
  priority: 5
  subject: {namespaces: {}}
  ingress:
  - {action: Deny, from: [{namespaces: {}}], ports: [{portRange: {start: 100, end: 10}}]}
  - {action: Deny, from: [{namespaces: {}}], ports: [{portRange: {start: 100, end: 10}}, {portNumber: {port: 80}}]}
  - {action: Deny, from: [{namespaces: {}}], ports: [{portRange: {start: 90, end: 90}}]}
",
    );
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert!(
        warnings(&diags).iter().any(|w| w.contains("end 10 is below start 100")),
        "{diags:?}"
    );
    let p = only_policy(&snap);
    assert!(p.ingress[0].peers.is_empty(), "matches nothing: {:?}", p.ingress[0]);
    assert_eq!(p.ingress[1].ports, vec![port(Protocol::Tcp, 80, 80)]);
    assert!(!p.ingress[1].peers.is_empty());
    assert_eq!(p.ingress[2].ports, vec![port(Protocol::Tcp, 90, 90)]);
}

#[test]
fn node_labels_and_addresses() {
    let (snap, diags) = load(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n1, labels: {node-role.kubernetes.io/control-plane: ''}}\n\
         status:\n  addresses:\n\
         \x20 - {type: InternalIP, address: 10.0.0.5}\n\
         \x20 - {type: InternalIP, address: 'fd00::5'}\n\
         \x20 - {type: ExternalIP, address: 203.0.113.5}\n\
         \x20 - {type: Hostname, address: n1}\n\
         \x20 - {type: InternalDNS, address: n1.cluster.internal}\n",
    );
    assert!(diags.is_empty(), "{diags:?}");
    let n = &snap.nodes["n1"];
    let ips = |v: &[&str]| v.iter().map(|s| s.parse::<IpAddr>().unwrap()).collect::<Vec<_>>();
    assert_eq!(n.internal_ips, ips(&["10.0.0.5", "fd00::5"]));
    assert_eq!(n.addresses, ips(&["10.0.0.5", "fd00::5", "203.0.113.5"]));
    assert_eq!(
        n.labels
            .get("node-role.kubernetes.io/control-plane")
            .map(String::as_str),
        Some("")
    );

    let got = rejected_node("  - {type: InternalIP, address: not-an-ip}\n");
    assert!(
        got.contains("Node n2: status.addresses[0].address: invalid IP address"),
        "{got}"
    );
}

fn rejected_node(addresses: &str) -> String {
    let (snap, diags) = load(&format!(
        "apiVersion: v1\nkind: Node\nmetadata: {{name: n2}}\nstatus:\n  addresses:\n{addresses}"
    ));
    assert!(snap.nodes.is_empty());
    let errs = errors(&diags);
    assert_eq!(errs.len(), 1, "{diags:?}");
    errs[0].to_string()
}

#[test]
fn domain_names_outside_accept_rules() {
    let (snap, diags) = load(&format!(
        "{CNP_HEAD}{CNP_BASE}  egress:\n  - action: Deny\n    to: [{{domainNames: [evil.example.com]}}, {{networks: [203.0.113.0/24]}}]\n"
    ));
    assert!(errors(&diags).is_empty(), "{diags:?}");
    assert_eq!(
        only_policy(&snap).egress,
        vec![rule(
            None,
            AdminAction::Deny,
            vec![AdminPeer::Nothing, AdminPeer::Networks(vec![cidr("203.0.113.0/24")])],
            vec![]
        )]
    );
    let warns = warnings(&diags);
    assert_eq!(warns.len(), 1, "{warns:?}");
    assert!(
        warns[0].contains("spec.egress[0].to[0].domainNames: domain names are not resolved by policyc; this peer matches nothing (the API supports domainNames in Accept rules only, not in Deny rules)"),
        "{warns:?}"
    );
}
