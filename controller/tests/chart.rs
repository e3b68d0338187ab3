//! The Helm chart as users install it: real helm (built from its Go module) against a real
//! kube-apiserver. Lint, template with several value sets, server-side dry-run, install, assert
//! what the API server stored (RBAC, DaemonSet, CRD established), check the agent's permissions
//! with `kubectl auth can-i`, uninstall and check what remains. The admin policy CRDs are rendered
//! only when asked for (`adminPolicies.installCRDs`) and outlive the release.

mod support;

use serde_json::Value;
use support::{repo, ApiServer};

fn chart() -> String {
    repo().join("charts/policyc").to_str().unwrap().to_string()
}

const ADMIN_CRDS: [&str; 3] = [
    "adminnetworkpolicies.policy.networking.k8s.io",
    "baselineadminnetworkpolicies.policy.networking.k8s.io",
    "clusternetworkpolicies.policy.networking.k8s.io",
];

/// The names of the CustomResourceDefinitions in rendered manifests, with their resource policy.
fn crds_of(manifests: &str) -> Vec<(String, Value)> {
    manifests
        .split("\n---")
        .filter_map(|doc| serde_yaml::from_str::<Value>(doc).ok())
        .filter(|v| v["kind"] == "CustomResourceDefinition")
        .map(|v| {
            let policy = v["metadata"]["annotations"]["helm.sh/resource-policy"].clone();
            (v["metadata"]["name"].as_str().unwrap().to_string(), policy)
        })
        .collect()
}

fn daemonset_of(manifests: &str) -> Value {
    for doc in manifests.split("\n---") {
        let v: Value = serde_yaml::from_str(doc).unwrap_or(Value::Null);
        if v["kind"] == "DaemonSet" {
            return v;
        }
    }
    panic!("no DaemonSet in\n{manifests}");
}

#[test]
fn chart_installs_with_least_privilege() {
    if !support::e2e_bin("helm").exists() {
        policyc_testhost::skip("e2e/bin/helm not built (bash e2e/apiserver/build.sh)");
        return;
    }
    let Some(api) = ApiServer::start("chart") else { return };
    let chart = chart();

    for set in ["adminPolicies.installCRDs=false", "adminPolicies.installCRDs=true"] {
        let lint = api.tool("helm", &["lint", &chart, "--strict", "--set", set], None);
        assert!(lint.contains("0 chart(s) failed"), "{set}: {lint}");
    }

    // Value sets: defaults, the iptables backend with a ServiceMonitor, and an invalid backend.
    let defaults = api.tool(
        "helm",
        &["template", "policyc", &chart, "-n", "kube-system", "--include-crds"],
        None,
    );
    let ds = daemonset_of(&defaults);
    let args: Vec<&str> = ds["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert!(
        args.contains(&"--backend=nftables") && args.contains(&"--fail-closed=true"),
        "{args:?}"
    );
    assert!(
        args.contains(&"--attachment=auto") && args.contains(&"--bridge=cni0"),
        "{args:?}"
    );
    // An uninstall removes the rulesets: the agent knows its Pod, and the status objects' owner.
    assert!(
        args.contains(&"--cleanup-on-uninstall") && args.contains(&"--status-owner=policyc"),
        "{args:?}"
    );
    let env = ds["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains(r#""name":"POD_NAME""#) && env.contains(r#""fieldPath":"metadata.name""#),
        "{env}"
    );
    assert!(env.contains(r#""name":"POD_NAMESPACE""#), "{env}");
    let names: Vec<String> = crds_of(&defaults).into_iter().map(|(name, _)| name).collect();
    assert_eq!(names, ["nodepolicystatuses.policyc.dev"], "the admin CRDs are opt-in");
    assert!(!defaults.contains("kind: ServiceMonitor"));

    // adminPolicies.installCRDs renders the three admin CRDs, kept when the release goes.
    let with_admin = api.tool(
        "helm",
        &["template", "policyc", &chart, "--set", "adminPolicies.installCRDs=true"],
        None,
    );
    let keep = Value::String("keep".into());
    let want: Vec<(String, Value)> = ADMIN_CRDS.iter().map(|n| (n.to_string(), keep.clone())).collect();
    assert_eq!(crds_of(&with_admin), want);

    let custom = api.tool(
        "helm",
        &[
            "template",
            "policyc",
            &chart,
            "-n",
            "kube-system",
            "--set",
            "backend=iptables",
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "failClosed=false",
            "--set",
            "logFormat=text",
            "--set",
            "cutConntrack=false",
            "--set",
            "nodeSelector.role=edge",
            "--set",
            "agent.attachment=flannel",
            "--set",
            "agent.bridge=cbr0",
            "--set",
            "agent.cleanupOnUninstall=false",
        ],
        None,
    );
    let ds = daemonset_of(&custom);
    let spec = &ds["spec"]["template"]["spec"];
    let args = spec["containers"][0]["args"].to_string();
    for want in [
        "--backend=iptables",
        "--fail-closed=false",
        "--log-format=text",
        "--no-conntrack",
        "--attachment=flannel",
        "--bridge=cbr0",
    ] {
        assert!(args.contains(want), "{want} in {args}");
    }
    assert!(
        !args.contains("--cleanup-on-uninstall") && !args.contains("--status-owner"),
        "{args}"
    );
    assert_eq!(spec["nodeSelector"]["role"], "edge");
    assert!(custom.contains("kind: ServiceMonitor") && custom.contains("kind: Service\n"));

    let (ok, _, err) = api.try_tool("helm", &["template", "policyc", &chart, "--set", "backend=ebpf"], None);
    assert!(!ok && err.contains("backend must be nftables or iptables"), "{err}");
    let (ok, _, err) = api.try_tool(
        "helm",
        &["template", "policyc", &chart, "--set", "agent.attachment=calico"],
        None,
    );
    assert!(
        !ok && err.contains("agent.attachment must be auto, canal or flannel"),
        "{err}"
    );

    // Server-side dry run of the rendered manifests (CRDs first, as Helm installs them).
    api.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&defaults));

    // Install (with the admin CRDs) and read back what the API server stored.
    api.tool(
        "helm",
        &[
            "install",
            "policyc",
            &chart,
            "-n",
            "kube-system",
            "--set",
            "adminPolicies.installCRDs=true",
        ],
        None,
    );
    let mut wait = vec![
        "wait".to_string(),
        "--for".into(),
        "condition=established".into(),
        "crd/nodepolicystatuses.policyc.dev".into(),
    ];
    wait.extend(ADMIN_CRDS.iter().map(|n| format!("crd/{n}")));
    api.kubectl(&wait.iter().map(String::as_str).collect::<Vec<_>>(), None);
    let ds: Value = serde_json::from_str(&api.kubectl(
        &["-n", "kube-system", "get", "daemonset", "policyc", "-o", "json"],
        None,
    ))
    .unwrap();
    let pod = &ds["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    assert_eq!(pod["hostNetwork"], true);
    assert_eq!(pod["priorityClassName"], "system-node-critical");
    assert_eq!(pod["tolerations"][0]["operator"], "Exists");
    assert_eq!(c["securityContext"]["privileged"], false);
    assert_eq!(
        c["securityContext"]["capabilities"]["add"],
        serde_json::json!(["NET_ADMIN"])
    );
    assert_eq!(c["securityContext"]["capabilities"]["drop"], serde_json::json!(["ALL"]));
    assert_eq!(c["env"][0]["name"], "NODE_NAME");
    assert_eq!(c["env"][0]["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(c["resources"]["limits"]["memory"].is_string());

    let role: Value =
        serde_json::from_str(&api.kubectl(&["get", "clusterrole", "policyc", "-o", "json"], None)).unwrap();
    let rules = role["rules"].as_array().unwrap();
    assert_eq!(rules.len(), 6, "{rules:?}");
    let sa = "system:serviceaccount:kube-system:policyc";
    for (verb, resource, want) in [
        ("watch", "pods", "yes"),
        ("list", "namespaces", "yes"),
        ("get", "nodes", "yes"),
        ("list", "nodes", "yes"),
        ("watch", "nodes", "yes"),
        ("watch", "networkpolicies.networking.k8s.io", "yes"),
        ("watch", "adminnetworkpolicies.policy.networking.k8s.io", "yes"),
        ("list", "baselineadminnetworkpolicies.policy.networking.k8s.io", "yes"),
        ("get", "clusternetworkpolicies.policy.networking.k8s.io", "yes"),
        ("create", "clusternetworkpolicies.policy.networking.k8s.io", "no"),
        ("update", "adminnetworkpolicies.policy.networking.k8s.io/status", "no"),
        ("patch", "nodepolicystatuses.policyc.dev/status", "yes"),
        ("create", "nodepolicystatuses.policyc.dev", "yes"),
        ("create", "networkpolicies.networking.k8s.io", "no"),
        ("delete", "pods", "no"),
        ("get", "secrets", "no"),
        ("update", "nodes", "no"),
        ("list", "nodepolicystatuses.policyc.dev", "no"),
        ("update", "nodepolicystatuses.policyc.dev", "no"),
        ("delete", "nodepolicystatuses.policyc.dev", "yes"),
        ("get", "clusterroles.rbac.authorization.k8s.io/policyc", "yes"),
        ("get", "clusterroles.rbac.authorization.k8s.io/admin", "no"),
        // Its own DaemonSet only (and in its namespace only).
        ("watch", "daemonsets.apps/policyc", "yes"),
        ("get", "daemonsets.apps/policyc", "yes"),
        ("get", "daemonsets.apps/kube-proxy", "no"),
        ("delete", "daemonsets.apps/policyc", "no"),
    ] {
        let (_, out, _) = api.try_tool(
            "kubectl",
            &["auth", "can-i", verb, resource, "--as", sa, "-n", "kube-system"],
            None,
        );
        assert_eq!(out.trim(), want, "can {sa} {verb} {resource}?");
    }

    // Uninstall: everything but the CRDs (Helm keeps those of crds/, the admin ones are kept by
    // their resource policy) is gone.
    api.tool("helm", &["uninstall", "policyc", "-n", "kube-system"], None);
    for what in [
        ["-n", "kube-system", "daemonset/policyc"],
        ["-n", "kube-system", "serviceaccount/policyc"],
        ["-n", "kube-system", "role/policyc"],
        ["-n", "kube-system", "rolebinding/policyc"],
    ] {
        let (ok, _, err) = api.try_tool("kubectl", &["get", what[0], what[1], what[2]], None);
        assert!(!ok && err.contains("NotFound"), "{what:?} left behind: {err}");
    }
    let (ok, _, _) = api.try_tool("kubectl", &["get", "clusterrole", "policyc"], None);
    assert!(!ok, "ClusterRole left behind");
    api.kubectl(&["get", "crd", "nodepolicystatuses.policyc.dev"], None);
    for crd in ADMIN_CRDS {
        api.kubectl(&["get", "crd", crd], None);
    }
}
