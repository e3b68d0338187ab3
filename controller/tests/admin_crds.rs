//! The admin policy CRDs (`crds/yaml/policy.networking.k8s.io.yaml`) in a real kube-apiserver:
//! they install and become established, objects of all three kinds are stored as written (with
//! upstream's defaults), and what upstream's schema rejects is rejected, each case one change away
//! from an object the apiserver accepted.

mod support;

use serde_json::{json, Value};
use support::{repo, ApiServer};

const CRDS: [&str; 3] = [
    "crd/adminnetworkpolicies.policy.networking.k8s.io",
    "crd/baselineadminnetworkpolicies.policy.networking.k8s.io",
    "crd/clusternetworkpolicies.policy.networking.k8s.io",
];

/// The objects shaped as upstream's conformance policies, by file name.
fn sample(name: &str) -> Value {
    let path = repo().join("crds/testdata/admin").join(name);
    serde_yaml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

fn samples() -> Vec<Value> {
    let mut files: Vec<_> = std::fs::read_dir(repo().join("crds/testdata/admin"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    files.iter().map(|f| sample(f)).collect()
}

/// `base` with the value at `pointer` (JSON pointer, parent must exist) replaced or added.
fn with(base: &Value, pointer: &str, value: Value) -> Value {
    let mut v = base.clone();
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    match v.pointer_mut(parent).unwrap_or_else(|| panic!("no {parent}")) {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(list) => list[key.parse::<usize>().unwrap()] = value,
        other => panic!("{parent} is {other}"),
    }
    v
}

fn named(base: &Value, name: &str) -> Value {
    with(base, "/metadata/name", json!(name))
}

fn get(api: &ApiServer, kind: &str, name: &str) -> Value {
    serde_json::from_str(&api.kubectl(&["get", kind, name, "-o", "json"], None)).unwrap()
}

#[test]
fn admin_crds_store_upstream_objects_and_reject_what_upstream_rejects() {
    let Some(api) = ApiServer::start("admin-crds") else {
        return;
    };
    let crds = std::fs::read_to_string(repo().join("crds/yaml/policy.networking.k8s.io.yaml")).unwrap();
    api.kubectl(&["apply", "--server-side", "-f", "-"], Some(&crds));
    let mut wait = vec!["wait", "--for", "condition=established", "--timeout=60s"];
    wait.extend(CRDS);
    api.kubectl(&wait, None);

    // Every sample is stored as written. Status is the status subresource's: a create ignores it.
    for object in samples() {
        let kind = object["kind"].as_str().unwrap();
        let name = object["metadata"]["name"].as_str().unwrap();
        api.kubectl(&["create", "-f", "-"], Some(&object.to_string()));
        let stored = get(&api, kind, name);
        assert_eq!(stored["apiVersion"], object["apiVersion"], "{kind} {name}");
        assert_eq!(stored["spec"], object["spec"], "{kind} {name}: stored spec differs");
        assert!(stored.get("status").is_none(), "{kind} {name}: {}", stored["status"]);
    }

    // Short names and printer columns, as upstream declares them.
    let table = |short: &str| -> Vec<Vec<String>> {
        let out = api.kubectl(&["get", short], None);
        out.lines()
            .map(|l| l.split_whitespace().map(str::to_string).collect())
            .collect()
    };
    let anp = table("anp");
    assert_eq!(anp[0], ["NAME", "PRIORITY", "AGE"]);
    assert_eq!(anp[1][..2], ["gress-rules", "15"]);
    let banp = table("banp");
    assert_eq!(banp[0], ["NAME", "AGE"]);
    assert_eq!(banp[1][0], "default");
    let cnp = table("cnp");
    assert_eq!(cnp[0], ["NAME", "TIER", "PRIORITY", "AGE"]);
    assert_eq!(cnp[1][..3], ["node-and-cidr-as-peers-example", "Baseline", "1000"]);
    assert_eq!(cnp[2][..3], ["port-range-rules", "Admin", "9"]);

    // Upstream's default: a port number's protocol is TCP.
    let anp = sample("anp-gress-rules.yaml");
    let no_protocol = with(
        &named(&anp, "default-protocol"),
        "/spec/ingress/1/ports/0/portNumber",
        json!({"port": 8080}),
    );
    api.kubectl(&["create", "-f", "-"], Some(&no_protocol.to_string()));
    let stored = get(&api, "adminnetworkpolicies", "default-protocol");
    assert_eq!(
        stored["spec"]["ingress"][1]["ports"][0]["portNumber"],
        json!({"port": 8080, "protocol": "TCP"})
    );

    // What upstream rejects: each case is one change to a stored sample, and must fail with the
    // schema's own message (not, say, a name clash).
    let banp = sample("banp-default.yaml");
    let cnp = sample("cnp-admin-port-ranges.yaml");
    let cnp_peers = sample("cnp-baseline-egress-peers.yaml");
    let anp_peers = sample("anp-egress-peers.yaml");
    let cnp_rule = cnp["spec"]["ingress"][1].clone();
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "priority above 1000",
            with(&anp, "/spec/priority", json!(1001)),
            "spec.priority: Invalid value: 1001: spec.priority in body should be less than or equal to 1000",
        ),
        (
            "negative priority",
            with(&cnp, "/spec/priority", json!(-1)),
            "spec.priority in body should be greater than or equal to 0",
        ),
        (
            "subject with both namespaces and pods",
            with(
                &anp,
                "/spec/subject/pods",
                json!({"namespaceSelector": {}, "podSelector": {}}),
            ),
            "spec.subject: Too many: 2: must have at most 1 item",
        ),
        (
            "subject with no field",
            with(&cnp, "/spec/subject", json!({})),
            "spec.subject: Invalid value: 0: spec.subject in body should have at least 1 properties",
        ),
        (
            "ingress peer with no field",
            with(&anp, "/spec/ingress/0/from/0", json!({})),
            "spec.ingress[0].from[0]: Invalid value: 0: spec.ingress[0].from[0] in body should have at least 1 properties",
        ),
        (
            "egress peer with two fields",
            with(&cnp_peers, "/spec/egress/0/to/0/networks", json!(["10.0.0.0/8"])),
            "spec.egress[0].to[0]: Too many: 2: must have at most 1 item",
        ),
        (
            "rule without peers",
            with(&banp, "/spec/ingress/0/from", json!([])),
            "spec.ingress[0].from: Invalid value: 0: spec.ingress[0].from in body should have at least 1 items",
        ),
        (
            "port with two fields",
            with(&anp, "/spec/ingress/1/ports/0/namedPort", json!("http")),
            "spec.ingress[1].ports[0]: Too many: 2: must have at most 1 item",
        ),
        (
            "port 0",
            with(&anp, "/spec/ingress/1/ports/0/portNumber/port", json!(0)),
            "should be greater than or equal to 1",
        ),
        (
            "port range ending where it starts",
            with(
                &cnp,
                "/spec/egress/0/protocols/0/tcp/destinationPort/range",
                json!({"start": 80, "end": 80}),
            ),
            "spec.egress[0].protocols[0].tcp.destinationPort.range: Invalid value: \"object\": Start port must be less than End port",
        ),
        (
            "port range ending before it starts",
            with(
                &cnp,
                "/spec/egress/1/protocols/1/udp/destinationPort/range",
                json!({"start": 5353, "end": 53}),
            ),
            "Start port must be less than End port",
        ),
        (
            "port number and range in one destination port",
            with(&cnp, "/spec/egress/1/protocols/0/sctp/destinationPort/range", json!({"start": 1, "end": 2})),
            "spec.egress[1].protocols[0].sctp.destinationPort: Too many: 2: must have at most 1 item",
        ),
        (
            "baseline policy not named default",
            named(&banp, "other"),
            "Only one baseline admin network policy with metadata.name=\"default\" can be created in the cluster",
        ),
        (
            "Pass in a baseline policy",
            with(&banp, "/spec/egress/0/action", json!("Pass")),
            "spec.egress[0].action: Unsupported value: \"Pass\": supported values: \"Allow\", \"Deny\"",
        ),
        (
            "Accept in an AdminNetworkPolicy",
            with(&anp, "/spec/ingress/0/action", json!("Accept")),
            "spec.ingress[0].action: Unsupported value: \"Accept\": supported values: \"Allow\", \"Deny\", \"Pass\"",
        ),
        (
            "tier Foo",
            with(&cnp, "/spec/tier", json!("Foo")),
            "spec.tier: Unsupported value: \"Foo\": supported values: \"Admin\", \"Baseline\"",
        ),
        (
            "26 ingress rules",
            with(&cnp, "/spec/ingress", Value::Array(vec![cnp_rule; 26])),
            "spec.ingress: Too many: 26: must have at most 25 items",
        ),
        (
            "an invalid CIDR",
            with(&anp_peers, "/spec/egress/2/to/2/networks/1", json!("10.0.0.0/33")),
            "spec.egress[2].to[2].networks[1]: Invalid value: \"string\": Invalid CIDR format provided",
        ),
        (
            "an address without prefix length",
            with(&cnp_peers, "/spec/egress/2/to/1/networks/0", json!("10.1.2.3")),
            "Invalid CIDR format provided",
        ),
        (
            "a named port towards networks",
            with(
                &cnp_peers,
                "/spec/egress/2/protocols",
                json!([{"destinationNamedPort": "web"}]),
            ),
            "networks/nodes/domainNames peer cannot be set with namedPorts",
        ),
        (
            "a named port towards nodes in a baseline policy",
            with(&banp, "/spec/egress/1/ports", json!([{"namedPort": "dns"}])),
            "networks/nodes peer cannot be set with namedPorts",
        ),
        (
            "a domain name with a wildcard inside",
            with(&cnp_peers, "/spec/egress/1/to/0/domainNames/1", json!("www.*.kubernetes.io")),
            "spec.egress[1].to[0].domainNames[1]: Invalid value: \"www.*.kubernetes.io\": spec.egress[1].to[0].domainNames[1] in body should match",
        ),
        (
            "a rule name of 101 characters",
            with(&anp, "/spec/egress/0/name", json!("x".repeat(101))),
            "spec.egress[0].name: Too long: may not be more than 100 bytes",
        ),
        (
            "a node peer in an ingress rule",
            with(&anp, "/spec/ingress/0/from/0", json!({"nodes": {}})),
            "unknown field \"spec.ingress[0].from[0].nodes\"",
        ),
    ];
    let mut failures = Vec::new();
    for (i, (what, object, want)) in cases.into_iter().enumerate() {
        // Unique names, so that only validation can refuse them (the baseline must stay "default").
        let object = if object["kind"] == "BaselineAdminNetworkPolicy" {
            object
        } else {
            named(&object, &format!("invalid-{i}"))
        };
        let (ok, out, err) = api.try_tool("kubectl", &["create", "-f", "-"], Some(&object.to_string()));
        if ok || !err.contains(want) {
            failures.push(format!("{what}: created={ok} {out}{err}  (wanted: {want})"));
        }
    }
    assert!(
        failures.is_empty(),
        "not rejected as upstream rejects:\n{}",
        failures.join("\n")
    );
}
