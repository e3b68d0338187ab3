//! Whether a stopping agent is being uninstalled: its DaemonSet is gone or being deleted
//! (`helm uninstall`, `kubectl delete daemonset`), or it still exists (a rolling upgrade, a node
//! drain, a restart), in which case the ruleset stays in the kernel for the next agent.
//!
//! ```text
//!  start: GET own Pod ─ownerReferences─► DaemonSet NAME, UID ─► watch it (metadata.name=NAME)
//!  SIGTERM: the watch saw it deleted ─────────────────────────► Uninstalled
//!           else GET it: 404, deletionTimestamp, another UID ─► Uninstalled
//!                        exists ───────────────────────────────► Stays
//!                        no answer (and the watch says nothing) ► Stays (fail closed)
//! ```
//!
//! The watch matters because `helm uninstall` deletes the ServiceAccount and the RBAC objects
//! right after the DaemonSet, before the garbage collector has deleted the pods and the kubelet
//! has sent SIGTERM: by then the API server refuses the agent's new requests, while a watch it
//! opened earlier still delivers the DaemonSet's deletion.

use std::time::Duration;

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt as _;
use kube::{Api, Client};
use tokio::sync::watch;

/// The agent's own Pod (from the downward API).
#[derive(Clone, Debug)]
pub struct Identity {
    pub namespace: String,
    pub pod: String,
}

/// What the agent knows of its DaemonSet.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Owner {
    /// Not known yet: the Pod was not read, or the DaemonSet not listed yet.
    Unknown,
    /// The Pod has no DaemonSet owner (started by hand): stopping it is never an uninstall.
    NoDaemonSet,
    Present {
        name: String,
        uid: String,
    },
    /// Deleted, being deleted, or replaced by another object of the same name.
    Gone {
        name: String,
        why: String,
    },
}

/// What a stopping agent does with the ruleset.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Remove it: the DaemonSet is gone (why).
    Uninstalled(String),
    /// Leave it in the kernel (why).
    Stays(String),
}

/// The DaemonSet that owns `pod`: (name, uid).
fn daemonset_of(pod: &Pod) -> Option<(String, String)> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.kind == "DaemonSet" && o.api_version.starts_with("apps/"))
        .map(|o| (o.name.clone(), o.uid.clone()))
}

/// The DaemonSet as the agent's owner: present, or gone when it is being deleted or is another
/// object than the one that made the Pod.
fn judge(ds: &DaemonSet, name: &str, uid: &str) -> Owner {
    if ds.metadata.uid.as_deref() != Some(uid) {
        Owner::Gone {
            name: name.to_string(),
            why: format!("DaemonSet {name} was replaced by another object of that name"),
        }
    } else if let Some(t) = &ds.metadata.deletion_timestamp {
        Owner::Gone {
            name: name.to_string(),
            why: format!("DaemonSet {name} is being deleted (since {})", t.0),
        }
    } else {
        Owner::Present {
            name: name.to_string(),
            uid: uid.to_string(),
        }
    }
}

fn gone(name: &str) -> Owner {
    Owner::Gone {
        name: name.to_string(),
        why: format!("DaemonSet {name} is deleted"),
    }
}

/// Reads the agent's Pod for its DaemonSet, then watches that DaemonSet for as long as the
/// agent runs, telling `tx` what it sees.
pub async fn watch_owner(client: Client, me: Identity, tx: watch::Sender<Owner>) {
    let pods = Api::<Pod>::namespaced(client.clone(), &me.namespace);
    let mut pause = Duration::from_millis(500);
    let (name, uid) = loop {
        match pods.get(&me.pod).await {
            Ok(pod) => match daemonset_of(&pod) {
                Some(owner) => break owner,
                None => {
                    tracing::info!(pod = %me.pod, "the agent's Pod has no DaemonSet owner: the ruleset stays when it stops");
                    tx.send_replace(Owner::NoDaemonSet);
                    return;
                }
            },
            Err(e) => {
                tracing::warn!(pod = %me.pod, "reading the agent's own Pod: {e}");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(30));
            }
        }
    };
    let api = Api::<DaemonSet>::namespaced(client, &me.namespace);
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut listed = false;
    while let Some(event) = stream.next().await {
        let seen = match event {
            Ok(Event::Init) => {
                listed = false;
                continue;
            }
            Ok(Event::InitApply(ds)) => {
                listed = true;
                judge(&ds, &name, &uid)
            }
            Ok(Event::Apply(ds)) => judge(&ds, &name, &uid),
            Ok(Event::InitDone) if listed => continue,
            Ok(Event::InitDone) | Ok(Event::Delete(_)) => gone(&name),
            Err(e) => {
                tracing::warn!(daemonset = %name, "watching the agent's DaemonSet: {e}");
                continue;
            }
        };
        if let Owner::Gone { why, .. } = &seen {
            if !matches!(*tx.borrow(), Owner::Gone { .. }) {
                tracing::info!(reason = %why, "the agent is being uninstalled: it removes the ruleset when stopped");
            }
        }
        tx.send_replace(seen);
    }
}

/// Asks the API server about the DaemonSet (found from the Pod unless `known`).
async fn ask(client: &Client, me: &Identity, known: &Owner) -> Result<Owner, kube::Error> {
    let (name, uid) = match known {
        Owner::Present { name, uid } => (name.clone(), uid.clone()),
        _ => {
            let pod = Api::<Pod>::namespaced(client.clone(), &me.namespace)
                .get(&me.pod)
                .await?;
            match daemonset_of(&pod) {
                Some(owner) => owner,
                None => return Ok(Owner::NoDaemonSet),
            }
        }
    };
    match Api::<DaemonSet>::namespaced(client.clone(), &me.namespace)
        .get(&name)
        .await
    {
        Ok(ds) => Ok(judge(&ds, &name, &uid)),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(gone(&name)),
        Err(e) => Err(e),
    }
}

/// Decides, on SIGTERM, whether the agent is being uninstalled, within `limit`: what the watch
/// saw, else the API server's answer now; without either, the ruleset stays.
pub async fn decide(client: &Client, me: &Identity, rx: &mut watch::Receiver<Owner>, limit: Duration) -> Verdict {
    let seen = rx.borrow_and_update().clone();
    match &seen {
        Owner::Gone { why, .. } => return Verdict::Uninstalled(why.clone()),
        Owner::NoDaemonSet => return Verdict::Stays("the agent's Pod has no DaemonSet owner".into()),
        Owner::Unknown | Owner::Present { .. } => {}
    }
    let deadline = tokio::time::Instant::now() + limit;
    let asked = match tokio::time::timeout_at(deadline, ask(client, me, &seen)).await {
        Ok(Ok(owner)) => Ok(owner),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {limit:?}")),
    };
    match asked {
        Ok(Owner::Gone { why, .. }) => Verdict::Uninstalled(why),
        Ok(Owner::Present { name, .. }) => Verdict::Stays(format!(
            "DaemonSet {name} exists (an upgrade, a drain or a restart): the next agent takes over the ruleset"
        )),
        Ok(Owner::NoDaemonSet) => Verdict::Stays("the agent's Pod has no DaemonSet owner".into()),
        Ok(Owner::Unknown) => Verdict::Stays("the agent's DaemonSet is unknown".into()),
        // Refused or unreachable: the watch may still deliver the deletion (an uninstall has
        // just deleted the agent's ServiceAccount); until the deadline, wait for it.
        Err(e) => {
            let watched = tokio::time::timeout_at(deadline, async {
                loop {
                    if let Owner::Gone { why, .. } = &*rx.borrow_and_update() {
                        return Some(why.clone());
                    }
                    if rx.changed().await.is_err() {
                        return None;
                    }
                }
            })
            .await;
            match watched {
                Ok(Some(why)) => Verdict::Uninstalled(why),
                _ => Verdict::Stays(format!(
                    "cannot tell whether the agent's DaemonSet is deleted ({e}): keeping the ruleset (fail closed)"
                )),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ds(uid: &str, deleting: bool) -> DaemonSet {
        let mut v = serde_json::json!({"metadata": {"name": "policyc", "namespace": "kube-system", "uid": uid}});
        if deleting {
            v["metadata"]["deletionTimestamp"] = "2026-12-05T04:00:00Z".into();
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn owner_is_the_daemonset_that_made_the_pod() {
        let pod: Pod = serde_json::from_value(
            serde_json::json!({"metadata": {"name": "policyc-x", "ownerReferences": [
            {"apiVersion": "v1", "kind": "Node", "name": "n1", "uid": "n"},
            {"apiVersion": "apps/v1", "kind": "DaemonSet", "name": "policyc", "uid": "u1", "controller": true}]}}),
        )
        .unwrap();
        assert_eq!(daemonset_of(&pod), Some(("policyc".into(), "u1".into())));
        let bare: Pod = serde_json::from_value(serde_json::json!({"metadata": {"name": "by-hand"}})).unwrap();
        assert_eq!(daemonset_of(&bare), None);
        assert_eq!(
            judge(&ds("u1", false), "policyc", "u1"),
            Owner::Present {
                name: "policyc".into(),
                uid: "u1".into()
            }
        );
        assert!(matches!(judge(&ds("u1", true), "policyc", "u1"), Owner::Gone { .. }));
        assert!(matches!(judge(&ds("u2", false), "policyc", "u1"), Owner::Gone { .. }));
    }
}
