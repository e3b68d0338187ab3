//! The `policyc` binary as users run it: exit codes, stderr diagnostics, output formats.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn policyc(args: &[&str], stdin: Option<&str>) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_policyc"))
        .args(args)
        .current_dir(repo())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or("").as_bytes()).unwrap();
    drop(input);
    child.wait_with_output().unwrap()
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

const EXAMPLE: &str = "examples/three-tier";

#[test]
fn render_example_per_node_and_all_nodes() {
    let out = policyc(&["render", "-f", EXAMPLE, "--node", "node-1"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let nft = text(&out.stdout);
    assert!(nft.contains("table inet policyc {"));
    assert!(nft.contains("comment \"shop/database ingress[0]\""));

    let dir = std::env::temp_dir().join(format!("policyc-cli-{}", std::process::id()));
    let out = policyc(
        &[
            "render",
            "-f",
            EXAMPLE,
            "--all-nodes",
            "--out-dir",
            dir.to_str().unwrap(),
        ],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let node1 = std::fs::read_to_string(dir.join("node-1.nft")).unwrap();
    assert_eq!(node1, nft, "--all-nodes writes the same ruleset as --node");
    assert!(dir.join("node-2.nft").exists());
    std::fs::remove_dir_all(&dir).unwrap();

    let out = policyc(&["render", "-f", EXAMPLE, "--node", "node-9"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("node \"node-9\" hosts no pods"));
}

#[test]
fn render_formats() {
    for (format, needle) in [
        ("iptables", "*filter"),
        ("ip6tables", "*filter"),
        ("ipset", "create "),
        ("ir-json", "\"endpoints\""),
    ] {
        let out = policyc(&["render", "-f", EXAMPLE, "--format", format], None);
        assert!(out.status.success(), "{format}: {}", text(&out.stderr));
        assert!(text(&out.stdout).contains(needle), "{format}");
    }
}

#[test]
fn bad_objects_are_reported_and_the_rest_rendered() {
    let input = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: broken, namespace: shop}
spec:
  ingress:
  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: fine, namespace: shop}
spec: {podSelector: {}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
";
    let out = policyc(&["render", "-f", "-", "-f", EXAMPLE], Some(input));
    assert!(out.status.success(), "warnings only: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("error: -: NetworkPolicy shop/broken: spec.ingress[0].from[0].ipBlock.except[0]: 192.168.0.0/16 must be a strict subset of cidr 10.0.0.0/8"),
        "{err}"
    );
    assert!(err.contains("skipping apps/v1/Deployment web"), "{err}");
    let nft = text(&out.stdout);
    assert!(nft.contains("shop/fine"), "the valid policy is enforced");
    assert!(!nft.contains("shop/broken"));

    let out = policyc(&["render", "-f", "-"], Some("kind: [oops\n"));
    assert_eq!(out.status.code(), Some(2), "nothing renderable");
    assert!(text(&out.stderr).contains("error: -: document 1: invalid YAML"));

    let out = policyc(&["render", "-f", "does/not/exist.yaml"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("does/not/exist.yaml: cannot read"));
}

#[test]
fn explain_exit_codes_and_reasons() {
    let base = ["explain", "-f", EXAMPLE, "--port", "5432"];
    let mut args = base.to_vec();
    args.extend(["--from", "shop/backend-6f5b4-klmno", "--to", "shop/database-0"]);
    let out = policyc(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("allowed by:  shop/database ingress[0]"), "{t}");
    assert!(t.contains("verdict: ALLOWED"));

    let mut args = base.to_vec();
    args.extend([
        "--from",
        "shop/frontend-7c9d8-abcde",
        "--to",
        "shop/database-0",
        "-o",
        "json",
    ]);
    let out = policyc(&args, None);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["allowed"], false);
    assert_eq!(v["egress"]["isolated"], true);
    assert_eq!(v["egress"]["allowed_by"], serde_json::Value::Null);

    // An external address: only the destination's ingress applies.
    let out = policyc(
        &[
            "explain",
            "-f",
            EXAMPLE,
            "--from",
            "203.0.113.9",
            "--to",
            "shop/frontend-7c9d8-abcde",
            "--port",
            "8080",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("not a pod endpoint"));

    let mut args = base.to_vec();
    args.extend(["--from", "shop/nope", "--to", "shop/database-0"]);
    let out = policyc(&args, None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("pod shop/nope not found"));
}

#[test]
fn matrix_json_is_exact() {
    let out = policyc(&["matrix", "-f", EXAMPLE, "--port", "9000", "-o", "json"], None);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let obj = v.as_object().unwrap();
    assert_eq!(obj.keys().collect::<Vec<_>>(), ["allowed", "pods"]);
    let pods: Vec<&str> = v["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let i = |name: &str| pods.iter().position(|p| *p == name).unwrap();
    let allowed = |s: &str, d: &str| v["allowed"][i(s)][i(d)].as_bool().unwrap();
    assert!(allowed("shop/frontend-7c9d8-abcde", "shop/backend-6f5b4-klmno"));
    assert!(!allowed("shop/backend-6f5b4-klmno", "shop/frontend-7c9d8-abcde"));
    assert!(allowed("shop/database-0", "shop/database-0"), "loopback");

    let out = policyc(&["matrix", "-f", EXAMPLE, "--port", "9000"], None);
    let table = text(&out.stdout);
    assert!(table.starts_with("-\tkube-system/coredns"), "{table}");
}

#[test]
fn explain_and_matrix_walk_the_admin_tiers() {
    let ex = "examples/admin-tiers";
    // Admin Pass -> no NetworkPolicy isolates web -> the Baseline default deny decides.
    let out = policyc(
        &[
            "explain",
            "-f",
            ex,
            "--from",
            "team-b/api-0",
            "--to",
            "team-a/web-0",
            "--port",
            "8080",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("tier walk: Admin anp/apps-decide-app-traffic ingress[0] \"from-apps\" passes -> NetworkPolicy: none -> Baseline cnp/default-deny-apps ingress[0] \"deny-all\" denies"),
        "{t}"
    );
    // Admin Pass -> the NetworkPolicy allows.
    let out = policyc(
        &[
            "explain",
            "-f",
            ex,
            "--from",
            "team-a/web-0",
            "--to",
            "team-b/api-0",
            "--port",
            "8080",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(text(&out.stdout).contains("-> NetworkPolicy team-b/api-from-web allows"));
    // Admin Deny beats everything below it, in JSON too.
    let out = policyc(
        &[
            "explain",
            "-f",
            ex,
            "--from",
            "team-a/web-0",
            "--to",
            "monitoring/prometheus-0",
            "--port",
            "9090",
            "-o",
            "json",
        ],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ingress"]["decided_by"], "admin");
    assert_eq!(v["ingress"]["admin"]["action"], "Deny");
    assert_eq!(
        v["ingress"]["admin"]["rule"],
        "cnp/protect-monitoring ingress[1] \"nobody-else\""
    );

    // The truth table on 9090: only grafana reaches prometheus (and every pod itself).
    let out = policyc(&["matrix", "-f", ex, "--port", "9090", "-o", "json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let m: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let pods: Vec<&str> = m["pods"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap())
        .collect();
    let prom = pods.iter().position(|p| *p == "monitoring/prometheus-0").unwrap();
    for (i, p) in pods.iter().enumerate() {
        let want = *p == "monitoring/grafana-0" || i == prom;
        assert_eq!(m["allowed"][i][prom], want, "{p} -> prometheus");
    }
}

#[test]
fn wait_without_policies_is_an_error_not_a_timeout() {
    let out = policyc(
        &["wait", "--for=enforced", "-f", "examples/three-tier/cluster.yaml"],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("error: no NetworkPolicy or admin policy in the input"),
        "{}",
        text(&out.stderr)
    );
}

/// The probe image's modes: `serve` accepts TCP and echoes UDP; `connect` exits 0 when it
/// got through, 1 when not (a closed port, no echo), 2 on a usage error (SCTP).
#[test]
fn serve_and_connect_probe_tcp_and_udp() {
    // Free ports now (a race with other tests is unlikely on loopback ports picked by the kernel).
    let tcp = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let udp = std::net::UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_policyc"))
        .args(["serve", "--tcp", &tcp.to_string(), "--udp", &udp.to_string()])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(server.stderr.take().unwrap()), &mut ready).unwrap();
    assert_eq!(ready.trim(), "policyc serve: ready");
    let connect = |to: String, proto: &str| {
        let out = policyc(&["connect", &to, "--protocol", proto, "--timeout", "300ms"], None);
        (out.status.code(), text(&out.stdout).trim().to_string())
    };
    let tcp_ok = connect(format!("127.0.0.1:{tcp}"), "tcp");
    let udp_ok = connect(format!("127.0.0.1:{udp}"), "udp");
    let udp_closed = connect(format!("127.0.0.1:{tcp}"), "udp");
    let tcp_closed = connect(format!("127.0.0.1:{udp}"), "tcp");
    server.kill().unwrap();
    server.wait().unwrap();
    // The word says what came back; a refusal is an arrival (verify counts it as reached).
    assert_eq!(tcp_ok, (Some(0), "connected".into()));
    assert_eq!(udp_ok, (Some(0), "answered".into()));
    assert_eq!(udp_closed, (Some(1), "refused".into()));
    assert_eq!(tcp_closed, (Some(1), "refused".into()));
    let sctp = policyc(&["serve", "--sctp", "80"], None);
    assert_eq!(sctp.status.code(), Some(2));
    assert!(text(&sctp.stderr).contains("no SCTP sockets"), "{}", text(&sctp.stderr));
}

/// `verify --cluster` refuses what it cannot run before it touches any cluster.
#[test]
fn verify_cluster_refuses_bad_input_before_touching_the_cluster() {
    let no_cluster = ["--kubeconfig", "/nonexistent/kubeconfig"];
    let run = |args: &[&str]| {
        let mut a = vec!["verify", "--cluster"];
        a.extend_from_slice(&no_cluster);
        a.extend_from_slice(args);
        let out = policyc(&a, None);
        (out.status.code(), text(&out.stderr))
    };
    let (code, err) = run(&[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("needs a --scenario FILE or -f EXPECTATIONS"), "{err}");
    let admin = repo().join("e2e/scenarios/admin/cnp-admin-tier-egress-sctp.yaml");
    let (code, err) = run(&["--scenario", admin.to_str().unwrap()]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("admin policies are cluster-scoped and would act on every pod of the cluster"),
        "{err}"
    );
    let (code, err) = run(&["-f", "/nonexistent/expect.txt"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("reading /nonexistent/expect.txt"), "{err}");
}
