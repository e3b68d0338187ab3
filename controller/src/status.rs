//! The node's `NodePolicyStatus`: what the kernel enforces, for `policyc status` and `policyc wait`.

use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use policyc_compiler::Ir;
use policyc_crds::{Condition, EnforcedPolicy, KindProgress, NodePolicyStatus, NodePolicyStatusStatus, ObjectError};
use serde_json::json;
use std::time::{Duration, Instant};

use crate::index::InvalidObject;

const MANAGER: &str = "policyc-agent";

/// Writes one node's status object with server-side apply: at once when what is enforced
/// changes; when only the resourceVersions it was compiled from moved, at most once per
/// `progress_interval` (the write is put off, never dropped); otherwise a heartbeat of
/// `lastSyncTime` once a minute.
#[derive(Debug)]
pub struct StatusWriter {
    api: Api<NodePolicyStatus>,
    node: String,
    created: bool,
    last: Option<NodePolicyStatusStatus>,
    last_write: Option<Instant>,
    progress_interval: Duration,
    /// The ClusterRole the object is a dependent of (see [`StatusWriter::owned_by`]).
    owner: Option<String>,
}

/// What one sync put in the kernel, for [`StatusWriter::publish`].
#[derive(Debug)]
pub struct Report<'a> {
    /// The ruleset the kernel holds and its [`Ir::ruleset_hash`]; `None` when the agent put
    /// none there (no pod attachment found yet, or the first apply failed): the status then
    /// claims nothing (no policies, no hash, no `compiledFrom`) and `Ready` is `False`.
    pub enforced: Option<(&'a Ir, &'a str)>,
    pub invalid: &'a [InvalidObject],
    /// The newest ruleset was rejected (the kernel keeps the previous one, if any).
    pub apply_error: Option<&'a str>,
    /// Established flows the ruleset denies whose conntrack entries could not be marked yet.
    pub open_flows: usize,
    /// Per watched kind, the resourceVersion and objects `ir` was compiled from.
    pub compiled_from: Vec<KindProgress>,
    /// When the kernel held `ir` (after the commit).
    pub synced_at: jiff::Timestamp,
    /// How pods are attached (`canal`, `flannel`), when known.
    pub attachment: Option<&'a str>,
    /// Why the node's traffic does not pass the ruleset as intended even when it is applied
    /// (`(reason, message)`, e.g. `BrNetfilterOff`), or why nothing is applied
    /// (`NoPodAttachment`): `Ready` is `False` with it.
    pub not_ready: Option<(&'a str, &'a str)>,
}

/// RFC 3339 with microseconds.
pub fn rfc3339(t: jiff::Timestamp) -> String {
    t.round(jiff::Unit::Microsecond).unwrap_or(t).to_string()
}

/// The status without what changes on every write (sync and transition times) or with every
/// event (`compiledFrom`): equal when what is enforced is equal.
fn enforced_part(s: &NodePolicyStatusStatus) -> NodePolicyStatusStatus {
    let mut a = s.clone();
    a.last_sync_time = None;
    a.compiled_from.clear();
    for c in &mut a.conditions {
        c.last_transition_time.clear();
    }
    a
}

impl StatusWriter {
    pub fn new(client: Client, node: &str, progress_interval: Duration) -> Self {
        Self {
            api: Api::all(client),
            node: node.to_string(),
            created: false,
            last: None,
            last_write: None,
            progress_interval,
            owner: None,
        }
    }

    /// Makes the object a dependent of the ClusterRole `name` (an ownerReference with its UID,
    /// read on the first write): the garbage collector deletes the object when that ClusterRole
    /// is deleted. The chart names its own, which `helm uninstall` deletes, so that no status
    /// object claims enforcement on a node after the release is gone, also when the agent can no
    /// longer delete it itself (its ServiceAccount and RBAC go right after its DaemonSet).
    pub fn owned_by(mut self, name: Option<String>) -> Self {
        self.owner = name;
        self
    }

    /// Deletes this node's object (the agent is uninstalled); succeeds when there is none.
    pub async fn delete(&self) -> Result<(), kube::Error> {
        match self.api.delete(&self.node, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The status for an applied IR and its hash (`enforced`; `None`: nothing applied);
    /// `hash` is the IR's [`Ir::ruleset_hash`]: the SHA-256 (hex) of everything of the IR
    /// that reaches the kernel. Anyone who compiles the same cluster for the node can tell
    /// whether the node's kernel holds it.
    /// `open_flows`: established flows the ruleset denies whose conntrack entries could not be
    /// marked yet (the cut is retried); they are reported as `Degraded`. `not_ready`: a reason
    /// and message that make `Ready` `False` although the apply succeeded (or nothing was
    /// applied for that reason).
    pub fn status(
        enforced: Option<(&Ir, &str)>,
        invalid: &[InvalidObject],
        apply_error: Option<&str>,
        open_flows: usize,
        not_ready: Option<(&str, &str)>,
    ) -> NodePolicyStatusStatus {
        let empty = Ir::default();
        let (ir, hash) = match enforced {
            Some((ir, hash)) => (ir, Some(hash.to_string())),
            None => (&empty, None),
        };
        let policies: Vec<EnforcedPolicy> = ir
            .policies
            .iter()
            .filter(|p| p.selected_endpoints > 0)
            .map(|p| EnforcedPolicy {
                kind: None,
                namespace: p.policy.namespace.clone(),
                name: p.policy.name.clone(),
                generation: p.generation,
                endpoints: p.selected_endpoints as i64,
            })
            .chain(
                ir.admin_policies
                    .iter()
                    .filter(|p| p.selected_endpoints > 0)
                    .map(|p| EnforcedPolicy {
                        kind: Some(p.policy.kind.as_str().to_string()),
                        namespace: String::new(),
                        name: p.policy.name.clone(),
                        generation: p.generation,
                        endpoints: p.selected_endpoints as i64,
                    }),
            )
            .collect();
        let stats = ir.stats();
        let errors: Vec<ObjectError> = invalid
            .iter()
            .map(|i| ObjectError {
                object: i.key.to_string(),
                field: i.field.clone(),
                message: i.message.clone(),
            })
            .collect();
        let cond = |t: &str, ok: bool, reason: &str, message: String| Condition {
            type_: t.into(),
            status: if ok { "True" } else { "False" }.into(),
            reason: reason.into(),
            message,
            last_transition_time: String::new(),
        };
        let degraded = !errors.is_empty() || apply_error.is_some() || open_flows > 0;
        let degraded_reason = match (apply_error, open_flows) {
            (None, 0) if errors.is_empty() => "AsExpected",
            (None, n) if n > 0 => "FlowsNotCut",
            _ => "Degraded",
        };
        let degraded_msg = match apply_error {
            Some(e) => format!("the kernel rejected the newest ruleset, the previous one stays: {e}"),
            None if open_flows > 0 => {
                format!("{open_flows} established flow(s) the ruleset denies are still open: cutting them is retried")
            }
            None if !errors.is_empty() => format!("{} invalid object(s) skipped", errors.len()),
            None => String::new(),
        };
        let (ready, ready_reason, ready_msg) = match (apply_error, not_ready, enforced) {
            (Some(e), _, _) => (
                false,
                "ApplyFailed",
                format!("the kernel rejected the newest ruleset: {e}"),
            ),
            (None, Some((reason, msg)), _) => (false, reason, msg.to_string()),
            (None, None, None) => (false, "NotSynced", "no ruleset applied yet".to_string()),
            (None, None, Some(_)) => (true, "Synced", String::new()),
        };
        NodePolicyStatusStatus {
            policy_count: policies.len() as i64,
            policies,
            ruleset_hash: hash,
            endpoints: stats.endpoints as i64,
            rules: stats.rules as i64,
            sets: stats.sets as i64,
            set_elements: stats.set_elements as i64,
            last_sync_time: None,
            compiled_from: Vec::new(),
            errors,
            attachment: None,
            conditions: vec![
                cond("Ready", ready, ready_reason, ready_msg),
                cond("Degraded", degraded, degraded_reason, degraded_msg),
            ],
        }
    }

    /// Writes the status of `r` unless nothing changed (and the heartbeat is not due). Returns
    /// when to call again if the write was put off: only `compiledFrom` moved, and the last
    /// write is more recent than the progress interval.
    pub async fn publish(&mut self, r: Report<'_>) -> Result<Option<Duration>, kube::Error> {
        let mut status = Self::status(r.enforced, r.invalid, r.apply_error, r.open_flows, r.not_ready);
        status.attachment = r.attachment.map(str::to_string);
        // Compiled from nothing when nothing is enforced: `policyc wait` counts the node as lagging.
        if r.enforced.is_some() {
            status.compiled_from = r.compiled_from;
        }
        let (same_enforced, same_progress) = match &self.last {
            Some(l) => (
                enforced_part(l) == enforced_part(&status),
                l.compiled_from == status.compiled_from,
            ),
            None => (false, false),
        };
        let since_write = self.last_write.map_or(Duration::MAX, |t| t.elapsed());
        if same_enforced && same_progress && since_write < Duration::from_secs(60) {
            return Ok(None);
        }
        if same_enforced && since_write < self.progress_interval {
            return Ok(Some(self.progress_interval - since_write));
        }
        // Keep transition times of conditions whose status did not change.
        let t = rfc3339(r.synced_at);
        for c in &mut status.conditions {
            let prev = self
                .last
                .as_ref()
                .and_then(|l| l.conditions.iter().find(|p| p.type_ == c.type_));
            c.last_transition_time = match prev {
                Some(p) if p.status == c.status => p.last_transition_time.clone(),
                _ => t.clone(),
            };
        }
        status.last_sync_time = r.enforced.is_some().then_some(t);
        let pp = PatchParams::apply(MANAGER).force();
        if !self.created {
            let mut metadata = json!({"name": self.node});
            if let Some(name) = &self.owner {
                let role = Api::<ClusterRole>::all(self.api.clone().into_client())
                    .get(name)
                    .await?;
                metadata["ownerReferences"] = json!([{
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "ClusterRole",
                    "name": name,
                    "uid": role.metadata.uid,
                }]);
            }
            let obj = json!({
                "apiVersion": "policyc.dev/v1alpha1",
                "kind": "NodePolicyStatus",
                "metadata": metadata,
                "spec": {"nodeName": self.node},
            });
            self.api.patch(&self.node, &pp, &Patch::Apply(&obj)).await?;
            self.created = true;
        }
        let obj = json!({
            "apiVersion": "policyc.dev/v1alpha1",
            "kind": "NodePolicyStatus",
            "status": status,
        });
        self.api.patch_status(&self.node, &pp, &Patch::Apply(&obj)).await?;
        self.last = Some(status);
        self.last_write = Some(Instant::now());
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::{Request, Response};
    use kube::client::Body;
    use policyc_compiler::{compile, CompileOptions, Loader};

    fn ir() -> Ir {
        let mut l = Loader::new();
        l.add_text(
            "t",
            "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x, labels: {app: a}}\n\
             spec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.0.0.1}\n---\n\
             apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: x, generation: 4}\n\
             spec: {podSelector: {}}\n",
        );
        let (snap, _) = l.finish();
        compile(
            &snap,
            &CompileOptions {
                node: Some("n1".into()),
                ..Default::default()
            },
        )
    }

    fn report<'a>(ir: &'a Ir, hash: &'a str, pod_rv: u64) -> Report<'a> {
        Report {
            enforced: Some((ir, hash)),
            attachment: Some("canal"),
            not_ready: None,
            invalid: &[],
            apply_error: None,
            open_flows: 0,
            compiled_from: vec![
                KindProgress {
                    kind: "Namespace".into(),
                    resource_version: "40".into(),
                    objects: 3,
                },
                KindProgress {
                    kind: "Pod".into(),
                    resource_version: pod_rv.to_string(),
                    objects: 1,
                },
            ],
            synced_at: "2025-03-01T10:00:00.123456789Z".parse().unwrap(),
        }
    }

    fn ready(s: &NodePolicyStatusStatus) -> (&str, &str) {
        let c = s.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
        (c.status.as_str(), c.reason.as_str())
    }

    /// Without a ruleset in the kernel the status claims nothing; a ruleset that traffic does
    /// not fully pass (br_netfilter off) is not Ready; a rejected apply says so first.
    #[test]
    fn ready_says_whether_traffic_passes_the_ruleset() {
        let none = StatusWriter::status(None, &[], None, 0, Some(("NoPodAttachment", "nothing found")));
        assert_eq!(ready(&none), ("False", "NoPodAttachment"));
        assert!(none.ruleset_hash.is_none() && none.policies.is_empty() && none.rules == 0);
        let ir = ir();
        let ok = StatusWriter::status(Some((&ir, "abc")), &[], None, 0, None);
        assert_eq!(ready(&ok), ("True", "Synced"));
        let brnf = StatusWriter::status(Some((&ir, "abc")), &[], None, 0, Some(("BrNetfilterOff", "off")));
        assert_eq!(ready(&brnf), ("False", "BrNetfilterOff"));
        assert_eq!(brnf.ruleset_hash.as_deref(), Some("abc"));
        assert_eq!(brnf.policies.len(), 1, "what is enforced is still reported");
        let failed = StatusWriter::status(None, &[], Some("EINVAL"), 0, Some(("BrNetfilterOff", "off")));
        assert_eq!(ready(&failed), ("False", "ApplyFailed"));
        let never = StatusWriter::status(None, &[], None, 0, None);
        assert_eq!(ready(&never), ("False", "NotSynced"));
    }

    /// The writer creates the object with server-side apply, then applies the status subresource;
    /// an identical second sync sends nothing; a sync that only moves `compiledFrom` is put off
    /// to the progress interval, never dropped; a change of what is enforced is written at once.
    #[tokio::test]
    async fn publishes_with_server_side_apply_once() {
        let (mock, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = kube::Client::new(mock, "default");
        let server = tokio::spawn(async move {
            let mut seen = Vec::new();
            for _ in 0..4 {
                let (req, send) = handle.next_request().await.expect("request");
                let (parts, body) = req.into_parts();
                let body = body.collect_bytes().await.unwrap();
                let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
                seen.push((parts.method.to_string(), parts.uri.to_string(), v.clone()));
                let reply = serde_json::json!({
                    "apiVersion": "policyc.dev/v1alpha1", "kind": "NodePolicyStatus",
                    "metadata": {"name": "n1"}, "spec": {"nodeName": "n1"}
                });
                send.send_response(
                    Response::builder()
                        .body(Body::from(serde_json::to_vec(&reply).unwrap()))
                        .unwrap(),
                );
            }
            seen
        });
        let interval = Duration::from_millis(300);
        let mut w = StatusWriter::new(client, "n1", interval);
        let ir = ir();
        assert_eq!(w.publish(report(&ir, "abc", 50)).await.unwrap(), None);
        assert_eq!(w.publish(report(&ir, "abc", 50)).await.unwrap(), None, "nothing new");
        let later = w.publish(report(&ir, "abc", 51)).await.unwrap();
        assert!(later.is_some_and(|d| d <= interval), "put off: {later:?}");
        tokio::time::sleep(later.unwrap()).await;
        assert_eq!(w.publish(report(&ir, "abc", 51)).await.unwrap(), None, "written now");
        assert_eq!(w.publish(report(&ir, "def", 52)).await.unwrap(), None, "at once");
        let seen = server.await.unwrap();
        assert_eq!(seen.len(), 4);
        assert_eq!(seen[2].2["status"]["compiledFrom"][1]["resourceVersion"], "51");
        assert_eq!(seen[3].2["status"]["rulesetHash"], "def");
        assert_eq!(seen[3].2["status"]["compiledFrom"][1]["resourceVersion"], "52");
        assert_eq!(seen[0].0, "PATCH");
        assert!(
            seen[0]
                .1
                .starts_with("/apis/policyc.dev/v1alpha1/nodepolicystatuses/n1?&force=true&fieldManager=policyc-agent")
                || seen[0].1.contains("fieldManager=policyc-agent"),
            "{}",
            seen[0].1
        );
        assert_eq!(seen[0].2["spec"]["nodeName"], "n1");
        assert!(seen[1].1.contains("/nodepolicystatuses/n1/status"), "{}", seen[1].1);
        let status = &seen[1].2["status"];
        assert_eq!(status["policies"][0]["name"], "deny");
        assert_eq!(status["policies"][0]["generation"], 4);
        assert_eq!(status["rulesetHash"], "abc");
        assert_eq!(status["attachment"], "canal");
        assert_eq!(status["conditions"][0]["type"], "Ready");
        assert_eq!(status["conditions"][0]["status"], "True");
        // The sync time, to the microsecond; what the ruleset was compiled from, per kind.
        assert_eq!(status["lastSyncTime"], "2025-03-01T10:00:00.123457Z");
        assert_eq!(
            status["compiledFrom"],
            serde_json::json!([
                {"kind": "Namespace", "resourceVersion": "40", "objects": 3},
                {"kind": "Pod", "resourceVersion": "50", "objects": 1},
            ])
        );
    }
}
