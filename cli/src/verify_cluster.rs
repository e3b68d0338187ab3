//! `policyc verify --cluster`: the lab's verify against a live cluster.
//!
//! ```text
//!  --scenario FILE   throwaway namespaces pcv-<run>-<ns> (label policyc.dev/verify=<run>)
//!                    ├─ the scenario's namespaces, pods (probe pods: `policyc serve` on their
//!                    │  ports, with their labels and named ports) and NetworkPolicies, renamed
//!                    ├─ per step: delete, apply, label; pods Running; `wait --for=enforced`
//!                    └─ every cell probed from inside the source pod (exec `policyc connect`)
//!  -f EXPECTATIONS   the user's own pods, unchanged: a privileged hostPID probe pod per node
//!                    (in a throwaway namespace) enters each source pod's network namespace
//!                    (`nsenter -n`) and connects from there
//!
//!  packets ─┐
//!  policyc's verdict, from the live objects ─┼─► cells that differ, with the rule that should
//!  expectations ─┘                               have decided each
//! ```
//!
//! Everything made is removed at the end, on failure and on Ctrl-C or SIGTERM; a run killed
//! harder leaves namespaces labelled `policyc.dev/verify`, which `kubectl delete ns -l
//! policyc.dev/verify` removes.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use kube::api::{AttachParams, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Api, Client};
use policyc_compiler::expect::Expectations;
use policyc_compiler::ir::Ir;
use policyc_compiler::load::Kind;
use policyc_compiler::scenario::Step;
use policyc_compiler::{CompileOptions, Evaluator, Protocol, Snapshot};
use policyc_lab::probe::Outcome;
use policyc_lab::verify::{self, Check, PortResult, Report, StepResult};
use serde_json::{json, Value};
use tokio::io::AsyncReadExt as _;

/// The label on every namespace a run makes: its value is the run's id.
pub const RUN_LABEL: &str = "policyc.dev/verify";
const FIELD_MANAGER: &str = "policyc-verify";
const NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// How a cluster run is set up.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub kubeconfig: Option<PathBuf>,
    /// The image of the probe pods: it has `policyc` (serve, connect), `sh` and `nsenter`.
    pub probe_image: String,
    /// How long a probe waits for an answer.
    pub timeout: Duration,
    /// How long to wait for policyc to report a step enforced, and for pods to run.
    pub wait: Duration,
    /// `-f` mode: only pods of these namespaces (all when empty).
    pub namespaces: Vec<String>,
    /// `-f` mode: the ports to probe (`None`: the expectations' ports, else the pods').
    pub ports: Option<Vec<(u16, Protocol)>>,
}

/// Runs `run` and removes what it made afterwards, also when it fails or the process is
/// interrupted (Ctrl-C, SIGTERM).
async fn guarded<F, T>(client: &Client, run_id: &str, run: F) -> Result<T>
where
    F: std::future::Future<Output = Result<T>>,
{
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = run => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    let cleanup = remove_run(client, run_id).await;
    match (result, cleanup) {
        (Ok(v), Ok(())) => Ok(v),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(c)) => Err(e.context(format!("also, cleaning up failed: {c:#}"))),
    }
}

/// Deletes the run's namespaces (and with them everything in them) and waits until they are
/// gone.
async fn remove_run(client: &Client, run_id: &str) -> Result<()> {
    let api = Api::<Namespace>::all(client.clone());
    let lp = ListParams::default().labels(&format!("{RUN_LABEL}={run_id}"));
    let t = Instant::now();
    let names: Vec<String> = api
        .list_metadata(&lp)
        .await
        .context("listing the run's namespaces")?
        .items
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for n in &names {
        match api.delete(n, &DeleteParams::default().grace_period(0)).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 404 => {}
            Err(e) => return Err(anyhow!(e).context(format!("deleting namespace {n}"))),
        }
    }
    loop {
        let left = api.list_metadata(&lp).await?.items.len();
        if left == 0 {
            eprintln!(
                "removed {} namespaces of run {run_id} in {:.1}s",
                names.len(),
                t.elapsed().as_secs_f64()
            );
            return Ok(());
        }
        if t.elapsed() > Duration::from_secs(120) {
            bail!("{left} namespaces of run {run_id} still terminating after 120s (label {RUN_LABEL}={run_id})");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn run_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{:06x}", (nanos ^ (std::process::id() << 8)) & 0xff_ffff)
}

// === Scenario mode ===

/// A scenario's namespaces, pods and policies, made real in throwaway namespaces.
struct Run {
    client: Client,
    id: String,
    opts: ClusterOptions,
    /// Scenario namespace → the namespace made for it.
    namespaces: BTreeMap<String, String>,
    /// The scenario's pod addresses (from its objects) → the pod (`ns/name`, scenario names).
    scenario_ips: BTreeMap<IpAddr, String>,
    /// Scenario pod (`ns/name`) → its live addresses, once Running.
    live_ips: BTreeMap<String, Vec<IpAddr>>,
    /// The ports every probe pod serves (TCP, UDP): every port the scenario checks.
    served: (BTreeSet<u16>, BTreeSet<u16>),
    nodes: BTreeSet<String>,
}

impl Run {
    fn real_ns(&self, ns: &str) -> Result<String> {
        self.namespaces
            .get(ns)
            .cloned()
            .ok_or_else(|| anyhow!("namespace {ns} is not part of the scenario"))
    }

    /// Makes the namespace for scenario namespace `ns` (labels: the scenario's, plus the run's).
    async fn ensure_namespace(&mut self, ns: &str, labels: Option<&Value>) -> Result<String> {
        let real = match self.namespaces.get(ns) {
            Some(r) => r.clone(),
            None => {
                let r = format!("pcv-{}-{ns}", self.id);
                if r.len() > 63 {
                    bail!("namespace {ns}: {r:?} is longer than 63 characters");
                }
                self.namespaces.insert(ns.to_string(), r.clone());
                r
            }
        };
        let mut l = serde_json::Map::new();
        if let Some(Value::Object(m)) = labels {
            for (k, v) in m {
                if k != NAME_LABEL {
                    l.insert(k.clone(), v.clone());
                }
            }
        }
        l.insert(RUN_LABEL.into(), self.id.clone().into());
        let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": real, "labels": l}});
        Api::<Namespace>::all(self.client.clone())
            .patch(&real, &apply_params(), &Patch::Apply(obj))
            .await
            .with_context(|| format!("creating namespace {real} (scenario namespace {ns})"))?;
        Ok(real)
    }

    /// A probe pod standing in for a scenario pod: its labels and container ports, serving
    /// every checked port.
    fn probe_pod(&self, real_ns: &str, raw: &Value) -> Result<Value> {
        let name = raw["metadata"]["name"].as_str().unwrap_or_default();
        let mut ports = Vec::new();
        let mut seen = BTreeSet::new();
        for c in raw["spec"]["containers"].as_array().into_iter().flatten() {
            for p in c["ports"].as_array().into_iter().flatten() {
                let port = p["containerPort"].as_u64().unwrap_or(0);
                let proto = p["protocol"].as_str().unwrap_or("TCP").to_string();
                if seen.insert((port, proto.clone())) {
                    let mut e = json!({"containerPort": port, "protocol": proto});
                    if let Some(n) = p["name"].as_str() {
                        e["name"] = n.into();
                    }
                    ports.push(e);
                }
            }
        }
        let list = |s: &BTreeSet<u16>| s.iter().map(u16::to_string).collect::<Vec<_>>().join(",");
        let mut command = vec!["policyc".to_string(), "serve".into()];
        if !self.served.0.is_empty() {
            command.extend(["--tcp".into(), list(&self.served.0)]);
        }
        if !self.served.1.is_empty() {
            command.extend(["--udp".into(), list(&self.served.1)]);
        }
        if command.len() == 2 {
            // Nothing to serve (a scenario checking SCTP only): the pod just needs to exist.
            command = vec!["sleep".into(), "infinity".into()];
        }
        let mut spec = json!({
            "terminationGracePeriodSeconds": 0,
            "automountServiceAccountToken": false,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "probe", "image": self.opts.probe_image, "imagePullPolicy": "IfNotPresent",
                "command": command, "ports": ports,
            }],
        });
        if let Some(node) = raw["spec"]["nodeName"].as_str() {
            if self.nodes.contains(node) {
                spec["nodeName"] = node.into();
            }
        }
        Ok(json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": real_ns, "labels": raw["metadata"]["labels"].clone()},
            "spec": spec,
        }))
    }

    /// Applies objects as a step's `apply` (or the scenario's start): namespaces, then pods
    /// (until Running), then policies, rewritten to the run's namespaces and pod addresses.
    async fn apply(&mut self, objects: &[Value]) -> Result<()> {
        let kind_of = |v: &Value| v["kind"].as_str().and_then(Kind::parse);
        for v in objects {
            if kind_of(v) == Some(Kind::Namespace) {
                let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
                self.ensure_namespace(&name, Some(&v["metadata"]["labels"])).await?;
            }
        }
        let mut started = Vec::new();
        for v in objects.iter().filter(|v| kind_of(v) == Some(Kind::Pod)) {
            let ns = v["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
            let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let real = self.ensure_namespace(&ns, None).await?;
            let api = Api::<Pod>::namespaced(self.client.clone(), &real);
            if api.get_opt(&name).await?.is_some() {
                // Applied again: its labels change, as `kubectl apply` of the same pod would.
                let labels = json!({"metadata": {"labels": v["metadata"]["labels"].clone()}});
                api.patch(&name, &PatchParams::default(), &Patch::Merge(labels))
                    .await
                    .with_context(|| format!("relabelling pod {ns}/{name}"))?;
                continue;
            }
            let pod = self.probe_pod(&real, v)?;
            create_pod(&api, pod, self.opts.wait)
                .await
                .with_context(|| format!("creating probe pod {ns}/{name} in {real}"))?;
            started.push(format!("{ns}/{name}"));
        }
        self.wait_running(&started).await?;
        for v in objects {
            if kind_of(v) == Some(Kind::NetworkPolicy) {
                let ns = v["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
                let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
                let real = self.ensure_namespace(&ns, None).await?;
                let policy = self.rewrite_policy(v, &real);
                Api::<NetworkPolicy>::namespaced(self.client.clone(), &real)
                    .patch(&name, &apply_params(), &Patch::Apply(policy))
                    .await
                    .with_context(|| format!("applying NetworkPolicy {ns}/{name} in {real}"))?;
            }
        }
        Ok(())
    }

    /// A scenario policy for the live cluster: in its namespace, namespace names in
    /// `kubernetes.io/metadata.name` selectors renamed, and ipBlocks that name a scenario
    /// pod's address (a /32 or /128) pointed at the live pod's address.
    fn rewrite_policy(&self, v: &Value, real_ns: &str) -> Value {
        let mut spec = v["spec"].clone();
        self.rewrite(&mut spec);
        json!({
            "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {
                "name": v["metadata"]["name"].clone(), "namespace": real_ns,
                "labels": v["metadata"].get("labels").cloned().unwrap_or(json!({})),
            },
            "spec": spec,
        })
    }

    fn rewrite(&self, v: &mut Value) {
        match v {
            Value::Object(m) => {
                for (k, child) in m.iter_mut() {
                    match k.as_str() {
                        "namespaceSelector" => self.rewrite_selector(child),
                        "ipBlock" => self.rewrite_block(child),
                        _ => self.rewrite(child),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|c| self.rewrite(c)),
            _ => {}
        }
    }

    fn rename(&self, ns: &Value) -> Value {
        ns.as_str()
            .and_then(|n| self.namespaces.get(n))
            .map_or_else(|| ns.clone(), |r| r.clone().into())
    }

    fn rewrite_selector(&self, sel: &mut Value) {
        if let Some(v) = sel.pointer_mut(&format!("/matchLabels/{}", NAME_LABEL.replace('/', "~1"))) {
            *v = self.rename(v);
        }
        for e in sel["matchExpressions"].as_array_mut().into_iter().flatten() {
            if e["key"].as_str() == Some(NAME_LABEL) {
                for val in e["values"].as_array_mut().into_iter().flatten() {
                    *val = self.rename(val);
                }
            }
        }
    }

    fn rewrite_block(&self, block: &mut Value) {
        let live = |cidr: &Value| -> Option<Value> {
            let (addr, len) = cidr.as_str()?.split_once('/')?;
            let addr: IpAddr = addr.parse().ok()?;
            let host = if addr.is_ipv4() { "32" } else { "128" };
            if len != host {
                return None;
            }
            let pod = self.scenario_ips.get(&addr)?;
            let ip = self.live_ips.get(pod)?.iter().find(|i| i.is_ipv4() == addr.is_ipv4())?;
            Some(format!("{ip}/{host}").into())
        };
        if let Some(v) = live(&block["cidr"]) {
            block["cidr"] = v;
        }
        for e in block["except"].as_array_mut().into_iter().flatten() {
            if let Some(v) = live(e) {
                *e = v;
            }
        }
    }

    /// Waits until the pods (`ns/name`, scenario names) run and have addresses.
    async fn wait_running(&mut self, pods: &[String]) -> Result<()> {
        let t = Instant::now();
        let mut waiting: BTreeSet<String> = pods.iter().cloned().collect();
        while !waiting.is_empty() {
            for p in waiting.clone() {
                let (ns, name) = p.split_once('/').unwrap_or(("default", &p));
                let real = self.real_ns(ns)?;
                let pod = Api::<Pod>::namespaced(self.client.clone(), &real).get(name).await?;
                let ips = running_ips(&pod);
                if !ips.is_empty() {
                    self.live_ips.insert(p.clone(), ips);
                    waiting.remove(&p);
                }
            }
            if waiting.is_empty() {
                break;
            }
            if t.elapsed() > self.opts.wait {
                let list: Vec<&str> = waiting.iter().map(String::as_str).collect();
                bail!(
                    "pods not Running after {:?}: {} (is the probe image {} on the nodes?)",
                    self.opts.wait,
                    list.join(", "),
                    self.opts.probe_image
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        Ok(())
    }

    async fn delete(&mut self, kind: &str, namespace: Option<&str>, name: &str) -> Result<()> {
        let kind = Kind::parse(kind).ok_or_else(|| anyhow!("delete: unknown kind {kind:?}"))?;
        let ns = namespace.unwrap_or("default");
        let dp = DeleteParams::default().grace_period(0);
        match kind {
            Kind::Namespace => {
                let real = self.real_ns(name)?;
                Api::<Namespace>::all(self.client.clone()).delete(&real, &dp).await?;
                self.namespaces.remove(name);
                self.live_ips.retain(|p, _| !p.starts_with(&format!("{name}/")));
            }
            Kind::Pod => {
                let api = Api::<Pod>::namespaced(self.client.clone(), &self.real_ns(ns)?);
                api.delete(name, &dp).await?;
                let t = Instant::now();
                while api.get_opt(name).await?.is_some() {
                    if t.elapsed() > self.opts.wait {
                        bail!("pod {ns}/{name} not gone after {:?}", self.opts.wait);
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                self.live_ips.remove(&format!("{ns}/{name}"));
            }
            Kind::NetworkPolicy => {
                Api::<NetworkPolicy>::namespaced(self.client.clone(), &self.real_ns(ns)?)
                    .delete(name, &dp)
                    .await?;
            }
            k => bail!("delete: {} is not supported in a cluster run", k.as_str()),
        }
        Ok(())
    }

    async fn label(&mut self, change: &policyc_compiler::scenario::LabelChange) -> Result<()> {
        let mut labels = serde_json::Map::new();
        for r in &change.remove {
            labels.insert(r.clone(), Value::Null);
        }
        for (k, v) in &change.set {
            labels.insert(k.clone(), v.clone().into());
        }
        let patch = Patch::Merge(json!({"metadata": {"labels": labels}}));
        let pp = PatchParams::default();
        match Kind::parse(&change.kind) {
            Some(Kind::Namespace) => {
                let real = self.ensure_namespace(&change.name, None).await?;
                Api::<Namespace>::all(self.client.clone())
                    .patch(&real, &pp, &patch)
                    .await?;
            }
            Some(Kind::Pod) => {
                let real = self.real_ns(change.namespace.as_deref().unwrap_or("default"))?;
                Api::<Pod>::namespaced(self.client.clone(), &real)
                    .patch(&change.name, &pp, &patch)
                    .await?;
            }
            _ => bail!("label: cannot label a {}", change.kind),
        }
        Ok(())
    }

    async fn step(&mut self, step: &Step) -> Result<()> {
        for d in &step.delete {
            self.delete(&d.kind, d.namespace.as_deref(), &d.name).await?;
        }
        self.apply(&step.apply).await?;
        for l in &step.label {
            self.label(l).await?;
        }
        Ok(())
    }

    /// The scenario pods (scenario names, sorted) with their live namespace and addresses.
    fn pods(&self) -> Vec<(String, String, Vec<IpAddr>)> {
        self.live_ips
            .iter()
            .map(|(p, ips)| {
                let (ns, name) = p.split_once('/').unwrap_or(("default", p));
                let real = self.namespaces.get(ns).cloned().unwrap_or_default();
                (p.clone(), format!("{real}/{name}"), ips.clone())
            })
            .collect()
    }
}

/// Creates a pod; in a namespace just made, retries while its default ServiceAccount is not
/// there yet (the ServiceAccount admission plugin refuses pods until it is).
async fn create_pod(api: &Api<Pod>, pod: Value, wait: Duration) -> Result<()> {
    let pod: Pod = serde_json::from_value(pod)?;
    let t = Instant::now();
    loop {
        match api.create(&PostParams::default(), &pod).await {
            Ok(_) => return Ok(()),
            Err(kube::Error::Api(e)) if e.message.contains("serviceaccount") && t.elapsed() < wait => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// A pod's addresses once it is Running with every container started; empty before.
fn running_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(st) = &pod.status else { return Vec::new() };
    if st.phase.as_deref() != Some("Running") {
        return Vec::new();
    }
    let started = st
        .container_statuses
        .iter()
        .flatten()
        .all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some()));
    if !started {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = st.pod_ips.iter().flatten().filter_map(|p| p.ip.parse().ok()).collect();
    if ips.is_empty() {
        ips.extend(st.pod_ip.as_deref().and_then(|p| p.parse::<IpAddr>().ok()));
    }
    ips
}

/// The objects of a scenario as written: its includes (multi-document YAML), then `objects`.
fn raw_objects(path: &Path, scenario: &policyc_compiler::scenario::Scenario) -> Result<Vec<Value>> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for inc in &scenario.include {
        let p = dir.join(inc);
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: Value = serde::Deserialize::deserialize(doc).with_context(|| format!("parsing {}", p.display()))?;
            if v.is_null() {
                continue;
            }
            match v["kind"].as_str() {
                Some("List") => out.extend(v["items"].as_array().cloned().unwrap_or_default()),
                _ => out.push(v),
            }
        }
    }
    out.extend(scenario.objects.iter().cloned());
    Ok(out)
}

/// The addresses a scenario gives its pods (`status.podIPs`, `status.podIP`).
fn scenario_ips(objects: &[Value], steps: &[Step]) -> BTreeMap<IpAddr, String> {
    let mut out = BTreeMap::new();
    for v in objects.iter().chain(steps.iter().flat_map(|s| s.apply.iter())) {
        if v["kind"].as_str() != Some("Pod") {
            continue;
        }
        let pod = format!(
            "{}/{}",
            v["metadata"]["namespace"].as_str().unwrap_or("default"),
            v["metadata"]["name"].as_str().unwrap_or_default()
        );
        let st = &v["status"];
        let ips = st["podIPs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| p["ip"].as_str())
            .chain(st["podIP"].as_str());
        for ip in ips.filter_map(|i| i.parse().ok()) {
            out.insert(ip, pod.clone());
        }
    }
    out
}

/// Runs a scenario in the cluster.
pub async fn scenario(path: &Path, opts: ClusterOptions) -> Result<Report> {
    let (scenario, _initial) = verify::load_scenario(path, Snapshot::default())?;
    let objects = raw_objects(path, &scenario)?;
    for v in objects.iter().chain(scenario.steps.iter().flat_map(|s| s.apply.iter())) {
        if let Some(k) = v["kind"].as_str().and_then(Kind::parse) {
            if k.admin().is_some() {
                bail!(
                    "{}: {} {}: admin policies are cluster-scoped and would act on every pod of the cluster; \
                     verify --cluster runs scenarios of NetworkPolicies",
                    path.display(),
                    k.as_str(),
                    v["metadata"]["name"].as_str().unwrap_or_default()
                );
            }
        }
    }
    let client = crate::cluster::client(opts.kubeconfig.as_deref()).await?;
    let nodes = crate::cluster::node_names(&client).await?;
    let mut served = (BTreeSet::new(), BTreeSet::new());
    for step in &scenario.steps {
        for b in step.expectations().map_err(|e| anyhow!("{}: {e}", path.display()))? {
            for (port, proto) in b.ports {
                match proto {
                    Protocol::Tcp => served.0.insert(port),
                    Protocol::Udp => served.1.insert(port),
                    Protocol::Sctp => false,
                };
            }
        }
    }
    let id = run_id();
    let mut run = Run {
        client: client.clone(),
        id: id.clone(),
        opts: opts.clone(),
        namespaces: BTreeMap::new(),
        scenario_ips: scenario_ips(&objects, &scenario.steps),
        live_ips: BTreeMap::new(),
        served,
        nodes,
    };
    eprintln!(
        "run {id}: scenario {} ({} steps) in namespaces pcv-{id}-*",
        scenario.name,
        scenario.steps.len()
    );
    let steps = guarded(&client, &id, async {
        let mut steps = Vec::new();
        let t = Instant::now();
        if let Err(e) = run.apply(&objects).await {
            steps.push(StepResult {
                name: "start".into(),
                ports: Vec::new(),
                error: Some(format!("bringing the cluster to the scenario's start: {e:#}")),
            });
            return Ok(steps);
        }
        eprintln!("  start: {:.1}s", t.elapsed().as_secs_f64());
        for (i, step) in scenario.steps.iter().enumerate() {
            let t = Instant::now();
            let name = verify::step_label(i, step);
            let failed = |e: String| StepResult {
                name: name.clone(),
                ports: Vec::new(),
                error: Some(e),
            };
            if let Err(e) = run.step(step).await {
                steps.push(failed(format!("applying the step: {e:#}")));
                break;
            }
            let applied = t.elapsed();
            let note = wait_enforced(&opts).await;
            let enforced = t.elapsed();
            let blocks = step.expectations().map_err(|e| anyhow!("{name}: {e}"))?;
            let checks = verify::checks(&blocks);
            let pods = run.pods();
            let mut ports = probe_and_compare(&client, &opts, &pods, &checks, &Prober::InPod).await?;
            // The reasons in the scenario's names, as the cells are.
            let prefix = format!("pcv-{id}-");
            for cell in ports.iter_mut().flat_map(|p| p.disagreements.iter_mut()) {
                cell.ir_reason = cell.ir_reason.replace(&prefix, "");
            }
            eprintln!(
                "  {name}: applied {:.1}s, enforced {:.1}s{}, probed {:.1}s",
                applied.as_secs_f64(),
                (enforced - applied).as_secs_f64(),
                note.map(|n| format!(" ({n})")).unwrap_or_default(),
                (t.elapsed() - enforced).as_secs_f64()
            );
            steps.push(StepResult {
                name,
                ports,
                error: None,
            });
        }
        Ok(steps)
    })
    .await?;
    Ok(Report {
        name: format!("scenario {}", scenario.name),
        lab: cluster_url(&opts).await,
        cluster: true,
        timeout_ms: opts.timeout.as_millis() as u64,
        steps,
    })
}

async fn cluster_url(opts: &ClusterOptions) -> String {
    let config = match &opts.kubeconfig {
        Some(p) => match kube::config::Kubeconfig::read_from(p) {
            Ok(kc) => kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.ok(),
            Err(_) => None,
        },
        None => kube::Config::infer().await.ok(),
    };
    config.map(|c| c.cluster_url.to_string()).unwrap_or_default()
}

/// Waits until policyc reports every change enforced on every node. Without policyc (no
/// NodePolicyStatus), or when it does not within the limit, says so and probes anyway: the
/// packets tell.
async fn wait_enforced(opts: &ClusterOptions) -> Option<String> {
    let what = crate::cluster::WaitFor::default();
    match crate::cluster::wait_enforced(opts.kubeconfig.as_deref(), &what, opts.wait).await {
        Ok(()) => None,
        Err(e) => {
            // Without an enforcer nothing will change: give the cluster a moment and probe.
            tokio::time::sleep(Duration::from_secs(2)).await;
            Some(format!(
                "policyc did not report it enforced: {}",
                first_line(&e.to_string())
            ))
        }
    }
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or(s)
}

// === Probing ===

/// How a source pod's packets are sent.
enum Prober {
    /// `kubectl exec` into the pod itself (a probe pod of this run).
    InPod,
    /// From the probe pod on the source's node, in the source's network namespace. Key: node.
    Node(BTreeMap<String, (String, String)>),
}

/// One source pod's probes: the destinations' cells, index → outcome.
async fn probe_from(
    client: &Client,
    opts: &ClusterOptions,
    prober: &Prober,
    src: &SourcePod,
    cells: &[(usize, IpAddr, u16, Protocol)],
) -> Result<BTreeMap<usize, Result<Outcome, String>>> {
    let mut script = String::new();
    let ms = opts.timeout.as_millis().max(1);
    let enter = match prober {
        Prober::InPod => String::new(),
        Prober::Node(_) => "nsenter -t \"$pid\" -n ".to_string(),
    };
    if let Prober::Node(_) = prober {
        // The pod's network namespace: a process of its cgroup (cgroupfs `pod<uid>`, systemd
        // `pod<uid with _>`) whose network namespace is not the node's.
        let uid = &src.uid;
        script.push_str(&format!(
            "u='{uid}'; u2=$(echo \"$u\" | tr - _); pid=''; host=$(readlink /proc/1/ns/net)\n\
             for c in /proc/[0-9]*/cgroup; do\n\
               grep -q -e \"pod$u\" -e \"pod$u2\" \"$c\" 2>/dev/null || continue\n\
               p=${{c#/proc/}}; p=${{p%/cgroup}}\n\
               [ \"$(readlink /proc/$p/ns/net 2>/dev/null)\" != \"$host\" ] && {{ pid=$p; break; }}\n\
             done\n\
             [ -n \"$pid\" ] || {{ echo 'nopid'; exit 0; }}\n"
        ));
    }
    for (i, ip, port, proto) in cells {
        let to = match ip {
            IpAddr::V4(a) => format!("{a}:{port}"),
            IpAddr::V6(a) => format!("[{a}]:{port}"),
        };
        let p = if *proto == Protocol::Udp { "udp" } else { "tcp" };
        script.push_str(&format!(
            "(r=$({enter}policyc connect {to} --protocol {p} --timeout {ms}ms 2>&1 | tail -n 1); echo \"{i} $r\") &\n"
        ));
    }
    script.push_str("wait\n");
    let (ns, pod) = match prober {
        Prober::InPod => (src.namespace.clone(), src.name.clone()),
        Prober::Node(by_node) => by_node
            .get(&src.node)
            .cloned()
            .ok_or_else(|| anyhow!("no probe pod on node {}", src.node))?,
    };
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let ap = AttachParams::default().stdin(false).stderr(false);
    let mut proc = api
        .exec(&pod, ["sh", "-c", script.as_str()], &ap)
        .await
        .with_context(|| format!("exec in {ns}/{pod}"))?;
    let mut out = String::new();
    if let Some(mut stdout) = proc.stdout() {
        stdout.read_to_string(&mut out).await?;
    }
    let _ = proc.join().await;
    let mut results = BTreeMap::new();
    if out.trim() == "nopid" {
        for (i, ..) in cells {
            results.insert(
                *i,
                Err(format!(
                    "no process of pod {}/{} found on node {}",
                    src.namespace, src.name, src.node
                )),
            );
        }
        return Ok(results);
    }
    for line in out.lines() {
        let Some((i, word)) = line.split_once(' ') else {
            continue;
        };
        let Ok(i) = i.parse::<usize>() else { continue };
        let proto = cells.iter().find(|c| c.0 == i).map(|c| c.3);
        let o = match word.trim() {
            "connected" => Ok(Outcome::Connected),
            "answered" => Ok(Outcome::Answered),
            "refused" => Ok(Outcome::Refused),
            "timeout" if proto == Some(Protocol::Udp) && matches!(prober, Prober::Node(_)) => {
                Err("no reply: without a UDP echo server a drop cannot be told from silence".to_string())
            }
            "timeout" => Ok(Outcome::Timeout),
            other => Ok(Outcome::Error(other.to_string())),
        };
        results.insert(i, o);
    }
    for (i, ..) in cells {
        results
            .entry(*i)
            .or_insert_with(|| Err(format!("the probe from {}/{} printed nothing", src.namespace, src.name)));
    }
    Ok(results)
}

/// A pod probes are sent from.
struct SourcePod {
    namespace: String,
    name: String,
    uid: String,
    node: String,
}

/// Probes every cell of every check among `pods` (shown name, live `ns/name`, addresses) and
/// compares packets, policyc's verdict from the live objects and the expectations.
async fn probe_and_compare(
    client: &Client,
    opts: &ClusterOptions,
    pods: &[(String, String, Vec<IpAddr>)],
    checks: &[Check<'_>],
    prober: &Prober,
) -> Result<Vec<PortResult>> {
    let live: Vec<Pod> = {
        let mut v = Vec::new();
        for (_, real, _) in pods {
            let (ns, name) = real.split_once('/').unwrap_or(("default", real));
            v.push(Api::<Pod>::namespaced(client.clone(), ns).get(name).await?);
        }
        v
    };
    let sources: Vec<SourcePod> = live
        .iter()
        .map(|p| SourcePod {
            namespace: p.metadata.namespace.clone().unwrap_or_default(),
            name: p.metadata.name.clone().unwrap_or_default(),
            uid: p.metadata.uid.clone().unwrap_or_default(),
            node: p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        })
        .collect();
    // cell index = (check, src, dst) flattened; SCTP and no common family are not probed.
    let n = pods.len();
    let index = |c: usize, i: usize, j: usize| (c * n + i) * n + j;
    let mut skipped: BTreeMap<usize, String> = BTreeMap::new();
    let mut per_source: Vec<Vec<(usize, IpAddr, u16, Protocol)>> = vec![Vec::new(); n];
    for (ci, c) in checks.iter().enumerate() {
        for (i, (_, _, sips)) in pods.iter().enumerate() {
            for (j, (_, _, dips)) in pods.iter().enumerate() {
                let k = index(ci, i, j);
                if c.protocol == Protocol::Sctp {
                    skipped.insert(
                        k,
                        "SCTP is not probed from inside pods (`policyc connect` has TCP and UDP)".into(),
                    );
                    continue;
                }
                let dst = [true, false].into_iter().find_map(|v4| {
                    sips.iter().any(|a| a.is_ipv4() == v4).then_some(())?;
                    dips.iter().find(|a| a.is_ipv4() == v4).copied()
                });
                match dst {
                    Some(ip) => per_source[i].push((k, ip, c.port, c.protocol)),
                    None => {
                        skipped.insert(k, "no address family in common".into());
                    }
                }
            }
        }
    }
    let mut outcomes: BTreeMap<usize, Result<Outcome, String>> = BTreeMap::new();
    let futures = sources
        .iter()
        .zip(&per_source)
        .filter(|(_, cells)| !cells.is_empty())
        .map(|(src, cells)| probe_from(client, opts, prober, src, cells));
    for r in futures::future::join_all(futures).await {
        outcomes.extend(r?);
    }
    // policyc's verdict from what the cluster holds now.
    let snapshot = crate::cluster::snapshot(client).await?;
    let ir: Ir = policyc_compiler::compile(&snapshot, &CompileOptions::default());
    let ev = Evaluator::new(&ir);
    let shown: Vec<String> = pods.iter().map(|p| p.0.clone()).collect();
    let real: BTreeMap<&str, &str> = pods.iter().map(|p| (p.0.as_str(), p.1.as_str())).collect();
    let mut out = Vec::new();
    for (ci, c) in checks.iter().enumerate() {
        let outcome = |i: usize, j: usize| -> Result<Outcome, String> {
            let k = index(ci, i, j);
            if let Some(r) = skipped.get(&k) {
                return Err(r.clone());
            }
            outcomes.get(&k).cloned().unwrap_or_else(|| Err("not probed".into()))
        };
        let verdict = |s: &str, d: &str| verify::verdict_with(&ev, &ir, real[s], real[d], c.protocol, c.port);
        out.push(verify::compare(&shown, c, &outcome, &verdict));
    }
    Ok(out)
}

// === Expectations mode: the user's own pods ===

/// Checks the user's pods, unchanged, against expectations.
pub async fn expectations(file: &Path, opts: ClusterOptions) -> Result<Report> {
    let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let expectations = Expectations::parse(&text).map_err(|e| anyhow!("{}: {e}", file.display()))?;
    let client = crate::cluster::client(opts.kubeconfig.as_deref()).await?;
    let all = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .context("listing pods")?;
    let mut pods = Vec::new();
    let mut nodes = BTreeSet::new();
    let mut ports_of_pods = BTreeSet::new();
    for p in all {
        let ns = p.metadata.namespace.clone().unwrap_or_default();
        let name = format!("{ns}/{}", p.metadata.name.clone().unwrap_or_default());
        if ns.starts_with("pcv-") || !expectations.mentions(&name) {
            continue;
        }
        if !opts.namespaces.is_empty() && !opts.namespaces.contains(&ns) {
            continue;
        }
        let spec = p.spec.clone().unwrap_or_default();
        if spec.host_network == Some(true) {
            eprintln!("skipping {name}: hostNetwork (the node's address; NetworkPolicy does not select it)");
            continue;
        }
        let ips = running_ips(&p);
        if ips.is_empty() {
            eprintln!("skipping {name}: not Running with an address");
            continue;
        }
        for c in &spec.containers {
            for cp in c.ports.iter().flatten() {
                let proto = match cp.protocol.as_deref() {
                    Some("UDP") => Protocol::Udp,
                    Some("SCTP") => Protocol::Sctp,
                    _ => Protocol::Tcp,
                };
                ports_of_pods.insert((cp.container_port as u16, proto));
            }
        }
        nodes.insert(spec.node_name.clone().unwrap_or_default());
        pods.push((name.clone(), name, ips));
    }
    if pods.is_empty() {
        bail!("no Running pod is named by {}", file.display());
    }
    let ports: Vec<(u16, Protocol)> = match &opts.ports {
        Some(p) => p.clone(),
        None if !expectations.ports().is_empty() => expectations.ports(),
        None => ports_of_pods.into_iter().collect(),
    };
    if ports.is_empty() {
        bail!("no port to probe: the expectations name none and the pods declare none; give --ports");
    }
    let id = run_id();
    eprintln!(
        "run {id}: {} pods on {} nodes, ports {}; probe pods in namespace pcv-{id}-probe",
        pods.len(),
        nodes.len(),
        ports
            .iter()
            .map(|(p, proto)| format!("{p}/{proto}"))
            .collect::<Vec<_>>()
            .join(",")
    );
    let checks: Vec<Check<'_>> = ports
        .iter()
        .map(|&(port, protocol)| Check {
            port,
            protocol,
            expectations: Some(&expectations),
        })
        .collect();
    let ports_result = guarded(&client, &id, async {
        let by_node = node_probers(&client, &opts, &id, &nodes).await?;
        probe_and_compare(&client, &opts, &pods, &checks, &Prober::Node(by_node)).await
    })
    .await?;
    Ok(Report {
        name: format!("expectations {}", file.display()),
        lab: cluster_url(&opts).await,
        cluster: true,
        timeout_ms: opts.timeout.as_millis() as u64,
        steps: vec![StepResult {
            name: "input".into(),
            ports: ports_result,
            error: None,
        }],
    })
}

/// One privileged hostPID probe pod per node, in the run's namespace: node → (namespace, pod).
async fn node_probers(
    client: &Client,
    opts: &ClusterOptions,
    id: &str,
    nodes: &BTreeSet<String>,
) -> Result<BTreeMap<String, (String, String)>> {
    let ns = format!("pcv-{id}-probe");
    let obj = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {RUN_LABEL: id}}});
    Api::<Namespace>::all(client.clone())
        .patch(&ns, &apply_params(), &Patch::Apply(obj))
        .await
        .with_context(|| format!("creating namespace {ns}"))?;
    let api = Api::<Pod>::namespaced(client.clone(), &ns);
    let mut out = BTreeMap::new();
    for (i, node) in nodes.iter().enumerate() {
        let name = format!("probe-{i}");
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": ns},
            "spec": {
                "nodeName": node, "hostPID": true, "terminationGracePeriodSeconds": 0,
                "automountServiceAccountToken": false,
                "tolerations": [{"operator": "Exists"}],
                "containers": [{
                    "name": "probe", "image": opts.probe_image, "imagePullPolicy": "IfNotPresent",
                    "command": ["sleep", "infinity"],
                    "securityContext": {"privileged": true},
                }],
            },
        });
        create_pod(&api, pod, opts.wait)
            .await
            .with_context(|| format!("creating probe pod {ns}/{name} on {node}"))?;
        out.insert(node.clone(), (ns.clone(), name));
    }
    let t = Instant::now();
    for (node, (_, name)) in &out {
        loop {
            let p = api.get(name).await?;
            if p.status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .is_some_and(|ph| ph == "Running")
            {
                break;
            }
            if t.elapsed() > opts.wait {
                bail!(
                    "probe pod {ns}/{name} on {node} not Running after {:?} (is the probe image {} on the node, \
                     and may privileged hostPID pods run?)",
                    opts.wait,
                    opts.probe_image
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    Ok(out)
}
