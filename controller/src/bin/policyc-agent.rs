//! `policyc-agent`: the DaemonSet process. Watches Pods, Namespaces, Nodes, NetworkPolicies and
//! the admin policy kinds and keeps this node's nftables ruleset equal to what they say.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, ValueEnum};
use policyc_controller::agent::{self, Config, Shared};
use policyc_controller::attach;
use policyc_controller::metrics::Metrics;
use policyc_controller::status::StatusWriter;
use policyc_controller::uninstall::{self, Identity, Owner, Verdict};

#[derive(Debug, Parser)]
#[command(name = "policyc-agent", version, about)]
struct Args {
    /// The node this agent enforces policy on.
    #[arg(long, env = "NODE_NAME")]
    node_name: String,
    /// Kubeconfig file to reach the API server with, as kubectl takes it [default: KUBECONFIG,
    /// else ~/.kube/config, else the in-cluster ServiceAccount].
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Quiet time after a change before syncing, in milliseconds.
    #[arg(long, default_value_t = 30)]
    debounce_ms: u64,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:9108")]
    metrics_addr: SocketAddr,
    /// Deny traffic of pod interfaces not programmed yet (new pods), until the first sync that
    /// includes them.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fail_closed: bool,
    /// Host-side interface name prefix of pod veths (Calico/Canal: cali).
    #[arg(long, default_value = "cali")]
    interface_prefix: String,
    /// How pods are attached: canal (Calico's routed veths named by --interface-prefix),
    /// flannel (veths on plain Flannel's bridge, see --bridge), or auto: canal when such veths
    /// exist, else flannel when the bridge exists, else nothing is enforced (status Ready=False,
    /// NoPodAttachment) and the node is looked at again until one appears.
    #[arg(long, value_enum, default_value_t = AttachmentArg::Auto)]
    attachment: AttachmentArg,
    /// The bridge the flannel attachment's pods are on.
    #[arg(long, default_value = "cni0")]
    bridge: String,
    /// Program the ruleset of this network namespace (e.g. /run/netns/NAME) instead of the agent's own.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Do not cut established flows that a policy change denies (mark their conntrack entries,
    /// whose packets the ruleset drops).
    #[arg(long)]
    no_conntrack: bool,
    /// Do not write the NodePolicyStatus object.
    #[arg(long)]
    no_status: bool,
    /// Least time between two NodePolicyStatus writes that only move the resourceVersions the
    /// ruleset was compiled from (`compiledFrom`), in milliseconds: what `policyc wait
    /// --for=enforced` may wait at most for a change that leaves this node's ruleset as it is.
    /// A change of what is enforced is written at once.
    #[arg(long, default_value_t = 1000)]
    status_progress_ms: u64,
    /// Verdicts whose packets send flow events (NFLOG): denied, allowed (new connections accepted
    /// by a rule, and admin Pass), or none.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "denied,allowed")]
    flow_events: Vec<FlowEventsArg>,
    /// Flow events each verdict point may send per second (the kernel counts the rest).
    #[arg(long, default_value_t = 100)]
    flow_events_rate: u32,
    /// Flow events a verdict point may send at once after a quiet spell.
    #[arg(long, default_value_t = 200)]
    flow_events_burst: u32,
    /// The nfnetlink_log group of the flow events (one listener per group and network namespace).
    #[arg(long, default_value_t = 7)]
    flow_events_group: u16,
    /// Write flow records as JSON lines to this file (`-`: stdout), besides serving them at
    /// /flows.
    #[arg(long, value_name = "PATH")]
    flow_log: Option<PathBuf>,
    /// Identical flow events (same verdict point, ends, protocol and port) within this many
    /// milliseconds become one record with their counts.
    #[arg(long, default_value_t = 1000)]
    flow_interval_ms: u64,
    /// How rules reach the kernel: one nftables table over netlink, or iptables + ipset.
    #[arg(long, value_enum, default_value_t = BackendArg::Nftables)]
    backend: BackendArg,
    /// On SIGTERM, remove the ruleset from the kernel when the agent is being uninstalled: its
    /// Pod's DaemonSet (read at start, then watched) is deleted or being deleted. While it exists
    /// (a rolling upgrade, a drain, a restart), or when that cannot be told (the API server does
    /// not answer), the ruleset stays for the next agent. Needs --pod-name and --pod-namespace.
    #[arg(long)]
    cleanup_on_uninstall: bool,
    /// The agent's own Pod (the downward API's metadata.name).
    #[arg(long, env = "POD_NAME")]
    pod_name: Option<String>,
    /// The agent's own Pod's namespace (the downward API's metadata.namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    pod_namespace: Option<String>,
    /// Make this node's NodePolicyStatus a dependent of this ClusterRole (the chart's own), so
    /// that the garbage collector deletes it with the ClusterRole (`helm uninstall`).
    #[arg(long)]
    status_owner: Option<String>,
    /// Log lines as text for people, or as one JSON object per line (timestamp, level, target,
    /// message and the event's fields at the top level) for log collectors.
    #[arg(long, env = "POLICYC_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Log filter, e.g. info or policyc_controller=debug [default: RUST_LOG, else info].
    #[arg(long, env = "POLICYC_LOG")]
    log_level: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FlowEventsArg {
    Denied,
    Allowed,
    None,
}

/// The flow log the rulesets are compiled with: `None` when no verdict sends events.
fn flow_log(args: &Args) -> Option<policyc_compiler::flows::FlowLog> {
    let denied = args.flow_events.contains(&FlowEventsArg::Denied);
    let allowed = args.flow_events.contains(&FlowEventsArg::Allowed);
    (denied || allowed).then_some(policyc_compiler::flows::FlowLog {
        group: args.flow_events_group,
        denied,
        allowed,
        rate: args.flow_events_rate,
        burst: args.flow_events_burst,
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Nftables,
    Iptables,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AttachmentArg {
    Auto,
    Canal,
    Flannel,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Logs to stderr in `format`, filtered by `--log-level`, else `RUST_LOG`, else `info`.
fn init_logging(format: LogFormat, level: Option<&str>) -> anyhow::Result<()> {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).with_context(|| format!("--log-level {l:?}"))?,
        None => match std::env::var("RUST_LOG") {
            Ok(l) if !l.is_empty() => EnvFilter::try_new(&l).with_context(|| format!("RUST_LOG {l:?}"))?,
            _ => EnvFilter::new("info"),
        },
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

/// A client from `--kubeconfig` (its current context), else kube's inference: `KUBECONFIG`,
/// `~/.kube/config`, then the in-cluster ServiceAccount.
async fn client(kubeconfig: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("--kubeconfig {}", path.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &Default::default())
                .await
                .with_context(|| format!("--kubeconfig {}", path.display()))?
        }
        None => kube::Config::infer().await.context("no cluster configuration found")?,
    };
    kube::Client::try_from(config).context("kube client")
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    init_logging(args.log_format, args.log_level.as_deref())?;
    let shared = Shared::new(Metrics::new(args.netns.clone()));
    policyc_controller::http::serve(args.metrics_addr, shared.clone()).context("metrics server")?;
    let client = client(args.kubeconfig.as_deref()).await?;
    let flow_log = flow_log(&args);
    let cfg = Config {
        flow_log,
        flow_interval: Duration::from_millis(args.flow_interval_ms.max(10)),
        flow_output: args.flow_log.clone(),
        node_name: args.node_name,
        debounce: Duration::from_millis(args.debounce_ms),
        interface_prefix: args.interface_prefix,
        fail_closed: args.fail_closed,
        netns: args.netns,
        cut_conntrack: !args.no_conntrack,
        report_status: !args.no_status,
        status_progress: Duration::from_millis(args.status_progress_ms),
        status_owner: args.status_owner,
        backend: match args.backend {
            BackendArg::Nftables => agent::Backend::Nftables,
            BackendArg::Iptables => agent::Backend::Iptables,
        },
        attachment: match args.attachment {
            AttachmentArg::Auto => attach::Mode::Auto,
            AttachmentArg::Canal => attach::Mode::Canal,
            AttachmentArg::Flannel => attach::Mode::Flannel,
        },
        bridge: args.bridge,
    };
    tracing::info!(node = %cfg.node_name, "starting; the ruleset in the kernel stays until a complete new one replaces it");
    let me = match (args.pod_name, args.pod_namespace) {
        (Some(pod), Some(namespace)) => Some(Identity { namespace, pod }),
        _ => None,
    };
    let owner = match (&me, args.cleanup_on_uninstall) {
        (Some(me), true) => {
            let (tx, rx) = tokio::sync::watch::channel(Owner::Unknown);
            tokio::spawn(uninstall::watch_owner(client.clone(), me.clone(), tx));
            Some(rx)
        }
        (None, true) => {
            tracing::warn!("--cleanup-on-uninstall needs --pod-name and --pod-namespace (POD_NAME, POD_NAMESPACE): the ruleset stays when the agent stops");
            None
        }
        (_, false) => None,
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let terminated = tokio::select! {
        _ = agent::run(client.clone(), cfg.clone(), shared.clone()) => false,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("interrupted; leaving the ruleset in place");
            false
        }
        _ = term.recv() => true,
    };
    // The sync loop is stopped (dropped): nothing writes the ruleset or the status any more.
    if !terminated {
        return Ok(());
    }
    let (Some(me), Some(mut owner)) = (me, owner) else {
        tracing::info!("terminated; leaving the ruleset in place");
        return Ok(());
    };
    let t = std::time::Instant::now();
    // Within the pod's grace period (the chart's is 10 s): at most 3 s to decide, then
    // milliseconds for the kernel and at most 2 s for the status object.
    match uninstall::decide(&client, &me, &mut owner, Duration::from_secs(3)).await {
        Verdict::Stays(reason) => tracing::info!(%reason, "terminated; leaving the ruleset in place"),
        Verdict::Uninstalled(reason) => {
            tracing::info!(%reason, "terminated by an uninstall; removing the ruleset");
            match agent::remove_ruleset(&cfg, &shared).await {
                Ok(()) => tracing::info!(ms = t.elapsed().as_secs_f64() * 1e3, "ruleset removed from the kernel"),
                Err(e) => tracing::error!("removing the ruleset failed: {e}"),
            }
            if cfg.report_status {
                let sw = StatusWriter::new(client, &cfg.node_name, cfg.status_progress);
                match tokio::time::timeout(Duration::from_secs(2), sw.delete()).await {
                    Ok(Ok(())) => tracing::info!("NodePolicyStatus deleted"),
                    Ok(Err(e)) => tracing::info!(
                        "NodePolicyStatus not deleted ({e}); the garbage collector deletes it with the release's ClusterRole"
                    ),
                    Err(_) => tracing::info!(
                        "NodePolicyStatus not deleted (no answer); the garbage collector deletes it with the release's ClusterRole"
                    ),
                }
            }
        }
    }
    Ok(())
}
