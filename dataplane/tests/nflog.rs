//! The nfnetlink_log reader (`policyc_dataplane::nflog`) against the kernel, as root, in
//! throwaway network namespaces: the netlink writer loads rules with `log ... group G`
//! statements, real UDP packets cross the namespace's loopback, and the reader must see each
//! logged packet with its rule's prefix, addresses, ports and protocol; a flood through a
//! rate-limited log rule yields no more events than the limit lets through while the rule's
//! counter counts every packet; a table replace starts the limit afresh; a reader that falls
//! behind counts what it lost; bridged frames logged by the bridge family name their port.
//!
//! `examples/nflog_bench.rs` measures the reader's throughput and CPU time.
//!
//! Without root, `ip` or `nft` the tests print `skipped: <test>: <reason>` and pass, unless `CI` is
//! set: then they fail.

use std::fs::File;
use std::net::{IpAddr, UdpSocket};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sched::{setns, CloneFlags};
use policyc_compiler::cidr::Family;
use policyc_compiler::model::Protocol;
use policyc_compiler::nft::{
    Action, BaseHook, Chain, End, Hook, Limit, Log, Match, RateUnit, Rule, Table, TableFamily, Verdict,
};
use policyc_dataplane::counters::rule_counters;
use policyc_dataplane::nflog::{Batch, Event, Nflog, NflogError, Options, Transport, HOOK_INPUT, IPPROTO_UDP};
use policyc_dataplane::{NetlinkWriter, TABLE};

fn available() -> bool {
    policyc_testhost::needs_root(&["ip", "nft"])
}

struct Netns(policyc_testhost::Netns);

impl Netns {
    /// A namespace with its loopback up (127.0.0.1 and ::1).
    fn new(tag: &str) -> Netns {
        let ns = Netns(policyc_testhost::Netns::new(&format!("nflog-{tag}")));
        let ok =
            ns.0.exec("ip")
                .args(["link", "set", "lo", "up"])
                .status()
                .expect("ip link");
        assert!(ok.success());
        ns
    }

    fn load(&self, table: &Table) {
        NetlinkWriter::in_netns(self.0.path())
            .replace_table(table)
            .expect("netlink replace");
    }

    fn nflog(&self, group: u16) -> Nflog {
        Nflog::open(Some(&self.0.path()), group, &Options::default()).expect("binding the group")
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates belong to the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.0.path()).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// `count` datagrams of `size` bytes from `from` (port chosen by the kernel) to `to`.
    fn send_udp(&self, from: &str, to: &str, count: usize, size: usize) -> u16 {
        self.enter(|| {
            let s = UdpSocket::bind(from).expect("bind");
            let data = vec![7u8; size];
            for _ in 0..count {
                // Nobody listens: the ICMP errors are not logged, and ECONNREFUSED from an
                // earlier one may be reported on a send.
                let _ = s.send_to(&data, to);
            }
            s.local_addr().expect("local address").port()
        })
    }

    fn packets_counted(&self, comment: &str) -> u64 {
        let rules = rule_counters(Some(&self.0.path()), TABLE).expect("counters");
        rules
            .iter()
            .find(|r| r.comment.as_deref() == Some(comment))
            .unwrap_or_else(|| panic!("{comment} in {rules:?}"))
            .packets
    }
}

/// `table inet policyc` with an input chain of `rules`.
fn input_table(rules: Vec<Rule>) -> Table {
    Table {
        family: TableFamily::Inet,
        summary: "nflog test".into(),
        sets: Vec::new(),
        chains: vec![std::sync::Arc::new(Chain {
            name: "input".into(),
            hook: Some(BaseHook {
                hook: Hook::Input,
                priority: 0,
            }),
            rules,
        })],
    }
}

fn udp_dport(port: u16) -> Match {
    Match::Dport {
        protocol: Protocol::Udp,
        ports: vec![(port, port)],
    }
}

/// Reads until `want` events came or `patience` passed since the last one.
fn read(log: &mut Nflog, want: usize, patience: Duration) -> Batch {
    let mut all = Batch::default();
    loop {
        let b = log.recv(patience, 4096).expect("recv");
        let empty = b.events.is_empty();
        all.events.extend(b.events);
        all.lost += b.lost;
        all.overruns += b.overruns;
        if empty || all.events.len() >= want {
            return all;
        }
    }
}

fn assert_udp(e: &Event, src: &str, sport: u16, dst: &str, dport: u16, payload: u32, header: u32) {
    let p = e.packet.as_ref().unwrap_or_else(|| panic!("no headers in {e:?}"));
    assert_eq!(p.src, src.parse::<IpAddr>().unwrap(), "{e:?}");
    assert_eq!(p.dst, dst.parse::<IpAddr>().unwrap(), "{e:?}");
    assert_eq!(p.protocol, IPPROTO_UDP, "{e:?}");
    assert_eq!(p.transport, Transport::Ports { src: sport, dst: dport }, "{e:?}");
    assert_eq!(p.len, header + 8 + payload, "{e:?}");
}

/// Each logged packet arrives with its rule's prefix and its headers, IPv4 and IPv6; packets no
/// log rule matches do not.
#[test]
fn events_carry_prefix_and_headers() {
    if !available() {
        return;
    }
    let ns = Netns::new("headers");
    let group = 42;
    ns.load(&input_table(vec![
        Rule {
            matches: vec![udp_dport(9999)],
            counter: true,
            log: Some(Log::group(group, "pc:42")),
            action: Action::Verdict(Verdict::Accept),
            comment: Some("logged".into()),
        },
        Rule {
            matches: vec![
                Match::AddrIn {
                    family: Family::V6,
                    end: End::Destination,
                    addrs: vec!["::1".parse().unwrap()],
                },
                udp_dport(9998),
            ],
            counter: false,
            log: Some(Log::group(group, "pc:6")),
            action: Action::Continue,
            comment: None,
        },
    ]));
    let mut log = ns.nflog(group);
    let buffer = log.recv_buffer();
    assert!(
        buffer.forced && buffer.bytes >= Options::default().recv_buffer,
        "{buffer:?}"
    );

    let sport4 = ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", 3, 100);
    let sport6 = ns.send_udp("[::1]:0", "[::1]:9998", 2, 10);
    ns.send_udp("127.0.0.1:0", "127.0.0.1:9000", 5, 10); // not logged

    let batch = read(&mut log, 5, Duration::from_millis(500));
    assert_eq!((batch.lost, batch.overruns), (0, 0));
    assert_eq!(batch.events.len(), 5, "{:#?}", batch.events);
    for e in &batch.events[..3] {
        assert_eq!(
            (e.prefix.as_str(), e.family, e.hw_protocol, e.hook),
            ("pc:42", 2, 0x0800, HOOK_INPUT)
        );
        // Received on lo (index 1 in a new namespace), not yet routed out.
        assert_eq!((e.indev, e.outdev), (Some(1), None), "{e:?}");
        assert_udp(e, "127.0.0.1", sport4, "127.0.0.1", 9999, 100, 20);
        // The whole packet fits the 128-byte snapshot.
        assert_eq!(e.captured, 128, "{e:?}");
    }
    for e in &batch.events[3..] {
        assert_eq!((e.prefix.as_str(), e.family, e.hw_protocol), ("pc:6", 10, 0x86dd));
        assert_udp(e, "::1", sport6, "::1", 9998, 10, 40);
        assert_eq!(e.captured, 58);
    }
    let seqs: Vec<Option<u32>> = batch.events.iter().map(|e| e.seq).collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4].map(Some));
    assert_eq!(ns.packets_counted("logged"), 3);
    assert_eq!(log.stats().events, 5);
}

/// A flood through `counter limit rate 100/second log`: the counter counts every packet, the
/// log only what the limit lets through (the burst, then 100 a second), and the reader loses
/// nothing.
#[test]
fn flood_is_rate_limited() {
    if !available() {
        return;
    }
    let ns = Netns::new("flood");
    let group = 7;
    ns.load(&input_table(vec![Rule {
        matches: vec![udp_dport(9999)],
        counter: true,
        log: Some(Log::group(group, "pc:7").with_limit(Limit::per_second(100))),
        action: Action::Continue,
        comment: Some("flooded".into()),
    }]));
    let mut log = ns.nflog(group);

    let packets = 20_000;
    let started = Instant::now();
    ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", packets, 16);
    let sending = started.elapsed();
    // The kernel sends what it queued within its flush timeout (100 ms).
    let batch = read(&mut log, usize::MAX, Duration::from_millis(300));
    let window = started.elapsed();

    assert_eq!(ns.packets_counted("flooded"), packets as u64);
    let events = batch.events.len() as u64;
    let most = Limit::DEFAULT_BURST as u64 + (100.0 * sending.as_secs_f64()).ceil() as u64 + 1;
    eprintln!(
        "flood: {packets} packets sent in {sending:?}, {events} events (at most {most} allowed) read within {window:?}"
    );
    assert!(events >= Limit::DEFAULT_BURST as u64, "{events} events");
    assert!(events <= most, "{events} events for {sending:?} of flood");
    assert_eq!((batch.lost, batch.overruns), (0, 0));
    assert!(batch.events.iter().all(|e| e.prefix == "pc:7"));
}

/// The limit's bucket belongs to the rule: a table replace creates the rule anew, with a full
/// bucket, while the same rule keeps an empty one.
#[test]
fn replace_refills_the_limit() {
    if !available() {
        return;
    }
    let ns = Netns::new("refill");
    let group = 8;
    // One event a minute after a burst of 3: no refill within the test.
    let table = input_table(vec![Rule {
        matches: vec![udp_dport(9999)],
        counter: true,
        log: Some(Log::group(group, "pc:8").with_limit(Limit {
            rate: 1,
            unit: RateUnit::Minute,
            burst: 3,
        })),
        action: Action::Continue,
        comment: Some("limited".into()),
    }]);
    ns.load(&table);
    let mut log = ns.nflog(group);
    let mut events = || {
        ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", 50, 16);
        read(&mut log, usize::MAX, Duration::from_millis(300)).events.len()
    };
    assert_eq!(events(), 3, "the burst");
    assert_eq!(events(), 0, "the bucket is empty");
    ns.load(&table);
    assert_eq!(events(), 3, "a new rule, a full bucket");
}

/// Nothing is lost when the reader keeps up with an unlimited log rule: every packet is one
/// event (prints the rate read).
#[test]
fn unlimited_flood_is_read_whole() {
    if !available() {
        return;
    }
    let ns = Netns::new("whole");
    let group = 9;
    ns.load(&input_table(vec![Rule {
        matches: vec![udp_dport(9999)],
        counter: true,
        log: Some(Log::group(group, "pc:9")),
        action: Action::Continue,
        comment: Some("all".into()),
    }]));
    let log = ns.nflog(group);
    let (tx, rx) = mpsc::channel::<Batch>();
    let listener = log
        .spawn(Duration::from_millis(50), move |b| tx.send(b).is_ok())
        .expect("reader thread");

    let packets = 20_000;
    let cpu = cpu_time();
    let started = Instant::now();
    ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", packets, 16);
    let (mut events, mut lost) = (0, 0);
    while events + lost < packets as u64 {
        let Ok(b) = rx.recv_timeout(Duration::from_secs(2)) else {
            break;
        };
        events += b.events.len() as u64;
        lost += b.lost;
    }
    let took = started.elapsed();
    let cpu = cpu_time() - cpu;
    let stats = listener.stop().expect("reader ended cleanly");
    eprintln!(
        "unlimited: {events} events, {lost} lost, {} overruns in {took:?} ({:.0} events/s, sender included; \
         {cpu:?} CPU of this process)",
        stats.overruns,
        events as f64 / took.as_secs_f64()
    );
    assert_eq!(events + lost, packets as u64);
    assert_eq!(lost, 0, "an 8 MiB buffer holds a 20,000-packet burst");
    assert_eq!((stats.events, stats.lost), (events, lost));
}

/// One listener per group and namespace: a second bind is refused (EPERM, the kernel's answer
/// for an instance another socket owns), and the group is free again once the first reader is
/// dropped.
#[test]
fn group_is_exclusive() {
    if !available() {
        return;
    }
    let ns = Netns::new("busy");
    let first = ns.nflog(5);
    match Nflog::open(Some(&ns.0.path()), 5, &Options::default()) {
        Err(NflogError::Bind { errno, .. }) => assert_eq!(errno, Errno::EPERM as i32),
        other => panic!("{other:?}"),
    }
    drop(first);
    ns.nflog(5);
}

/// User and system CPU time of this process.
fn cpu_time() -> Duration {
    let u = nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).expect("getrusage");
    let us = |t: nix::sys::time::TimeVal| t.tv_sec() as u64 * 1_000_000 + t.tv_usec() as u64;
    Duration::from_micros(us(u.user_time()) + us(u.system_time()))
}

/// A reader that falls behind loses events, and says how many: the kernel drops whole datagrams
/// into a full receive buffer (`ENOBUFS`), the sequence numbers' gaps count them, and reading goes
/// on.
#[test]
fn overrun_is_counted() {
    if !available() {
        return;
    }
    let ns = Netns::new("overrun");
    let group = 10;
    ns.load(&input_table(vec![Rule {
        matches: vec![udp_dport(9999)],
        counter: false,
        log: Some(Log::group(group, "pc:10")),
        action: Action::Continue,
        comment: None,
    }]));
    let options = Options {
        recv_buffer: 64 * 1024,
        ..Options::default()
    };
    let mut log = Nflog::open(Some(&ns.0.path()), group, &options).expect("binding the group");
    // Nobody reads while the packets come.
    let packets = 5_000;
    ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", packets, 16);
    let mut batch = read(&mut log, usize::MAX, Duration::from_millis(300));
    // A packet after the flood closes a gap at its end.
    ns.send_udp("127.0.0.1:0", "127.0.0.1:9999", 1, 16);
    let last = read(&mut log, 1, Duration::from_millis(300));
    batch.events.extend(last.events);
    batch.lost += last.lost;
    batch.overruns += last.overruns;
    eprintln!(
        "overrun: {} events, {} lost, {} overruns with a {:?} buffer",
        batch.events.len(),
        batch.lost,
        batch.overruns,
        log.recv_buffer()
    );
    assert!(batch.lost > 0 && batch.overruns > 0, "{} lost", batch.lost);
    assert_eq!(batch.events.len() as u64 + batch.lost, packets as u64 + 1);
    assert_eq!(log.stats().lost, batch.lost);
}

/// Bridged frames logged by `table bridge policyc` (where the anti-spoofing drop lives): the
/// event names the bridge family and its port, and its copy starts at the IP header as in inet.
#[test]
fn bridged_packets() {
    if !available() {
        return;
    }
    let node = Netns::new("bridge-node");
    let pods = [Netns::new("bridge-a"), Netns::new("bridge-b")];
    let ip = |ns: &Netns, args: &str| {
        let out = ns.0.exec("ip").args(args.split_whitespace()).output().expect("ip");
        assert!(
            out.status.success(),
            "ip {args}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    ip(&node, "link add br0 type bridge");
    ip(&node, "link set br0 up");
    for (i, (pod, port)) in pods.iter().zip(["va", "vb"]).enumerate() {
        ip(
            &node,
            &format!("link add {port} type veth peer name eth0 netns {}", pod.0.name()),
        );
        ip(&node, &format!("link set {port} master br0 up"));
        ip(pod, &format!("addr add 10.9.0.{}/24 dev eth0", i + 1));
        ip(pod, "link set eth0 up");
    }
    let index = |name: &str| -> u32 {
        let v: serde_json::Value = serde_json::from_str(&ip(&node, &format!("-j link show {name}"))).expect("JSON");
        v[0]["ifindex"].as_u64().expect("ifindex") as u32
    };
    let group = 11;
    node.load(&Table {
        family: TableFamily::Bridge,
        summary: "nflog test, bridge".into(),
        sets: Vec::new(),
        chains: vec![std::sync::Arc::new(Chain {
            name: "prerouting_guard".into(),
            hook: Some(BaseHook {
                hook: Hook::Prerouting,
                priority: 0,
            }),
            rules: vec![Rule::log_only(
                vec![Match::AddrIn {
                    family: Family::V4,
                    end: End::Source,
                    addrs: vec!["10.9.0.1".parse().unwrap()],
                }],
                Log::group(group, "pc:spoof").with_limit(Limit::per_second(1000)),
                None,
            )],
        })],
    });
    let mut log = node.nflog(group);
    let sport = pods[0].send_udp("10.9.0.1:0", "10.9.0.2:9999", 3, 20);

    let batch = read(&mut log, 3, Duration::from_millis(500));
    assert_eq!(batch.events.len(), 3, "{:#?}", batch.events);
    let (va, br0) = (index("va"), index("br0"));
    let first = &batch.events[0];
    eprintln!(
        "bridged: indev {:?} physindev {:?} (va {va}, br0 {br0})",
        first.indev, first.physindev
    );
    for e in &batch.events {
        // NFPROTO_BRIDGE, NF_BR_PRE_ROUTING.
        assert_eq!(
            (e.prefix.as_str(), e.family, e.hw_protocol, e.hook),
            ("pc:spoof", 7, 0x0800, 0)
        );
        // The bridge port it came in by, and the bridge (as nfnetlink_log reports bridged
        // packets when the kernel has bridge netfilter), or the port alone (without it).
        match e.physindev {
            Some(port) => assert_eq!((port, e.indev), (va, Some(br0)), "{e:?}"),
            None => assert_eq!(e.indev, Some(va), "{e:?}"),
        }
        assert_udp(e, "10.9.0.1", sport, "10.9.0.2", 9999, 20, 20);
    }
}
