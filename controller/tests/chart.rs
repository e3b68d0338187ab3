//! The Helm chart as users install it: real helm (built from its Go module) against a real
//! kube-apiserver. Lint, template with several value sets, server-side dry-run, install, assert
//! what the API server stored (RBAC, DaemonSet, CRD established), check the agent's permissions
//! with `kubectl auth can-i`, uninstall and check what remains.

mod support;

use serde_json::Value;
use support::{repo, skip, ApiServer};

fn chart() -> String {
    repo().join("charts/policyc").to_str().unwrap().to_string()
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
    if !repo().join("e2e/bin/helm").exists() && skip("e2e/bin/helm not built (bash e2e/apiserver/build.sh)") {
        return;
    }
    let Some(api) = ApiServer::start("chart") else { return };
    let chart = chart();

    let lint = api.tool("helm", &["lint", &chart, "--strict"], None);
    assert!(lint.contains("0 chart(s) failed"), "{lint}");

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
    assert!(defaults.contains("kind: CustomResourceDefinition"));
    assert!(!defaults.contains("kind: ServiceMonitor"));

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
    ] {
        assert!(args.contains(want), "{want} in {args}");
    }
    assert_eq!(spec["nodeSelector"]["role"], "edge");
    assert!(custom.contains("kind: ServiceMonitor") && custom.contains("kind: Service\n"));

    let (ok, _, err) = api.try_tool("helm", &["template", "policyc", &chart, "--set", "backend=ebpf"], None);
    assert!(!ok && err.contains("backend must be nftables or iptables"), "{err}");

    // Server-side dry run of the rendered manifests (CRDs first, as Helm installs them).
    api.kubectl(&["apply", "--dry-run=server", "-f", "-"], Some(&defaults));

    // Install and read back what the API server stored.
    api.tool("helm", &["install", "policyc", &chart, "-n", "kube-system"], None);
    api.kubectl(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/nodepolicystatuses.policyc.dev",
        ],
        None,
    );
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
    assert_eq!(rules.len(), 4, "{rules:?}");
    let sa = "system:serviceaccount:kube-system:policyc";
    for (verb, resource, want) in [
        ("watch", "pods", "yes"),
        ("list", "namespaces", "yes"),
        ("watch", "networkpolicies.networking.k8s.io", "yes"),
        ("patch", "nodepolicystatuses.policyc.dev/status", "yes"),
        ("create", "nodepolicystatuses.policyc.dev", "yes"),
        ("create", "networkpolicies.networking.k8s.io", "no"),
        ("delete", "pods", "no"),
        ("get", "secrets", "no"),
        ("update", "nodes", "no"),
        ("list", "nodepolicystatuses.policyc.dev", "no"),
        ("update", "nodepolicystatuses.policyc.dev", "no"),
    ] {
        let (_, out, _) = api.try_tool("kubectl", &["auth", "can-i", verb, resource, "--as", sa], None);
        assert_eq!(out.trim(), want, "can {sa} {verb} {resource}?");
    }

    // Uninstall: everything but the CRD (Helm keeps CRDs) is gone.
    api.tool("helm", &["uninstall", "policyc", "-n", "kube-system"], None);
    for what in [
        ["-n", "kube-system", "daemonset/policyc"],
        ["-n", "kube-system", "serviceaccount/policyc"],
    ] {
        let (ok, _, err) = api.try_tool("kubectl", &["get", what[0], what[1], what[2]], None);
        assert!(!ok && err.contains("NotFound"), "{what:?} left behind: {err}");
    }
    let (ok, _, _) = api.try_tool("kubectl", &["get", "clusterrole", "policyc"], None);
    assert!(!ok, "ClusterRole left behind");
    api.kubectl(&["get", "crd", "nodepolicystatuses.policyc.dev"], None);
}
