//! The flannel attachment: pods attached exactly as Flannel's CNI plugin attaches them, by the
//! real `bridge` and `host-local` plugins (Debian's containernetworking-plugins).
//!
//! ```text
//!  kube-flannel.yml's conflist           flannel CNI plugin (flannel_linux.go)    bridge + host-local
//!  {type: flannel, delegate:        ──►  name, type bridge, ipMasq !FLANNEL_IPMASQ, ──► cni0 (gateway),
//!   {hairpinMode, isDefaultGateway}}     mtu FLANNEL_MTU, isGateway, ipam host-local     veth… port,
//!                                        ranges [[FLANNEL_SUBNET]], routes NETWORK       pod eth0
//! ```
//!
//! [`delegate_config`] is that delegate config. The lab adds what a cluster gets elsewhere: the
//! pod's address from the snapshot as runtimeConfig `ips` (the `ips` capability, which flannel
//! passes through to its delegate), host-local's `dataDir` under the lab's directory (never the
//! host's /var/lib/cni), and, only when a pod of the snapshot has the subnet's first address,
//! the range's `gateway` ([`crate::topo::NodePlan::bridge_gateway_v4`]).

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use policyc_compiler::cidr::Cidr;
use serde_json::{json, Value};

use crate::Error;

/// Where Debian's containernetworking-plugins installs the plugins.
pub const PLUGIN_DIR: &str = "/usr/lib/cni";
/// The bridge the `bridge` plugin makes when flannel's delegate config names none.
pub const BRIDGE: &str = "cni0";
/// The network name of kube-flannel.yml's conflist.
pub const NETWORK_NAME: &str = "cbr0";
/// kube-flannel.yml's conflist version.
pub const CNI_VERSION: &str = "0.3.1";

/// One family of a node's flannel subnet.env: FLANNEL_SUBNET (and the bridge's address in it)
/// and FLANNEL_NETWORK (or the IPv6 ones).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SubnetEnv {
    pub subnet: Cidr,
    /// The range's gateway when it is not host-local's default (the subnet's first host).
    pub gateway: Option<IpAddr>,
    pub network: Cidr,
}

/// Whether the plugins and br_netfilter are here; loads br_netfilter (`modprobe`) when its
/// sysctls are missing.
pub fn check() -> Result<(), Error> {
    for plugin in ["bridge", "host-local"] {
        if !Path::new(PLUGIN_DIR).join(plugin).is_file() {
            return Err(Error::new(format!(
                "{PLUGIN_DIR}/{plugin} is missing (apt-get install containernetworking-plugins)"
            )));
        }
    }
    let sysctl = Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if !sysctl.exists() {
        let _ = Command::new("modprobe")
            .arg("br_netfilter")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !sysctl.exists() {
            return Err(Error::new(
                "br_netfilter is not loaded and modprobe br_netfilter failed: the flannel attachment needs it",
            ));
        }
    }
    Ok(())
}

/// The delegate config Flannel's CNI plugin hands to `bridge` (kube-flannel.yml's delegate
/// `hairpinMode`, `isDefaultGateway`; `ipMasq: false` as FLANNEL_IPMASQ=true), with the pod's
/// addresses as runtimeConfig `ips` and host-local's `dataDir`.
pub fn delegate_config(envs: &[SubnetEnv], mtu: u32, data_dir: &Path, ips: &[IpAddr]) -> Value {
    let ranges: Vec<Value> = envs
        .iter()
        .map(|e| {
            let mut r = json!({"subnet": e.subnet.to_string()});
            if let Some(gw) = e.gateway {
                r["gateway"] = json!(gw.to_string());
            }
            json!([r])
        })
        .collect();
    let routes: Vec<Value> = envs.iter().map(|e| json!({"dst": e.network.to_string()})).collect();
    json!({
        "cniVersion": CNI_VERSION,
        "name": NETWORK_NAME,
        "type": "bridge",
        "hairpinMode": true,
        "isDefaultGateway": true,
        "ipMasq": false,
        "mtu": mtu,
        "isGateway": true,
        "ipam": {
            "type": "host-local",
            "dataDir": data_dir.display().to_string(),
            "ranges": ranges,
            "routes": routes,
        },
        "runtimeConfig": {"ips": ips.iter().map(ToString::to_string).collect::<Vec<_>>()},
    })
}

/// Runs the bridge plugin in the node's namespace (`ip netns exec`: its /sys is the node's).
fn invoke(
    command: &str,
    node_netns: &str,
    pod_netns: &Path,
    container_id: &str,
    conf: &Value,
) -> Result<String, Error> {
    let input = conf.to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", node_netns])
        .arg(PathBuf::from(PLUGIN_DIR).join("bridge"))
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", container_id)
        .env("CNI_NETNS", pod_netns)
        .env("CNI_IFNAME", "eth0")
        .env("CNI_PATH", PLUGIN_DIR)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run the bridge plugin: {e}")))?;
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        stdin
            .write_all(input.as_bytes())
            .map_err(|e| Error::new(format!("writing to the bridge plugin: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(format!("waiting for the bridge plugin: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        // CNI errors come on stdout as {"code", "msg"}.
        return Err(Error::new(format!(
            "bridge plugin {command} for {container_id} in {node_netns}: {} {}",
            stdout.trim().replace('\n', " "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(stdout)
}

/// CNI ADD: attaches the pod; returns the host side of its veth (its bridge port).
pub fn add(node_netns: &str, pod_netns: &Path, container_id: &str, conf: &Value) -> Result<String, Error> {
    let out = invoke("ADD", node_netns, pod_netns, container_id, conf)?;
    host_veth(&out, conf["bridge"].as_str().unwrap_or(BRIDGE)).ok_or_else(|| {
        Error::new(format!(
            "bridge plugin ADD for {container_id}: no host veth in its result: {out}"
        ))
    })
}

/// CNI DEL: detaches the pod and releases its addresses.
pub fn del(node_netns: &str, pod_netns: &Path, container_id: &str, conf: &Value) -> Result<(), Error> {
    invoke("DEL", node_netns, pod_netns, container_id, conf).map(drop)
}

/// The host-side veth of a CNI result: the interface without a sandbox that is not the bridge.
pub fn host_veth(result: &str, bridge: &str) -> Option<String> {
    let v: Value = serde_json::from_str(result).ok()?;
    v["interfaces"]
        .as_array()?
        .iter()
        .filter(|i| i.get("sandbox").and_then(Value::as_str).is_none_or(str::is_empty))
        .filter_map(|i| i["name"].as_str())
        .find(|n| *n != bridge)
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_veth_is_the_port_not_the_bridge_or_the_pod_side() {
        let r = r#"{"cniVersion":"0.3.1","interfaces":[{"name":"cni0","mac":"a"},{"name":"veth06291f32","mac":"b"},{"name":"eth0","mac":"c","sandbox":"/run/netns/p"}]}"#;
        assert_eq!(host_veth(r, "cni0").as_deref(), Some("veth06291f32"));
        assert_eq!(host_veth("{}", "cni0"), None);
    }

    #[test]
    fn delegate_config_is_flannels() {
        let env = SubnetEnv {
            subnet: "10.244.1.0/24".parse().unwrap(),
            gateway: None,
            network: "10.244.0.0/16".parse().unwrap(),
        };
        let c = delegate_config(&[env], 1450, Path::new("/tmp/x"), &["10.244.1.5".parse().unwrap()]);
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["isGateway"], true);
        assert_eq!(c["isDefaultGateway"], true);
        assert_eq!(c["hairpinMode"], true);
        assert_eq!(c["ipMasq"], false);
        assert_eq!(c["mtu"], 1450);
        assert_eq!(c["ipam"]["ranges"], json!([[{"subnet": "10.244.1.0/24"}]]));
        assert_eq!(c["ipam"]["routes"], json!([{"dst": "10.244.0.0/16"}]));
        assert_eq!(c["runtimeConfig"]["ips"], json!(["10.244.1.5"]));
        assert!(
            c.get("bridge").is_none(),
            "flannel names no bridge: the plugin's default cni0"
        );
    }
}
