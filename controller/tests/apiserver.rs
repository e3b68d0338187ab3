//! `policyc-agent` against a real kube-apiserver (kube-lab: the k8s.io/kubernetes apiserver with
//! embedded etcd, built by `e2e/apiserver/build.sh`), programming a throwaway network namespace.
//!
//! Asserts on what the systems did: the rules the kernel holds (`nft list` in the namespace), the
//! objects the API server stored (NodePolicyStatus), and the agent's metrics — through policy
//! create, update and delete, `kill -9` and restart of the agent, and an API server outage; and
//! the admin policy kinds, whose CRDs are installed while the agent runs.
//! Needs root and the built binaries; skipped with the reason otherwise, except under CI.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod support;

use support::{repo, ApiServer};

/// The agent's node: a throwaway network namespace, deleted on drop.
struct Netns(policyc_testhost::Netns);

impl Netns {
    fn new(tag: &str) -> Netns {
        Netns(policyc_testhost::Netns::new(tag))
    }

    fn ruleset(&self) -> String {
        let out = self
            .0
            .exec("nft")
            .args(["list", "table", "inet", "policyc"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_agent(kubeconfig: &std::path::Path, ns: &Netns, port: u16) -> Agent {
    Agent(
        Command::new(env!("CARGO_BIN_EXE_policyc-agent"))
            // A bare namespace shows no pod attachment: say it is Canal's.
            .args([
                "--node-name",
                "n1",
                "--debounce-ms",
                "20",
                "--attachment",
                "canal",
                "--metrics-addr",
            ])
            .arg(format!("127.0.0.1:{port}"))
            .arg("--netns")
            .arg(ns.0.path())
            .env("KUBECONFIG", kubeconfig)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// The `policyc` CLI, built beside the agent by `cargo test --workspace`.
fn policyc_bin() -> Option<std::path::PathBuf> {
    let p = std::path::Path::new(env!("CARGO_BIN_EXE_policyc-agent")).with_file_name("policyc");
    if p.exists() {
        Some(p)
    } else {
        policyc_testhost::skip("policyc binary not built beside policyc-agent (cargo test --workspace builds it)");
        None
    }
}

fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return start.elapsed();
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("timed out after {timeout:?} waiting for {what}");
}

const POD: &str = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "NAME", "namespace": "x", "labels": {"app": "NAME"}},
  "spec": {"nodeName": "NODE", "containers": [{"name": "c", "image": "none", "ports": [{"name": "http", "containerPort": 8080}]}]}}"#;

fn policy(generation_marker: &str, port: u16) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: web, namespace: x, annotations: {{step: {generation_marker}}}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: b}}}}}}]\n    ports: [{{port: {port}}}]\n"
    )
}

fn status_generation(api: &ApiServer) -> Option<i64> {
    let out = Command::new(support::e2e_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["get", "nodepolicystatus", "n1", "-o", "json"])
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"]["policies"]
        .as_array()?
        .iter()
        .find(|p| p["name"] == "web")
        .and_then(|p| p["generation"].as_i64())
}

/// Installs policyc's CRD and the chart's RBAC, writes a kubeconfig for the chart's
/// ServiceAccount, and creates namespace x with pods a, b (node n1) and c (node n2).
fn setup(api: &ApiServer) -> std::path::PathBuf {
    let agent_kubeconfig = support::agent_kubeconfig(api);
    api.kubectl(&["create", "namespace", "x"], None);
    for (name, node, ip) in [
        ("a", "n1", "10.244.1.5"),
        ("b", "n1", "10.244.1.6"),
        ("c", "n2", "10.244.2.7"),
    ] {
        api.kubectl(
            &["apply", "-f", "-"],
            Some(&POD.replace("NAME", name).replace("NODE", node)),
        );
        let patch = format!(r#"{{"status": {{"phase": "Running", "podIP": "{ip}", "podIPs": [{{"ip": "{ip}"}}]}}}}"#);
        api.kubectl(
            &[
                "-n",
                "x",
                "patch",
                "pod",
                name,
                "--subresource=status",
                "--type=merge",
                "-p",
                &patch,
            ],
            None,
        );
    }

    agent_kubeconfig
}

#[test]
fn agent_enforces_what_the_apiserver_says() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let Some(api) = ApiServer::start("agent") else { return };
    let agent_kubeconfig = setup(&api);

    let ns = Netns::new("agent");
    let port = 20000 + (std::process::id() % 20000) as u16;
    let mut agent = start_agent(&agent_kubeconfig, &ns, port);
    eventually("/readyz", Duration::from_secs(60), || {
        support::http_get(port, Duration::from_secs(5), "/readyz").is_some_and(|(c, _)| c == 200)
    });
    assert_eq!(
        support::http_get(port, Duration::from_secs(5), "/healthz").map(|(c, _)| c),
        Some(200)
    );
    let rules = ns.ruleset();
    assert!(rules.contains("map ingress_dispatch"), "{rules}");
    assert!(
        rules.contains("cali* interface not programmed yet"),
        "fail closed by default: {rules}"
    );

    // Policy create -> kernel, and the status reports its generation.
    let t = Instant::now();
    api.kubectl(&["apply", "-f", "-"], Some(&policy("one", 8080)));
    eventually("policy in the kernel", Duration::from_secs(30), || {
        ns.ruleset().contains("x/web ingress[0]")
    });
    let create_to_kernel = t.elapsed();
    eventually("status generation 1", Duration::from_secs(30), || {
        status_generation(&api) == Some(1)
    });
    let rules = ns.ruleset();
    assert!(rules.contains("8080 : goto npc_"), "{rules}");
    assert!(
        rules.contains("10.244.1.6"),
        "pod b's address in the selector set: {rules}"
    );

    // Update: generation 2 reaches the kernel and the status; `policyc wait --for=enforced`
    // returns once it does, and `policyc status` shows it.
    let file = api.dir.join("policy.yaml");
    std::fs::write(&file, policy("two", 9090)).unwrap();
    api.kubectl(&["apply", "-f", file.to_str().unwrap()], None);
    if let Some(policyc) = policyc_bin() {
        let out = Command::new(&policyc)
            .args(["wait", "--for=enforced", "--timeout", "30s", "-f"])
            .arg(&file)
            .env("KUBECONFIG", &api.kubeconfig)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "policyc wait: {err}");
        assert!(err.contains("x/web (generation 2) enforced on n1"), "{err}");
        assert!(
            ns.ruleset().contains("9090 : goto npc_"),
            "wait returned before the kernel had it"
        );
        let out = Command::new(&policyc)
            .arg("status")
            .env("KUBECONFIG", &api.kubeconfig)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        assert!(text.contains("x/web") && text.contains("n1 (enforced)"), "{text}");
    }
    eventually("updated rule", Duration::from_secs(30), || {
        ns.ruleset().contains("9090 : goto npc_")
    });
    eventually("status generation 2", Duration::from_secs(30), || {
        status_generation(&api) == Some(2)
    });

    // kill -9: the ruleset stays; a new agent takes over with the same ruleset.
    let before = ns.ruleset();
    let _ = agent.0.kill();
    let _ = agent.0.wait();
    assert!(ns.ruleset().contains("9090 : goto npc_"), "ruleset survives the agent");
    agent = start_agent(&agent_kubeconfig, &ns, port);
    eventually("/readyz after restart", Duration::from_secs(60), || {
        support::http_get(port, Duration::from_secs(5), "/readyz").is_some_and(|(c, _)| c == 200)
    });
    let strip = |s: &str| {
        s.lines()
            .map(|l| l.split(" counter packets").next().unwrap_or(l).to_string())
            .collect::<Vec<_>>()
    };
    // Sets and chains an in-place change added are listed after the kept ones; the new agent's
    // replace lists them in the rendered order. Compare the blocks (each set, map and chain with
    // its rules in order), not their order.
    let (now, before) = (strip(&ns.ruleset()).join("\n"), strip(&before).join("\n"));
    assert_eq!(
        policyc_testhost::sorted_blocks(&now),
        policyc_testhost::sorted_blocks(&before),
        "restart reproduces the same ruleset"
    );

    // Metrics.
    let (_, metrics) = support::http_get(port, Duration::from_secs(5), "/metrics").unwrap();
    for m in [
        "policyc_rules ",
        "policyc_endpoints 2",
        "policyc_policies 1",
        "policyc_sync_duration_seconds_bucket",
        // Cutting conntrack after the policy changes, outside the sync's own time.
        "policyc_conntrack_duration_seconds_count",
        "policyc_policy_rule_packets_total{",
    ] {
        assert!(metrics.contains(m), "{m} missing from\n{metrics}");
    }

    // API server outage: the ruleset stays and the agent stays healthy.
    drop(api);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        ns.ruleset().contains("9090 : goto npc_"),
        "ruleset stays during an API server outage"
    );
    assert_eq!(
        support::http_get(port, Duration::from_secs(5), "/healthz").map(|(c, _)| c),
        Some(200)
    );
    eprintln!("policy create -> kernel: {create_to_kernel:?} (debounce 20 ms, kubectl and polling included)");
    drop(agent);
}

const CNP: &str = "apiVersion: policy.networking.k8s.io/v1alpha2
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 5
  subject: {pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: a}}}}
  ingress:
  - name: no-b
    action: ACTION
    from: [{pods: {namespaceSelector: {}, podSelector: {matchLabels: {app: b}}}}]
";

#[test]
fn agent_picks_up_admin_policies_when_their_crds_arrive() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let Some(api) = ApiServer::start("agent-admin") else {
        return;
    };
    let agent_kubeconfig = setup(&api);
    let ns = Netns::new("agent-adm");
    let port = 20000 + ((std::process::id() + 7) % 20000) as u16;
    let _agent = start_agent(&agent_kubeconfig, &ns, port);
    // No admin CRDs: the agent works without them.
    eventually("/readyz without the admin CRDs", Duration::from_secs(60), || {
        support::http_get(port, Duration::from_secs(5), "/readyz").is_some_and(|(c, _)| c == 200)
    });

    // The CRDs arrive, then a ClusterNetworkPolicy: the agent starts watching and enforces it.
    api.kubectl(
        &[
            "apply",
            "-f",
            repo().join("crds/yaml/policy.networking.k8s.io.yaml").to_str().unwrap(),
        ],
        None,
    );
    api.kubectl(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/clusternetworkpolicies.policy.networking.k8s.io",
        ],
        None,
    );
    let file = api.dir.join("cnp.yaml");
    std::fs::write(&file, CNP.replace("ACTION", "Deny")).unwrap();
    api.kubectl(&["apply", "-f", file.to_str().unwrap()], None);
    let waited = eventually(
        "the ClusterNetworkPolicy in the kernel",
        Duration::from_secs(90),
        || ns.ruleset().contains("Admin tier: cnp/guard ingress[0] (no-b): Deny"),
    );
    let rules = ns.ruleset();
    assert!(
        rules.contains("jump adm_"),
        "a's ingress consults the Admin tier: {rules}"
    );
    assert!(
        rules.contains("10.244.1.6 : goto ar_"),
        "b's address leads to the rule: {rules}"
    );

    // An update (Deny -> Pass) is generation 2: `policyc wait` returns once n1 reports it, and
    // the status names the kind.
    std::fs::write(&file, CNP.replace("ACTION", "Pass")).unwrap();
    api.kubectl(&["apply", "-f", file.to_str().unwrap()], None);
    if let Some(policyc) = policyc_bin() {
        let out = Command::new(&policyc)
            .args(["wait", "--for=enforced", "--timeout", "60s", "-f"])
            .arg(&file)
            .env("KUBECONFIG", &api.kubeconfig)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "policyc wait: {err}");
        assert!(err.contains("cnp/guard (generation 2) enforced on n1"), "{err}");
        assert!(
            ns.ruleset().contains("cnp/guard ingress[0] (no-b): Pass"),
            "wait returned before the kernel had it"
        );
    }
    let out = Command::new(support::e2e_bin("kubectl"))
        .arg("--kubeconfig")
        .arg(&api.kubeconfig)
        .args(["get", "nodepolicystatus", "n1", "-o", "json"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let reported = v["status"]["policies"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "guard")
        .cloned()
        .unwrap_or_default();
    assert_eq!(reported["kind"], "ClusterNetworkPolicy", "{v}");
    assert_eq!(reported["generation"], 2, "{v}");
    eprintln!("ClusterNetworkPolicy enforced {waited:?} after its CRD was installed (discovery every 30 s)");
}

/// `--log-format json`: every line the agent writes to stderr is one JSON object with the
/// timestamp, level, target and message, and an event's fields beside them (a sync's mode, size
/// and phase times); the level comes from `RUST_LOG` when `--log-level` is not given.
#[test]
fn agent_logs_json() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let Some(api) = ApiServer::start("logs") else { return };
    api.kubectl(&["create", "namespace", "x"], None);
    api.kubectl(
        &["apply", "-f", "-"],
        Some(&POD.replace("NAME", "a").replace("NODE", "n1")),
    );
    let patch = r#"{"status": {"phase": "Running", "podIP": "10.244.1.5", "podIPs": [{"ip": "10.244.1.5"}]}}"#;
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
            patch,
        ],
        None,
    );
    let ns = Netns::new("logs");
    let port = 20000 + ((std::process::id() + 7919) % 20000) as u16;
    let log = api.dir.join("agent.log");
    let agent = Agent(
        Command::new(env!("CARGO_BIN_EXE_policyc-agent"))
            .args([
                "--node-name",
                "n1",
                "--debounce-ms",
                "20",
                "--no-status",
                "--attachment",
                "canal",
                "--log-format",
                "json",
            ])
            .arg("--metrics-addr")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--netns")
            .arg(ns.0.path())
            .env("KUBECONFIG", &api.kubeconfig)
            .env("RUST_LOG", "info")
            .env_remove("POLICYC_LOG")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap(),
    );
    eventually("/readyz", Duration::from_secs(60), || {
        support::http_get(port, Duration::from_secs(5), "/readyz").is_some_and(|(c, _)| c == 200)
    });
    api.kubectl(&["apply", "-f", "-"], Some(&policy("one", 8080)));
    eventually("policy in the kernel", Duration::from_secs(30), || {
        ns.ruleset().contains("x/web ingress[0]")
    });
    // SIGTERM: the agent logs that it leaves the ruleset in place, and exits.
    let mut agent = agent;
    assert!(Command::new("kill")
        .arg(agent.0.id().to_string())
        .status()
        .unwrap()
        .success());
    let _ = agent.0.wait();

    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    for l in &lines {
        let ts = l["timestamp"].as_str().unwrap_or_else(|| panic!("no timestamp: {l}"));
        assert!(ts.parse::<jiff::Timestamp>().is_ok(), "timestamp {ts:?}: {l}");
        assert!(
            ["ERROR", "WARN", "INFO"].contains(&l["level"].as_str().unwrap_or_default()),
            "level: {l}"
        );
        assert!(
            l["target"].as_str().is_some_and(|t| t.starts_with("policyc")),
            "target: {l}"
        );
        assert!(l["message"].is_string(), "message: {l}");
    }
    let with =
        |message: &str| -> Vec<&serde_json::Value> { lines.iter().filter(|l| l["message"] == message).collect() };
    let kinds: Vec<&str> = with("listed").iter().filter_map(|l| l["kind"].as_str()).collect();
    for kind in ["Namespace", "Pod", "NetworkPolicy"] {
        assert!(kinds.contains(&kind), "no `listed` line for {kind}: {text}");
    }
    let applied = with("ruleset applied");
    assert!(applied.len() >= 2, "the first sync and the policy's: {text}");
    for l in &applied {
        assert!(
            ["replace", "chains", "elements"].contains(&l["mode"].as_str().unwrap_or_default()),
            "{l}"
        );
        for field in ["rules", "set_elements", "endpoints", "elements_added"] {
            assert!(l[field].is_u64(), "{field} in {l}");
        }
        for field in ["compile_ms", "apply_ms", "plan_ms", "kernel_ms", "sync_ms"] {
            assert!(l[field].as_f64().is_some_and(|v| v >= 0.0), "{field} in {l}");
        }
    }
    assert_eq!(applied[0]["endpoints"], 1, "{}", applied[0]);
    assert_eq!(with("terminated; leaving the ruleset in place").len(), 1, "{text}");
    assert!(
        lines.iter().all(|l| l["level"] != "ERROR"),
        "no errors expected: {text}"
    );
}
