//! What a stopping agent does with its ruleset, against a real kube-apiserver (kube-lab) and a
//! throwaway network namespace: with `--cleanup-on-uninstall`, SIGTERM leaves the tables in
//! place while the agent's DaemonSet exists, also when the API server refuses to say (fail
//! closed), and removes them when the DaemonSet was deleted, also after the agent's RBAC went
//! right after it as `helm uninstall` deletes them (the watch saw the deletion). Asserts on what
//! the kernel holds (`nft list tables` in the namespace) and what the API server stored.
//! Needs root and the built binaries; skipped with the reason otherwise, except under CI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::ApiServer;

struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(kubeconfig: &Path, ns: &policyc_testhost::Netns, port: u16, log: PathBuf) -> Agent {
        let child = Command::new(env!("CARGO_BIN_EXE_policyc-agent"))
            // A bare namespace shows no pod attachment: say it is Canal's.
            .args([
                "--node-name",
                "n1",
                "--debounce-ms",
                "20",
                "--attachment",
                "canal",
                "--log-format",
                "text",
                "--log-level",
                "info",
                "--cleanup-on-uninstall",
                "--status-owner",
                "policyc",
                "--metrics-addr",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--netns")
            .arg(ns.path())
            .env("KUBECONFIG", kubeconfig)
            .env("POD_NAME", "policyc-n1")
            .env("POD_NAMESPACE", "kube-system")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        eventually("/readyz", Duration::from_secs(60), || {
            support::http_get(port, Duration::from_secs(5), "/readyz").is_some_and(|(c, _)| c == 200)
        });
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM; how long the agent took to exit, and its log.
    fn terminate(mut self) -> (Duration, String) {
        let t = Instant::now();
        let sent = Command::new("kill").arg(self.child.id().to_string()).status().unwrap();
        assert!(sent.success());
        let status = self.child.wait().unwrap();
        assert!(status.success(), "{status}: {}", self.log());
        (t.elapsed(), self.log())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

fn tables(ns: &policyc_testhost::Netns) -> String {
    let out = ns.exec("nft").args(["list", "tables"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const DAEMONSET: &str = r#"{"apiVersion": "apps/v1", "kind": "DaemonSet",
  "metadata": {"name": "policyc", "namespace": "kube-system"},
  "spec": {"selector": {"matchLabels": {"app": "policyc"}},
    "template": {"metadata": {"labels": {"app": "policyc"}},
      "spec": {"containers": [{"name": "agent", "image": "none"}]}}}}"#;

/// The DaemonSet and the agent's Pod it owns (no controller runs: made by hand, as the
/// DaemonSet controller makes it).
fn daemonset_and_pod(api: &ApiServer) {
    let ds = api.kubectl(&["apply", "-o", "jsonpath={.metadata.uid}", "-f", "-"], Some(DAEMONSET));
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "policyc-n1", "namespace": "kube-system", "labels": {"app": "policyc"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "policyc",
                "uid": ds.trim(), "controller": true}]},
        "spec": {"nodeName": "n1", "containers": [{"name": "agent", "image": "none"}]},
    });
    api.kubectl(&["apply", "-f", "-"], Some(&pod.to_string()));
}

#[test]
fn agent_removes_its_ruleset_only_when_uninstalled() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let Some(api) = ApiServer::start("uninstall") else {
        return;
    };
    let kubeconfig = support::agent_kubeconfig(&api);
    daemonset_and_pod(&api);
    let ns = policyc_testhost::Netns::new("uninst");
    let port = 20000 + ((std::process::id() + 4099) % 20000) as u16;
    let log = |n: u32| api.dir.join(format!("agent-{n}.log"));

    // The status object is a dependent of the chart's ClusterRole (the garbage collector deletes
    // it with the release).
    let agent = Agent::start(&kubeconfig, &ns, port, log(1));
    assert!(tables(&ns).contains("table inet policyc"));
    let role_uid = api.kubectl(
        &["get", "clusterrole", "policyc", "-o", "jsonpath={.metadata.uid}"],
        None,
    );
    eventually("NodePolicyStatus n1", Duration::from_secs(30), || {
        api.try_tool("kubectl", &["get", "nodepolicystatus", "n1"], None).0
    });
    let owners = api.kubectl(
        &[
            "get",
            "nodepolicystatus",
            "n1",
            "-o",
            "jsonpath={.metadata.ownerReferences}",
        ],
        None,
    );
    let owners: serde_json::Value = serde_json::from_str(&owners).unwrap();
    assert_eq!(owners[0]["kind"], "ClusterRole", "{owners}");
    assert_eq!(owners[0]["name"], "policyc", "{owners}");
    assert_eq!(owners[0]["uid"], role_uid.trim(), "{owners}");

    // 1. The DaemonSet exists (an upgrade, a drain, a restart): the tables stay.
    let (took, text) = agent.terminate();
    assert!(text.contains("terminated; leaving the ruleset in place"), "{text}");
    assert!(text.contains("DaemonSet policyc exists"), "{text}");
    assert!(tables(&ns).contains("table inet policyc"), "{text}");
    eprintln!("SIGTERM with the DaemonSet present: exited after {took:?}, tables kept");

    // 2. The API server refuses to say (the agent's Role binding is gone, the DaemonSet is not):
    //    the tables stay (fail closed).
    let agent = Agent::start(&kubeconfig, &ns, port, log(2));
    std::thread::sleep(Duration::from_millis(500));
    api.kubectl(&["-n", "kube-system", "delete", "rolebinding", "policyc"], None);
    let (took, text) = agent.terminate();
    assert!(text.contains("terminated; leaving the ruleset in place"), "{text}");
    assert!(text.contains("fail closed"), "{text}");
    assert!(tables(&ns).contains("table inet policyc"), "{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("SIGTERM without an answer: exited after {took:?}, tables kept");
    support::agent_kubeconfig(&api);

    // 3. As `helm uninstall`: the DaemonSet deleted, then at once the agent's RBAC, then
    //    SIGTERM. The agent's watch saw the deletion; the tables go, and the status object too
    //    if the agent may still delete it (here it may not: the garbage collector's job).
    let agent = Agent::start(&kubeconfig, &ns, port, log(3));
    std::thread::sleep(Duration::from_millis(500));
    api.kubectl(
        &["-n", "kube-system", "delete", "daemonset", "policyc", "--wait=false"],
        None,
    );
    for what in ["rolebinding/policyc", "role/policyc"] {
        api.kubectl(&["-n", "kube-system", "delete", what], None);
    }
    for what in ["clusterrolebinding/policyc", "clusterrole/policyc"] {
        api.kubectl(&["delete", what], None);
    }
    eventually(
        "the agent to see its DaemonSet deleted",
        Duration::from_secs(10),
        || agent.log().contains("the agent is being uninstalled"),
    );
    let (took, text) = agent.terminate();
    assert!(
        text.contains("terminated by an uninstall; removing the ruleset"),
        "{text}"
    );
    assert!(text.contains("ruleset removed from the kernel"), "{text}");
    let left = tables(&ns);
    assert!(!left.contains("policyc"), "{left}\n{text}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    eprintln!("SIGTERM after the DaemonSet's deletion: exited after {took:?}, tables removed");
}

/// With its RBAC in place, an uninstalled agent deletes its NodePolicyStatus itself.
#[test]
fn uninstalled_agent_deletes_its_status() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let Some(api) = ApiServer::start("uninstall-status") else {
        return;
    };
    let kubeconfig = support::agent_kubeconfig(&api);
    daemonset_and_pod(&api);
    let ns = policyc_testhost::Netns::new("uninsts");
    let port = 20000 + ((std::process::id() + 6151) % 20000) as u16;
    let agent = Agent::start(&kubeconfig, &ns, port, api.dir.join("agent.log"));
    eventually("NodePolicyStatus n1", Duration::from_secs(30), || {
        api.try_tool("kubectl", &["get", "nodepolicystatus", "n1"], None).0
    });
    api.kubectl(&["-n", "kube-system", "delete", "daemonset", "policyc"], None);
    let (took, text) = agent.terminate();
    assert!(text.contains("NodePolicyStatus deleted"), "{text}");
    let (found, _, err) = api.try_tool("kubectl", &["get", "nodepolicystatus", "n1"], None);
    assert!(!found && err.contains("NotFound"), "{err}");
    assert!(!tables(&ns).contains("policyc"), "{text}");
    eprintln!("SIGTERM after the DaemonSet's deletion, RBAC in place: exited after {took:?}, status deleted");
}
