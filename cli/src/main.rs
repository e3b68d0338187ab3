//! `policyc`: render NetworkPolicies as nftables or iptables rules, explain one flow, and print the
//! reachability matrix — offline, from YAML.

mod cluster;
mod explain;
mod input;
mod lab;
mod observe;
mod pod;
mod verify_cluster;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand, ValueEnum};
use policyc_compiler::cidr::Family;
use policyc_compiler::render::{iptables, nft};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions, Ir, Protocol};

use crate::explain::End;

#[derive(Debug, Parser)]
#[command(
    name = "policyc",
    version,
    about = "Kubernetes NetworkPolicy compiler: see which rule decides every packet"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Files {
    /// Input: a file, a directory (read recursively for .yaml/.yml/.json) or - for stdin. Repeatable.
    #[arg(short = 'f', long = "filename", required = true, value_name = "PATH")]
    files: Vec<PathBuf>,
    #[command(flatten)]
    attach: Attach,
}

/// How pods are attached to their node (what the rules match on).
#[derive(Debug, Clone, clap::Args)]
struct Attach {
    /// Host-side interface name prefix of pod veths (Calico/Canal: cali).
    #[arg(long, default_value = "cali", value_name = "PREFIX")]
    interface_prefix: String,
    /// How pods are attached: canal (routed cali* veths) or flannel (the cni0 bridge of plain
    /// Flannel; see --bridge).
    #[arg(long, value_enum, default_value_t = AttachmentArg::Canal)]
    attachment: AttachmentArg,
    /// The bridge of the flannel attachment.
    #[arg(long, default_value = "cni0", value_name = "NAME")]
    bridge: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum AttachmentArg {
    Canal,
    Flannel,
}

impl Attach {
    fn attachment(&self) -> policyc_compiler::ir::AttachmentKind {
        match self.attachment {
            AttachmentArg::Canal => policyc_compiler::ir::AttachmentKind::Canal,
            AttachmentArg::Flannel => policyc_compiler::ir::AttachmentKind::Bridge {
                bridge: self.bridge.clone(),
            },
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Render the ruleset for one node, every node, or the whole cluster as one table.
    Render {
        #[command(flatten)]
        input: Files,
        /// Render the ruleset of this node (its pods' spec.nodeName).
        #[arg(long, conflicts_with = "all_nodes")]
        node: Option<String>,
        /// Render one ruleset per node.
        #[arg(long)]
        all_nodes: bool,
        #[arg(long, value_enum, default_value_t = Format::Nft)]
        format: Format,
        /// With --all-nodes: write one file per node into this directory instead of stdout.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
        /// Drop traffic of pod interfaces the ruleset does not know (pods created after rendering),
        /// as the agent does by default.
        #[arg(long)]
        fail_closed: bool,
        /// With the log rules of flow events (denied and allowed, 100/s burst 200 per verdict
        /// point, NFLOG group 7), as the agent loads the ruleset by default.
        #[arg(long)]
        flow_events: bool,
    },
    /// Explain the verdict on one flow: which policies select each end and which rule decides.
    /// The flow: --from/--to/--port [--protocol], or --flow with a flow record (`policyc observe
    /// -o json`), whose verdict and rule are then compared with the explanation. The objects: -f
    /// manifests, or --cluster (the live objects). Exit status: 0 allowed, 1 denied, 2 error.
    Explain {
        /// Input: a file, a directory (read recursively for .yaml/.yml/.json) or - for stdin.
        /// Repeatable. Required unless --cluster.
        #[arg(
            short = 'f',
            long = "filename",
            value_name = "PATH",
            required_unless_present = "cluster"
        )]
        files: Vec<PathBuf>,
        #[command(flatten)]
        attach: Attach,
        /// Explain against the cluster's live objects (namespaces, pods, policies) instead of -f.
        #[arg(long, conflicts_with = "files")]
        cluster: bool,
        /// With --cluster: the kubeconfig; default: KUBECONFIG, ~/.kube/config, or in-cluster.
        #[arg(long, requires = "cluster")]
        kubeconfig: Option<PathBuf>,
        /// A flow record (JSON object, or the first line of NDJSON; - for stdin): its ends, port
        /// and protocol are the flow, and its verdict and rule are checked against the
        /// explanation. Instead of --from/--to/--port/--protocol.
        #[arg(long, value_name = "FILE", conflicts_with_all = ["from", "to", "port", "protocol"])]
        flow: Option<PathBuf>,
        /// Source: NAMESPACE/POD or an IP address.
        #[arg(long)]
        from: Option<End>,
        /// Destination: NAMESPACE/POD or an IP address.
        #[arg(long)]
        to: Option<End>,
        #[arg(long)]
        port: Option<u16>,
        /// TCP (default), UDP or SCTP.
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<Protocol>,
        #[arg(short = 'o', long, value_enum, default_value_t = TextJson::Text)]
        output: TextJson,
    },
    /// The reachability truth table among all pods (rows: sources, columns: destinations) for
    /// one port, a list of ports, or every distinct port the policies use (`--ports all`).
    /// Several ports: one table each under a `# PORT/PROTOCOL` heading; in JSON one object with
    /// a member per port, each in the one-port form.
    Matrix {
        #[command(flatten)]
        input: Files,
        /// Destination port; a comma-separated list (or the flag repeated) gives one table per
        /// port. With --ports all: ports to add to those the policies use.
        #[arg(long, value_delimiter = ',', required_unless_present = "ports", value_name = "PORT")]
        port: Vec<u16>,
        /// Protocol of --port.
        #[arg(long, default_value = "TCP", value_parser = parse_protocol)]
        protocol: Protocol,
        /// `all`: every distinct port the rules use: each port and range they name, each number
        /// a named port resolves to on some pod; ports no rule tells apart (the ports of a range
        /// not named elsewhere) make one table, headed by their ranges, e.g. `1000-1499,1501-2000/TCP`.
        #[arg(long, value_parser = ["all"], value_name = "all")]
        ports: Option<String>,
        /// Sum the table over groups of pods: a cell says `all` when every pod of the row's group
        /// reaches every pod of the column's group (a pod and itself are not a pair), `none`,
        /// allowed/pairs when some do, `-` when there is no pair. By namespace, or by workload:
        /// NAMESPACE/NAME, NAME the pod's app.kubernetes.io/name or app label, else its name
        /// without the suffixes controllers append. JSON keeps the per-pod form and adds `groups`.
        #[arg(long, value_enum, value_name = "BY")]
        group_by: Option<GroupByArg>,
        #[arg(short = 'o', long, value_enum, default_value_t = TableJson::Table)]
        output: TableJson,
    },
    /// Build the network-namespace lab (one namespace per node and pod, VXLAN overlay), load
    /// every node's rules, and print the truth table seen with real packets (as `matrix` does).
    Probe(lab::ProbeArgs),
    /// Check the rules with real packets in the lab: packets vs the IR's verdicts (and
    /// expectations, or a multi-step scenario), cell by cell, naming the rule behind every
    /// disagreement. Exit status: 0 all agree, 1 a disagreement, 2 error.
    Verify(lab::VerifyArgs),
    /// Serve TCP (accept) and UDP (echo) ports until killed: the probe image's server mode.
    Serve(pod::ServeArgs),
    /// Connect to ADDRESS:PORT once (TCP connect, or a UDP datagram and its echo): the probe
    /// image's client mode. Exit status: 0 connected, 1 not, 2 error.
    Connect(pod::ConnectArgs),
    /// The lab itself: remove leftovers, measure the dataplane.
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// The agents' flow records (allowed, denied, passed; which policy and rule decided), from
    /// every node or one, filtered, as a table or NDJSON; --follow streams new ones. Exit
    /// status: 0, or 2 when no agent could be read.
    Observe(observe::ObserveArgs),
    /// What each node's agent enforces (its NodePolicyStatus), and per policy the nodes that
    /// enforce its current generation.
    Status {
        /// Kubeconfig; default: KUBECONFIG, ~/.kube/config, or in-cluster.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(short = 'o', long, value_enum, default_value_t = TextJson::Text)]
        output: TextJson,
    },
    /// Wait until changes are enforced in every node's kernel. With `-f`: the policies in the
    /// files (every node hosting a pod a policy selects reports the policy's current generation).
    /// With `--since RV`: every change of any watched kind (pods, namespaces, nodes, policies)
    /// up to that resourceVersion, on every node whose agent runs. With neither: every change
    /// written before the wait started. Exit status: 0 enforced, 1 timed out, 2 error.
    Wait {
        /// What to wait for: `enforced`.
        #[arg(long = "for", value_parser = ["enforced"], default_value = "enforced")]
        condition: String,
        /// NetworkPolicy or admin policy manifests (the objects are read back from the cluster by name).
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// A resourceVersion (e.g. from `kubectl apply -o jsonpath='{.metadata.resourceVersion}'`):
        /// wait until every change up to it is in every node's kernel. resourceVersions are
        /// compared as integers (etcd revisions).
        #[arg(long)]
        since: Option<String>,
        /// How long to wait, e.g. 30s, 2m.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: std::time::Duration,
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
    },
}

fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (e.g. 30s, 2m)"))?;
    match unit {
        "ms" => Ok(std::time::Duration::from_millis(n)),
        "" | "s" => Ok(std::time::Duration::from_secs(n)),
        "m" => Ok(std::time::Duration::from_secs(n * 60)),
        _ => Err(format!("invalid duration {s:?} (e.g. 30s, 2m)")),
    }
}

fn block_on<T, E: Into<anyhow::Error>>(f: impl std::future::Future<Output = Result<T, E>>) -> Result<T> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(f)
        .map_err(Into::into)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Format {
    /// One `table inet policyc`, for `nft -f`.
    Nft,
    /// iptables-restore input (IPv4); load the sets first (--format ipset).
    Iptables,
    /// ip6tables-restore input (IPv6).
    Ip6tables,
    /// ipset restore input: the sets the iptables rules use.
    Ipset,
    /// The canonical IR as JSON.
    IrJson,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TextJson {
    Text,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TableJson {
    Table,
    Json,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum GroupByArg {
    Namespace,
    Workload,
}

/// `policyc matrix`: the ports asked for (or every distinct port), one matrix at a time, written
/// as it is computed.
fn matrix(
    ir: &Ir,
    snapshot: &policyc_compiler::Snapshot,
    port: &[u16],
    protocol: Protocol,
    all: bool,
    group_by: Option<GroupByArg>,
    output: TableJson,
) -> Result<()> {
    use policyc_compiler::eval::{distinct_ports, workload, GroupBy, GroupMatrix, Matrices};
    use std::io::Write as _;

    // (heading, protocol, port) per matrix.
    let wanted: Vec<(String, Protocol, u16)> = if all {
        let extra: Vec<(Protocol, u16)> = port.iter().map(|p| (protocol, *p)).collect();
        distinct_ports(ir, &extra)
            .into_iter()
            .map(|c| (c.to_string(), c.protocol, c.port()))
            .collect()
    } else {
        let mut seen = std::collections::BTreeSet::new();
        port.iter()
            .filter(|p| seen.insert(**p))
            .map(|p| (format!("{p}/{protocol}"), protocol, *p))
            .collect()
    };
    let several = all || wanted.len() > 1;
    if all && wanted.is_empty() {
        eprintln!("note: no rule names a port (rules without ports allow every port alike): give --port");
    }
    let groups = group_by.map(|by| {
        let names: Vec<String> = ir
            .endpoints
            .iter()
            .map(|e| match by {
                GroupByArg::Namespace => e.pod.namespace.clone(),
                GroupByArg::Workload => snapshot.pods.get(&e.pod).map_or_else(|| e.pod.to_string(), workload),
            })
            .collect();
        let by = match by {
            GroupByArg::Namespace => GroupBy::Namespace,
            GroupByArg::Workload => GroupBy::Workload,
        };
        (by, names)
    });
    let mut matrices = Matrices::new(ir);
    let pods = matrices.pods().to_vec();
    let stdout = std::io::stdout();
    let mut w = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    if several && output == TableJson::Json {
        w.write_all(b"{")?;
    }
    for (i, (heading, protocol, port)) in wanted.iter().enumerate() {
        let m = matrices.bits(*protocol, *port);
        let grouped = groups
            .as_ref()
            .map(|(by, names)| GroupMatrix::new(&m, &pods, *by, names));
        match output {
            TableJson::Table => {
                if several {
                    if i > 0 {
                        writeln!(w)?;
                    }
                    writeln!(w, "# {heading}")?;
                }
                match &grouped {
                    Some(g) => w.write_all(g.to_table().as_bytes())?,
                    None => m.write_table(&pods, &mut w)?,
                }
            }
            TableJson::Json => {
                if several {
                    if i > 0 {
                        w.write_all(b",")?;
                    }
                    serde_json::to_writer(&mut w, heading)?;
                    w.write_all(b":")?;
                }
                w.write_all(b"{")?;
                m.write_json_fields(&pods, &mut w)?;
                if let Some(g) = &grouped {
                    w.write_all(b",\"groups\":")?;
                    serde_json::to_writer(&mut w, g)?;
                }
                w.write_all(b"}")?;
            }
        }
    }
    if output == TableJson::Json {
        if several {
            w.write_all(b"}")?;
        }
        writeln!(w)?;
    }
    w.flush()?;
    Ok(())
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    Protocol::parse(s).ok_or_else(|| format!("unknown protocol {s:?} (TCP, UDP or SCTP)"))
}

fn render_one(ir: &Ir, format: Format) -> Result<String> {
    ir.validate()?;
    if matches!(format, Format::Iptables | Format::Ip6tables | Format::Ipset) {
        if let Some(why) = iptables::unsupported(ir) {
            anyhow::bail!("{why}");
        }
    }
    Ok(match format {
        Format::Nft => nft::render(ir, true)?,
        Format::Iptables => iptables::render_iptables(ir, Family::V4),
        Format::Ip6tables => iptables::render_iptables(ir, Family::V6),
        Format::Ipset => iptables::render_ipset(ir),
        Format::IrJson => serde_json::to_string_pretty(ir)? + "\n",
    })
}

fn extension(format: Format) -> &'static str {
    match format {
        Format::Nft => "nft",
        Format::Iptables => "iptables",
        Format::Ip6tables => "ip6tables",
        Format::Ipset => "ipset",
        Format::IrJson => "json",
    }
}

/// Loads input and stops when nothing usable was read.
fn load(files: &Files) -> Result<input::Input> {
    let input = input::load(&files.files);
    input.report(false);
    if input.objects == 0 && input.has_errors() {
        bail!("no valid objects in the input");
    }
    Ok(input)
}

fn options(attach: &Attach, node: Option<String>) -> CompileOptions {
    CompileOptions {
        node,
        interface_prefix: attach.interface_prefix.clone(),
        fail_closed: false,
        attachment: attach.attachment(),
        ..Default::default()
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Render {
            input,
            node,
            all_nodes,
            format,
            out_dir,
            fail_closed,
            flow_events,
        } => {
            let loaded = load(&input)?;
            let options = |node| CompileOptions {
                fail_closed,
                flow_log: flow_events.then(policyc_compiler::flows::FlowLog::default),
                ..options(&input.attach, node)
            };
            let snapshot = &loaded.snapshot;
            if !all_nodes {
                if out_dir.is_some() {
                    bail!("--out-dir needs --all-nodes");
                }
                if let Some(n) = &node {
                    let known = policyc_compiler::Compiler::new(snapshot).nodes();
                    if !known.contains(n) {
                        let list: Vec<_> = known.into_iter().collect();
                        bail!("node {n:?} hosts no pods in the input (nodes: {})", list.join(", "));
                    }
                }
                let ir = compile(snapshot, &options(node));
                print!("{}", render_one(&ir, format)?);
                return Ok(ExitCode::SUCCESS);
            }
            let irs = compile_all_nodes(snapshot, &options(None));
            if irs.is_empty() {
                bail!("no node hosts any pod in the input (pods need spec.nodeName)");
            }
            for (node, ir) in &irs {
                let text = render_one(ir, format)?;
                match &out_dir {
                    Some(dir) => {
                        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
                        let path = dir.join(format!("{node}.{}", extension(format)));
                        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
                        eprintln!("wrote {}", path.display());
                    }
                    None => print!("# === node {node} ===\n{text}"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Explain {
            files,
            attach,
            cluster,
            kubeconfig,
            flow,
            from,
            to,
            port,
            protocol,
            output,
        } => {
            let (record, from, to, protocol, port) = match (flow, from, to, port) {
                (Some(path), ..) => {
                    if path.as_os_str() == "-" && files.iter().any(|f| f.as_os_str() == "-") {
                        bail!("--flow - and -f - cannot both read stdin");
                    }
                    let r = explain::read_record(&path)?;
                    let (from, to, protocol, port) = explain::flow_of_record(&r)?;
                    (Some(r), from, to, protocol, port)
                }
                (None, Some(from), Some(to), Some(port)) => (None, from, to, protocol.unwrap_or(Protocol::Tcp), port),
                (None, from, to, port) => {
                    let missing: Vec<&str> = [
                        ("--from", from.is_none()),
                        ("--to", to.is_none()),
                        ("--port", port.is_none()),
                    ]
                    .into_iter()
                    .filter_map(|(name, missing)| missing.then_some(name))
                    .collect();
                    bail!(
                        "which flow? give --from, --to and --port (missing: {}), or --flow FILE with a flow record",
                        missing.join(", ")
                    );
                }
            };
            let (snapshot, objects) = if cluster {
                let snapshot = block_on(async {
                    let client = cluster::client(kubeconfig.as_deref()).await?;
                    cluster::snapshot(&client).await
                })?;
                (snapshot, "live objects")
            } else {
                let loaded = load(&Files {
                    files,
                    attach: attach.clone(),
                })?;
                (loaded.snapshot, "objects")
            };
            let ir = compile(&snapshot, &options(&attach, None));
            let e = explain::explain(&snapshot, &ir, &from, &to, protocol, port)?;
            let agreement = record.as_ref().map(|r| explain::agreement(r, &e));
            match output {
                TextJson::Text => {
                    print!("{}", explain::to_text(&e, &ir));
                    if let Some(a) = &agreement {
                        print!("{}", explain::agreement_text(a, objects));
                    }
                }
                TextJson::Json => {
                    let mut v = serde_json::to_value(&e)?;
                    if let (Some(a), Some(m)) = (&agreement, v.as_object_mut()) {
                        m.insert("record".into(), serde_json::to_value(a)?);
                    }
                    println!("{}", serde_json::to_string_pretty(&v)?);
                }
            }
            Ok(if e.verdict.allowed {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            })
        }
        Command::Matrix {
            input,
            port,
            protocol,
            ports,
            group_by,
            output,
        } => {
            let loaded = load(&input)?;
            let ir = compile(&loaded.snapshot, &options(&input.attach, None));
            matrix(
                &ir,
                &loaded.snapshot,
                &port,
                protocol,
                ports.is_some(),
                group_by,
                output,
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Probe(args) => lab::probe(args),
        Command::Verify(args) => lab::verify(args),
        Command::Lab(cmd) => lab::lab(cmd),
        Command::Serve(args) => pod::serve(args),
        Command::Connect(args) => pod::connect(args),
        Command::Observe(args) => observe::run(args),
        Command::Status { kubeconfig, output } => {
            block_on(cluster::status(kubeconfig.as_deref(), output == TextJson::Json))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Wait {
            condition: _,
            files,
            since,
            timeout,
            kubeconfig,
        } => {
            let what = cluster::WaitFor { files, since };
            block_on(cluster::wait_enforced(kubeconfig.as_deref(), &what, timeout))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(exit_status(&e))
        }
    }
}

/// The exit status for an error: what its typed cause says (`policyc wait`: 1 on timeout), else 2.
fn exit_status(e: &anyhow::Error) -> u8 {
    e.downcast_ref::<cluster::WaitError>()
        .map_or(2, cluster::WaitError::exit_status)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster::WaitError;

    #[test]
    fn wait_exit_status_comes_from_the_error_type() {
        let timed_out = WaitError::TimedOut {
            timeout: std::time::Duration::from_secs(1),
            lagging: vec!["shop/web: node n1 does not report it yet".into()],
        };
        assert_eq!(
            timed_out.to_string(),
            "timed out after 1s:\n  shop/web: node n1 does not report it yet",
            "the message users see"
        );
        assert_eq!(exit_status(&timed_out.into()), 1, "timed out");
        assert_eq!(exit_status(&WaitError::NoPolicies.into()), 2, "bad input");
        let cluster = WaitError::Cluster(anyhow::anyhow!("timed out connecting").context("no cluster"));
        assert_eq!(exit_status(&cluster.into()), 2, "not a timeout, whatever the text says");
        assert_eq!(exit_status(&anyhow::anyhow!("timed out")), 2, "other commands' errors");
        let not_rv = WaitError::NotARevision {
            what: "--since".into(),
            value: "abc".into(),
        };
        assert!(
            not_rv
                .to_string()
                .starts_with("--since resourceVersion \"abc\" is not an integer"),
            "{not_rv}"
        );
        assert_eq!(exit_status(&not_rv.into()), 2);
        assert_eq!(exit_status(&WaitError::NoAgents.into()), 2);
    }

    #[test]
    fn wait_takes_since_or_nothing() {
        let cli = Cli::try_parse_from(["policyc", "wait", "--for=enforced", "--since", "123"]).unwrap();
        assert!(
            matches!(cli.command, Command::Wait { since: Some(ref s), ref files, .. } if s == "123" && files.is_empty())
        );
        let cli = Cli::try_parse_from(["policyc", "wait", "--for=enforced"]).unwrap();
        assert!(matches!(cli.command, Command::Wait { since: None, ref files, .. } if files.is_empty()));
    }
}
