//! One metrics scrape's read of the rule counters, on the 10,000-pod synthetic cluster's
//! ruleset for one node (`synth::cluster(Shape::LARGE, 42)`, node-7), loaded with `nft -f` into a
//! throwaway network namespace: `nft -t -j list table` plus JSON parsing (what the agent ran
//! before) against the netlink rule dump (`policyc_dataplane::counters::rule_counters`). Needs
//! root.
//!
//! ```sh
//! cargo run --release -p policyc-dataplane --example scrape_bench
//! ```

use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Instant;

use policyc_compiler::render::nft::render;
use policyc_compiler::synth::{cluster, Shape};
use policyc_compiler::{compile, CompileOptions};
use policyc_dataplane::counters::rule_counters;
use policyc_dataplane::TABLE;

fn main() {
    if !policyc_testhost::needs_root(&["ip", "nft"]) {
        return;
    }
    let ir = compile(
        &cluster(Shape::LARGE, 42),
        &CompileOptions {
            node: Some("node-7".into()),
            ..CompileOptions::default()
        },
    );
    let ns = policyc_testhost::Netns::new("scrape");
    let mut nft = ns
        .exec("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("nft");
    let text = render(&ir, true).expect("a compiled IR is valid");
    nft.stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("writing to nft");
    assert!(nft.wait().expect("nft").success(), "nft -f failed");

    let path = ns.path();
    let runs = 10;
    let t = Instant::now();
    for _ in 0..runs {
        let out = Command::new("nsenter")
            .arg(format!("--net={}", path.display()))
            .args(["nft", "-t", "-j", "list", "table", "inet", TABLE])
            .output()
            .expect("nft");
        assert!(out.status.success());
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert!(v["nftables"].is_array());
    }
    let by_nft = t.elapsed() / runs;
    let t = Instant::now();
    let mut rules = 0;
    for _ in 0..runs {
        rules = rule_counters(Some(&path), TABLE).expect("dump").len();
    }
    let by_netlink = t.elapsed() / runs;
    println!(
        "{rules} counted rules, mean of {runs}: nsenter nft -t -j list table + JSON parse {:.1} ms, \
         netlink rule dump {:.2} ms",
        by_nft.as_secs_f64() * 1e3,
        by_netlink.as_secs_f64() * 1e3
    );
}
