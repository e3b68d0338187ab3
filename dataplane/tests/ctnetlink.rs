//! Against the kernel, as root: each test makes its own network namespace (deleted by a guard,
//! even when the test fails), makes conntrack track it with an nft rule, sends real packets on
//! its loopback, and checks what the kernel did with the `conntrack` tool. Nothing is sent or
//! changed outside these namespaces.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sched::{setns, CloneFlags};
use policyc_dataplane::ctnetlink::{Conntrack, CtError, Entry, MarkChange, Update, IPPROTO_TCP, IPPROTO_UDP};

const CUT: u32 = 0x0040_0000;

/// A throwaway network namespace (deleted on drop) where conntrack tracks loopback traffic.
struct Netns {
    ns: policyc_testhost::Netns,
}

fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

impl Netns {
    fn new(tag: &str) -> Netns {
        let ns = Netns {
            ns: policyc_testhost::Netns::new(&format!("ct-{tag}")),
        };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns.exec(&[
            "nft",
            "add table inet t; add chain inet t c { type filter hook output priority 0; ct state new accept; }",
        ]);
        // Long UDP timeouts, so that no entry expires during a test.
        ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600"]);
        ns.exec(&["sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout_stream=600"]);
        ns
    }

    fn path(&self) -> PathBuf {
        self.ns.path()
    }

    fn exec(&self, args: &[&str]) -> String {
        let out = run(self.ns.exec(args[0]).args(&args[1..]));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs `f` on a thread inside the namespace: sockets it creates belong to the namespace.
    fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let file = File::open(self.path()).expect("netns file");
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
                f()
            })
            .join()
            .unwrap()
        })
    }

    /// `id → mark` of every entry, as the `conntrack` tool lists them.
    fn marks(&self) -> HashMap<u32, u32> {
        let text = self.exec(&["conntrack", "-L", "-o", "id"]);
        text.lines()
            .filter_map(|l| {
                let field = |k: &str| {
                    l.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .and_then(|v| v.parse::<u32>().ok())
                };
                Some((field("id=")?, field("mark=")?))
            })
            .collect()
    }
}

/// A UDP "flow": a client socket that sent one datagram to `server`.
fn udp_flow(ns: &Netns, server: SocketAddr) -> UdpSocket {
    ns.enter(|| {
        let any: SocketAddr = match server {
            SocketAddr::V4(_) => "127.0.0.1:0".parse().unwrap(),
            SocketAddr::V6(_) => "[::1]:0".parse().unwrap(),
        };
        let c = UdpSocket::bind(any).unwrap();
        c.send_to(b"x", server).unwrap();
        c
    })
}

fn find(entries: &[Entry], protocol: u8, sport: u16, dport: u16) -> Entry {
    let found: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.protocol() == protocol && e.ports() == Some((sport, dport)))
        .collect();
    assert_eq!(found.len(), 1, "entry {protocol} {sport}→{dport} in {entries:#?}");
    found[0].clone()
}

/// One pass that marks flow A and releases flow B (the case `conntrack -R` got wrong), with
/// other mark bits set beforehand to show the mask keeps them; checked with `conntrack -L`.
#[test]
fn marks_exactly_the_entries_asked_and_only_the_masked_bits() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    let ns = Netns::new("mark");
    let (server4, server6, listener) = ns.enter(|| {
        (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            UdpSocket::bind("[::1]:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    });
    let s4 = server4.local_addr().unwrap();
    let a = udp_flow(&ns, s4);
    let c = udp_flow(&ns, s4);
    let v6 = udp_flow(&ns, server6.local_addr().unwrap());
    let b = ns.enter(|| TcpStream::connect(listener.local_addr().unwrap()).unwrap());
    let _accepted = listener.accept().unwrap();

    let ct = Conntrack::open(Some(&ns.path())).unwrap();
    let entries = ct.dump().unwrap();
    let port = |s: &UdpSocket| s.local_addr().unwrap().port();
    let ea = find(&entries, IPPROTO_UDP, port(&a), s4.port());
    let ec = find(&entries, IPPROTO_UDP, port(&c), s4.port());
    let e6 = find(&entries, IPPROTO_UDP, port(&v6), server6.local_addr().unwrap().port());
    let eb = find(
        &entries,
        IPPROTO_TCP,
        b.local_addr().unwrap().port(),
        listener.local_addr().unwrap().port(),
    );
    assert_eq!(ea.orig.src, "127.0.0.1".parse::<IpAddr>().unwrap());
    assert_eq!(ea.reply.ports(), Some((s4.port(), port(&a))));
    assert!(e6.is_ipv6());
    let listed = ns.marks();
    for e in [&ea, &eb, &ec, &e6] {
        assert_eq!(listed.get(&e.id), Some(&0), "conntrack -L lists id {} unmarked", e.id);
    }

    // Unrelated bits first: A gets 0x1, B gets the cut bit and 0x2, the IPv6 flow 0x8.
    assert_eq!(ct.set_mark(&ea, 0x1, 0x1).unwrap(), Update::Done);
    assert_eq!(ct.set_mark(&eb, CUT | 0x2, CUT | 0x2).unwrap(), Update::Done);
    assert_eq!(ct.set_mark(&e6, 0x8, 0xff).unwrap(), Update::Done);
    let listed = ns.marks();
    assert_eq!(
        (listed[&ea.id], listed[&eb.id], listed[&ec.id], listed[&e6.id]),
        (0x1, CUT | 0x2, 0, 0x8)
    );

    // One pass: cut A, release B, cut the IPv6 flow; C is not touched.
    let results = ct.set_marks(&[
        MarkChange {
            entry: &ea,
            value: CUT,
            mask: CUT,
        },
        MarkChange {
            entry: &eb,
            value: 0,
            mask: CUT,
        },
        MarkChange {
            entry: &e6,
            value: CUT,
            mask: CUT,
        },
    ]);
    assert!(results.iter().all(|r| matches!(r, Ok(Update::Done))), "{results:?}");
    let listed = ns.marks();
    assert_eq!(listed[&ea.id], CUT | 0x1, "A cut, its other bit kept");
    assert_eq!(listed[&eb.id], 0x2, "B released, its other bit kept");
    assert_eq!(listed[&ec.id], 0, "C untouched");
    assert_eq!(listed[&e6.id], CUT | 0x8, "IPv6 flow cut");
    // Our own dump agrees with the tool.
    for e in ct.dump().unwrap() {
        if let Some(m) = listed.get(&e.id) {
            assert_eq!(e.mark, *m, "dump and conntrack -L agree on {}", e.id);
        }
    }

    // Idempotent: the same pass again changes nothing.
    assert_eq!(ct.set_mark(&ea, CUT, CUT).unwrap(), Update::Done);
    assert_eq!(ns.marks()[&ea.id], CUT | 0x1);

    // The kernel's arithmetic is (old & !mask) ^ value: bits of value outside the mask toggle.
    assert!(matches!(
        ct.set_mark(&ec, 0x5, 0x4),
        Err(CtError::MarkOutsideMask { .. })
    ));
    assert_eq!(ns.marks()[&ec.id], 0, "refused before sending");
    ct.set_mark_unchecked(&ec, 0x5, 0x4).unwrap();
    assert_eq!(ns.marks()[&ec.id], 0x5, "(0 & !4) ^ 5");
    ct.set_mark_unchecked(&ec, 0x5, 0x4).unwrap();
    assert_eq!(ns.marks()[&ec.id], 0x4, "(5 & !4) ^ 5: bit 0 toggled back");

    // The kernel finds the entry to update by tuple only: a wrong CTA_ID does not stop it.
    let wrong_id = Entry {
        id: ec.id ^ 0x5555,
        ..ec.clone()
    };
    assert_eq!(ct.set_mark(&wrong_id, 0, u32::MAX).unwrap(), Update::Done);
    assert_eq!(ns.marks()[&ec.id], 0, "updated although CTA_ID did not match");
}

#[test]
fn an_entry_deleted_meanwhile_is_vanished() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    let ns = Netns::new("gone");
    let server = ns.enter(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    let s = server.local_addr().unwrap();
    let (a, b) = (udp_flow(&ns, s), udp_flow(&ns, s));
    let ct = Conntrack::open(Some(&ns.path())).unwrap();
    let entries = ct.dump().unwrap();
    let ea = find(&entries, IPPROTO_UDP, a.local_addr().unwrap().port(), s.port());
    let eb = find(&entries, IPPROTO_UDP, b.local_addr().unwrap().port(), s.port());
    let sport = ea.ports().unwrap().0.to_string();
    ns.exec(&[
        "conntrack",
        "-D",
        "-p",
        "udp",
        "--sport",
        &sport,
        "--dport",
        &s.port().to_string(),
    ]);
    assert!(!ns.marks().contains_key(&ea.id), "conntrack -D deleted it");

    assert_eq!(ct.set_mark(&ea, CUT, CUT).unwrap(), Update::Vanished);
    // In one window with a live entry: each gets its own answer.
    let r = ct.set_marks(&[
        MarkChange {
            entry: &ea,
            value: CUT,
            mask: CUT,
        },
        MarkChange {
            entry: &eb,
            value: CUT,
            mask: CUT,
        },
    ]);
    assert!(matches!(r[..], [Ok(Update::Vanished), Ok(Update::Done)]), "{r:?}");
    let listed = ns.marks();
    assert_eq!(listed[&eb.id], CUT);
    assert!(
        !listed.contains_key(&ea.id),
        "the update did not create the entry again"
    );
}

#[test]
fn a_dump_of_thousands_returns_them_all() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    const N: usize = 5000;
    let ns = Netns::new("many");
    let server = ns.enter(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    let s = server.local_addr().unwrap();
    // Kept open, so that no source port (and so no tuple) is used twice.
    let clients: Vec<UdpSocket> = ns.enter(|| {
        (0..N)
            .map(|_| {
                let c = UdpSocket::bind("127.0.0.1:0").unwrap();
                c.send_to(b"x", s).unwrap();
                c
            })
            .collect()
    });
    let ports: Vec<u16> = clients.iter().map(|c| c.local_addr().unwrap().port()).collect();
    assert_eq!(
        ns.exec(&["conntrack", "-L"]).lines().count(),
        N,
        "conntrack -L lists {N} entries"
    );
    let ct = Conntrack::open(Some(&ns.path())).unwrap();

    let t = Instant::now();
    let entries = ct.dump().unwrap();
    let dump_time = t.elapsed();
    let ours: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.ports().map(|p| p.1) == Some(s.port()))
        .collect();
    assert_eq!(ours.len(), N, "every flow dumped once");
    let mut seen: Vec<u16> = ours.iter().map(|e| e.ports().unwrap().0).collect();
    seen.sort_unstable();
    let mut want = ports.clone();
    want.sort_unstable();
    assert_eq!(seen, want);

    let changes: Vec<MarkChange<'_>> = ours
        .iter()
        .map(|e| MarkChange {
            entry: e,
            value: CUT,
            mask: CUT,
        })
        .collect();
    let t = Instant::now();
    let results = ct.set_marks(&changes);
    let windowed = t.elapsed();
    assert!(results.iter().all(|r| matches!(r, Ok(Update::Done))));
    let t = Instant::now();
    for e in &ours {
        assert_eq!(ct.set_mark(e, 0, CUT).unwrap(), Update::Done);
    }
    let single = t.elapsed();
    let listed = ns.marks();
    assert_eq!(
        ours.iter().filter(|e| listed[&e.id] == 0).count(),
        N,
        "conntrack -L: all released"
    );
    eprintln!(
        "{N} entries: dump {dump_time:?}, set_marks (windows of {}) {windowed:?}, one set_mark at a time {single:?}",
        policyc_dataplane::ctnetlink::WINDOW
    );
}

/// 20 rounds of dump + update of every entry while ~200 short TCP connections per second
/// come and go: no failure other than Vanished.
#[test]
fn stress_dump_and_update_under_churn() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    const ROUNDS: usize = 20;
    const LONG_LIVED: usize = 3000;
    let ns = Netns::new("churn");
    // Closed connections leave the table within a second or two, so entries vanish between
    // the dump and the update.
    for t in ["time_wait", "close", "fin_wait", "last_ack", "close_wait"] {
        ns.exec(&[
            "sysctl",
            "-qw",
            &format!("net.netfilter.nf_conntrack_tcp_timeout_{t}=1"),
        ]);
    }
    let (server, listener) = ns.enter(|| {
        (
            UdpSocket::bind("127.0.0.1:0").unwrap(),
            TcpListener::bind("127.0.0.1:0").unwrap(),
        )
    });
    let s = server.local_addr().unwrap();
    let l = listener.local_addr().unwrap();
    let flows: Vec<UdpSocket> = (0..LONG_LIVED).map(|_| udp_flow(&ns, s)).collect();

    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicUsize::new(0));
    let connect_errors = Arc::new(AtomicUsize::new(0));
    listener.set_nonblocking(true).unwrap();
    let stop_accepting = Arc::new(AtomicBool::new(false));
    let acceptor = {
        let stop = stop_accepting.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        let mut b = [0u8; 8];
                        c.set_nonblocking(false).unwrap();
                        let _ = c.read(&mut b);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    let churn = {
        let (stop, connections, connect_errors) = (stop.clone(), connections.clone(), connect_errors.clone());
        let file = File::open(ns.path()).unwrap();
        std::thread::spawn(move || {
            setns(&file, CloneFlags::CLONE_NEWNET).unwrap();
            let start = Instant::now();
            let mut n = 0u32;
            while !stop.load(Ordering::Relaxed) {
                // 200 per second, evenly spread.
                let due = start + Duration::from_millis(5) * n;
                if let Some(wait) = due.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
                match TcpStream::connect(l) {
                    Ok(mut c) => {
                        let _ = c.write_all(b"hi");
                        connections.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        eprintln!("churn connect #{n} at {:?}: {e}", start.elapsed());
                        connect_errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
        })
    };

    let ct = Conntrack::open(Some(&ns.path())).unwrap();
    let (mut done, mut vanished, mut failed) = (0usize, 0usize, Vec::new());
    let (mut dumped, mut dump_time, mut update_time) = (0usize, Duration::ZERO, Duration::ZERO);
    let started = Instant::now();
    for round in 0..ROUNDS {
        // Spread the rounds over ~10 s, so the table turns over between them.
        std::thread::sleep(Duration::from_millis(400));
        let t = Instant::now();
        let entries = ct.dump().unwrap();
        dump_time += t.elapsed();
        dumped += entries.len();
        let value = if round % 2 == 0 { CUT } else { 0 };
        let t = Instant::now();
        let results: Vec<Result<Update, CtError>> = if round % 4 < 2 {
            let changes: Vec<MarkChange<'_>> = entries
                .iter()
                .map(|e| MarkChange {
                    entry: e,
                    value,
                    mask: CUT,
                })
                .collect();
            ct.set_marks(&changes)
        } else {
            entries.iter().map(|e| ct.set_mark(e, value, CUT)).collect()
        };
        update_time += t.elapsed();
        for r in results {
            match r {
                Ok(Update::Done) => done += 1,
                Ok(Update::Vanished) => vanished += 1,
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    let elapsed = started.elapsed();
    // The client first, then the acceptor (whose listener would refuse the client's last try).
    stop.store(true, Ordering::Relaxed);
    churn.join().unwrap();
    stop_accepting.store(true, Ordering::Relaxed);
    acceptor.join().unwrap();

    // The last round (odd) released every entry; the long-lived flows show it.
    let listed = ns.marks();
    let entries = ct.dump().unwrap();
    let long: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.ports().map(|p| p.1) == Some(s.port()))
        .collect();
    assert_eq!(long.len(), LONG_LIVED);
    assert!(long.iter().all(|e| listed[&e.id] == 0));
    drop(flows);
    let conns = connections.load(Ordering::Relaxed);
    assert_eq!(
        connect_errors.load(Ordering::Relaxed),
        0,
        "the churn's connections all succeeded"
    );
    eprintln!(
        "{ROUNDS} rounds in {elapsed:?} with {conns} connections ({:.0}/s) churning: \
         {dumped} entries dumped in {dump_time:?}, {done} done, {vanished} vanished, {} failed, updates took {update_time:?}",
        conns as f64 / elapsed.as_secs_f64(),
        failed.len()
    );
    assert!(failed.is_empty(), "failures: {:?}", &failed[..failed.len().min(10)]);
    assert!(conns as f64 / elapsed.as_secs_f64() > 150.0, "the churn kept up");
}

#[test]
fn opening_a_missing_namespace_is_a_typed_error() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    let err = Conntrack::open(Some(std::path::Path::new("/run/netns/ctdev-does-not-exist"))).unwrap_err();
    assert!(matches!(err, CtError::Netns { .. }), "{err:?}");
    assert!(std::error::Error::source(&err).is_some());
    assert!(err.to_string().contains("/run/netns/ctdev-does-not-exist"));
}

/// With a receive buffer too small for a window's answers, the kernel drops some: those
/// updates come back as Overrun (outcome unknown), the buffer grows, and retrying them
/// succeeds. A dump through the small buffer still returns every entry.
#[test]
fn lost_answers_are_reported_and_retrying_them_succeeds() {
    if !policyc_testhost::needs_root(&["ip", "nft", "conntrack"]) {
        return;
    }
    const N: usize = 2000;
    let ns = Netns::new("overrun");
    let server = ns.enter(|| UdpSocket::bind("127.0.0.1:0").unwrap());
    let s = server.local_addr().unwrap();
    let _clients: Vec<UdpSocket> = (0..N).map(|_| udp_flow(&ns, s)).collect();
    let ct = Conntrack::open(Some(&ns.path())).unwrap().with_receive_buffer(4096);
    let entries = ct.dump().unwrap();
    let ours: Vec<&Entry> = entries
        .iter()
        .filter(|e| e.ports().map(|p| p.1) == Some(s.port()))
        .collect();
    assert_eq!(ours.len(), N);

    let mut todo: Vec<&Entry> = ours.clone();
    let (mut tries, mut lost) = (0, 0);
    while !todo.is_empty() {
        tries += 1;
        assert!(tries <= 10, "still {} left after 10 tries", todo.len());
        let changes: Vec<MarkChange<'_>> = todo
            .iter()
            .map(|e| MarkChange {
                entry: e,
                value: CUT,
                mask: CUT,
            })
            .collect();
        let results = ct.set_marks(&changes);
        let mut again = Vec::new();
        for (e, r) in todo.iter().zip(results) {
            match r {
                Ok(Update::Done) => {}
                Err(err @ CtError::Overrun { .. }) => {
                    assert!(err.is_retryable());
                    lost += 1;
                    again.push(*e);
                }
                other => panic!("{other:?}"),
            }
        }
        todo = again;
    }
    let listed = ns.marks();
    assert!(
        ours.iter().all(|e| listed[&e.id] == CUT),
        "conntrack -L: every entry marked"
    );
    eprintln!("{N} updates through a 4 KiB receive buffer: {lost} answers lost, done after {tries} tries");
    assert!(
        lost > 0,
        "the small buffer did lose answers (else this test tests nothing)"
    );
}
