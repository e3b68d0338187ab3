//! What reading packet log events costs: a throwaway network namespace with one rule
//! `udp dport 9999 counter log prefix "pc:1" group 1`, a sender thread pushing UDP datagrams to
//! its loopback as fast as it can, and an `nflog::Nflog` reader on its own thread
//! (`Nflog::spawn`) counting the events. Prints events read, events lost, wall time and the
//! reader thread's own CPU time (user + system, `RUSAGE_THREAD`). Needs root.
//!
//! ```sh
//! cargo run --release -p policyc-dataplane --example nflog_bench [PACKETS]
//! ```

use std::fs::File;
use std::net::UdpSocket;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use nix::sys::resource::{getrusage, UsageWho};
use policyc_compiler::model::Protocol;
use policyc_compiler::nft::{Action, BaseHook, Chain, Hook, Log, Match, Rule, Table, TableFamily};
use policyc_dataplane::nflog::{Nflog, Options};
use policyc_dataplane::NetlinkWriter;

fn thread_cpu() -> Duration {
    let u = getrusage(UsageWho::RUSAGE_THREAD).expect("getrusage");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(us(u.user_time()) + us(u.system_time()))
}

fn main() {
    if !policyc_testhost::needs_root(&["ip"]) {
        return;
    }
    let packets: u64 = std::env::args().nth(1).map_or(200_000, |a| a.parse().expect("PACKETS"));
    let ns = policyc_testhost::Netns::new("nflog-bench");
    assert!(ns
        .exec("ip")
        .args(["link", "set", "lo", "up"])
        .status()
        .expect("ip")
        .success());
    let table = Table {
        family: TableFamily::Inet,
        summary: "nflog bench".into(),
        sets: Vec::new(),
        chains: vec![Arc::new(Chain {
            name: "input".into(),
            hook: Some(BaseHook {
                hook: Hook::Input,
                priority: 0,
            }),
            rules: vec![Rule {
                matches: vec![Match::Dport {
                    protocol: Protocol::Udp,
                    ports: vec![(9999, 9999)],
                }],
                counter: true,
                log: Some(Log::group(1, "pc:1")),
                action: Action::Continue,
                comment: None,
            }],
        })],
    };
    NetlinkWriter::in_netns(ns.path())
        .replace_table(&table)
        .expect("netlink replace");

    let nflog = Nflog::open(Some(&ns.path()), 1, &Options::default()).expect("binding group 1");
    eprintln!("receive buffer: {:?}", nflog.recv_buffer());
    let (tx, rx) = mpsc::channel();
    let mut seen = 0u64;
    let listener = nflog
        .spawn(Duration::from_millis(50), move |batch| {
            seen += batch.events.len() as u64 + batch.lost;
            if seen >= packets {
                // Done: report this thread's CPU time and stop.
                let _ = tx.send(thread_cpu());
                return false;
            }
            true
        })
        .expect("reader thread");

    let file = File::open(ns.path()).expect("netns file");
    let started = Instant::now();
    let sender = std::thread::spawn(move || {
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..packets {
            let _ = s.send_to(&[7; 16], "127.0.0.1:9999");
        }
        started.elapsed()
    });
    let sending = sender.join().expect("sender");
    let reader_cpu = rx.recv_timeout(Duration::from_secs(10)).ok();
    let took = started.elapsed();
    let stats = listener.stop().expect("reader");
    println!(
        "{packets} packets sent in {sending:.2?}; {} events read, {} lost, {} overruns in {took:.2?} \
         ({:.0} events/s); reader thread CPU {reader_cpu:.2?} ({:.2} µs per event)",
        stats.events,
        stats.lost,
        stats.overruns,
        stats.events as f64 / took.as_secs_f64(),
        reader_cpu.map_or(f64::NAN, |c| c.as_secs_f64() * 1e6 / stats.events.max(1) as f64),
    );
}
