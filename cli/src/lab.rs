//! `policyc probe`, `policyc verify` and `policyc lab …`: the network-namespace lab, where the
//! rules are loaded on every node and checked with real packets.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use policyc_compiler::expect::Expectations;
use policyc_compiler::{Protocol, Snapshot};
use policyc_lab::verify::{self, Check, Report, StepResult, VerifyOptions};
use policyc_lab::{bench, cleanup, Attachment, Lab, LabOptions};

use crate::{Files, TableJson};

#[derive(Debug, clap::Args)]
pub struct ProbeArgs {
    #[command(flatten)]
    input: Files,
    #[arg(long)]
    port: u16,
    #[arg(long, default_value = "TCP", value_parser = crate::parse_protocol)]
    protocol: Protocol,
    #[arg(short = 'o', long, value_enum, default_value_t = TableJson::Table)]
    output: TableJson,
    /// How long a probe waits for an answer before the packet counts as dropped.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    timeout: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
    Junit,
}

#[derive(Debug, clap::Args)]
pub struct VerifyArgs {
    /// Input: a file, a directory or - for stdin. Repeatable; optional with --scenario.
    #[arg(short = 'f', long = "filename", value_name = "PATH")]
    files: Vec<PathBuf>,
    /// Host-side interface name prefix of pod veths (Calico/Canal: cali).
    #[arg(long, default_value = "cali", value_name = "PREFIX")]
    interface_prefix: String,
    /// Expected reachability (`FROM -> TO [PORT/PROTO,...] allow|deny` lines, or a truth table).
    #[arg(long, value_name = "FILE", conflicts_with = "scenario")]
    expect: Option<PathBuf>,
    /// Ports to probe: `all` (every containerPort of the pods) or a list like 80/TCP,53/UDP.
    #[arg(long, default_value = "all", value_name = "PORTS", conflicts_with = "scenario")]
    ports: String,
    /// A multi-step scenario: each step's changes are applied, the nodes reloaded, and the ports
    /// of its `expect` blocks checked.
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// How the lab attaches pods: canal (routed cali* veths) or flannel (the real bridge and
    /// host-local CNI plugins with Flannel's delegate config; br_netfilter on).
    #[arg(long, value_enum, default_value_t = crate::AttachmentArg::Canal)]
    attachment: crate::AttachmentArg,
    #[arg(short = 'o', long, value_enum, default_value_t = ReportFormat::Text)]
    output: ReportFormat,
    /// How long a probe waits for an answer before the packet counts as dropped.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    timeout: u64,
    /// Verify a live cluster instead of a lab: with --scenario, in throwaway namespaces and
    /// probe pods; with -f EXPECTATIONS (or --expect), between the cluster's own pods, which
    /// stay unchanged.
    #[arg(long)]
    cluster: bool,
    /// With --cluster: the kubeconfig (default: KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, requires = "cluster")]
    kubeconfig: Option<PathBuf>,
    /// With --cluster: the image of the probe pods (it needs `policyc`, `sh` and `nsenter`;
    /// policyc's agent image has them).
    #[arg(long, requires = "cluster", default_value = concat!("policyc/policyc-agent:", env!("CARGO_PKG_VERSION")))]
    probe_image: String,
    /// With --cluster: how long to wait for pods to run and for policyc to report each step
    /// enforced (without policyc, the step is probed after this, e.g. 30s, 2m).
    #[arg(long, requires = "cluster", default_value = "60s", value_parser = crate::parse_duration)]
    wait_timeout: Duration,
    /// With --cluster -f: only the pods of these namespaces (repeatable).
    #[arg(short = 'n', long = "namespace", requires = "cluster")]
    namespaces: Vec<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum LabCommand {
    /// Remove what lab runs left behind (network namespaces named pclab-*) whose process is gone.
    Down {
        /// Also remove the namespaces of labs that are still running.
        #[arg(long)]
        all: bool,
    },
    /// Measure TCP throughput and UDP packet rate between two pods on two nodes: no rules,
    /// connection tracking alone, then 10/100/1000 policies selecting the pair, with the nft and
    /// the iptables rendering.
    Bench {
        /// Seconds per iperf3 run.
        #[arg(long, default_value_t = 3)]
        seconds: u32,
        /// Runs per figure; the median is reported.
        #[arg(long, default_value_t = 3)]
        repeat: usize,
        /// Policy counts to measure (besides no rules at all).
        #[arg(long, value_delimiter = ',', default_value = "10,100,1000")]
        policies: Vec<usize>,
        /// Skip the iptables rendering.
        #[arg(long)]
        nft_only: bool,
        /// Instead of NetworkPolicies, N admin rules decide: N Admin-tier ClusterNetworkPolicies
        /// selecting the pair, the one accepting the benchmark's ports evaluated last.
        #[arg(long)]
        admin: bool,
        /// Also measure the nft rendering with flow events on (denied and allowed, as the agent
        /// runs), each node's NFLOG group read.
        #[arg(long)]
        flow_events: bool,
        /// Attachments to measure, side by side (canal, flannel).
        #[arg(long, value_enum, value_delimiter = ',', default_value = "canal")]
        attachment: Vec<crate::AttachmentArg>,
        #[arg(short = 'o', long, value_enum, default_value_t = crate::TextJson::Text)]
        output: crate::TextJson,
    },
}

pub(crate) fn lab_attachment(a: crate::AttachmentArg) -> Attachment {
    match a {
        crate::AttachmentArg::Canal => Attachment::Canal,
        crate::AttachmentArg::Flannel => Attachment::Flannel,
    }
}

fn lab_options(timeout: u64, interface_prefix: &str, attachment: crate::AttachmentArg) -> Result<LabOptions> {
    if timeout == 0 {
        bail!("--timeout must be at least 1 ms");
    }
    Ok(LabOptions {
        timeout: Duration::from_millis(timeout),
        interface_prefix: interface_prefix.to_string(),
        attachment: lab_attachment(attachment),
        ..LabOptions::default()
    })
}

pub fn probe(args: ProbeArgs) -> Result<ExitCode> {
    let loaded = crate::load(&args.input)?;
    if args.input.attach.attachment == crate::AttachmentArg::Flannel
        && args.input.attach.bridge != policyc_lab::cni::BRIDGE
    {
        bail!(
            "the lab's flannel attachment uses the bridge plugin's default bridge, {}",
            policyc_lab::cni::BRIDGE
        );
    }
    let opts = lab_options(
        args.timeout,
        &args.input.attach.interface_prefix,
        args.input.attach.attachment,
    )?;
    let lab = Lab::new(&loaded.snapshot, opts)?;
    eprintln!(
        "lab {}: {} nodes, {} pods; probing {}/{}",
        lab.prefix(),
        lab.topology().nodes.len(),
        lab.topology().pods.len(),
        args.port,
        args.protocol
    );
    let m = lab.probe_matrix(args.protocol, args.port).matrix();
    lab.teardown()?;
    match args.output {
        TableJson::Table => print!("{}", m.to_table()),
        TableJson::Json => println!("{}", serde_json::to_string(&m)?),
    }
    Ok(ExitCode::SUCCESS)
}

fn load_optional(files: &[PathBuf], interface_prefix: &str) -> Result<Snapshot> {
    if files.is_empty() {
        return Ok(Snapshot::default());
    }
    let f = Files {
        files: files.to_vec(),
        attach: crate::Attach {
            interface_prefix: interface_prefix.to_string(),
            attachment: crate::AttachmentArg::Canal,
            bridge: "cni0".into(),
        },
    };
    Ok(crate::load(&f)?.snapshot)
}

pub fn verify(args: VerifyArgs) -> Result<ExitCode> {
    if args.cluster {
        return verify_cluster(args);
    }
    let opts = lab_options(args.timeout, &args.interface_prefix, args.attachment)?;
    let vopts = VerifyOptions::default();
    let base = load_optional(&args.files, &args.interface_prefix)?;
    let report = match &args.scenario {
        Some(path) => {
            let (scenario, initial) = verify::load_scenario(path, base)?;
            let mut lab = Lab::new(&initial, opts.clone())?;
            let steps = verify::run_scenario(&mut lab, &scenario, &initial, &vopts);
            let report = Report {
                name: format!("scenario {}", scenario.name),
                lab: lab.prefix().to_string(),
                cluster: false,
                timeout_ms: args.timeout,
                steps,
            };
            lab.teardown()?;
            report
        }
        None => {
            if args.files.is_empty() {
                bail!("give the cluster with -f (or a --scenario)");
            }
            let expectations = match &args.expect {
                Some(p) => {
                    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
                    Some(Expectations::parse(&text).map_err(|e| anyhow!("{}: {e}", p.display()))?)
                }
                None => None,
            };
            let ports = if args.ports == "all" {
                let v = verify::container_ports(&base);
                if v.is_empty() {
                    bail!("the pods declare no containerPort: give --ports, e.g. --ports 80/TCP");
                }
                v
            } else {
                verify::parse_ports(&args.ports)?
            };
            let lab = Lab::new(&base, opts)?;
            let checks: Vec<Check<'_>> = ports
                .iter()
                .map(|&(port, protocol)| Check {
                    port,
                    protocol,
                    expectations: expectations.as_ref(),
                })
                .collect();
            let ports = verify::check(&lab, &checks, &vopts);
            let names: Vec<String> = args.files.iter().map(|f| f.display().to_string()).collect();
            let report = Report {
                name: names.join(" "),
                lab: lab.prefix().to_string(),
                cluster: false,
                timeout_ms: args.timeout,
                steps: vec![StepResult {
                    name: "input".into(),
                    ports,
                    error: None,
                }],
            };
            lab.teardown()?;
            report
        }
    };
    print_report(&report, args.output)
}

/// `verify --cluster`: a scenario in throwaway namespaces, or expectations between the
/// cluster's own pods.
fn verify_cluster(args: VerifyArgs) -> Result<ExitCode> {
    use crate::verify_cluster as vc;
    if args.timeout == 0 {
        bail!("--timeout must be at least 1 ms");
    }
    let opts = vc::ClusterOptions {
        kubeconfig: args.kubeconfig.clone(),
        probe_image: args.probe_image.clone(),
        timeout: Duration::from_millis(args.timeout),
        wait: args.wait_timeout,
        namespaces: args.namespaces.clone(),
        ports: (args.ports != "all")
            .then(|| verify::parse_ports(&args.ports))
            .transpose()?,
    };
    let report = match (&args.scenario, args.expect.as_ref().or(args.files.first())) {
        (Some(path), None) => crate::block_on(vc::scenario(path, opts))?,
        (None, Some(expect)) => {
            if args.files.len() + usize::from(args.expect.is_some()) > 1 {
                bail!("--cluster checks one expectations file (-f or --expect)");
            }
            crate::block_on(vc::expectations(expect, opts))?
        }
        (Some(_), Some(_)) => bail!("--cluster takes a --scenario or an expectations file (-f), not both"),
        (None, None) => bail!("--cluster needs a --scenario FILE or -f EXPECTATIONS"),
    };
    print_report(&report, args.output)
}

fn print_report(report: &Report, output: ReportFormat) -> Result<ExitCode> {
    match output {
        ReportFormat::Text => print!("{}", report.to_text()),
        ReportFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        ReportFormat::Junit => print!("{}", report.to_junit()),
    }
    Ok(ExitCode::from(report.exit_code()))
}

pub fn lab(cmd: LabCommand) -> Result<ExitCode> {
    match cmd {
        LabCommand::Down { all } => {
            let removed = cleanup::down(all)?;
            if removed.is_empty() {
                eprintln!("no lab namespaces left behind");
            }
            for n in removed {
                println!("removed netns {n}");
            }
            let live = cleanup::live_namespaces();
            if !live.is_empty() {
                eprintln!(
                    "kept {} namespaces of running labs (--all removes them too)",
                    live.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Bench {
            seconds,
            repeat,
            policies,
            nft_only,
            admin,
            flow_events,
            attachment,
            output,
        } => {
            let opts = bench::BenchOptions {
                seconds,
                repeat,
                policy_counts: policies,
                iptables: !nft_only,
                admin,
                attachments: attachment.into_iter().map(lab_attachment).collect(),
                flow_events,
            };
            let result = bench::run(&opts, &mut |line| eprintln!("{line}"))?;
            match output {
                crate::TextJson::Text => print!("{}", result.to_table()),
                crate::TextJson::Json => println!("{}", serde_json::to_string_pretty(&result)?),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
