//! The real-node tier: the chart as users install it, on real kubelets with real pods.
//!
//! ```text
//!  e2e/node/images.sh  the policyc image (Debian rootfs + this build's policyc-agent and policyc)
//!                      and a pause image, as OCI archives
//!  e2e/node/up.sh      kube-lab + kube-controller-manager + kube-scheduler; 2 nodes, each a
//!                      kubelet + containerd + flanneld in its own network and mount namespaces
//!  helm install        the unmodified chart, with only DIR/values.yaml (image, pullPolicy Never)
//!  pods                x/a, x/b, y/a serving 80 TCP and UDP (`policyc serve`), probed from
//!                      inside the pods (`kubectl exec … policyc connect`), as upstream e2e does
//!  e2e/node/down.sh    removes it all
//! ```
//!
//! Needs root, Debian's containerd, runc, containernetworking-plugins, jq and mmdebstrap, the
//! Go-built e2e/bin (bash e2e/apiserver/build.sh kube-lab kubectl helm flanneld node) and this
//! build's `policyc-agent` and `policyc`; skipped with the reason otherwise, except under CI.
//! `POLICYC_NODE_KEEP=1` keeps the cluster (and prints its directory) for a look afterwards.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

const TOOLS: [&str; 8] = [
    "containerd",
    "runc",
    "jq",
    "nsenter",
    "unshare",
    "ip",
    "mmdebstrap",
    "objcopy",
];
const GO_BINARIES: [&str; 8] = [
    "kube-lab",
    "kubectl",
    "helm",
    "flanneld",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "pause",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repo")
        .to_path_buf()
}

/// The directory of this build's binaries: target/<profile> (this test is target/<profile>/deps/<test>).
fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable");
    exe.ancestors().nth(2).expect("target/<profile>").to_path_buf()
}

/// Everything the tier needs that a test cannot make itself.
fn ready() -> Result<(), String> {
    policyc_testhost::root()?;
    policyc_testhost::on_path(&TOOLS)?;
    for b in GO_BINARIES {
        let p = repo().join("e2e/bin").join(b);
        if !p.is_file() {
            return Err(format!(
                "{} is not built (bash e2e/apiserver/build.sh kube-lab kubectl helm flanneld node)",
                p.display()
            ));
        }
    }
    for b in ["policyc-agent", "policyc"] {
        let p = bin_dir().join(b);
        if !p.is_file() {
            return Err(format!(
                "{} is not built (cargo build -p policyc-controller -p policyc)",
                p.display()
            ));
        }
    }
    if !Path::new("/usr/lib/cni/bridge").is_file() {
        return Err("needs Debian's containernetworking-plugins (/usr/lib/cni)".into());
    }
    Ok(())
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    out
}

fn run_ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(
        out.status.success(),
        "{cmd:?}: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The images, built from this build's binaries (the rootfs layer is cached).
fn build_images() {
    let t = Instant::now();
    let out = run(Command::new("bash")
        .arg(repo().join("e2e/node/images.sh"))
        .arg(bin_dir())
        .stderr(Stdio::inherit()));
    assert!(out.status.success(), "images.sh failed");
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    eprintln!("images built in {:.1}s", t.elapsed().as_secs_f64());
}

/// A cluster made by up.sh, removed by down.sh when dropped (panics included).
struct Cluster {
    dir: PathBuf,
    kubeconfig: PathBuf,
    nodes: usize,
}

impl Cluster {
    fn up(tag: &str, nodes: usize, attachment: &str) -> Cluster {
        remove_leftovers();
        let dir = std::env::temp_dir().join(format!("policyc-node-{tag}-{}", std::process::id()));
        let t = Instant::now();
        let out = run(Command::new("bash")
            .arg(repo().join("e2e/node/up.sh"))
            .arg(&dir)
            .args(["--nodes", &nodes.to_string(), "--attachment", attachment])
            .stderr(Stdio::inherit()));
        let mut cluster = Cluster {
            dir: dir.clone(),
            kubeconfig: PathBuf::new(),
            nodes,
        };
        if !out.status.success() {
            for log in [
                "kube-lab.log",
                "kube-controller-manager.log",
                "node-1/kubelet.log",
                "node-1/containerd.log",
            ] {
                let text = std::fs::read_to_string(dir.join(log)).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                eprintln!("--- {log} (last lines)");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
            panic!("up.sh failed: {}", out.status);
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        cluster.kubeconfig = PathBuf::from(stdout.lines().last().expect("kubeconfig line").trim());
        assert!(cluster.kubeconfig.is_file(), "up.sh's last line is no file: {stdout}");
        eprintln!(
            "up.sh ({attachment}, {nodes} nodes) took {:.1}s",
            t.elapsed().as_secs_f64()
        );
        cluster
    }

    fn bin(name: &str) -> PathBuf {
        repo().join("e2e/bin").join(name)
    }

    fn kubectl(&self) -> Command {
        let mut c = Command::new(Self::bin("kubectl"));
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        c
    }

    fn kubectl_ok(&self, args: &[&str]) -> String {
        run_ok(self.kubectl().args(args))
    }

    fn get_json(&self, args: &[&str]) -> Value {
        let mut a = vec!["get"];
        a.extend_from_slice(args);
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.kubectl_ok(&a)).expect("kubectl json")
    }

    fn apply(&self, objects: &[Value]) {
        let list = json!({"apiVersion": "v1", "kind": "List", "items": objects});
        let mut child = self
            .kubectl()
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("kubectl apply");
        {
            use std::io::Write as _;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(list.to_string().as_bytes()).expect("write");
        }
        let out = child.wait_with_output().expect("kubectl apply");
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Polls `check` every 0.5 s until it returns `Ok`, panicking with its last error after `limit`.
    fn wait_until<T>(&self, what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
        let t = Instant::now();
        loop {
            match check() {
                Ok(v) => return v,
                Err(e) if t.elapsed() > limit => panic!("{what}: not after {limit:?}: {e}"),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// `policyc wait --for=enforced`: every change so far is in every node's kernel.
    fn wait_enforced(&self) {
        run_ok(
            Command::new(bin_dir().join("policyc"))
                .args(["wait", "--for=enforced", "--timeout", "60s", "--kubeconfig"])
                .arg(&self.kubeconfig),
        );
    }
}

/// Clusters of test processes that died without their Drop (SIGKILL): `policyc-node-*-PID`
/// directories whose PID is gone, removed with down.sh.
fn remove_leftovers() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.strip_prefix("policyc-node-").and_then(|r| r.rsplit('-').next()) else {
            continue;
        };
        if pid.parse::<u32>().is_err() || Path::new("/proc").join(pid).exists() {
            continue;
        }
        eprintln!("removing the leftover cluster {}", e.path().display());
        run(Command::new("bash").arg(repo().join("e2e/node/down.sh")).arg(e.path()));
        let _ = std::fs::remove_dir(e.path());
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if std::env::var_os("POLICYC_NODE_KEEP").is_some() {
            eprintln!("kept the cluster: {} (e2e/node/down.sh {0})", self.dir.display());
            return;
        }
        let t = Instant::now();
        let out = run(Command::new("bash").arg(repo().join("e2e/node/down.sh")).arg(&self.dir));
        eprint!("{}", String::from_utf8_lossy(&out.stderr));
        let _ = std::fs::remove_dir(&self.dir);
        if !out.status.success() && !std::thread::panicking() {
            panic!("down.sh failed: {}", out.status);
        }
        eprintln!("down.sh took {:.1}s ({} nodes)", t.elapsed().as_secs_f64(), self.nodes);
    }
}

/// The ports every probe pod serves, TCP and UDP (`policyc serve`); 53 stands in for DNS.
const SERVED: [u16; 3] = [53, 80, 81];

/// A probe pod of the upstream model on the given node: label `pod: NAME`, a named container
/// port per served port and protocol (`serve-80-tcp`, …).
fn server_pod(ns: &str, name: &str, node: &str, image: &str) -> Value {
    let list = SERVED.map(|p| p.to_string()).join(",");
    let ports: Vec<Value> = [("tcp", "TCP"), ("udp", "UDP")]
        .iter()
        .flat_map(|(n, p)| {
            SERVED
                .into_iter()
                .map(move |port| json!({"name": format!("serve-{port}-{n}"), "containerPort": port, "protocol": p}))
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"pod": name}},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "serve", "image": image, "imagePullPolicy": "Never",
                "command": ["/usr/local/bin/policyc", "serve", "--tcp", list, "--udp", list],
                "ports": ports,
            }],
        },
    })
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
}

/// The upstream model's pods, NAMESPACE/POD -> IP once Running: namespaces x, y, z, pods a,
/// b, c in each, spread over the nodes in turn.
fn start_pods(c: &Cluster, image: &str) -> Vec<(String, String)> {
    let names: Vec<(&str, &str)> = ["x", "y", "z"]
        .iter()
        .flat_map(|ns| ["a", "b", "c"].map(|p| (*ns, p)))
        .collect();
    let namespaces: Vec<Value> = ["x", "y", "z"].map(namespace).to_vec();
    c.apply(&namespaces);
    // A namespace's default ServiceAccount comes from the controller-manager: wait for it.
    for ns in ["x", "y", "z"] {
        c.wait_until("default ServiceAccount", Duration::from_secs(30), || {
            run(c.kubectl().args(["get", "serviceaccount", "default", "-n", ns]))
                .status
                .success()
                .then_some(())
                .ok_or_else(|| "missing".to_string())
        });
    }
    let pods: Vec<Value> = names
        .iter()
        .enumerate()
        .map(|(i, (ns, pod))| server_pod(ns, pod, &format!("node-{}", i % c.nodes + 1), image))
        .collect();
    c.apply(&pods);
    let t = Instant::now();
    let ips = c.wait_until("probe pods Running", Duration::from_secs(180), || {
        let list = c.get_json(&["pods", "-A", "-l", "pod"]);
        let mut ips = Vec::new();
        for p in list["items"].as_array().into_iter().flatten() {
            let name = format!(
                "{}/{}",
                p["metadata"]["namespace"].as_str().unwrap_or(""),
                p["metadata"]["name"].as_str().unwrap_or("")
            );
            let ready = p["status"]["containerStatuses"][0]["ready"] == json!(true);
            match (p["status"]["phase"].as_str(), p["status"]["podIP"].as_str(), ready) {
                (Some("Running"), Some(ip), true) => ips.push((name, ip.to_string())),
                (phase, _, _) => return Err(format!("{name}: {phase:?}")),
            }
        }
        if ips.len() == names.len() {
            ips.sort();
            Ok(ips)
        } else {
            Err(format!("{} of {} pods", ips.len(), names.len()))
        }
    });
    eprintln!("{} probe pods Running in {:.1}s", ips.len(), t.elapsed().as_secs_f64());
    ips
}

/// One cell: source pod, destination pod, port, protocol ("tcp"/"udp").
type Cell = (String, String, u16, &'static str);

/// Probes every cell (every ordered pair of distinct pods × `ports` × TCP and UDP) from inside
/// the source pods: one `kubectl exec` per source, its connects in parallel (1 s timeout).
fn probe_all(c: &Cluster, pods: &[(String, String)], ports: &[u16]) -> Vec<(Cell, bool)> {
    std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (from, _) in pods {
            handles.push(s.spawn(move || {
                let mut script = String::new();
                let mut cells = Vec::new();
                for (to, ip) in pods.iter().filter(|(to, _)| to != from) {
                    for &port in ports {
                        for proto in ["tcp", "udp"] {
                            let i = cells.len();
                            script.push_str(&format!(
                                "(/usr/local/bin/policyc connect {ip}:{port} --protocol {proto} --timeout 1s >/dev/null 2>&1 && echo {i} ok || echo {i} no) &\n"
                            ));
                            cells.push((from.clone(), to.clone(), port, proto));
                        }
                    }
                }
                script.push_str("wait\n");
                let (ns, pod) = from.split_once('/').expect("ns/pod");
                let out = run_ok(c.kubectl().args(["exec", "-n", ns, pod, "--", "sh", "-c", &script]));
                let mut seen = vec![None; cells.len()];
                for line in out.lines() {
                    if let Some((i, r)) = line.split_once(' ') {
                        seen[i.parse::<usize>().expect("cell index")] = Some(r == "ok");
                    }
                }
                cells
                    .into_iter()
                    .zip(seen)
                    .map(|(cell, ok)| {
                        let ok = ok.unwrap_or_else(|| panic!("no result for {cell:?} in {out}"));
                        (cell, ok)
                    })
                    .collect::<Vec<_>>()
            }));
        }
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("probe thread"))
            .collect()
    })
}

/// Probes every cell and compares with `allowed`; the disagreeing cells in the panic.
fn expect_matrix(
    c: &Cluster,
    pods: &[(String, String)],
    step: &str,
    ports: &[u16],
    allowed: impl Fn(&str, &str, u16, &str) -> bool,
) {
    let t = Instant::now();
    let cells = probe_all(c, pods, ports);
    let wrong: Vec<String> = cells
        .iter()
        .filter(|((f, to, port, proto), ok)| *ok != allowed(f, to, *port, proto))
        .map(|((f, to, port, proto), ok)| {
            format!(
                "{f} -> {to} {proto}/{port}: {}",
                if *ok {
                    "connected, should not"
                } else {
                    "blocked, should connect"
                }
            )
        })
        .collect();
    eprintln!(
        "step {step:?}: {} cells ({} allowed) probed in {:.1}s, {} wrong",
        cells.len(),
        cells.iter().filter(|(_, ok)| *ok).count(),
        t.elapsed().as_secs_f64(),
        wrong.len()
    );
    assert!(wrong.is_empty(), "{step}: {wrong:#?}");
}

fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns}, "spec": spec,
    })
}

#[test]
fn chart_on_real_nodes_enforces_between_real_pods() {
    chart_enforces("canal", true);
}

/// The same on plain Flannel nodes (bridge + host-local), without the upgrade.
#[test]
fn chart_on_real_flannel_nodes_enforces_between_real_pods() {
    chart_enforces("flannel", false);
}

fn chart_enforces(attachment: &str, upgrade: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    if !policyc_testhost::require(ready()) {
        return;
    }
    build_images();
    let c = Cluster::up(attachment, 2, attachment);

    // The unmodified chart, with only the values up.sh wrote.
    let t = Instant::now();
    run_ok(
        Command::new(Cluster::bin("helm"))
            .args(["install", "policyc"])
            .arg(repo().join("charts/policyc"))
            .args(["-n", "kube-system", "--wait", "--timeout", "3m", "-f"])
            .arg(c.dir.join("values.yaml"))
            .arg("--kubeconfig")
            .arg(&c.kubeconfig),
    );
    eprintln!("helm install --wait took {:.1}s", t.elapsed().as_secs_f64());

    // One agent pod Running per node, NET_ADMIN only: in the spec the API server stored, and
    // in what the container's process got.
    let pods = c.get_json(&["pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=policyc"]);
    let items = pods["items"].as_array().expect("items");
    assert_eq!(items.len(), c.nodes, "one agent pod per node: {pods}");
    let mut nodes: Vec<&str> = items
        .iter()
        .map(|p| p["spec"]["nodeName"].as_str().unwrap_or(""))
        .collect();
    nodes.sort_unstable();
    assert_eq!(nodes, ["node-1", "node-2"]);
    for p in items {
        let name = p["metadata"]["name"].as_str().expect("name");
        assert_eq!(p["status"]["phase"], "Running", "{name}");
        let sc = &p["spec"]["containers"][0]["securityContext"];
        assert_eq!(sc["capabilities"]["add"], json!(["NET_ADMIN"]), "{name}: {sc}");
        assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}: {sc}");
        assert_ne!(sc["privileged"], json!(true), "{name}");
        let status = c.kubectl_ok(&[
            "exec",
            "-n",
            "kube-system",
            name,
            "--",
            "grep",
            "^Cap",
            "/proc/1/status",
        ]);
        for field in ["CapEff", "CapPrm", "CapBnd"] {
            let line = status.lines().find(|l| l.starts_with(field)).expect(field);
            // CAP_NET_ADMIN is capability 12.
            assert!(
                line.ends_with("0000000000001000"),
                "{name}: {line} (want NET_ADMIN only)\n{status}"
            );
        }
    }
    let statuses = c.wait_until("NodePolicyStatus Ready on every node", Duration::from_secs(60), || {
        let s = c.get_json(&["nodepolicystatuses"]);
        let ready = s["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| {
                i["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True")
            })
            .count();
        (ready == c.nodes).then_some(s).ok_or_else(|| format!("{ready} Ready"))
    });
    eprintln!(
        "agents Running with NET_ADMIN only, {} NodePolicyStatus Ready",
        statuses["items"].as_array().map_or(0, Vec::len)
    );
    for item in statuses["items"].as_array().into_iter().flatten() {
        assert_eq!(item["status"]["attachment"], attachment, "{item}");
    }

    let values = std::fs::read_to_string(c.dir.join("values.yaml")).expect("values.yaml");
    let field = |k: &str| {
        values
            .lines()
            .find_map(|l| l.trim().strip_prefix(k))
            .expect(k)
            .trim()
            .to_string()
    };
    let image = format!("{}:{}", field("repository:"), field("tag:"));
    let pods = start_pods(&c, &image);
    let ip = |name: &str| pods.iter().find(|(n, _)| n == name).expect("pod").1.clone();
    let web = [80, 81];
    let t = Instant::now();

    expect_matrix(&c, &pods, "no policy", &web, |_, _, _, _| true);

    // Upstream: "should support a 'default-deny-ingress' policy".
    c.apply(&[netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    c.wait_enforced();
    expect_matrix(&c, &pods, "default deny ingress in x", &web, |_, to, _, _| {
        !to.starts_with("x/")
    });

    // Namespace and pod selectors in one peer: from pods labelled pod=a in namespace y.
    c.apply(&[netpol(
        "x",
        "allow-y-a",
        json!({
            "podSelector": {"matchLabels": {"pod": "a"}},
            "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                "podSelector": {"matchLabels": {"pod": "a"}},
            }]}],
        }),
    )]);
    c.wait_enforced();
    expect_matrix(
        &c,
        &pods,
        "allow x/a from y pods labelled pod=a",
        &web,
        |from, to, _, _| !to.starts_with("x/") || (to == "x/a" && from == "y/a"),
    );

    // Upstream: "should allow ingress access from updated pod": y/b relabelled mid-test.
    c.kubectl_ok(&["label", "pod", "-n", "y", "b", "pod=a", "--overwrite"]);
    c.wait_enforced();
    expect_matrix(&c, &pods, "y/b relabelled pod=a", &web, |from, to, _, _| {
        !to.starts_with("x/") || (to == "x/a" && (from == "y/a" || from == "y/b"))
    });
    c.kubectl_ok(&["label", "pod", "-n", "y", "b", "pod=b", "--overwrite"]);
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"]);

    // A named port: x/a admits TCP on its port named serve-81-tcp only, from anywhere.
    c.apply(&[netpol(
        "x",
        "named-port",
        json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"ports": [{"port": "serve-81-tcp"}]}]}),
    )]);
    c.wait_enforced();
    expect_matrix(
        &c,
        &pods,
        "named port serve-81-tcp on x/a",
        &web,
        |_, to, port, proto| to != "x/a" || (port == 81 && proto == "tcp"),
    );
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"]);

    // endPort: x/a admits UDP 80-81 (and nothing on TCP).
    c.apply(&[netpol(
        "x",
        "end-port",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"ports": [{"protocol": "UDP", "port": 80, "endPort": 81}]}]}),
    )]);
    c.wait_enforced();
    expect_matrix(&c, &pods, "endPort UDP 80-81 on x/a", &web, |_, to, _, proto| {
        to != "x/a" || proto == "udp"
    });
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"]);

    // ipBlock with except: x/a admits the pod network except y/a's address.
    let except = format!("{}/32", ip("y/a"));
    c.apply(&[netpol(
        "x",
        "ip-block",
        json!({"podSelector": {"matchLabels": {"pod": "a"}},
               "ingress": [{"from": [{"ipBlock": {"cidr": "10.244.0.0/16", "except": [except]}}]}]}),
    )]);
    c.wait_enforced();
    expect_matrix(
        &c,
        &pods,
        "ipBlock 10.244.0.0/16 except y/a on x/a",
        &web,
        |from, to, _, _| !(to == "x/a" && from == "y/a"),
    );
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"]);

    // Upstream: "should enforce policy to allow traffic only from/to ... default-deny-egress".
    c.apply(&[netpol(
        "y",
        "deny-egress",
        json!({"podSelector": {}, "policyTypes": ["Egress"]}),
    )]);
    c.wait_enforced();
    expect_matrix(&c, &pods, "default deny egress in y", &web, |from, _, _, _| {
        !from.starts_with("y/")
    });

    // Egress allowing DNS (port 53, UDP and TCP) only, as upstream's egress tests add it.
    c.apply(&[netpol(
        "y",
        "allow-dns",
        json!({"podSelector": {}, "policyTypes": ["Egress"],
               "egress": [{"ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}]}),
    )]);
    c.wait_enforced();
    expect_matrix(
        &c,
        &pods,
        "deny egress in y, DNS allowed",
        &[53, 80],
        |from, _, port, _| !from.starts_with("y/") || port == 53,
    );
    eprintln!("9 steps in {:.1}s", t.elapsed().as_secs_f64());
    c.kubectl_ok(&["delete", "networkpolicy", "-n", "y", "--all"]);

    if upgrade {
        helm_upgrade_leaks_nothing(&c, &pods, &image);
    }
    verify_cluster(&c, &image, true);
    helm_uninstall_cleans_nodes(&c, &pods);
    verify_cluster(&c, &image, false);
}

/// `nft list tables` in node `i`'s network namespace (that of its holder process, NODE_i_PID).
fn node_tables(c: &Cluster, i: usize) -> String {
    let state = std::fs::read_to_string(c.dir.join("state.env")).expect("state.env");
    let pid = state
        .lines()
        .find_map(|l| l.strip_prefix(&format!("NODE_{i}_PID=")))
        .expect("node pid");
    run_ok(
        Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["nft", "list", "tables"]),
    )
}

/// `helm uninstall` returns the nodes to how they were before the install: each agent, stopped
/// because its DaemonSet is deleted, removes its node's tables; the NodePolicyStatus objects go
/// with the release; a flow denied before the uninstall connects after it.
fn helm_uninstall_cleans_nodes(c: &Cluster, pods: &[(String, String)]) {
    c.kubectl_ok(&["delete", "networkpolicy", "-A", "--all"]);
    c.apply(&[netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    c.wait_enforced();
    let web = [80];
    expect_matrix(
        c,
        pods,
        "default deny ingress in x, before uninstall",
        &web,
        |_, to, _, _| !to.starts_with("x/"),
    );
    for i in 1..=c.nodes {
        assert!(
            node_tables(c, i).contains("table inet policyc"),
            "node-{i} holds no ruleset"
        );
    }
    let agents = || c.get_json(&["pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=policyc"]);
    let t = Instant::now();
    run_ok(
        Command::new(Cluster::bin("helm"))
            .args(["uninstall", "policyc", "-n", "kube-system", "--kubeconfig"])
            .arg(&c.kubeconfig),
    );
    let helm_took = t.elapsed();
    c.wait_until("agent pods gone", Duration::from_secs(60), || {
        let n = agents()["items"].as_array().map_or(0, Vec::len);
        (n == 0).then_some(()).ok_or_else(|| format!("{n} agent pods"))
    });
    let pods_gone = t.elapsed();
    for i in 1..=c.nodes {
        let tables = node_tables(c, i);
        assert!(!tables.contains("policyc"), "node-{i} after uninstall: {tables}");
    }
    c.wait_until("NodePolicyStatus objects deleted", Duration::from_secs(60), || {
        let s = c.get_json(&["nodepolicystatuses"]);
        let n = s["items"].as_array().map_or(0, Vec::len);
        (n == 0).then_some(()).ok_or_else(|| format!("{n} left: {s}"))
    });
    let statuses_gone = t.elapsed();
    eprintln!(
        "helm uninstall returned after {:.1}s; agent pods gone, no policyc table on {} nodes after {:.1}s; \
         NodePolicyStatus objects gone after {:.1}s",
        helm_took.as_secs_f64(),
        c.nodes,
        pods_gone.as_secs_f64(),
        statuses_gone.as_secs_f64()
    );
    // The policy object stays, but nothing enforces it any more.
    expect_matrix(
        c,
        pods,
        "after uninstall (deny ingress in x not enforced)",
        &web,
        |_, _, _, _| true,
    );
}

/// `policyc verify --cluster` as a CI job runs it: an upstream scenario in throwaway namespaces,
/// and expectations between the test's own pods (x/*, y/*, z/*; x denies ingress). With policyc
/// enforcing both pass; without (`enforcing` false) both fail, naming the leaking cells. Either
/// way the run leaves nothing behind and changes no pod of the cluster.
fn verify_cluster(c: &Cluster, image: &str, enforcing: bool) {
    let _ = c.kubectl_ok(&["delete", "networkpolicy", "-n", "x", "--all"]);
    c.apply(&[netpol(
        "x",
        "deny-ingress",
        json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
    )]);
    if enforcing {
        c.wait_enforced();
    }
    let versions = || {
        let pods = c.get_json(&["pods", "-n", "x"]);
        pods["items"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                format!(
                    "{} {} {}",
                    p["metadata"]["name"], p["metadata"]["resourceVersion"], p["spec"]["ephemeralContainers"]
                )
            })
            .collect::<Vec<_>>()
    };
    let before = versions();
    let verify = |args: &[&str]| {
        let t = Instant::now();
        let out = run(Command::new(bin_dir().join("policyc"))
            .args([
                "verify",
                "--cluster",
                "--probe-image",
                image,
                "--wait-timeout",
                "90s",
                "--kubeconfig",
            ])
            .arg(&c.kubeconfig)
            .args(args));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        eprintln!(
            "verify --cluster {} ({:.1}s, exit {:?}):\n{text}{}",
            args.join(" "),
            t.elapsed().as_secs_f64(),
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), text)
    };
    let scenario = repo().join("e2e/scenarios/upstream/egress-cidr-except.yaml");
    let (code, text) = verify(&["--scenario", scenario.to_str().expect("path")]);
    let expectations = c.dir.join("expectations.txt");
    std::fs::write(
        &expectations,
        "* -> * allow\n* -> x/* deny\nx/a -> x/a allow\nx/b -> x/b allow\nx/c -> x/c allow\n",
    )
    .expect("write");
    let (own_code, own) = verify(&[
        "-f",
        expectations.to_str().expect("path"),
        "--ports",
        "80/TCP,81/TCP",
        "-n",
        "x",
        "-n",
        "y",
    ]);
    if enforcing {
        assert_eq!(code, Some(0), "the scenario with policyc enforcing:\n{text}");
        assert!(text.contains("OK: 1 port checks"), "{text}");
        assert_eq!(
            own_code,
            Some(0),
            "the cluster's own pods with policyc enforcing:\n{own}"
        );
        assert!(
            own.contains("80/TCP    ok: packets = IR = expected (36 cells)"),
            "{own}"
        );
        // The denied probes, as flow records read through the API server's pod proxy.
        let t = Instant::now();
        let out = run_ok(
            Command::new(bin_dir().join("policyc"))
                .args([
                    "observe",
                    "--namespace",
                    "x",
                    "--verdict",
                    "denied",
                    "-o",
                    "json",
                    "--last",
                    "1000",
                ])
                .arg("--kubeconfig")
                .arg(&c.kubeconfig),
        );
        let records: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).expect("a record"))
            .collect();
        eprintln!(
            "policyc observe through the API server: {} denied records in x ({:.1}s)",
            records.len(),
            t.elapsed().as_secs_f64()
        );
        assert!(
            records
                .iter()
                .any(|r| r["rule"] == "default deny: isolated by x/deny-ingress"
                    && r["source"]["namespace"] == "y"
                    && r["destination"]["namespace"] == "x"
                    && r["destination"]["port"] == 80),
            "no record of y's denied probes into x:\n{out}"
        );
    } else {
        // Stored but not enforced: x/a reaches x/b although its egress policy excepts x/b.
        assert_eq!(code, Some(1), "the scenario without an enforcer:\n{text}");
        assert!(
            text.contains("x/a -> x/b: packets allow (connected), IR deny, expected deny"),
            "{text}"
        );
        assert_eq!(own_code, Some(1), "the cluster's own pods without an enforcer:\n{own}");
        for cell in ["y/a -> x/a", "x/b -> x/c", "y/b -> x/c"] {
            assert!(
                own.contains(&format!(
                    "{cell}: packets allow (connected), IR deny, expected deny (line 2)"
                )),
                "{cell} not named:\n{own}"
            );
        }
    }
    let left = c.kubectl_ok(&["get", "namespaces", "-l", "policyc.dev/verify", "-o", "name"]);
    assert!(left.trim().is_empty(), "verify left namespaces behind: {left}");
    assert_eq!(versions(), before, "verify --cluster -f changed the cluster's pods");
}

/// One prober in pod `from`: TCP and UDP connects to `to` port 80 in a loop for `secs`
/// seconds; (attempts, connected).
fn prober(c: &Cluster, from: &str, to_ip: &str, secs: u32, timeout: &str) -> (u64, u64) {
    let script = format!(
        "end=$(( $(date +%s) + {secs} )); n=0; ok=0
         while [ \"$(date +%s)\" -lt \"$end\" ]; do
           for p in tcp udp; do
             n=$((n + 1))
             /usr/local/bin/policyc connect {to_ip}:80 --protocol $p --timeout {timeout} >/dev/null 2>&1 && ok=$((ok + 1))
           done
         done
         echo \"$n $ok\""
    );
    let (ns, pod) = from.split_once('/').expect("ns/pod");
    let out = run_ok(c.kubectl().args(["exec", "-n", ns, pod, "--", "sh", "-c", &script]));
    let mut it = out.split_whitespace().map(|n| n.parse::<u64>().expect("count"));
    (it.next().expect("attempts"), it.next().expect("connected"))
}

/// `helm upgrade` to a new image tag rolls the agents while denied pairs (across nodes and
/// within one) and an allowed control pair are probed continuously: no denied connection gets
/// through (the old ruleset stays in the kernel until the new agent replaces it atomically).
fn helm_upgrade_leaks_nothing(c: &Cluster, pods: &[(String, String)], image: &str) {
    let ip = |name: &str| pods.iter().find(|(n, _)| n == name).expect("pod").1.clone();
    c.apply(&[
        netpol(
            "x",
            "deny-ingress",
            json!({"podSelector": {}, "policyTypes": ["Ingress"]}),
        ),
        netpol(
            "x",
            "allow-y-a",
            json!({"podSelector": {"matchLabels": {"pod": "a"}}, "ingress": [{"from": [{
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "y"}},
                "podSelector": {"matchLabels": {"pod": "a"}}}]}]}),
        ),
    ]);
    c.wait_enforced();
    // The new tag: the same image under another name in every node's containerd (no registry
    // to push to); the pod template changes, so the DaemonSet rolls.
    let (repo_name, tag) = image.rsplit_once(':').expect("repo:tag");
    let new_tag = format!("{tag}-next");
    let state = std::fs::read_to_string(c.dir.join("state.env")).expect("state.env");
    for i in 1..=c.nodes {
        let pid = state
            .lines()
            .find_map(|l| l.strip_prefix(&format!("NODE_{i}_PID=")))
            .expect("node pid");
        run_ok(
            Command::new("nsenter")
                .arg(format!("--net=/proc/{pid}/ns/net"))
                .arg(format!("--mount=/proc/{pid}/ns/mnt"))
                .args([
                    "ctr",
                    "--address",
                    "/run/containerd/containerd.sock",
                    "-n",
                    "k8s.io",
                    "images",
                    "tag",
                ])
                .arg(image)
                .arg(format!("{repo_name}:{new_tag}")),
        );
    }
    let old_pods: Vec<String> = c.get_json(&["pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=policyc"])
        ["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|p| p["metadata"]["name"].as_str().expect("name").to_string())
        .collect();
    let secs = 30;
    let x_a = ip("x/a");
    let (denied, upgrade_took) = std::thread::scope(|s| {
        let cross = s.spawn(|| prober(c, "x/b", &x_a, secs, "300ms"));
        let same = s.spawn(|| prober(c, "z/c", &x_a, secs, "300ms"));
        let control = s.spawn(|| prober(c, "y/a", &x_a, secs, "1s"));
        std::thread::sleep(Duration::from_secs(3));
        let t = Instant::now();
        run_ok(
            Command::new(Cluster::bin("helm"))
                .args(["upgrade", "policyc"])
                .arg(repo().join("charts/policyc"))
                .args(["-n", "kube-system", "--wait", "--timeout", "2m", "-f"])
                .arg(c.dir.join("values.yaml"))
                .args(["--set", &format!("image.tag={new_tag}"), "--kubeconfig"])
                .arg(&c.kubeconfig),
        );
        // helm's --wait counts a DaemonSet ready with maxUnavailable pods still rolling: wait
        // for the whole rollout, within the probes' time.
        c.kubectl_ok(&[
            "rollout",
            "status",
            "daemonset/policyc",
            "-n",
            "kube-system",
            "--timeout",
            "60s",
        ]);
        let took = t.elapsed();
        let denied = [
            ("x/b -> x/a (across nodes)", cross.join().expect("prober")),
            ("z/c -> x/a (same node)", same.join().expect("prober")),
            ("y/a -> x/a (allowed control)", control.join().expect("prober")),
        ];
        (denied, took)
    });
    eprintln!(
        "helm upgrade + rollout took {:.1}s; probes over {secs}s: {denied:?}",
        upgrade_took.as_secs_f64()
    );
    assert!(
        upgrade_took < Duration::from_secs(secs as u64 - 3),
        "the rollout outlasted the probes"
    );
    for (pair, (sent, connected)) in &denied[..2] {
        assert!(*sent > 10, "{pair}: only {sent} probes");
        assert_eq!(
            *connected, 0,
            "{pair}: {connected} of {sent} denied connections got through"
        );
    }
    let (sent, connected) = denied[2].1;
    assert!(
        connected * 10 >= sent * 9,
        "control pair: only {connected} of {sent} connected"
    );
    // The agents were replaced, run the new tag and report Ready.
    let now = c.get_json(&["pods", "-n", "kube-system", "-l", "app.kubernetes.io/name=policyc"]);
    let items = now["items"].as_array().expect("items");
    assert_eq!(items.len(), c.nodes);
    for p in items {
        let name = p["metadata"]["name"].as_str().expect("name");
        assert!(!old_pods.iter().any(|o| o == name), "{name} was not replaced");
        let img = p["spec"]["containers"][0]["image"].as_str().expect("image");
        assert!(img.ends_with(&new_tag), "{name}: {img}");
        assert_eq!(p["status"]["phase"], "Running", "{name}");
    }
}
