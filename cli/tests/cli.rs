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
    // A command that fails before reading stdin closes it: a broken pipe is not the test's error.
    let _ = input.write_all(stdin.unwrap_or("").as_bytes());
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

/// The headings of a multi-port table (`# PORT/PROTOCOL` lines).
fn headings(table: &str) -> Vec<&str> {
    table.lines().filter_map(|l| l.strip_prefix("# ")).collect()
}

#[test]
fn matrix_ports_all_has_a_table_per_port_the_policies_name() {
    // The three-tier policies name 53/UDP and 53/TCP (allow-dns), 9000 and 5432, and the named
    // ports http (8080 on the frontends) and api (9000 on the backend).
    let out = policyc(&["matrix", "-f", EXAMPLE, "--ports", "all"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    assert_eq!(
        headings(&table),
        ["53/TCP", "5432/TCP", "8080/TCP", "9000/TCP", "53/UDP"]
    );
    // Each table is the one-port table.
    let single = text(&policyc(&["matrix", "-f", EXAMPLE, "--port", "9000"], None).stdout);
    let section = table
        .split("# 9000/TCP\n")
        .nth(1)
        .unwrap()
        .split("\n\n")
        .next()
        .unwrap();
    assert_eq!(format!("{section}\n"), single);

    // A port asked for is added; a list of ports gives a table each.
    let out = policyc(&["matrix", "-f", EXAMPLE, "--ports", "all", "--port", "80"], None);
    assert_eq!(
        headings(&text(&out.stdout)),
        ["53/TCP", "80/TCP", "5432/TCP", "8080/TCP", "9000/TCP", "53/UDP"]
    );
    let out = policyc(&["matrix", "-f", EXAMPLE, "--port", "9000,5432"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(headings(&text(&out.stdout)), ["9000/TCP", "5432/TCP"]);

    // JSON: one member per port, each exactly the one-port JSON.
    let out = policyc(&["matrix", "-f", EXAMPLE, "--ports", "all", "-o", "json"], None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    keys.sort();
    assert_eq!(keys, ["53/TCP", "53/UDP", "5432/TCP", "8080/TCP", "9000/TCP"]);
    for (port, protocol) in [("53", "UDP"), ("9000", "TCP"), ("8080", "TCP")] {
        let one = policyc(
            &[
                "matrix",
                "-f",
                EXAMPLE,
                "--port",
                port,
                "--protocol",
                protocol,
                "-o",
                "json",
            ],
            None,
        );
        let one: serde_json::Value = serde_json::from_slice(&one.stdout).unwrap();
        assert_eq!(v[format!("{port}/{protocol}")], one, "{port}/{protocol}");
    }

    // Neither --port nor --ports: an error naming the flag.
    let out = policyc(&["matrix", "-f", EXAMPLE], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--port"), "{}", text(&out.stderr));
}

#[test]
fn matrix_group_by_namespace_and_workload() {
    // 9000/TCP: only the two frontends reach the backend; coredns is alone in kube-system (no
    // pair), and a pod to itself is not counted: 4 shop pods make 12 pairs.
    let out = policyc(
        &["matrix", "-f", EXAMPLE, "--port", "9000", "--group-by", "namespace"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        "-\tkube-system\tshop\nkube-system\t-\tnone\nshop\tnone\t2/12\n"
    );
    // 53/UDP: every shop pod reaches CoreDNS (allow-dns), nothing else.
    let out = policyc(
        &[
            "matrix",
            "-f",
            EXAMPLE,
            "--port",
            "53",
            "--protocol",
            "UDP",
            "--group-by",
            "namespace",
        ],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        "-\tkube-system\tshop\nkube-system\t-\tnone\nshop\tall\tnone\n"
    );
    // Several ports: a grouped table under each heading.
    let out = policyc(
        &["matrix", "-f", EXAMPLE, "--ports", "all", "--group-by", "namespace"],
        None,
    );
    let table = text(&out.stdout);
    assert!(
        table.contains("# 8080/TCP\n-\tkube-system\tshop\nkube-system\t-\t2/4\nshop\tnone\tnone\n"),
        "{table}"
    );

    // Workloads: the app label (all shop pods carry app: shop), else the name without the
    // ReplicaSet hash and pod suffix.
    let out = policyc(
        &[
            "matrix",
            "-f",
            EXAMPLE,
            "--port",
            "53",
            "--protocol",
            "UDP",
            "--group-by",
            "workload",
        ],
        None,
    );
    assert_eq!(
        text(&out.stdout),
        "-\tkube-system/coredns\tshop/shop\nkube-system/coredns\t-\tnone\nshop/shop\tall\tnone\n"
    );

    // JSON: the per-pod form unchanged, plus the groups.
    let plain = policyc(&["matrix", "-f", EXAMPLE, "--port", "9000", "-o", "json"], None);
    let plain: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    let out = policyc(
        &[
            "matrix",
            "-f",
            EXAMPLE,
            "--port",
            "9000",
            "--group-by",
            "namespace",
            "-o",
            "json",
        ],
        None,
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["allowed", "groups", "pods"]
    );
    assert_eq!(v["pods"], plain["pods"]);
    assert_eq!(v["allowed"], plain["allowed"]);
    assert_eq!(
        v["groups"],
        serde_json::json!({
            "by": "namespace",
            "groups": ["kube-system", "shop"],
            "of": [0, 1, 1, 1, 1],
            "allowed": [[0, 0], [0, 2]],
            "pairs": [[0, 4], [4, 12]],
        })
    );
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

// === observe: a tiny agent serving /flows ===

/// A flow record as an agent serves it.
fn record(time: &str, node: &str, verdict: &str, src: &str, dst: &str, port: u16) -> serde_json::Value {
    let peer = |name: &str, ip: &str| {
        let (ns, pod) = name.split_once('/').unwrap();
        serde_json::json!({"ip": ip, "kind": "pod", "namespace": ns, "pod": pod})
    };
    let mut dst = peer(dst, "10.244.1.30");
    dst["port"] = port.into();
    let mut r = serde_json::json!({
        "time": time, "node": node, "verdict": verdict, "direction": "ingress",
        "source": peer(src, "10.244.2.20"), "destination": dst,
        "protocol": "TCP", "packets": 2, "bytes": 120, "id": "0123456789ab",
    });
    if verdict == "denied" {
        r["tier"] = "Default".into();
        r["rule"] = "default deny: isolated by shop/database, shop/default-deny-all".into();
        r["isolated_by"] = serde_json::json!(["shop/database", "shop/default-deny-all"]);
    } else {
        r["tier"] = "NetworkPolicy".into();
        r["rule"] = "ingress[0]".into();
        r["policy"] = serde_json::json!({"kind": "NetworkPolicy", "namespace": "shop", "name": "database"});
    }
    r
}

fn ndjson(records: &[&serde_json::Value]) -> String {
    records.iter().map(|r| format!("{r}\n")).collect()
}

/// How the test agent answers one request.
enum Answer {
    /// 200 with a Content-Length body.
    Body(String),
    /// 200, chunked: each piece a chunk, with a pause between them, then the end.
    Chunks(Vec<String>),
    /// 200, chunked: the first piece, then nothing until the gate opens (or closes), then the
    /// rest and the end.
    Gated(String, std::sync::mpsc::Receiver<()>, Vec<String>),
    /// Another status line and a text body.
    Status(&'static str, &'static str),
}

const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nTransfer-Encoding: chunked\r\n\r\n";

/// Serves one connection per answer on a loopback port; the join handle gives the request
/// lines (`GET /flows?... HTTP/1.1`) received.
fn agent(answers: Vec<Answer>) -> (u16, std::thread::JoinHandle<Vec<String>>) {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let handle = std::thread::spawn(move || {
        let mut got = Vec::new();
        for answer in answers {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap();
            got.push(line.trim().to_string());
            loop {
                let mut h = String::new();
                reader.read_line(&mut h).unwrap();
                if h.trim().is_empty() {
                    break;
                }
            }
            let mut out = stream;
            match answer {
                Answer::Body(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    out.write_all(head.as_bytes()).unwrap();
                    out.write_all(body.as_bytes()).unwrap();
                }
                Answer::Chunks(pieces) => {
                    out.write_all(CHUNKED).unwrap();
                    for p in pieces {
                        write!(out, "{:x}\r\n{p}\r\n", p.len()).unwrap();
                        out.flush().unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(150));
                    }
                    out.write_all(b"0\r\n\r\n").unwrap();
                }
                Answer::Gated(first, gate, rest) => {
                    out.write_all(CHUNKED).unwrap();
                    write!(out, "{:x}\r\n{first}\r\n", first.len()).unwrap();
                    out.flush().unwrap();
                    let _ = gate.recv();
                    for p in rest {
                        // The client may be gone (Ctrl-C): errors end the answer.
                        if write!(out, "{:x}\r\n{p}\r\n", p.len()).is_err() {
                            break;
                        }
                    }
                    let _ = out.write_all(b"0\r\n\r\n");
                }
                Answer::Status(status, body) => {
                    let head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n\r\n", body.len());
                    out.write_all(head.as_bytes()).unwrap();
                    out.write_all(body.as_bytes()).unwrap();
                }
            }
        }
        got
    });
    (port, handle)
}

/// A loopback port nothing listens on.
fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn observe_merges_the_agents_records_by_time() {
    let r1 = record(
        "2026-12-05T05:00:01.100Z",
        "node-1",
        "denied",
        "shop/frontend-7c9d8-abcde",
        "shop/database-0",
        5432,
    );
    let r2 = record(
        "2026-12-05T05:00:02.200Z",
        "node-2",
        "denied",
        "shop/backend-6f5b4-klmno",
        "shop/frontend-7c9d8-fghij",
        8080,
    );
    let r3 = record(
        "2026-12-05T05:00:03.300Z",
        "node-1",
        "denied",
        "shop/frontend-7c9d8-abcde",
        "shop/database-0",
        5432,
    );
    // An agent that ignores the filter: the client applies it again.
    let allowed = record(
        "2026-12-05T05:00:02.500Z",
        "node-1",
        "allowed",
        "shop/backend-6f5b4-klmno",
        "shop/database-0",
        5432,
    );
    let body1 = ndjson(&[&r1, &allowed, &r3]);
    let body2 = ndjson(&[&r2]);
    let (p1, a1) = agent(vec![Answer::Body(body1.clone()), Answer::Body(body1)]);
    let (p2, a2) = agent(vec![Answer::Body(body2.clone()), Answer::Body(body2)]);
    let agents = format!("127.0.0.1:{p1},127.0.0.1:{p2}");
    let args = [
        "observe",
        "--agents",
        &agents,
        "--verdict",
        "denied",
        "--namespace",
        "shop",
    ];

    let out = policyc(&args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let table = text(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 4, "a header and three records:\n{table}");
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "TIME",
            "NODE",
            "SOURCE",
            "DESTINATION",
            "PROTO",
            "VERDICT",
            "TIER",
            "POLICY",
            "RULE",
            "PACKETS"
        ]
    );
    let row: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(
        row[..9],
        [
            "05:00:01.100",
            "node-1",
            "shop/frontend-7c9d8-abcde",
            "->",
            "shop/database-0:5432",
            "TCP",
            "DENIED",
            "Default",
            "-"
        ],
        "{table}"
    );
    assert!(
        lines[1].contains("default deny: isolated by shop/database, shop/default-deny-all"),
        "{table}"
    );
    assert!(lines[1].ends_with(" 2"), "packets last: {table}");
    assert!(lines[2].starts_with("05:00:02.200 node-2"), "merged by time:\n{table}");
    assert!(lines[3].starts_with("05:00:03.300 node-1"), "{table}");
    let col = |l: &str| l.find("->").unwrap();
    assert!(lines[1..].iter().all(|l| col(l) == col(lines[1])), "aligned:\n{table}");

    let mut json_args = args.to_vec();
    json_args.extend(["-o", "json", "--last", "2"]);
    let out = policyc(&json_args, None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout),
        ndjson(&[&r2, &r3]),
        "the last two of the merge, exactly as received"
    );

    for requests in [a1.join().unwrap(), a2.join().unwrap()] {
        assert_eq!(
            requests,
            [
                "GET /flows?namespace=shop&verdict=denied HTTP/1.1",
                "GET /flows?limit=2&namespace=shop&verdict=denied HTTP/1.1"
            ]
        );
    }
}

#[test]
fn observe_names_an_agent_it_cannot_read_and_prints_the_others() {
    let r = record(
        "2026-12-05T05:00:01.100Z",
        "node-1",
        "allowed",
        "shop/backend-6f5b4-klmno",
        "shop/database-0",
        5432,
    );
    let (good, server) = agent(vec![Answer::Body(ndjson(&[&r]))]);
    let (bad, server404) = agent(vec![Answer::Status("404 Not Found", "no such path\n")]);
    let dead = dead_port();
    let agents = format!("127.0.0.1:{dead},127.0.0.1:{good},127.0.0.1:{bad}");
    let out = policyc(&["observe", "--agents", &agents, "--pod", "shop/database-0"], None);
    assert_eq!(out.status.code(), Some(0), "one agent answered: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(err.contains(&format!("agent 127.0.0.1:{dead}: connecting")), "{err}");
    assert!(
        err.contains(&format!("agent 127.0.0.1:{bad}: HTTP 404 Not Found: no such path")),
        "{err}"
    );
    let table = text(&out.stdout);
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        row[6..],
        ["ALLOWED", "NetworkPolicy", "shop/database", "ingress[0]", "2"],
        "{table}"
    );
    assert_eq!(server.join().unwrap(), ["GET /flows?pod=shop%2Fdatabase-0 HTTP/1.1"]);
    server404.join().unwrap();

    let out = policyc(&["observe", "--agents", &format!("127.0.0.1:{dead}")], None);
    assert_eq!(out.status.code(), Some(2), "no agent could be read");
    assert!(
        text(&out.stderr).contains("error: no agent could be read"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn observe_follow_prints_streamed_records_as_they_come() {
    let r1 = record(
        "2026-12-05T05:00:01.100Z",
        "node-1",
        "denied",
        "shop/frontend-7c9d8-abcde",
        "shop/database-0",
        5432,
    );
    let r2 = record(
        "2026-12-05T05:00:09.900Z",
        "node-1",
        "allowed",
        "shop/backend-6f5b4-klmno",
        "shop/database-0",
        5432,
    );
    // The second record split across chunks: lines are not chunks.
    let second = format!("{r2}\n");
    let (head, tail) = second.split_at(40);
    let (port, server) = agent(vec![Answer::Chunks(vec![
        format!("{r1}\n"),
        head.to_string(),
        tail.to_string(),
    ])]);
    let agents = format!("127.0.0.1:{port}");
    let out = policyc(
        &["observe", "--agents", &agents, "-f", "--last", "0", "-o", "json"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, [r1.clone(), r2]);
    assert_eq!(server.join().unwrap(), ["GET /flows?limit=0&follow=true HTTP/1.1"]);

    // A record is printed while the stream is still open, and Ctrl-C (SIGINT) ends the follow
    // cleanly.
    let (open, gate) = std::sync::mpsc::channel();
    let (port, server) = agent(vec![Answer::Gated(format!("{r1}\n"), gate, vec![format!("{r1}\n")])]);
    let mut child = Command::new(env!("CARGO_BIN_EXE_policyc"))
        .args(["observe", "--agents", &format!("127.0.0.1:{port}"), "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut header = String::new();
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut header).unwrap();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    assert!(header.starts_with("TIME "), "{header}");
    assert!(first.starts_with("05:00:01.100 node-1"), "{first}");
    let kill = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let status = child.wait().unwrap();
    drop(open);
    server.join().unwrap();
    assert_eq!(status.code(), Some(0), "Ctrl-C ends a follow cleanly");
}

// === explain --flow ===

#[test]
fn explain_a_flow_record_and_whether_the_objects_agree() {
    // Denied: frontend may reach the database by no rule; its egress is isolated.
    let denied = serde_json::json!({
        "time": "2026-12-05T05:00:01.100Z", "node": "node-1", "verdict": "denied",
        "direction": "egress", "tier": "Default",
        "rule": "default deny: isolated by shop/allow-dns, shop/default-deny-all, shop/frontend",
        "isolated_by": ["shop/allow-dns", "shop/default-deny-all", "shop/frontend"],
        "source": {"ip": "10.244.1.10", "kind": "pod", "namespace": "shop", "pod": "frontend-7c9d8-abcde"},
        "destination": {"ip": "10.244.1.30", "port": 5432, "kind": "pod", "namespace": "shop", "pod": "database-0"},
        "protocol": "TCP", "packets": 1, "bytes": 60, "id": "0123456789ab"
    });
    let out = policyc(&["explain", "-f", EXAMPLE, "--flow", "-"], Some(&format!("{denied}\n")));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("shop/frontend-7c9d8-abcde (10.244.1.10, node node-1) -> shop/database-0"),
        "{t}"
    );
    assert!(
        t.contains("the record (node node-1, egress of shop/frontend-7c9d8-abcde) says: denied by default deny: isolated by shop/allow-dns, shop/default-deny-all, shop/frontend"),
        "{t}"
    );
    assert!(t.contains("the objects explain it the same: AGREES"), "{t}");

    // Allowed: backend -> database by the database policy's first ingress rule (a file, NDJSON).
    let allowed = record(
        "2026-12-05T05:00:02.200Z",
        "node-1",
        "allowed",
        "shop/backend-6f5b4-klmno",
        "shop/database-0",
        5432,
    );
    let file = std::env::temp_dir().join(format!("policyc-flow-{}.ndjson", std::process::id()));
    std::fs::write(&file, ndjson(&[&allowed, &denied])).unwrap();
    let out = policyc(&["explain", "-f", EXAMPLE, "--flow", file.to_str().unwrap()], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(t.contains("allowed by:  shop/database ingress[0]"), "{t}");
    assert!(
        t.contains("says: allowed by NetworkPolicy shop/database ingress[0]"),
        "{t}"
    );
    assert!(t.contains("AGREES"), "{t}");

    // A record the objects explain differently: another rule, and in JSON.
    let mut other = allowed.clone();
    other["rule"] = "ingress[1]".into();
    let out = policyc(
        &["explain", "-f", EXAMPLE, "--flow", "-", "-o", "json"],
        Some(&other.to_string()),
    );
    assert_eq!(out.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["record"]["agrees"], false);
    assert_eq!(
        v["record"]["differences"][0],
        "the record names NetworkPolicy shop/database ingress[1], the objects NetworkPolicy shop/database ingress[0]"
    );
    // The objects deny what the record allowed (e.g. a policy changed since).
    let mut stale = denied.clone();
    stale["verdict"] = "allowed".into();
    stale["tier"] = "NetworkPolicy".into();
    stale["rule"] = "egress[0]".into();
    stale["policy"] = serde_json::json!({"kind": "NetworkPolicy", "namespace": "shop", "name": "frontend"});
    let out = policyc(&["explain", "-f", EXAMPLE, "--flow", "-"], Some(&stale.to_string()));
    assert_eq!(
        out.status.code(),
        Some(1),
        "the objects' verdict decides the exit status"
    );
    let t = text(&out.stdout);
    assert!(
        t.contains("the objects explain it differently: denied by default deny"),
        "{t}"
    );
    assert!(
        t.contains("- the record says allowed, the objects say denied for egress of shop/frontend-7c9d8-abcde"),
        "{t}"
    );
    std::fs::remove_file(&file).unwrap();

    // Neither form of a flow, or both.
    let out = policyc(&["explain", "-f", EXAMPLE, "--from", "shop/database-0"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("missing: --to, --port"),
        "{}",
        text(&out.stderr)
    );
    let out = policyc(&["explain", "-f", EXAMPLE, "--flow", "-", "--port", "80"], Some("{}"));
    assert_eq!(out.status.code(), Some(2));
    let out = policyc(&["explain", "-f", EXAMPLE, "--flow", "-"], Some("{\"time\": 1}"));
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("-: not a flow record"),
        "{}",
        text(&out.stderr)
    );
}

/// A stand-in API server: answers each request with `route(request line)` (status, body), one
/// request per connection, for the rest of the test process; the request lines are kept.
fn api_server(
    route: impl Fn(&str) -> (&'static str, String) + Send + 'static,
) -> (u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    use std::io::{BufRead as _, BufReader};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let log = seen.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let line = line.trim().to_string();
            let (status, body) = route(&line);
            log.lock().unwrap().push(line);
            let mut out = stream;
            let _ = write!(
                out,
                "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    (port, seen)
}

/// Without --agents: the agent pods are listed and read through the API server's pod proxy;
/// --node picks one node's agent.
#[test]
fn observe_reads_the_agents_through_the_pod_proxy() {
    let r = record(
        "2026-12-05T05:00:01.100Z",
        "node-1",
        "allowed",
        "shop/backend-6f5b4-klmno",
        "shop/database-0",
        5432,
    );
    let body = ndjson(&[&r]);
    let pod = |name: &str, node: &str| {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "kube-system"},
            "spec": {"nodeName": node, "containers": []},
            "status": {"phase": "Running"}
        })
    };
    let pods = serde_json::json!({
        "kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": "1"},
        "items": [pod("policyc-a", "node-1"), pod("policyc-b", "node-2")]
    })
    .to_string();
    let (port, seen) = api_server(move |line| {
        if line.starts_with("GET /api/v1/namespaces/kube-system/pods?") {
            ("200 OK", pods.clone())
        } else if line.starts_with("GET /api/v1/namespaces/kube-system/pods/policyc-a:9108/proxy/flows") {
            ("200 OK", body.clone())
        } else {
            (
                "503 Service Unavailable",
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"error trying to reach service: dial tcp 10.244.2.5:9108: connect: connection refused","reason":"ServiceUnavailable","code":503}"#.into(),
            )
        }
    });
    let kubeconfig = std::env::temp_dir().join(format!("policyc-observe-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let kc = kubeconfig.to_str().unwrap();

    let out = policyc(
        &["observe", "--kubeconfig", kc, "-o", "json", "--verdict", "allowed"],
        None,
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let got: Vec<serde_json::Value> = text(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got, [r]);
    let err = text(&out.stderr);
    assert!(
        err.contains("agent kube-system/policyc-b (node node-2): the API server's pod proxy answered 503 ServiceUnavailable: error trying to reach service: dial tcp 10.244.2.5:9108: connect: connection refused\n"),
        "the unreachable agent is named: {err}"
    );
    let requests = seen.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .any(|l| l.contains("labelSelector=app.kubernetes.io%2Fname%3Dpolicyc")),
        "{requests:?}"
    );
    assert!(
        requests.contains(
            &"GET /api/v1/namespaces/kube-system/pods/policyc-a:9108/proxy/flows?verdict=allowed HTTP/1.1".to_string()
        ),
        "{requests:?}"
    );

    // --node node-2: only that agent, which cannot be read: exit status 2.
    seen.lock().unwrap().clear();
    let out = policyc(&["observe", "--kubeconfig", kc, "--node", "node-2"], None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no agent could be read"),
        "{}",
        text(&out.stderr)
    );
    let requests = seen.lock().unwrap().clone();
    assert!(!requests.iter().any(|l| l.contains("policyc-a")), "{requests:?}");
    let out = policyc(&["observe", "--kubeconfig", kc, "--node", "node-9"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("on node node-9"), "{}", text(&out.stderr));
    std::fs::remove_file(&kubeconfig).unwrap();
}

/// `explain --cluster` reads the live objects (here a stand-in API server: no admin policy CRDs).
#[test]
fn explain_a_flow_record_against_the_live_objects() {
    let list = |kind: &str, items: serde_json::Value| {
        serde_json::json!({"kind": kind, "apiVersion": "v1", "metadata": {"resourceVersion": "7"}, "items": items})
            .to_string()
    };
    let pod = |name: &str, ip: &str| {
        serde_json::json!({
            "metadata": {"name": name, "namespace": "shop", "labels": {"app": name}},
            "spec": {"nodeName": "node-1", "containers": [{"name": "c"}]},
            "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}
        })
    };
    let namespaces = list(
        "NamespaceList",
        serde_json::json!([{"metadata": {"name": "shop", "labels": {"kubernetes.io/metadata.name": "shop"}}}]),
    );
    let pods = list(
        "PodList",
        serde_json::json!([pod("web", "10.244.1.5"), pod("db", "10.244.1.6")]),
    );
    let policies = serde_json::json!({
        "kind": "NetworkPolicyList", "apiVersion": "networking.k8s.io/v1", "metadata": {"resourceVersion": "7"},
        "items": [{
            "metadata": {"name": "deny", "namespace": "shop", "generation": 1},
            "spec": {"podSelector": {"matchLabels": {"app": "db"}}, "policyTypes": ["Ingress"]}
        }]
    })
    .to_string();
    let (port, _seen) = api_server(move |line| {
        let path = line.split_whitespace().nth(1).unwrap_or("");
        let path = path.split('?').next().unwrap();
        match path {
            "/api/v1/namespaces" => ("200 OK", namespaces.clone()),
            "/api/v1/pods" => ("200 OK", pods.clone()),
            "/apis/networking.k8s.io/v1/networkpolicies" => ("200 OK", policies.clone()),
            _ => (
                "404 Not Found",
                r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"not found","reason":"NotFound","code":404}"#.into(),
            ),
        }
    });
    let kubeconfig = std::env::temp_dir().join(format!("policyc-explain-kubeconfig-{}", std::process::id()));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: c, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{}}}}]\ncontexts: [{{name: x, context: {{cluster: c, user: u}}}}]\ncurrent-context: x\n"
        ),
    )
    .unwrap();
    let denied = serde_json::json!({
        "time": "2026-12-05T05:00:01.100Z", "node": "node-1", "verdict": "denied",
        "direction": "ingress", "tier": "Default", "rule": "default deny: isolated by shop/deny",
        "isolated_by": ["shop/deny"],
        "source": {"ip": "10.244.1.5", "kind": "pod", "namespace": "shop", "pod": "web"},
        "destination": {"ip": "10.244.1.6", "port": 5432, "kind": "pod", "namespace": "shop", "pod": "db"},
        "protocol": "TCP", "packets": 1, "bytes": 60, "id": "0123456789ab"
    });
    let kc = kubeconfig.to_str().unwrap();
    let out = policyc(
        &["explain", "--cluster", "--kubeconfig", kc, "--flow", "-"],
        Some(&denied.to_string()),
    );
    std::fs::remove_file(&kubeconfig).unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let t = text(&out.stdout);
    assert!(
        t.contains("the record (node node-1, ingress of shop/db) says: denied by default deny: isolated by shop/deny"),
        "{t}"
    );
    assert!(t.contains("the live objects explain it the same: AGREES"), "{t}");

    let out = policyc(&["explain", "--cluster", "-f", EXAMPLE, "--flow", "-"], Some("{}"));
    assert_eq!(out.status.code(), Some(2), "--cluster or -f, not both");
}

/// Records of the admin tiers (an Admin Deny, an Admin Pass, a Baseline Deny) and of a verdict
/// point explain does not model (the source guard).
#[test]
fn explain_flow_records_of_the_admin_tiers_and_the_guard() {
    let rec = |verdict: &str,
               tier: &str,
               policy: serde_json::Value,
               rule: &str,
               src: (&str, &str),
               dst: (&str, &str),
               port: u16| {
        let peer = |(name, ip): (&str, &str)| {
            let (ns, pod) = name.split_once('/').unwrap();
            serde_json::json!({"ip": ip, "kind": "pod", "namespace": ns, "pod": pod})
        };
        let mut d = peer(dst);
        d["port"] = port.into();
        let mut r = serde_json::json!({
            "time": "2026-12-05T05:00:01.100Z", "node": "node-1", "verdict": verdict, "direction": "ingress",
            "tier": tier, "rule": rule, "source": peer(src), "destination": d,
            "protocol": "TCP", "packets": 1, "bytes": 60, "id": "0123456789ab"
        });
        if !policy.is_null() {
            r["policy"] = policy;
        }
        r.to_string()
    };
    let (web, api, prom) = (
        ("team-a/web-0", "10.244.1.10"),
        ("team-b/api-0", "10.244.2.10"),
        ("monitoring/prometheus-0", "10.244.1.3"),
    );
    let cnp = |name: &str| serde_json::json!({"kind": "ClusterNetworkPolicy", "name": name});
    let anp = serde_json::json!({"kind": "AdminNetworkPolicy", "name": "apps-decide-app-traffic"});
    let run = |record: String| {
        let out = policyc(&["explain", "-f", "examples/admin-tiers", "--flow", "-"], Some(&record));
        (out.status.code(), text(&out.stdout))
    };
    let (code, t) = run(rec(
        "denied",
        "Admin",
        cnp("protect-monitoring"),
        "ingress[1] (nobody-else): Deny",
        web,
        prom,
        9090,
    ));
    assert_eq!(code, Some(1));
    assert!(
        t.contains("says: denied by ClusterNetworkPolicy protect-monitoring ingress[1] (Admin tier)\nthe objects explain it the same: AGREES"),
        "{t}"
    );
    let (code, t) = run(rec(
        "passed",
        "Admin",
        anp,
        "ingress[0] (from-apps): Pass",
        api,
        web,
        8080,
    ));
    assert_eq!(code, Some(1), "passed on, then denied by the Baseline tier");
    assert!(
        t.contains("says: passed by AdminNetworkPolicy apps-decide-app-traffic ingress[0] (Admin tier)"),
        "{t}"
    );
    assert!(t.contains("AGREES"), "{t}");
    let (_, t) = run(rec(
        "denied",
        "Baseline",
        cnp("default-deny-apps"),
        "ingress[0] (deny-all): Deny",
        api,
        web,
        8080,
    ));
    assert!(
        t.contains("(Baseline tier)\nthe objects explain it the same: AGREES"),
        "{t}"
    );
    // The record says the Baseline denied, the objects say an Admin rule did.
    let (_, t) = run(rec(
        "denied",
        "Baseline",
        cnp("default-deny-apps"),
        "ingress[0] (deny-all): Deny",
        web,
        prom,
        9090,
    ));
    assert!(
        t.contains("DIFFERS\n  - the record's tier is Baseline, the objects decide in Admin"),
        "{t}"
    );
    let (code, t) = run(rec(
        "denied",
        "Guard",
        serde_json::Value::Null,
        "spoofed source: not the pod's address",
        api,
        web,
        8080,
    ));
    assert_eq!(code, Some(1));
    assert!(
        t.contains("says: denied by spoofed source: not the pod's address\nexplain models the policies only, not this verdict point; the objects' verdict is DENIED"),
        "{t}"
    );
}
