//! The conntrack cut's cost against the size of the table: 1k, 10k and 100k entries in a
//! throwaway network namespace, judged by a realistic IR. Needs root (`ip netns`, `nft`).
//!
//! ```sh
//! cargo run --release -p policyc-dataplane --example cut_bench [-- --quick]
//! ```
//!
//! The IR is `synth::cluster(Shape::LARGE, 42)` (10,000 pods, 2,000 policies, 100 nodes)
//! compiled for `node-7`, as the agent compiles it. The entries are real ones: the namespace's
//! loopback carries the addresses of node-7's 100 pods and of 100 client pods from across the
//! cluster (some of them node-7's own), and every client socket sends one UDP datagram to every
//! server socket (a node-7 pod on one of ten ports: DNS, HTTP, databases, a NodePort-range
//! one), so the IR allows some of these flows and denies others, by ingress and by egress.
//!
//! Three cuts per size, each `conntrack::cut_denied` as the agent calls it (a dump, the
//! judgement of every entry, one request and acknowledgement per change):
//!
//! * **mark**: the first cut, marking every denied entry;
//! * **steady**: the same IR again, nothing left to change (what every later sync costs);
//! * **release**: an IR without policies, releasing every marked entry.
//!
//! Each is timed in wall time and in the process's CPU time (user and system, from
//! `getrusage`; the kernel's work of dumping and updating runs in our system calls, so it is
//! in the system time). Wall time on a busy machine is noisy; CPU time much less so. A first
//! row with an empty table shows the fixed cost of a cut, and the column `dump cpu` a dump
//! alone: the kernel walks its whole conntrack hash table (`nf_conntrack_buckets`, shared by
//! every namespace of the host) for every dump, whatever the namespace holds.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use nix::sys::resource::{getrusage, UsageWho};
use policyc_compiler::synth::{self, Shape};
use policyc_compiler::{compile, CompileOptions, Ir};
use policyc_dataplane::conntrack::{cut_denied, Cut};
use policyc_dataplane::ctnetlink::Conntrack;
use policyc_testhost::Netns;

const NODE: &str = "node-7";
const PORTS: [u16; 10] = [53, 54, 80, 443, 5432, 6379, 8080, 8081, 9090, 30000];

/// Process CPU time so far: (user, system).
fn cpu() -> (Duration, Duration) {
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let d = |t: nix::sys::time::TimeVal| Duration::from_micros(t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64);
    (d(u.user_time()), d(u.system_time()))
}

struct Timed {
    cut: Cut,
    wall: Duration,
    user: Duration,
    system: Duration,
}

fn timed_cut(ir: &Ir, ns: &Netns) -> Timed {
    let (u0, s0) = cpu();
    let t = Instant::now();
    let cut = cut_denied(ir, Some(&ns.path())).expect("cut");
    let wall = t.elapsed();
    let (u1, s1) = cpu();
    assert!(cut.complete(), "{cut:?}");
    Timed {
        cut,
        wall,
        user: u1 - u0,
        system: s1 - s0,
    }
}

fn run(ns: &Netns, args: &[&str]) {
    let out = ns.exec(args[0]).args(&args[1..]).output().expect("ip netns exec");
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        std::process::exit(1);
    }
    let quick = std::env::args().any(|a| a == "--quick");
    let t = Instant::now();
    let snapshot = synth::cluster(Shape::LARGE, 42);
    let opts = CompileOptions {
        node: Some(NODE.into()),
        fail_closed: true,
        ..CompileOptions::default()
    };
    let ir = compile(&snapshot, &opts);
    let mut open = snapshot.clone();
    open.policies.clear();
    let open_ir = compile(&open, &opts);
    let local: Vec<IpAddr> = snapshot
        .pods
        .values()
        .filter(|p| p.node.as_deref() == Some(NODE))
        .filter_map(|p| p.ips.iter().find(|ip| ip.is_ipv4()).copied())
        .collect();
    let all: Vec<IpAddr> = snapshot
        .pods
        .values()
        .filter_map(|p| p.ips.iter().find(|ip| ip.is_ipv4()).copied())
        .collect();
    // 100 clients: every 100th pod of the cluster (some on node-7), plus 10 of node-7's.
    let mut clients: Vec<IpAddr> = all.iter().step_by(all.len() / 90).take(90).copied().collect();
    clients.extend(local.iter().skip(50).take(10));
    eprintln!(
        "IR: synth LARGE for {NODE} ({} rules, {} endpoints), {} local pods, compiled in {:.1} s",
        ir.stats().rules,
        ir.stats().endpoints,
        local.len(),
        t.elapsed().as_secs_f64()
    );

    let sizes: &[(usize, usize)] = if quick {
        &[(0, 0), (10, 100), (100, 100)]
    } else {
        &[(0, 0), (10, 100), (100, 100), (100, 1000)]
    };
    // The first row, an empty table: what every cut costs whatever the table (opening the
    // socket in the namespace, the evaluator's indexes of the IR).
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    eprintln!(
        "load average: {}",
        load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
    );
    println!(
        "{:>7} {:>9} | {:>7} {:>9} {:>9} {:>9} {:>8} | {:>9} {:>9} {:>8} | {:>8} {:>9} {:>9}",
        "entries",
        "dump cpu",
        "marked",
        "wall",
        "user",
        "system",
        "µs/entry",
        "steady",
        "cpu",
        "µs/entry",
        "released",
        "wall",
        "cpu"
    );
    for &(n_clients, n_servers) in sizes {
        let n = n_clients * n_servers;
        let ns = Netns::new(&format!("cutbench{n}"));
        run(&ns, &["ip", "link", "set", "lo", "up"]);
        run(
            &ns,
            &[
                "nft",
                "add table inet t; add chain inet t c { type filter hook output priority 0; ct state new accept; }",
            ],
        );
        for key in ["nf_conntrack_udp_timeout", "nf_conntrack_udp_timeout_stream"] {
            run(&ns, &["sysctl", "-qw", &format!("net.netfilter.{key}=600")]);
        }
        let mut addrs: Vec<IpAddr> = local.iter().chain(&clients).copied().collect();
        addrs.sort();
        addrs.dedup();
        let batch: String = addrs.iter().map(|a| format!("addr add {a}/32 dev lo\n")).collect();
        let mut ip = ns.exec("ip");
        ip.args(["-batch", "-"]).stdin(std::process::Stdio::piped());
        let mut child = ip.spawn().expect("ip -batch");
        std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), batch.as_bytes()).expect("batch");
        assert!(child.wait().expect("ip -batch").success(), "adding addresses");

        let servers: Vec<SocketAddr> = (0..n_servers)
            .map(|j| {
                let pod = local[j % local.len()];
                SocketAddr::new(pod, PORTS[(j / local.len() + j) % PORTS.len()])
            })
            .collect();
        let t = Instant::now();
        let file = std::fs::File::open(ns.path()).expect("netns file");
        let sockets = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
                let srv: Vec<UdpSocket> = servers
                    .iter()
                    .map(|a| UdpSocket::bind(a).expect("bind server"))
                    .collect();
                let cli: Vec<UdpSocket> = clients[..n_clients]
                    .iter()
                    .map(|ip| UdpSocket::bind(SocketAddr::new(*ip, 0)).expect("bind client"))
                    .collect();
                for c in &cli {
                    for a in &servers {
                        c.send_to(b"x", a).expect("send");
                    }
                }
                (srv, cli)
            })
            .join()
            .expect("sending thread")
        });
        let made = t.elapsed();

        // A dump alone: the kernel's part of every cut.
        let ct = Conntrack::open(Some(&ns.path())).expect("open");
        let (u0, s0) = cpu();
        let listed = ct.dump().expect("dump").len();
        let (u1, s1) = cpu();
        let dump_cpu = u1 + s1 - u0 - s0;
        assert!(listed >= n, "{listed} entries for {n} flows");
        let mark = timed_cut(&ir, &ns);
        let steady = timed_cut(&ir, &ns);
        assert_eq!(
            steady.cut.marked + steady.cut.released,
            0,
            "nothing left: {:?}",
            steady.cut
        );
        let release = timed_cut(&open_ir, &ns);
        assert_eq!(release.cut.released, mark.cut.marked, "{:?}", release.cut);
        drop(sockets);
        let per = |t: &Timed| match listed {
            0 => "-".to_string(),
            n => format!("{:.2}", (t.user + t.system).as_secs_f64() * 1e6 / n as f64),
        };
        println!(
            "{listed:>7} {:>6.1} ms | {:>7} {:>6.1} ms {:>6.1} ms {:>6.1} ms {:>8} | {:>6.1} ms {:>6.1} ms {:>8} | {:>8} {:>6.1} ms {:>6.1} ms",
            ms(dump_cpu),
            mark.cut.marked,
            ms(mark.wall),
            ms(mark.user),
            ms(mark.system),
            per(&mark),
            ms(steady.wall),
            ms(steady.user + steady.system),
            per(&steady),
            release.cut.released,
            ms(release.wall),
            ms(release.user + release.system),
        );
        eprintln!("  ({listed} entries made in {:.1} s)", made.as_secs_f64());
    }
}
