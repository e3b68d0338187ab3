//! `policyc-agent --attachment auto` against a real kube-apiserver (kube-lab) on a throwaway
//! node namespace: with neither Canal's `cali*` veths nor plain Flannel's `cni0` it enforces
//! nothing and its NodePolicyStatus says so (Ready=False, NoPodAttachment, no attachment);
//! once a `cni0` bridge with a pod's veth appears it reports `flannel`, turns br_netfilter on
//! in the node namespace, and finds the pod's port (once its address appears, without a link
//! change) and a later port (from the link event); a node with a `cali…` veth reports `canal`.
//! Needs root and the built binaries; skipped with the reason otherwise, except under CI.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{agent_kubeconfig, ApiServer};

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn status(api: &ApiServer) -> Option<serde_json::Value> {
    status_of(api, "n1")
}

fn status_of(api: &ApiServer, node: &str) -> Option<serde_json::Value> {
    let (ok, out, _) = api.try_tool("kubectl", &["get", "nodepolicystatus", node, "-o", "json"], None);
    if !ok {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&out).ok()?;
    Some(v["status"].clone())
}

fn ready(status: &serde_json::Value) -> Option<(String, String, String)> {
    let c = status["conditions"].as_array()?.iter().find(|c| c["type"] == "Ready")?;
    Some((
        c["status"].as_str()?.to_string(),
        c["reason"].as_str()?.to_string(),
        c["message"].as_str().unwrap_or_default().to_string(),
    ))
}

fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Some(v) = f() {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x", "labels": {"app": "a"}},
  "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "none"}]}}"#;

#[test]
fn auto_attachment_waits_for_a_pod_attachment_then_finds_flannel() {
    if !policyc_testhost::needs_root(&["ip", "sysctl"]) {
        return;
    }
    let Some(api) = ApiServer::start("attach") else { return };
    let kubeconfig = agent_kubeconfig(&api);
    api.kubectl(&["create", "namespace", "x"], None);
    api.kubectl(&["apply", "-f", "-"], Some(POD));
    api.kubectl(
        &[
            "-n",
            "x",
            "patch",
            "pod",
            "a",
            "--subresource=status",
            "--type=merge",
            "-p",
            r#"{"status": {"phase": "Running", "podIP": "10.244.1.2", "podIPs": [{"ip": "10.244.1.2"}]}}"#,
        ],
        None,
    );
    api.kubectl(
        &["apply", "-f", "-"],
        Some("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x}\nspec: {podSelector: {}}\n"),
    );

    // A node with an uplink and flannel's VXLAN device only: under Canal and plain Flannel alike
    // a node looks so before its first pod.
    let node = policyc_testhost::Netns::new("attach-node");
    run(node.exec("ip").args(["link", "set", "lo", "up"]));
    // (A veth pair stands in for the uplink: this kernel has no dummy driver.)
    run(node
        .exec("ip")
        .args(["link", "add", "eth0", "type", "veth", "peer", "name", "uplink0"]));
    add_flannel_vxlan(&node);
    let has_br_netfilter = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
    if has_br_netfilter {
        run(node
            .exec("sysctl")
            .args(["-qw", "net.bridge.bridge-nf-call-iptables=0"]));
    }

    let port = 40000 + (std::process::id() % 20000) as u16;
    let log_path = api.dir.join("agent.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let _agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_policyc-agent"))
            .args(["--node-name", "n1", "--debounce-ms", "20", "--attachment", "auto"])
            .args(["--log-format", "json"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--netns")
            .arg(node.path())
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );

    let st = eventually(
        "a NodePolicyStatus saying NoPodAttachment",
        Duration::from_secs(30),
        || status(&api).filter(|s| ready(s).is_some_and(|(_, reason, _)| reason == "NoPodAttachment")),
    );
    let (ok, _, message) = ready(&st).unwrap();
    assert_eq!(ok, "False");
    assert!(message.contains("cali") && message.contains("cni0"), "{message}");
    assert!(st.get("attachment").is_none(), "no attachment claimed: {st}");
    assert!(
        st.get("rulesetHash").is_none() && st["policies"].as_array().is_none_or(Vec::is_empty),
        "{st}"
    );
    assert!(st["compiledFrom"].as_array().is_none_or(Vec::is_empty), "{st}");
    let listed = node.exec("nft").args(["list", "tables"]).output().unwrap();
    assert!(
        !String::from_utf8_lossy(&listed.stdout).contains("policyc"),
        "nothing programmed while undecided"
    );
    // The agent itself is up: /readyz says so (a node without pods must not stall a rollout).
    eventually("/readyz 200", Duration::from_secs(10), || {
        support::http_get(port, Duration::from_secs(2), "/readyz").filter(|(code, _)| *code == 200)
    });

    // The bridge plugin's work, by hand: cni0 and a pod veth on it, the pod's address inside.
    let pod = policyc_testhost::Netns::new("attach-pod");
    run(node.exec("ip").args(["link", "add", "cni0", "type", "bridge"]));
    run(node.exec("ip").args(["addr", "add", "10.244.1.1/24", "dev", "cni0"]));
    run(node.exec("ip").args(["link", "set", "cni0", "up"]));
    run(node
        .exec("ip")
        .args([
            "link",
            "add",
            "vethpctest0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
        ])
        .arg(pod.name()));
    run(node
        .exec("ip")
        .args(["link", "set", "vethpctest0", "master", "cni0", "up"]));
    run(pod.exec("ip").args(["link", "set", "eth0", "up"]));

    let without_port = |n: u32| {
        let want = format!("policyc_pods_without_bridge_port {n}");
        move || {
            support::http_get(port, Duration::from_secs(2), "/metrics")
                .filter(|(_, text)| text.lines().any(|l| l == want))
        }
    };
    // The pod's interface has no address yet (its CNI ADD still running): pod a, which the API
    // server says is at 10.244.1.2, has no port and fails closed...
    eventually(
        "policyc_pods_without_bridge_port 1",
        Duration::from_secs(30),
        without_port(1),
    );
    // ...until the address shows up behind the port (found by the 1 s rescan while a local pod
    // has no port: no link changes for that).
    run(pod.exec("ip").args(["addr", "add", "10.244.1.2/24", "dev", "eth0"]));
    let t = Instant::now();
    eventually(
        "policyc_pods_without_bridge_port 0",
        Duration::from_secs(5),
        without_port(0),
    );
    eprintln!("pod's port found {:?} after its address appeared", t.elapsed());

    let st = eventually("status.attachment flannel", Duration::from_secs(30), || {
        status(&api).filter(|s| s["attachment"] == "flannel")
    });
    let (_, reason, message) = ready(&st).unwrap();
    eprintln!("flannel node: Ready reason {reason}: {message}");
    assert_ne!(reason, "NoPodAttachment", "{message}");
    if has_br_netfilter {
        // Turned on in the node's namespace (the test runs the agent as root; a pod's read-only
        // /proc/sys would leave it off and the status would say BrNetfilterOff).
        let v = run(node.exec("sysctl").args(["-n", "net.bridge.bridge-nf-call-iptables"]));
        assert_eq!(v.trim(), "1");
        assert_ne!(reason, "BrNetfilterOff", "{message}");
    }
    // A Canal node next to it: a routed cali… veth (and flannel.1, no cni0).
    let canal = policyc_testhost::Netns::new("attach-canal");
    run(canal
        .exec("ip")
        .args(["link", "add", "cali0123456789a", "type", "veth", "peer", "name", "p0"]));
    add_flannel_vxlan(&canal);
    let _canal_agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_policyc-agent"))
            .args(["--node-name", "n2", "--debounce-ms", "20", "--attachment", "auto"])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{}", port + 1))
            .arg("--netns")
            .arg(canal.path())
            .env("KUBECONFIG", &kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let n2 = eventually("n2's status.attachment canal", Duration::from_secs(30), || {
        status_of(&api, "n2").filter(|s| s["attachment"] == "canal")
    });
    eprintln!("canal node: Ready {:?}", ready(&n2));

    // Discovery found the pod's port...
    let ports_logged = |n: u64| {
        std::fs::read_to_string(&log_path)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .any(|v| v["message"] == "bridge ports discovered" && v["ports"] == n)
    };
    eventually("1 bridge port discovered", Duration::from_secs(5), || {
        ports_logged(1).then_some(())
    });
    // ...and a port that joins the bridge later is found from the link event (well before the
    // 10 s periodic rescan). Its address is set before it joins, as a CNI ADD may finish.
    let pod2 = policyc_testhost::Netns::new("attach-pod2");
    run(node
        .exec("ip")
        .args([
            "link",
            "add",
            "vethpctest1",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
        ])
        .arg(pod2.name()));
    run(pod2.exec("ip").args(["addr", "add", "10.244.1.3/24", "dev", "eth0"]));
    run(pod2.exec("ip").args(["link", "set", "eth0", "up"]));
    let t = Instant::now();
    run(node
        .exec("ip")
        .args(["link", "set", "vethpctest1", "master", "cni0", "up"]));
    eventually("2 bridge ports discovered", Duration::from_secs(3), || {
        ports_logged(2).then_some(())
    });
    eprintln!("second port discovered {:?} after it joined cni0", t.elapsed());

    // The kernel holds the bridge ruleset, and the pod's guard names its discovered port.
    assert_eq!(reason, "Synced", "{message}");
    let rules = run(node.exec("nft").args(["list", "table", "bridge", "policyc"]));
    assert!(rules.contains("\"vethpctest0\" : goto guard_"), "{rules}");
}

/// Flannel's VXLAN device, as both attachments' nodes have it.
fn add_flannel_vxlan(ns: &policyc_testhost::Netns) {
    run(ns.exec("ip").args([
        "link",
        "add",
        "flannel.1",
        "type",
        "vxlan",
        "id",
        "1",
        "dstport",
        "8472",
        "nolearning",
    ]));
}
