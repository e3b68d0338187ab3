//! `policyc serve` and `policyc connect`: the probe image's two modes, for probing from inside
//! real pods (`kubectl exec POD -- policyc connect ...`, as upstream's e2e runs agnhost).
//!
//! SCTP is not served: this project's test machines have no SCTP sockets (the lab probes SCTP
//! with raw IP instead, see `policyc_lab::sctp`); `--sctp` is refused with that reason.

use std::io::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TCP ports to accept connections on (each connection gets "ok\n", then is closed).
    #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
    tcp: Vec<u16>,
    /// UDP ports to echo datagrams on.
    #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
    udp: Vec<u16>,
    /// SCTP ports: not supported (no SCTP sockets on the kernels this was built for).
    #[arg(long, value_delimiter = ',', value_name = "PORT,...")]
    sctp: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    Tcp,
    Udp,
}

#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Destination, ADDRESS:PORT (IPv6: [ADDRESS]:PORT).
    to: SocketAddr,
    #[arg(long, value_enum, default_value_t = Proto::Tcp)]
    protocol: Proto,
    /// How long to wait for the connection (TCP) or the echo (UDP), e.g. 1s, 500ms.
    #[arg(long, default_value = "1s", value_parser = crate::parse_duration)]
    timeout: Duration,
}

/// Serves until killed. Listens on every address (IPv4 and IPv6 where the pod has it).
pub fn serve(args: ServeArgs) -> Result<ExitCode> {
    if !args.sctp.is_empty() {
        bail!("--sctp: not supported (no SCTP sockets here; probe SCTP with the lab's raw-IP prober)");
    }
    if args.tcp.is_empty() && args.udp.is_empty() {
        bail!("nothing to serve: give --tcp and/or --udp ports");
    }
    let mut threads = Vec::new();
    for port in args.tcp {
        let l = TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("tcp port {port}"))?;
        threads.push(std::thread::spawn(move || {
            for mut c in l.incoming().flatten() {
                let _ = c.write_all(b"ok\n");
            }
        }));
    }
    for port in args.udp {
        let s = UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("udp port {port}"))?;
        threads.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                let _ = s.send_to(&buf[..n], from);
            }
        }));
    }
    eprintln!("policyc serve: ready");
    for t in threads {
        let _ = t.join();
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints one word, what happened: `connected` (TCP), `answered` (the UDP echo came back),
/// `refused` (a TCP RST or an ICMP port unreachable came back: the packet arrived, nothing
/// listens), `timeout` (nothing came back: dropped on the way), or `error: ...`. Exit status 0
/// for `connected` and `answered`, 1 otherwise, as agnhost's `connect` does.
pub fn connect(args: ConnectArgs) -> Result<ExitCode> {
    let outcome = match args.protocol {
        Proto::Tcp => TcpStream::connect_timeout(&args.to, args.timeout).map(|_| "connected"),
        Proto::Udp => udp_echo(args.to, args.timeout).map(|()| "answered"),
    };
    Ok(match outcome {
        Ok(word) => {
            println!("{word}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            match e.kind() {
                std::io::ErrorKind::ConnectionRefused => println!("refused"),
                std::io::ErrorKind::TimedOut | std::io::ErrorKind::WouldBlock => println!("timeout"),
                _ => println!("error: {e}"),
            }
            ExitCode::from(1)
        }
    })
}

fn udp_echo(to: SocketAddr, timeout: Duration) -> std::io::Result<()> {
    let bind: SocketAddr = if to.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }
        .parse()
        .expect("address");
    let s = UdpSocket::bind(bind)?;
    s.connect(to)?;
    s.set_read_timeout(Some(timeout))?;
    s.send(b"policyc-probe")?;
    let mut buf = [0u8; 64];
    let n = s.recv(&mut buf)?;
    if &buf[..n] == b"policyc-probe" {
        Ok(())
    } else {
        Err(std::io::Error::other("unexpected reply"))
    }
}
