//! The API objects the benchmark creates.

use super::*;

pub(crate) fn pod(name: &str, ns: &str, node: &str, app: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": app}},
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "none",
            "ports": [{"name": "http", "containerPort": 8080}]}]}
    }))?)
}

pub(crate) fn running(ips: &[&str]) -> Value {
    let list: Vec<Value> = ips.iter().map(|ip| json!({"ip": ip})).collect();
    json!({"status": {"phase": "Running", "podIP": ips.first(), "podIPs": list}})
}

pub(crate) fn policy(name: &str, port: u16) -> anyhow::Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "x"},
        "spec": {"podSelector": {"matchLabels": {"app": "a"}},
                 "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": "b"}}}], "ports": [{"port": port}]}]}
    }))?)
}

pub(crate) async fn client(api: &ApiServer) -> anyhow::Result<Client> {
    let kc = kube::config::Kubeconfig::read_from(&api.kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
    Ok(Client::try_from(cfg)?)
}
