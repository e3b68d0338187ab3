//! The lab as a cluster: a real API server holds the lab's nodes, namespaces and pods, one
//! `policyc-agent` per node programs that node's network namespace, and policies reach the
//! kernels the way they do in a cluster: kubectl → API server → watch → agent → netlink.
//!
//! ```text
//!  kubectl apply / label / delete ──► kube-lab (API server + etcd on the host's 127.0.0.1)
//!                                        │ list + watch, as the chart's ServiceAccount (its RBAC)
//!          ┌─────────────────────────────┼───────────────────────────┐
//!   policyc-agent --netns <run>-node-1   policyc-agent --netns <run>-node-2   …   (host processes)
//!          │ netlink, conntrack           │
//!   <run>-node-1: table inet policyc     <run>-node-2 …                        (the Lab's namespaces)
//!          └─► NodePolicyStatus node-1 (rulesetHash) ◄── wait_synced: equal to
//!                                                        compile(snapshot, node).ruleset_hash()
//! ```
//!
//! Every node runs the real flanneld ([`crate::flannel`]: kube subnet manager, vxlan backend),
//! which programs `flannel.1`, its routes, neighbours and fdb entries from the Node objects'
//! `spec.podCIDR`; the lab makes only the underlay ([`Overlay::External`]). A new node's
//! overlay is waited for: every node routes every other node's subnet.
//!
//! Objects are registered as a cluster sees them: a new pod is created Pending, its interface
//! appears in the lab (the CNI's part), then its address is reported through the status
//! subresource (the kubelet's part). Between the two, fail-closed drops the new interface's
//! traffic. [`ClusterLab::wait_synced`] returns once every node's agent reports the ruleset the
//! compiler makes of the lab's snapshot: the agents saw exactly the lab's cluster, and, as the
//! status is written after the kernel commit and the conntrack cut, the kernels hold it.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use policyc_compiler::load::Kind;
use policyc_compiler::model::{Labels, Pod, NAMESPACE_NAME_LABEL};
use policyc_compiler::scenario::{apply_object, Step};
use policyc_compiler::{CompileOptions, Compiler, ObjectRef, Snapshot};
use serde_json::{json, Value};

use crate::apiserver::{self, ApiServer, Tools};
use crate::flannel::{self, Flanneld};
use crate::lab::{Lab, LabOptions, Overlay};
use crate::verify::Enforcer;
use crate::{cleanup, sys, Error};

/// Who the agents are: the chart's ServiceAccount, with exactly the chart's RBAC.
const AGENT_USER: &str = "system:serviceaccount:kube-system:policyc";
const AGENT_GROUPS: [&str; 2] = ["system:serviceaccounts", "system:authenticated"];

/// How long an agent may take from start to its first complete sync.
const AGENT_READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How long flanneld may take to program a new node's overlay on every node.
const OVERLAY_TIMEOUT: Duration = Duration::from_secs(30);

/// Pause between two polls of a condition.
const POLL: Duration = Duration::from_millis(20);

/// How a cluster lab is built.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub lab: LabOptions,
    /// kube-lab, kubectl, helm.
    pub tools: Tools,
    /// The `policyc-agent` binary.
    pub agent: PathBuf,
    /// The `policyc` binary (`policyc wait --for=enforced`).
    pub policyc: PathBuf,
    /// The agents' `--debounce-ms`.
    pub debounce_ms: u64,
    /// The agents' `--status-progress-ms`: how soon a change that leaves a node's ruleset as it
    /// is shows in its status (and `policyc wait --for=enforced` returns).
    pub status_progress_ms: u64,
    /// How long a change may take to reach every node's kernel.
    pub sync_timeout: Duration,
    /// The agents' `--flow-interval-ms` (with the lab's flow log).
    pub flow_interval_ms: u64,
}

impl ClusterOptions {
    /// Binaries from the target directory the running program was built in (where
    /// `cargo test --workspace` or `cargo build -p policyc-controller -p policyc` puts them),
    /// the tools from `e2e/bin`. Fails naming what is missing and how to build it.
    pub fn from_target_dir() -> Result<ClusterOptions, Error> {
        let exe = std::env::current_exe().map_err(|e| Error::new(format!("own executable: {e}")))?;
        // target/<profile>/deps/<test> or target/<profile>/<bin>
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if dir.ends_with("deps") {
            dir.pop();
        }
        let bin = |name: &str| -> Result<PathBuf, Error> {
            let p = dir.join(name);
            match p.is_file() {
                true => Ok(p),
                false => Err(Error::new(format!(
                    "{} is not built (cargo build -p policyc-controller -p policyc)",
                    p.display()
                ))),
            }
        };
        let tools = Tools::in_repo();
        tools.check()?;
        if !tools.path("flanneld").is_file() {
            return Err(Error::new(format!(
                "{} is not built (bash e2e/apiserver/build.sh flanneld)",
                tools.path("flanneld").display()
            )));
        }
        Ok(ClusterOptions {
            lab: LabOptions::default(),
            tools,
            agent: bin("policyc-agent")?,
            policyc: bin("policyc")?,
            debounce_ms: 30,
            status_progress_ms: 100,
            sync_timeout: Duration::from_secs(60),
            flow_interval_ms: 1000,
        })
    }
}

/// One node's agent process.
#[derive(Debug)]
struct Agent {
    child: Option<Child>,
    /// `--metrics-addr` port on 127.0.0.1, kept across restarts.
    port: u16,
    log: PathBuf,
}

/// A lab whose nodes are programmed by agents watching a real API server.
#[derive(Debug)]
pub struct ClusterLab {
    lab: Lab,
    api: ApiServer,
    /// The API server's data, the agents' kubeconfig and logs, applied manifests.
    dir: PathBuf,
    opts: ClusterOptions,
    agent_kubeconfig: PathBuf,
    agents: BTreeMap<String, Agent>,
    /// What the API server holds (policies aside: steps change those by name). Nodes as
    /// written ([`node_object`]).
    nodes: BTreeMap<String, Value>,
    namespaces: BTreeMap<String, Labels>,
    pods: BTreeMap<ObjectRef, Pod>,
    manifests: usize,
    /// One flanneld per node of the lab.
    flanneld: BTreeMap<String, Flanneld>,
    /// flannel's `net-conf.json` (written at start, from the first topology).
    net_conf: PathBuf,
    flannel_kubeconfig: PathBuf,
    /// When each node's Node object was created, and when every node routed its subnet.
    overlay_times: BTreeMap<String, (Instant, Option<Instant>)>,
}

fn repo_path(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

impl ClusterLab {
    /// Builds the lab for `snapshot` (no rules), starts the API server, installs policyc's CRD
    /// and the chart's RBAC, registers the snapshot's nodes, namespaces and pods, starts one
    /// agent per node and waits until every kernel holds its ruleset.
    pub fn start(snapshot: &Snapshot, opts: ClusterOptions) -> Result<ClusterLab, Error> {
        if !snapshot.policies.is_empty() {
            return Err(Error::new(
                "a cluster lab starts without policies: apply them with kubectl",
            ));
        }
        let lab_opts = LabOptions {
            overlay: Overlay::External,
            ..opts.lab.clone()
        };
        let lab = Lab::without_rules(snapshot, lab_opts)?;
        let dir = std::env::temp_dir().join(format!("{}-cluster", lab.prefix()));
        let _ = std::fs::remove_dir_all(&dir);
        let api = match ApiServer::start(&opts.tools, &dir) {
            Ok(a) => a,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        let mut c = ClusterLab {
            lab,
            api,
            agent_kubeconfig: dir.join("agent.kubeconfig"),
            dir,
            opts,
            agents: BTreeMap::new(),
            nodes: BTreeMap::new(),
            namespaces: BTreeMap::new(),
            pods: BTreeMap::new(),
            manifests: 0,
            flanneld: BTreeMap::new(),
            net_conf: PathBuf::new(),
            flannel_kubeconfig: PathBuf::new(),
            overlay_times: BTreeMap::new(),
        };
        c.install()?;
        // Nodes, their flanneld and their agents come with the objects.
        c.sync_objects(snapshot)?;
        c.wait_synced()?;
        Ok(c)
    }

    /// The CRD, the chart's RBAC (rendered by helm) and a kubeconfig for the agents' identity.
    fn install(&mut self) -> Result<(), Error> {
        let crds = repo_path("crds/yaml/crds.yaml");
        self.kubectl(&["apply", "-f", &crds.to_string_lossy()], None)?;
        // The admin policy API too, as clusters that have it do: the agents then also wait for
        // those kinds to be listed before their first ruleset.
        let admin = repo_path("crds/yaml/policy.networking.k8s.io.yaml");
        self.kubectl(&["apply", "--server-side", "-f", &admin.to_string_lossy()], None)?;
        self.kubectl(
            &[
                "wait",
                "--for=condition=established",
                "--timeout=60s",
                "crd/nodepolicystatuses.policyc.dev",
                "crd/clusternetworkpolicies.policy.networking.k8s.io",
                "crd/adminnetworkpolicies.policy.networking.k8s.io",
                "crd/baselineadminnetworkpolicies.policy.networking.k8s.io",
            ],
            None,
        )?;
        let chart = repo_path("charts/policyc");
        let rbac = apiserver::run(
            &self.opts.tools.path("helm"),
            &[
                "template",
                "policyc",
                &chart.to_string_lossy(),
                "-n",
                "kube-system",
                "--show-only",
                "templates/rbac.yaml",
            ],
            None,
        )?;
        self.kubectl(&["apply", "-f", "-"], Some(&rbac))?;
        // flanneld's identity, RBAC and network config.
        self.apply_items(&flannel::rbac())?;
        self.flannel_kubeconfig = self.dir.join("flannel.kubeconfig");
        self.api
            .user_kubeconfig(flannel::USER, &flannel::GROUPS, &self.flannel_kubeconfig)?;
        self.net_conf = self.dir.join("net-conf.json");
        let conf = flannel::net_conf(self.lab.topology())?;
        std::fs::write(&self.net_conf, conf.to_string())
            .map_err(|e| Error::new(format!("{}: {e}", self.net_conf.display())))?;
        // The agents' `--kubeconfig`.
        self.api
            .user_kubeconfig(AGENT_USER, &AGENT_GROUPS, &self.agent_kubeconfig)
    }

    // === flanneld ===

    /// Stops the flanneld of nodes the lab no longer has (or rebuilt), starts one for every
    /// node without, and waits until every node routes every other node's subnet.
    fn sync_flannel(&mut self) -> Result<(), Error> {
        let topology = self.lab.topology().clone();
        let stale: Vec<String> = self
            .flanneld
            .iter()
            .filter(|(n, f)| topology.nodes.get(*n) != Some(&f.node))
            .map(|(n, _)| n.clone())
            .collect();
        let mut changed = !stale.is_empty();
        for n in stale {
            self.flanneld.remove(&n);
        }
        let port = self.api.port();
        let api = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let binary = self.opts.tools.path("flanneld");
        for n in topology.nodes.values() {
            if self.flanneld.contains_key(&n.name) {
                continue;
            }
            flannel::subnet(n)?;
            let netns = self
                .lab
                .node_netns(&n.name)
                .ok_or_else(|| Error::new(format!("no node {} in the lab", n.name)))?
                .to_string();
            let f = Flanneld::start(
                &binary,
                n,
                &netns,
                api,
                &self.flannel_kubeconfig,
                &self.net_conf,
                &self.dir,
            )?;
            self.flanneld.insert(n.name.clone(), f);
            changed = true;
        }
        match changed {
            true => self.wait_overlay().map(|_| ()),
            false => Ok(()),
        }
    }

    /// Waits until every node's `flannel.1` routes every other node's subnet.
    pub fn wait_overlay(&mut self) -> Result<Duration, Error> {
        let topology = self.lab.topology();
        let mut expected = BTreeMap::new();
        let mut netns = BTreeMap::new();
        for n in topology.nodes.values() {
            let others: Vec<String> = topology
                .nodes
                .values()
                .filter(|m| m.name != n.name)
                .map(|m| flannel::subnet(m).map(|c| c.to_string()))
                .collect::<Result<_, _>>()?;
            expected.insert(n.name.clone(), others);
            netns.insert(
                n.name.clone(),
                self.lab.node_netns(&n.name).unwrap_or_default().to_string(),
            );
        }
        let start = Instant::now();
        while start.elapsed() < OVERLAY_TIMEOUT {
            if flannel::converged(&netns, &expected) {
                let now = Instant::now();
                for (_, ready) in self.overlay_times.values_mut() {
                    ready.get_or_insert(now);
                }
                return Ok(start.elapsed());
            }
            for f in self.flanneld.values_mut() {
                f.check_running()?;
            }
            std::thread::sleep(POLL);
        }
        let tails: Vec<String> = self.flanneld.values().map(Flanneld::log_tail).collect();
        Err(Error::new(format!(
            "flanneld did not program the overlay in {OVERLAY_TIMEOUT:?}: {}",
            tails.join("; ")
        )))
    }

    /// When a node's Node object was created, and when every node first routed every other
    /// node's subnet after that.
    pub fn overlay_times(&self, node: &str) -> Option<(Instant, Option<Instant>)> {
        self.overlay_times.get(node).copied()
    }

    /// A node's flanneld (its log, subnet file, start time).
    pub fn flanneld(&self, node: &str) -> Option<&Flanneld> {
        self.flanneld.get(node)
    }

    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    pub fn apiserver(&mut self) -> &mut ApiServer {
        &mut self.api
    }

    /// Where the API server's data, the agents' logs and applied manifests are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Runs kubectl as the cluster's administrator.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, Error> {
        self.api.kubectl(args, input)
    }

    // === Objects ===

    /// Brings the API server's nodes, namespaces and pods, and the lab's pods, to `desired`:
    /// [`ClusterLab::create_pods`] then [`ClusterLab::report_pods`]. Also makes `desired` the
    /// lab's snapshot (what probes are compared with and [`ClusterLab::wait_synced`] expects).
    /// Namespaces are never deleted (without a namespace controller a deleted namespace stays
    /// Terminating): one no longer wanted keeps its labels, and must hold no pod.
    pub fn sync_objects(&mut self, desired: &Snapshot) -> Result<(), Error> {
        self.create_pods(desired)?;
        self.report_pods(desired)
    }

    /// First half of [`ClusterLab::sync_objects`]: pods no longer wanted (or changed in anything
    /// but labels) are deleted from the API server and the lab; new namespaces are created, new
    /// pods are created Pending, without an address, and get their interfaces in the lab. Until
    /// [`ClusterLab::report_pods`], no agent knows the new interfaces: fail-closed drops them.
    pub fn create_pods(&mut self, desired: &Snapshot) -> Result<(), Error> {
        let without_labels = |p: &Pod| Pod {
            labels: Labels::new(),
            ..p.clone()
        };
        let gone: Vec<ObjectRef> = self
            .pods
            .iter()
            .filter(|(id, p)| {
                desired
                    .pods
                    .get(*id)
                    .is_none_or(|d| without_labels(d) != without_labels(p))
            })
            .map(|(id, _)| id.clone())
            .collect();
        let mut by_namespace: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for id in &gone {
            by_namespace.entry(&id.namespace).or_default().push(&id.name);
        }
        for (ns, names) in by_namespace {
            let mut args = vec!["delete", "pod", "-n", ns, "--grace-period=0", "--force"];
            args.extend(names);
            self.kubectl(&args, None)?;
        }
        for id in &gone {
            self.pods.remove(id);
        }

        let mut items = Vec::new();
        let wanted_namespaces: BTreeSet<&str> = desired
            .namespaces
            .keys()
            .map(String::as_str)
            .chain(desired.pods.keys().map(|id| id.namespace.as_str()))
            .collect();
        for ns in wanted_namespaces {
            if !self.namespaces.contains_key(ns) {
                let labels = desired.namespace_labels(ns);
                items.push(json!({
                    "apiVersion": "v1", "kind": "Namespace",
                    "metadata": {"name": ns, "labels": labels},
                }));
                self.namespaces.insert(ns.to_string(), labels);
            }
        }
        let new: Vec<&Pod> = desired
            .pods
            .iter()
            .filter(|(id, _)| !self.pods.contains_key(*id))
            .map(|(_, p)| p)
            .collect();
        for p in &new {
            items.push(pod_object(p));
            self.pods.insert(
                p.id(),
                Pod {
                    ips: Vec::new(),
                    phase: None,
                    ..(*p).clone()
                },
            );
        }
        if !items.is_empty() {
            self.apply_items(&items)?;
        }

        self.lab.update_topology(desired)?;
        let nodes: Vec<Value> = self
            .lab
            .topology()
            .nodes
            .values()
            .filter(|n| !self.nodes.contains_key(&n.name))
            .map(|n| node_object(n, desired))
            .collect();
        if !nodes.is_empty() {
            self.apply_items(&nodes)?;
            let created = Instant::now();
            for n in nodes {
                let name = n["metadata"]["name"].as_str().unwrap_or_default().to_string();
                self.overlay_times.insert(name.clone(), (created, None));
                self.nodes.insert(name, n);
            }
        }
        self.sync_flannel()?;
        self.sync_agents()
    }

    /// One agent per node of the lab: stops those of nodes gone, starts one on every new node
    /// (after its flanneld) and waits until they are ready.
    fn sync_agents(&mut self) -> Result<(), Error> {
        let topology = self.lab.topology();
        let gone: Vec<String> = self
            .agents
            .keys()
            .filter(|n| !topology.nodes.contains_key(*n))
            .cloned()
            .collect();
        let new: Vec<String> = topology
            .nodes
            .keys()
            .filter(|n| !self.agents.contains_key(*n))
            .cloned()
            .collect();
        for node in gone {
            self.kill_agent(&node)?;
            self.agents.remove(&node);
        }
        for node in &new {
            let port = apiserver::free_port()?;
            let agent = self.spawn_agent(node, port)?;
            self.agents.insert(node.clone(), agent);
        }
        for node in &new {
            self.wait_agent_ready(node)?;
        }
        Ok(())
    }

    /// Second half of [`ClusterLab::sync_objects`]: new pods report phase and addresses through
    /// the status subresource, and changed labels are set with `kubectl label --overwrite`.
    /// Nodes likewise: changed `status.addresses` (one that leaves the lab's plan as it is, e.g.
    /// an ExternalIP) through the status subresource, as a kubelet reports them, and labels.
    pub fn report_pods(&mut self, desired: &Snapshot) -> Result<(), Error> {
        let written: Vec<Value> = self
            .lab
            .topology()
            .nodes
            .values()
            .map(|n| node_object(n, desired))
            .collect();
        for want in written {
            let name = want["metadata"]["name"].as_str().unwrap_or_default().to_string();
            let Some(have) = self.nodes.get(&name) else { continue };
            if have["status"] != want["status"] {
                let patch = json!({"status": want["status"]}).to_string();
                self.kubectl(
                    &[
                        "patch",
                        "node",
                        &name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &patch,
                    ],
                    None,
                )?;
            }
            if have["metadata"]["labels"] != want["metadata"]["labels"] {
                let labels = |o: &Value| -> Labels {
                    serde_json::from_value(o["metadata"]["labels"].clone()).unwrap_or_default()
                };
                self.label(&["node", &name], &labels(have), &labels(&want))?;
            }
            self.nodes.insert(name, want);
        }
        for (id, p) in &desired.pods {
            let Some(have) = self.pods.get(id) else { continue };
            if have.ips != p.ips || have.phase != p.phase {
                let patch = json!({"status": pod_status(p)}).to_string();
                self.kubectl(
                    &[
                        "patch",
                        "pod",
                        "-n",
                        &id.namespace,
                        &id.name,
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &patch,
                    ],
                    None,
                )?;
            }
            if have.labels != p.labels {
                self.label(&["pod", "-n", &id.namespace, &id.name], &have.labels, &p.labels)?;
            }
            self.pods.insert(id.clone(), p.clone());
        }
        let names: Vec<String> = self.namespaces.keys().cloned().collect();
        for ns in names {
            let want = desired.namespace_labels(&ns);
            if self.namespaces[&ns] != want {
                self.label(&["namespace", &ns], &self.namespaces[&ns], &want)?;
                self.namespaces.insert(ns, want);
            }
        }
        Ok(())
    }

    /// `kubectl label --overwrite OBJECT k=v… k-…` from `have` to `want`.
    fn label(&self, object: &[&str], have: &Labels, want: &Labels) -> Result<(), Error> {
        let mut changes: Vec<String> = want
            .iter()
            .filter(|(k, v)| k.as_str() != NAMESPACE_NAME_LABEL && have.get(*k) != Some(*v))
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        changes.extend(
            have.keys()
                .filter(|k| k.as_str() != NAMESPACE_NAME_LABEL && !want.contains_key(*k))
                .map(|k| format!("{k}-")),
        );
        if changes.is_empty() {
            return Ok(());
        }
        let mut args = vec!["label", "--overwrite"];
        args.extend_from_slice(object);
        args.extend(changes.iter().map(String::as_str));
        self.kubectl(&args, None).map(|_| ())
    }

    /// Writes objects as one `kind: List` manifest in the cluster's directory and applies it
    /// with `kubectl apply -f`; returns the file (for `policyc wait -f`). Items are applied in
    /// order, one request each, so repeating an object in the list updates it that many times.
    pub fn apply_items(&mut self, items: &[Value]) -> Result<PathBuf, Error> {
        self.manifests += 1;
        let path = self.dir.join(format!("manifest-{}.json", self.manifests));
        let list = json!({"apiVersion": "v1", "kind": "List", "items": items});
        std::fs::write(&path, list.to_string()).map_err(|e| Error::new(format!("{}: {e}", path.display())))?;
        self.kubectl(&["apply", "-f", &path.to_string_lossy()], None)?;
        Ok(path)
    }

    /// Applies NetworkPolicies with kubectl and makes them part of the lab's snapshot; returns
    /// the manifest (see [`ClusterLab::apply_items`]). Does not wait.
    pub fn apply_policies(&mut self, policies: &[Value]) -> Result<PathBuf, Error> {
        let file = self.apply_items(policies)?;
        let mut after = self.lab.snapshot().clone();
        for p in policies {
            apply_object(&mut after, p).map_err(Error::new)?;
        }
        self.lab.update_topology(&after)?;
        Ok(file)
    }

    /// [`ClusterLab::apply_policies`], then `policyc wait --for=enforced` and
    /// [`ClusterLab::wait_synced`]; returns the time from the apply to every kernel holding them.
    pub fn enforce_policies(&mut self, policies: &[Value]) -> Result<Duration, Error> {
        let start = Instant::now();
        let file = self.apply_policies(policies)?;
        self.wait_enforced(&file)?;
        self.wait_synced()?;
        Ok(start.elapsed())
    }

    /// Deletes a NetworkPolicy with kubectl and from the lab's snapshot. Does not wait.
    pub fn delete_policy(&mut self, namespace: &str, name: &str) -> Result<(), Error> {
        self.kubectl(&["delete", "networkpolicy", "-n", namespace, name], None)?;
        let mut after = self.lab.snapshot().clone();
        after.policies.remove(&ObjectRef::new(namespace, name));
        self.lab.update_topology(&after)
    }

    /// Runs `policyc wait --for=enforced -f FILE`: returns once every node hosting a pod a
    /// policy of the file selects reports the policy's current generation.
    pub fn wait_enforced(&self, file: &Path) -> Result<(), Error> {
        let timeout = format!("{}s", self.opts.sync_timeout.as_secs());
        let out = Command::new(&self.opts.policyc)
            .args(["wait", "--for=enforced", "--timeout", &timeout, "-f"])
            .arg(file)
            .env("KUBECONFIG", self.api.kubeconfig())
            .output()
            .map_err(|e| Error::new(format!("cannot run policyc wait: {e}")))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "policyc wait -f {}: {}",
                file.display(),
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
            )));
        }
        Ok(())
    }

    /// Runs `policyc wait --for=enforced` with `--since RV`, or with no argument ("everything
    /// written before now"): returns once every node's kernel holds every change up to it.
    pub fn wait_enforced_since(&self, since: Option<&str>) -> Result<(), Error> {
        let timeout = format!("{}s", self.opts.sync_timeout.as_secs());
        let mut cmd = Command::new(&self.opts.policyc);
        cmd.args(["wait", "--for=enforced", "--timeout", &timeout]);
        if let Some(rv) = since {
            cmd.args(["--since", rv]);
        }
        let out = cmd
            .env("KUBECONFIG", self.api.kubeconfig())
            .output()
            .map_err(|e| Error::new(format!("cannot run policyc wait: {e}")))?;
        if !out.status.success() {
            return Err(Error::new(format!(
                "policyc wait --since {since:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
            )));
        }
        Ok(())
    }

    /// The API server's current resourceVersion (of a one-item namespaces list: the store's
    /// revision), as a script would take it after its writes.
    pub fn current_resource_version(&self) -> Result<String, Error> {
        let out = self.kubectl(&["get", "--raw", "/api/v1/namespaces?limit=1"], None)?;
        let v: Value = serde_json::from_str(&out).map_err(|e| Error::new(format!("namespaces list: {e}")))?;
        v["metadata"]["resourceVersion"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| Error::new("namespaces list without resourceVersion"))
    }

    // === Convergence ===

    /// The ruleset hash each node's agent must report for the lab's snapshot.
    pub fn expected_hashes(&self) -> BTreeMap<String, String> {
        let mut compiler = Compiler::new(self.lab.snapshot());
        self.lab
            .topology()
            .nodes
            .keys()
            .map(|node| {
                // The agents fail closed; on a bridge each finds the ports the lab's CNI
                // plugin made.
                let ir = compiler.compile(&CompileOptions {
                    fail_closed: true,
                    ..self.lab.compile_options(Some(node.clone()))
                });
                (node.clone(), ir.ruleset_hash())
            })
            .collect()
    }

    /// `status.rulesetHash` of every NodePolicyStatus, by node.
    pub fn reported_hashes(&self) -> Result<BTreeMap<String, String>, Error> {
        let text = self.kubectl(&["get", "nodepolicystatuses", "-o", "json"], None)?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::new(format!("NodePolicyStatus list: {e}")))?;
        Ok(v["items"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| {
                Some((
                    o["spec"]["nodeName"].as_str()?.to_string(),
                    o["status"]["rulesetHash"].as_str()?.to_string(),
                ))
            })
            .collect())
    }

    /// Waits until every node's agent reports the ruleset of the lab's snapshot; returns how
    /// long that took.
    pub fn wait_synced(&self) -> Result<Duration, Error> {
        let want = self.expected_hashes();
        let start = Instant::now();
        let mut last = Err(Error::new("not asked yet"));
        while start.elapsed() < self.opts.sync_timeout {
            last = self.reported_hashes();
            if let Ok(got) = &last {
                if want.iter().all(|(n, h)| got.get(n) == Some(h)) {
                    return Ok(start.elapsed());
                }
            }
            std::thread::sleep(POLL);
        }
        let lagging: Vec<String> = match &last {
            Ok(got) => want
                .iter()
                .filter(|(n, h)| got.get(*n) != Some(*h))
                .map(|(n, h)| {
                    format!(
                        "{n} reports {} instead of {}; {}",
                        got.get(n).map_or("nothing", |g| &g[..12.min(g.len())]),
                        &h[..12],
                        self.agent_log_tail(n)
                    )
                })
                .collect(),
            Err(e) => vec![e.to_string()],
        };
        Err(Error::new(format!(
            "the agents did not converge in {:?}: {}",
            self.opts.sync_timeout,
            lagging.join("; ")
        )))
    }

    // === Agents ===

    fn spawn_agent(&self, node: &str, port: u16) -> Result<Agent, Error> {
        let netns = self
            .lab
            .node_netns(node)
            .ok_or_else(|| Error::new(format!("no node {node} in the lab")))?;
        let log = self.dir.join(format!("agent-{node}.log"));
        let out = File::options()
            .create(true)
            .append(true)
            .open(&log)
            .map_err(|e| Error::new(format!("{}: {e}", log.display())))?;
        let child = Command::new(&self.opts.agent)
            .args(["--node-name", node, "--netns"])
            .arg(sys::netns_path(netns))
            .args(["--metrics-addr", &format!("127.0.0.1:{port}")])
            .args(["--debounce-ms", &self.opts.debounce_ms.to_string()])
            .args(["--status-progress-ms", &self.opts.status_progress_ms.to_string()])
            .args(["--interface-prefix", &self.opts.lab.interface_prefix])
            .args(["--attachment", self.opts.lab.attachment.name()])
            .args(flow_args(self.opts.lab.flow_log))
            .args(["--flow-interval-ms", &self.opts.flow_interval_ms.to_string()])
            .arg("--kubeconfig")
            .arg(&self.agent_kubeconfig)
            .env_remove("KUBECONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(out)
            .spawn()
            .map_err(|e| Error::new(format!("cannot run {}: {e}", self.opts.agent.display())))?;
        cleanup::register_process(child.id());
        Ok(Agent {
            child: Some(child),
            port,
            log,
        })
    }

    fn agent(&self, node: &str) -> Result<&Agent, Error> {
        self.agents
            .get(node)
            .ok_or_else(|| Error::new(format!("no agent for node {node}")))
    }

    /// `kill -9` of a node's agent; its ruleset stays in the kernel.
    pub fn kill_agent(&mut self, node: &str) -> Result<(), Error> {
        let agent = self
            .agents
            .get_mut(node)
            .ok_or_else(|| Error::new(format!("no agent for node {node}")))?;
        if let Some(mut child) = agent.child.take() {
            cleanup::unregister_process(child.id());
            child
                .kill()
                .and_then(|_| child.wait())
                .map_err(|e| Error::new(format!("killing the agent of {node}: {e}")))?;
        }
        Ok(())
    }

    /// Starts a node's agent again (after [`ClusterLab::kill_agent`]) and waits until it is
    /// ready (its first complete sync reached the kernel).
    pub fn start_agent(&mut self, node: &str) -> Result<Duration, Error> {
        let port = self.agent(node)?.port;
        if self.agent(node)?.child.is_none() {
            let fresh = self.spawn_agent(node, port)?;
            self.agents.insert(node.to_string(), fresh);
        }
        self.wait_agent_ready(node)
    }

    /// Waits until a node's agent answers `/readyz` with 200; fails at once if it exited.
    pub fn wait_agent_ready(&mut self, node: &str) -> Result<Duration, Error> {
        let start = Instant::now();
        while start.elapsed() < AGENT_READY_TIMEOUT {
            if let Ok((200, _)) = self.agent_http(node, "/readyz") {
                return Ok(start.elapsed());
            }
            let agent = self.agents.get_mut(node).expect("agent");
            if let Some(Ok(Some(status))) = agent.child.as_mut().map(Child::try_wait) {
                return Err(Error::new(format!(
                    "the agent of {node} exited ({status}); {}",
                    self.agent_log_tail(node)
                )));
            }
            std::thread::sleep(POLL);
        }
        Err(Error::new(format!(
            "the agent of {node} was not ready after {AGENT_READY_TIMEOUT:?}; {}",
            self.agent_log_tail(node)
        )))
    }

    /// `GET path` on a node's agent (`/metrics`, `/readyz`, `/healthz`): status code and body.
    pub fn agent_http(&self, node: &str, path: &str) -> Result<(u16, String), Error> {
        let port = self.agent(node)?.port;
        let fail = |e: std::io::Error| Error::new(format!("GET {path} from the agent of {node}: {e}"));
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(fail)?;
        s.set_read_timeout(Some(Duration::from_secs(10))).map_err(fail)?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").map_err(fail)?;
        let mut text = String::new();
        s.read_to_string(&mut text).map_err(fail)?;
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| Error::new(format!("GET {path} from the agent of {node}: no status line")))?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
        Ok((code, body.to_string()))
    }

    /// One value from a node's agent's `/metrics`: the sum over every series of `name` whose
    /// labels include `labels` (e.g. `mode="replace"`; empty for all).
    pub fn agent_metric(&self, node: &str, name: &str, labels: &str) -> Result<f64, Error> {
        let (_, text) = self.agent_http(node, "/metrics")?;
        Ok(metric(&text, name, labels))
    }

    /// The address of a node's agent's HTTP server.
    pub fn agent_addr(&self, node: &str) -> Result<std::net::SocketAddr, Error> {
        Ok(std::net::SocketAddr::from(([127, 0, 0, 1], self.agent(node)?.port)))
    }

    /// The process id of a node's agent, while it runs.
    pub fn agent_pid(&self, node: &str) -> Option<u32> {
        self.agents.get(node)?.child.as_ref().map(std::process::Child::id)
    }

    /// The last lines of a node's agent log, for error messages.
    pub fn agent_log_tail(&self, node: &str) -> String {
        let Some(agent) = self.agents.get(node) else {
            return String::new();
        };
        let text = std::fs::read_to_string(&agent.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        format!("agent log {}: {tail}", agent.log.display())
    }

    pub fn nodes(&self) -> Vec<String> {
        self.agents.keys().cloned().collect()
    }
}

/// The agent's flow event flags for the lab's flow log (none when the lab has none), so that
/// its rulesets are the ones the lab compiles.
fn flow_args(fl: Option<policyc_compiler::flows::FlowLog>) -> Vec<String> {
    let Some(fl) = fl else {
        return vec!["--flow-events".into(), "none".into()];
    };
    let mut events = Vec::new();
    if fl.denied {
        events.push("denied");
    }
    if fl.allowed {
        events.push("allowed");
    }
    if events.is_empty() {
        events.push("none");
    }
    vec![
        "--flow-events".into(),
        events.join(","),
        "--flow-events-rate".into(),
        fl.rate.to_string(),
        "--flow-events-burst".into(),
        fl.burst.to_string(),
        "--flow-events-group".into(),
        fl.group.to_string(),
    ]
}

/// Sum of the samples of `name` (its series carry `labels` among theirs) in OpenMetrics text.
pub fn metric(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, l) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            (n == name && l.contains(labels)).then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// A pod as its manifest: one container with every container port; no status.
fn pod_object(p: &Pod) -> Value {
    let ports: Vec<Value> = p
        .ports
        .iter()
        .map(|c| {
            let mut v = json!({"containerPort": c.port, "protocol": c.protocol.as_str()});
            if let Some(n) = &c.name {
                v["name"] = json!(n);
            }
            v
        })
        .collect();
    let mut spec = json!({
        "terminationGracePeriodSeconds": 0,
        "containers": [{"name": "c", "image": "registry.k8s.io/pause:3.10", "ports": ports}],
    });
    if let Some(node) = &p.node {
        spec["nodeName"] = json!(node);
    }
    if p.host_network {
        spec["hostNetwork"] = json!(true);
    }
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": p.name, "namespace": p.namespace, "labels": p.labels},
        "spec": spec,
    })
}

/// What a kubelet reports for a pod: its phase and addresses.
fn pod_status(p: &Pod) -> Value {
    let mut status = json!({"phase": p.phase.as_deref().unwrap_or("Running")});
    if let Some(first) = p.ips.first() {
        status["podIP"] = json!(first.to_string());
        let ips: Vec<Value> = p.ips.iter().map(|ip| json!({"ip": ip.to_string()})).collect();
        status["podIPs"] = json!(ips);
    }
    status
}

/// A node as the lab built it: InternalIP, and as podCIDRs its pod subnets (at most one per
/// family, as the API allows); host routes are not subnets. A Node of the snapshot keeps its
/// labels and its other addresses (InternalIP when it declares it so, else ExternalIP), so that
/// admin policies' `nodes` peers match in the agents what they match in the lab's snapshot; any
/// other node is labelled with its hostname.
fn node_object(n: &crate::topo::NodePlan, snapshot: &Snapshot) -> Value {
    let node = snapshot.nodes.get(&n.name);
    let declared = node.map(|d| d.pod_cidrs.clone());
    let mut cidrs = Vec::new();
    for c in declared.unwrap_or_else(|| n.prefixes.clone()) {
        if c.prefix() < c.family().bits()
            && !cidrs
                .iter()
                .any(|o: &policyc_compiler::cidr::Cidr| o.family() == c.family())
        {
            cidrs.push(c);
        }
    }
    let cidrs: Vec<String> = cidrs.iter().map(ToString::to_string).collect();
    let mut spec = json!({});
    if let Some(first) = cidrs.first() {
        spec = json!({"podCIDR": first, "podCIDRs": cidrs});
    }
    let mut addresses = vec![json!({"type": "InternalIP", "address": n.ip.to_string()})];
    let labels = match node {
        Some(d) => {
            for ip in d.addresses.iter().filter(|ip| **ip != std::net::IpAddr::V4(n.ip)) {
                let kind = match d.internal_ips.contains(ip) {
                    true => "InternalIP",
                    false => "ExternalIP",
                };
                addresses.push(json!({"type": kind, "address": ip.to_string()}));
            }
            json!(d.labels)
        }
        None => json!({"kubernetes.io/hostname": n.name}),
    };
    addresses.push(json!({"type": "Hostname", "address": n.name}));
    // The lab's VTEP MAC, which flanneld takes from here (see crate::flannel).
    let annotations = json!({
        format!("{}/backend-data", flannel::ANNOTATION_PREFIX): flannel::backend_data(n),
    });
    json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": n.name, "labels": labels, "annotations": annotations},
        "spec": spec,
        "status": {"addresses": addresses},
    })
}

/// Scenarios through the API server and the agents: a step's policies are applied with
/// kubectl (and `policyc wait --for=enforced`), deleted with kubectl; pods and namespaces
/// follow the step's snapshot, relabelled with `kubectl label --overwrite`.
impl Enforcer for ClusterLab {
    fn begin(&mut self, initial: &Snapshot) -> Result<(), Error> {
        if !initial.policies.is_empty() {
            return Err(Error::new(
                "the agents' cluster takes policies from scenario steps only",
            ));
        }
        self.kubectl(&["delete", "networkpolicies", "--all", "--all-namespaces"], None)?;
        self.sync_objects(initial)?;
        self.wait_synced().map(|_| ())
    }

    fn apply_step(&mut self, step: &Step, after: &Snapshot) -> Result<(), Error> {
        for d in &step.delete {
            if Kind::parse(&d.kind) == Some(Kind::NetworkPolicy) {
                let ns = d.namespace.as_deref().unwrap_or("default");
                self.kubectl(&["delete", "networkpolicy", "-n", ns, &d.name], None)?;
            }
        }
        let policies: Vec<Value> = step
            .apply
            .iter()
            .filter(|v| v["kind"] == "NetworkPolicy")
            .cloned()
            .collect();
        let applied = match policies.is_empty() {
            true => None,
            false => Some(self.apply_items(&policies)?),
        };
        self.sync_objects(after)?;
        if let Some(file) = applied {
            self.wait_enforced(&file)?;
        }
        self.wait_synced().map(|_| ())
    }

    fn lab(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        for node in self.nodes() {
            let _ = self.kill_agent(&node);
        }
        // flanneld and its relay hold their nodes' namespaces.
        self.flanneld.clear();
        let _ = self.api.stop();
        if std::thread::panicking() {
            eprintln!(
                "cluster lab {}: API server data and agent logs kept in {}",
                self.lab.prefix(),
                self.dir.display()
            );
        } else {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_metrics() {
        let text = "# TYPE policyc_applies counter\n\
                    policyc_applies_total{mode=\"replace\"} 3\n\
                    policyc_applies_total{mode=\"elements\"} 2\n\
                    policyc_errors_total{kind=\"watch\"} 1\n\
                    policyc_rules 7\n";
        assert_eq!(metric(text, "policyc_applies_total", "mode=\"replace\""), 3.0);
        assert_eq!(metric(text, "policyc_applies_total", ""), 5.0);
        assert_eq!(metric(text, "policyc_rules", ""), 7.0);
        assert_eq!(metric(text, "policyc_errors_total", "kind=\"apply\""), 0.0);
    }

    #[test]
    fn objects_as_the_api_takes_them() {
        let mut l = policyc_compiler::Loader::new();
        l.add_text(
            "t",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
             spec: {nodeName: n1, containers: [{name: c, image: i, ports: [{name: web, containerPort: 80}, {containerPort: 53, protocol: UDP}]}]}\n\
             status: {phase: Running, podIPs: [{ip: 10.0.0.1}, {ip: 'fd00::1'}]}\n",
        );
        let (snap, _) = l.finish();
        let pod = &snap.pods[&ObjectRef::new("x", "a")];
        let obj = pod_object(pod);
        assert_eq!(obj["spec"]["nodeName"], "n1");
        assert_eq!(obj["metadata"]["labels"]["app"], "a");
        assert!(obj.get("status").is_none(), "status goes through the subresource");
        let ports = obj["spec"]["containers"][0]["ports"].as_array().unwrap();
        assert!(ports.contains(&json!({"name": "web", "containerPort": 80, "protocol": "TCP"})));
        assert!(ports.contains(&json!({"containerPort": 53, "protocol": "UDP"})));
        let st = pod_status(pod);
        assert_eq!(st["podIP"], "10.0.0.1");
        assert_eq!(st["podIPs"][1]["ip"], "fd00::1");
        assert_eq!(st["phase"], "Running");
    }
}
