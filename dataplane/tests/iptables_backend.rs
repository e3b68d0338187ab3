//! The agent's iptables backend in a throwaway network namespace: rules and sets land, a second
//! apply with different policies leaves no stale chain or set, applying twice is idempotent, and
//! removing leaves nothing of policyc's.
//! Root only; skipped with the reason otherwise, except under CI.

use policyc_compiler::{compile, CompileOptions, Ir, Loader};
use policyc_dataplane::{Dataplane, IptablesRestore};
use policyc_testhost::Netns;

fn exec(ns: &Netns, args: &[&str]) -> String {
    let out = ns.exec(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ir(policies: &str) -> Ir {
    let mut l = Loader::new();
    l.add_text(
        "t",
        &format!(
            "apiVersion: v1\nkind: Pod\nmetadata: {{name: a, namespace: x, labels: {{app: a}}}}\n\
             spec: {{nodeName: n1}}\nstatus: {{phase: Running, podIP: 10.9.0.1}}\n---\n\
             apiVersion: v1\nkind: Pod\nmetadata: {{name: b, namespace: x, labels: {{app: b}}}}\n\
             spec: {{nodeName: n1}}\nstatus: {{phase: Running, podIP: 10.9.0.2}}\n---\n{policies}"
        ),
    );
    let (snap, diags) = l.finish();
    assert!(diags.is_empty(), "{diags:?}");
    compile(
        &snap,
        &CompileOptions {
            node: Some("n1".into()),
            ..Default::default()
        },
    )
}

#[test]
fn iptables_backend_applies_and_prunes() {
    if !policyc_testhost::needs_root(&["ip", "iptables-restore", "ipset", "nsenter"]) {
        return;
    }
    let ns = Netns::new("iptb");
    let mut dp = IptablesRestore::new(Some(ns.path()));

    let first = ir("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\n\
                    spec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}\n");
    dp.replace(&first).unwrap();
    dp.replace(&first).unwrap();
    let saved = exec(&ns, &["iptables-save", "-t", "filter"]);
    assert_eq!(saved.matches("-A FORWARD -j POLICYC-FORWARD").count(), 1, "{saved}");
    assert!(saved.contains("x/web ingress[0]"), "{saved}");
    let sets = exec(&ns, &["ipset", "list", "-n"]);
    assert!(sets.lines().any(|l| l.starts_with("pc-")), "{sets}");

    let second = ir("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: other, namespace: x}\n\
                     spec: {podSelector: {matchLabels: {app: b}}, policyTypes: [Egress], egress: [{ports: [{port: 53, protocol: UDP}]}]}\n");
    dp.replace(&second).unwrap();
    let saved = exec(&ns, &["iptables-save", "-t", "filter"]);
    assert!(!saved.contains("x/web"), "old policy's chains pruned: {saved}");
    assert!(saved.contains("x/other egress[0]"), "{saved}");
    let sets_after: std::collections::BTreeSet<String> = exec(&ns, &["ipset", "list", "-n"])
        .lines()
        .filter(|l| l.starts_with("pc-"))
        .map(str::to_string)
        .collect();
    let wanted = policyc_compiler::render::iptables::ipset_names(&second);
    assert_eq!(sets_after, wanted, "exactly the second ruleset's sets remain");
    assert!(
        sets.lines().any(|l| l.starts_with("pc-") && !wanted.contains(l)),
        "the first ruleset had sets to prune"
    );

    // Removal (an uninstall): no jump, chain or set of policyc's is left, in either family;
    // removing again finds nothing and succeeds.
    dp.remove().unwrap();
    for save in ["iptables-save", "ip6tables-save"] {
        for table in ["filter", "raw"] {
            let saved = exec(&ns, &[save, "-t", table]);
            assert!(
                !saved.contains("POLICYC") && !saved.contains(":PC-"),
                "{save} -t {table}: {saved}"
            );
        }
    }
    let sets = exec(&ns, &["ipset", "list", "-n"]);
    assert!(!sets.lines().any(|l| l.starts_with("pc-")), "{sets}");
    dp.remove().unwrap();
}

/// The bridge attachment is the nftables backend's only: the iptables backend refuses it, naming
/// it, and loads nothing (no root needed: it fails before running a tool).
#[test]
fn bridge_attachment_is_refused() {
    let mut l = Loader::new();
    l.add_text(
        "t",
        "apiVersion: v1\nkind: Pod\nmetadata: {name: a, namespace: x}\n\
         spec: {nodeName: n1}\nstatus: {phase: Running, podIP: 10.9.0.1}\n",
    );
    let (snap, _) = l.finish();
    let ir = compile(
        &snap,
        &CompileOptions {
            node: Some("n1".into()),
            attachment: policyc_compiler::ir::AttachmentKind::Bridge { bridge: "cni0".into() },
            ..Default::default()
        },
    );
    let mut b = IptablesRestore::new(Some("/nonexistent/netns".into()));
    let err = b.replace(&ir).expect_err("refused").to_string();
    assert!(err.contains("bridge attachment") && err.contains("cni0"), "{err}");
}

/// With flow events, the iptables backend logs as the nft ruleset does: every verdict point's
/// NFLOG rule, rate-limited and prefixed with its id, lands right before its verdict rule, in
/// both tables the backend writes.
#[test]
fn iptables_backend_logs_flow_events() {
    if !policyc_testhost::needs_root(&["ip", "iptables-restore", "ipset", "nsenter"]) {
        return;
    }
    let ns = Netns::new("iptfl");
    let mut dp = IptablesRestore::new(Some(ns.path()));
    let mut ir = ir("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: web, namespace: x}\n\
                     spec: {podSelector: {matchLabels: {app: a}}, ingress: [{from: [{podSelector: {matchLabels: {app: b}}}], ports: [{port: 80}]}]}\n");
    ir.flow_log = Some(policyc_compiler::flows::FlowLog::default());
    dp.replace(&ir).unwrap();
    let mut saved = exec(&ns, &["iptables-save", "-t", "filter"]);
    saved.push_str(&exec(&ns, &["iptables-save", "-t", "raw"]));
    let lines: Vec<&str> = saved.lines().collect();
    let points = policyc_compiler::flows::points(&ir);
    let mut logged = 0;
    for (i, l) in lines.iter().enumerate() {
        let Some(at) = l.find("-j NFLOG") else { continue };
        logged += 1;
        assert!(
            l.contains("--nflog-group 7") && l.contains("-m limit --limit 100/sec --limit-burst 200"),
            "{l}"
        );
        let prefix = l
            .split("--nflog-prefix ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .expect("a prefix")
            .trim_matches('"');
        let id = policyc_compiler::flows::id_of_prefix(prefix).expect("a policyc id");
        let point = points
            .iter()
            .find(|p| p.id == id)
            .unwrap_or_else(|| panic!("{id}: no verdict point"));
        // The next rule is the verdict, with the same matches and the point's comment.
        let next = lines[i + 1];
        let matches = l[..at].trim_end().split(" -m limit").next().unwrap();
        assert!(next.starts_with(matches), "{l}\n{next}");
        // (iptables-save escapes a quote in a comment.)
        assert!(
            next.replace("\\'", "'").contains(&point.comment),
            "{next} should name {}",
            point.comment
        );
    }
    for want in [
        "x/web ingress[0]",
        "x/a ingress denied: selected by x/web",
        "flow cut: a policy change denies it",
    ] {
        assert!(
            points
                .iter()
                .any(|p| p.comment == want && saved.contains(&format!("pc:{}", p.id))),
            "no NFLOG rule for {want}:\n{saved}"
        );
    }
    assert!(logged >= 4, "{logged} NFLOG rules:\n{saved}");
    dp.remove().unwrap();
}
