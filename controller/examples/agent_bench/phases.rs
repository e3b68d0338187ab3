//! The benchmark's phases: latency on a small cluster, scale on the large one, activity.

use super::*;

pub(crate) async fn latency(
    opts: &Options,
    agent_bin: &PathBuf,
    api: &ApiServer,
    client: &Client,
) -> anyhow::Result<(Vec<Row>, Vec<String>)> {
    let n = if opts.quick { 20 } else { 100 };
    let pp = PostParams::default();
    let patch = PatchParams::default();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(&pp, &serde_json::from_value(json!({"metadata": {"name": "x"}}))?)
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "x");
    for (name, node, app, ip) in [
        ("a", "n1", "a", "10.244.1.5"),
        ("b", "n1", "b", "10.244.1.6"),
        ("c", "n2", "b", "10.244.2.7"),
    ] {
        pods.create(&pp, &pod(name, "x", node, app)?).await?;
        pods.patch_status(name, &patch, &Patch::Merge(running(&[ip]))).await?;
    }

    let ns = Netns::create(format!("pcb-{}", std::process::id()))?;
    let (mut _monitor, mut rx) = monitor(&ns)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let agent = start_agent(agent_bin, api, &ns, "n1", "n1", None)?;
    let t = Instant::now();
    while !ready(agent.port) {
        if t.elapsed() > Duration::from_secs(60) {
            bail!("agent not ready after 60 s, see {}", agent.log.display());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    while rx.try_recv().is_ok() {}
    let before = metrics(agent.port)?;
    let mut notes = Vec::new();

    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), "x");
    policies.create(&pp, &policy("web", 20_000)?).await?;
    settle(&mut rx).await;
    // Each new policy is deleted again after its commit, so every sample sees the same ruleset
    // (one policy, three pods) and a pod is never selected by more than two policies.
    let mut create = Row {
        what: "NetworkPolicy create".into(),
        samples: Vec::new(),
    };
    let mut delete = Row {
        what: "NetworkPolicy delete".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let name = format!("lat-{i}");
        let p = policy(&name, 10_000 + i as u16)?;
        let id = format!("x/{name} ");
        let what = format!("creating {name}");
        create.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&id), async {
                policies.create(&pp, &p).await.map(drop)
            })
            .await?,
        );
        let what = format!("deleting {name}");
        delete.samples.push(
            measure(&mut rx, &what, |c| c.mentions("add table") && !c.mentions(&id), async {
                policies.delete(&name, &Default::default()).await.map(drop)
            })
            .await?,
        );
    }
    let mut update = Row {
        what: "NetworkPolicy update (port)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let port = 20_001 + i as u16;
        let body = json!({"spec": {"ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": port}]}]}});
        let expect = format!("dport {port} ");
        let what = format!("updating web to port {port}");
        update.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&expect), async {
                policies.patch("web", &patch, &Patch::Merge(&body)).await.map(drop)
            })
            .await?,
        );
    }
    let mid = metrics(agent.port)?;
    if let Some(d) = histogram_mean(&mid, &before, "policyc_sync_duration_seconds") {
        notes.push(format!(
            "policy changes: the agent's own compile+apply (policyc_sync_duration_seconds) averaged {} ms",
            ms(d)
        ));
    }

    // Policy updates rewrite chains in place, and `nft monitor` (nftables 1.0.6) forgets a named
    // set once it sees a rule deleted that looks it up: it would no longer print that set's
    // elements. A new monitor starts from the table as it is.
    (_monitor, rx) = monitor(&ns)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ip = Row {
        what: "pod on n1 gets its IP (new pod)".into(),
        samples: Vec::new(),
    };
    let mut label = Row {
        what: "pod label change (leaves a peer selector)".into(),
        samples: Vec::new(),
    };
    for i in 0..n / 2 {
        let name = format!("churn-{i}");
        let addr = format!("10.244.1.{}", 10 + i);
        pods.create(&pp, &pod(&name, "x", "n1", "b")?).await?;
        // A pod without an IP is not an endpoint yet: no commit is expected for the create.
        if settle(&mut rx).await > 0 {
            notes.push(format!("creating pod {name} without an IP made a commit"));
        }
        let status = running(&[&addr]);
        let (added, removed) = (format!("{addr} "), format!("{addr} "));
        let what = format!("setting the IP of {name}");
        ip.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&added), async {
                pods.patch_status(&name, &patch, &Patch::Merge(&status)).await.map(drop)
            })
            .await?,
        );
        let relabel = json!({"metadata": {"labels": {"app": "d"}}});
        let what = format!("relabelling {name}");
        label.samples.push(
            measure(&mut rx, &what, |c| c.mentions(&removed), async {
                pods.patch(&name, &patch, &Patch::Merge(&relabel)).await.map(drop)
            })
            .await?,
        );
    }
    let after = metrics(agent.port)?;
    if let Some(d) = histogram_mean(&after, &mid, "policyc_sync_duration_seconds") {
        notes.push(format!(
            "pod churn: the agent's own compile+apply (policyc_sync_duration_seconds) averaged {} ms",
            ms(d)
        ));
    }
    let applies = |m: &BTreeMap<String, f64>, mode: &str| {
        m.get(&format!("policyc_applies_total{{mode=\"{mode}\"}}"))
            .copied()
            .unwrap_or(0.0)
    };
    notes.push(format!(
        "agent applies during the pod churn: {} elements, {} replace, {} unchanged (policyc_applies_total)",
        applies(&after, "elements") - applies(&mid, "elements"),
        applies(&after, "replace") - applies(&mid, "replace"),
        applies(&after, "unchanged") - applies(&mid, "unchanged"),
    ));
    let m = mem(agent.child.pid())?;
    notes.push(format!(
        "agent for n1 after the latency runs: VmRSS {:.1} MiB, VmHWM {:.1} MiB",
        m.rss as f64 / 1024.0,
        m.hwm as f64 / 1024.0
    ));
    let mut both = Row {
        what: "pod churn (both kinds)".into(),
        samples: Vec::new(),
    };
    for (a, b) in ip.samples.iter().zip(&label.samples) {
        for s in [a, b] {
            both.samples.push(s.clone());
        }
    }
    drop(agent);
    Ok((vec![create, delete, update, ip, label, both], notes))
}

/// Creates every item (then applies its status, when `status` gives one), `CONCURRENCY` requests
/// at a time; returns the errors.
pub(crate) async fn create_all<K, A, S>(items: Vec<K>, api_for: A, status: S) -> Vec<String>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + serde::Serialize,
    A: Fn(&str) -> Api<K>,
    S: Fn(&K) -> Option<Value>,
{
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let (pp, patch, api_for, status) = (&pp, &patch, &api_for, &status);
    futures::stream::iter(items)
        .map(|item| async move {
            let ns = item.meta().namespace.clone().unwrap_or_default();
            let name = item.meta().name.clone().unwrap_or_default();
            let api = api_for(&ns);
            api.create(pp, &item).await.map_err(|e| format!("{ns}/{name}: {e}"))?;
            if let Some(s) = status(&item) {
                api.patch_status(&name, patch, &Patch::Merge(&s))
                    .await
                    .map_err(|e| format!("{ns}/{name} status: {e}"))?;
            }
            Ok::<(), String>(())
        })
        .buffer_unordered(CONCURRENCY)
        .filter_map(|r| async move { r.err() })
        .collect()
        .await
}

pub(crate) async fn scale(
    opts: &Options,
    agent_bin: &PathBuf,
    api: &ApiServer,
    client: &Client,
) -> anyhow::Result<Vec<String>> {
    let shape = if opts.quick {
        Shape {
            pods: 1_000,
            namespaces: 10,
            policies: 200,
            nodes: 10,
            dual_stack_every: 10,
        }
    } else {
        Shape::LARGE
    };
    let node = "node-7";
    let objects = synth::to_objects(&synth::cluster(shape, 42));
    let mut namespaces = Vec::new();
    let mut pods = Vec::new();
    let mut policies = Vec::new();
    for mut o in objects {
        match o["kind"].as_str() {
            Some("Namespace") => namespaces.push(serde_json::from_value::<Namespace>(o)?),
            Some("Pod") => {
                for c in o["spec"]["containers"].as_array_mut().into_iter().flatten() {
                    c["image"] = json!("none");
                }
                let status = o["status"].take();
                let ips: Vec<&str> = status["podIPs"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|ip| ip["ip"].as_str())
                    .collect();
                let status = running(&ips);
                let pod: Pod = serde_json::from_value(o)?;
                pods.push((pod, status));
            }
            Some("NetworkPolicy") => policies.push(serde_json::from_value::<NetworkPolicy>(o)?),
            _ => {}
        }
    }
    let mut notes = Vec::new();
    let t = Instant::now();
    let (n_ns, n_pods, n_pol) = (namespaces.len(), pods.len(), policies.len());
    let mut errors = create_all(namespaces, |_| Api::all(client.clone()), |_| None).await;
    let statuses: BTreeMap<(String, String), Value> = pods
        .iter()
        .map(|(p, s)| {
            let key = (
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default(),
            );
            (key, s.clone())
        })
        .collect();
    let pods: Vec<Pod> = pods.into_iter().map(|(p, _)| p).collect();
    let (pod_errors, policy_errors) = tokio::join!(
        create_all(
            pods,
            |ns| Api::namespaced(client.clone(), ns),
            |p: &Pod| {
                let key = (
                    p.metadata.namespace.clone().unwrap_or_default(),
                    p.metadata.name.clone().unwrap_or_default(),
                );
                statuses.get(&key).cloned()
            }
        ),
        create_all(policies, |ns| Api::namespaced(client.clone(), ns), |_| None),
    );
    errors.extend(pod_errors);
    errors.extend(policy_errors);
    let created = t.elapsed();
    let requests = n_ns + 2 * n_pods + n_pol;
    notes.push(format!(
        "created {n_ns} namespaces, {n_pods} pods (+ status), {n_pol} policies: {requests} requests in {:.1} s ({:.0}/s, {CONCURRENCY} in flight), {} failed",
        created.as_secs_f64(),
        requests as f64 / created.as_secs_f64(),
        errors.len()
    ));
    for e in errors.iter().take(5) {
        notes.push(format!("  failed: {e}"));
    }

    let ns = Netns::create(format!("pcb-{}-scale", std::process::id()))?;
    let wrap = std::env::var("POLICYC_BENCH_WRAP").ok();
    if let Some(w) = &wrap {
        println!("(scale agent runs under `{w}`: the memory figures are the wrapper's)");
    }
    let agent = start_agent(agent_bin, api, &ns, node, node, wrap.as_deref())?;
    let pid = agent.child.pid();
    let t = Instant::now();
    let limit = Duration::from_secs(if opts.quick { 60 } else { 300 });
    let mut first_sync = None;
    while t.elapsed() < limit {
        if ready(agent.port) {
            first_sync = Some(t.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let settle_for = Duration::from_secs(if opts.quick { 3 } else { 10 });
    if first_sync.is_some() {
        tokio::time::sleep(settle_for).await;
    }
    let settled = mem(pid)?;
    let t = Instant::now();
    let m = metrics(agent.port)?;
    let scrape = t.elapsed();
    let scraped = mem(pid)?;
    let get = |k: &str| m.get(k).copied().unwrap_or(f64::NAN);

    let mib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
    println!();
    println!(
        "Scale: {} pods ({} namespaces, {} nodes), {} NetworkPolicies in the API server; agent for {node}",
        shape.pods, shape.namespaces, shape.nodes, shape.policies
    );
    println!();
    println!("| figure | value |");
    println!("|---|---|");
    match first_sync {
        Some(d) => println!("| agent start → first full sync (/readyz 200) | {} ms |", ms(d)),
        None => {
            let log = std::fs::read_to_string(&agent.log).unwrap_or_default();
            let last_error = log
                .lines()
                .rev()
                .find(|l| l.contains("ERROR"))
                .unwrap_or("no error logged");
            println!(
                "| agent start → first full sync (/readyz 200) | NOT READY after {} s; last error: {} |",
                limit.as_secs(),
                last_error
            );
        }
    }
    println!(
        "| VmRSS {} s after the first sync (goal ≤ 64 MB) | {} ({:.1} MB) |",
        settle_for.as_secs(),
        mib(settled.rss),
        settled.rss as f64 * 1024.0 / 1e6
    );
    println!("| VmHWM (peak) | {} |", mib(settled.hwm));
    println!("| RssAnon / RssFile | {} / {} |", mib(settled.anon), mib(settled.file));
    println!(
        "| VmRSS after one /metrics scrape ({} ms) | {} |",
        ms(scrape),
        mib(scraped.rss)
    );
    println!("| VmHWM after the scrape | {} |", mib(scraped.hwm));
    println!("| rules (policyc_rules) | {} |", get("policyc_rules"));
    println!("| sets (policyc_sets) | {} |", get("policyc_sets"));
    println!(
        "| set elements (policyc_set_elements) | {} |",
        get("policyc_set_elements")
    );
    println!(
        "| endpoints on {node} (policyc_endpoints) | {} |",
        get("policyc_endpoints")
    );
    println!("| valid policies (policyc_policies) | {} |", get("policyc_policies"));
    println!(
        "| invalid objects (policyc_invalid_objects) | {} |",
        get("policyc_invalid_objects")
    );
    if let Some(d) = histogram_mean(&m, &BTreeMap::new(), "policyc_sync_duration_seconds") {
        println!(
            "| syncs / mean compile+apply (policyc_sync_duration_seconds) | {} / {} ms |",
            get("policyc_sync_duration_seconds_count"),
            ms(d)
        );
    }
    if let Some(d) = histogram_mean(&m, &BTreeMap::new(), "policyc_apply_duration_seconds") {
        println!(
            "| netlink transactions / mean (policyc_apply_duration_seconds) | {} / {} ms |",
            get("policyc_apply_duration_seconds_count"),
            ms(d)
        );
    }
    if first_sync.is_some() {
        let rows = activity(opts, client, &agent).await?;
        print_latency(
            "API acknowledgement → the agent's \"ruleset applied\" log line (written when the kernel acknowledged the batch)",
            &rows,
        );
        tokio::time::sleep(Duration::from_secs(5)).await;
        let after = mem(pid)?;
        println!();
        println!(
            "agent memory after these changes (+5 s): VmRSS {}, VmHWM {}, RssAnon {}",
            mib(after.rss),
            mib(after.hwm),
            mib(after.anon)
        );
    }
    notes.push(format!("agent log (scale): {}", agent.log.display()));
    drop(agent);
    Ok(notes)
}

/// The agent's log, read as it grows: the times of its "ruleset applied" lines.
pub(crate) struct AgentLog {
    pub(crate) path: PathBuf,
    pub(crate) offset: usize,
}

impl AgentLog {
    pub(crate) fn new(path: &std::path::Path) -> AgentLog {
        let offset = std::fs::read(path).map_or(0, |b| b.len());
        AgentLog {
            path: path.to_path_buf(),
            offset,
        }
    }

    /// New "ruleset applied" lines since the last call: (time logged, mode, the agent's sync
    /// time if logged).
    pub(crate) fn applied(&mut self) -> Vec<(jiff::Timestamp, String, Option<Duration>)> {
        let Ok(bytes) = std::fs::read(&self.path) else {
            return Vec::new();
        };
        let end = bytes[self.offset.min(bytes.len())..]
            .iter()
            .rposition(|&b| b == b'\n')
            .map_or(self.offset, |i| self.offset + i + 1);
        let text = String::from_utf8_lossy(&bytes[self.offset.min(end)..end]).into_owned();
        self.offset = end;
        text.lines()
            .filter(|l| l.contains("ruleset applied"))
            .filter_map(|l| {
                let plain = strip_ansi(l);
                let ts: jiff::Timestamp = plain.split_whitespace().next()?.parse().ok()?;
                let mode = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("mode="))
                    .unwrap_or("?")
                    .trim_matches('"')
                    .to_string();
                let sync = plain
                    .split_whitespace()
                    .find_map(|w| w.strip_prefix("sync_ms="))
                    .and_then(|v| v.parse::<f64>().ok())
                    .map(|v| Duration::from_secs_f64(v / 1e3));
                Some((ts, mode, sync))
            })
            .collect()
    }
}

pub(crate) fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Sends one change and waits for the agent to log the commit it caused.
pub(crate) async fn measure_logged<F>(log: &mut AgentLog, what: &str, change: F) -> anyhow::Result<Sample>
where
    F: std::future::Future<Output = Result<(), kube::Error>>,
{
    log.applied();
    let sent = Instant::now();
    change.await?;
    let (ack, ack_wall) = (Instant::now(), jiff::Timestamp::now());
    let mut seen = Vec::new();
    while seen.is_empty() {
        if ack.elapsed() > Duration::from_secs(30) {
            bail!("no commit logged within 30 s after {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        seen = log.applied();
    }
    tokio::time::sleep(SETTLE).await;
    let extra_commits = seen.len() - 1 + log.applied().len();
    let (ts, mode, agent_sync) = &seen[0];
    let latency = ts.duration_since(ack_wall);
    Ok(Sample {
        structural: None,
        latency: latency.unsigned_abs(),
        request: ack - sent,
        commit: match mode.as_str() {
            "elements" => ELEMENTS,
            "chains" => IN_PLACE,
            _ => REPLACE,
        },
        unexpected: false,
        extra_commits,
        before_ack: latency.is_negative(),
        agent_sync: *agent_sync,
    })
}

/// Changes on the loaded cluster: a policy in `ns-7` (whose pods all run on `node-7`) is updated,
/// and new pods on another node gain the IP that puts them in its peer set.
pub(crate) async fn activity(opts: &Options, client: &Client, agent: &Agent) -> anyhow::Result<Vec<Row>> {
    let n = if opts.quick { 10 } else { 20 };
    let (pp, patch) = (PostParams::default(), PatchParams::default());
    let ns = "ns-7";
    let policies: Api<NetworkPolicy> = Api::namespaced(client.clone(), ns);
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let spec = |port: u16| json!({"podSelector": {}, "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "bench"}}}], "ports": [{"port": port}]}]});
    let mut log = AgentLog::new(&agent.log);
    let mut create = Row {
        what: "NetworkPolicy create (selects the node's 100 pods)".into(),
        samples: Vec::new(),
    };
    let p: NetworkPolicy = serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "bench", "namespace": ns}, "spec": spec(40_000)
    }))?;
    create.samples.push(
        measure_logged(&mut log, "creating ns-7/bench", async {
            policies.create(&pp, &p).await.map(drop)
        })
        .await?,
    );
    let mut update = Row {
        what: "NetworkPolicy update (port)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let body = json!({"spec": spec(40_001 + i as u16)});
        update.samples.push(
            measure_logged(&mut log, "updating ns-7/bench", async {
                policies.patch("bench", &patch, &Patch::Merge(&body)).await.map(drop)
            })
            .await?,
        );
    }
    let mut churn = Row {
        what: "remote pod gets its IP (joins a peer set)".into(),
        samples: Vec::new(),
    };
    for i in 0..n {
        let name = format!("bench-{i}");
        pods.create(&pp, &pod(&name, ns, "node-42", "bench")?).await?;
        tokio::time::sleep(SETTLE).await;
        log.applied();
        let status = running(&[&format!("10.200.0.{}", 10 + i)]);
        churn.samples.push(
            measure_logged(&mut log, "setting a pod IP", async {
                pods.patch_status(&name, &patch, &Patch::Merge(&status)).await.map(drop)
            })
            .await?,
        );
    }
    Ok(vec![create, update, churn])
}
