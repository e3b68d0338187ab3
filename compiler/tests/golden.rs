//! Golden tests of every backend's output. Each directory under `tests/golden/` holds an input
//! (`input.yaml`, or a `source` file naming a path relative to the directory) and the expected
//! renderings: the whole cluster as one table (`all.*`) and each node's nft ruleset
//! (`node-NAME.nft`), and each node's ruleset for the bridge attachment of plain Flannel
//! (`node-NAME.flannel.nft`: bridge `cni0`, fail-closed, every pod's port named
//! `interface_name("veth", pod)`). Run with `UPDATE_GOLDEN=1` to rewrite them, then review the
//! diff.

use std::path::{Path, PathBuf};

use policyc_compiler::cidr::Family;
use policyc_compiler::ir::{interface_name, AttachmentKind};
use policyc_compiler::render::{iptables, nft};
use policyc_compiler::{compile, compile_all_nodes, CompileOptions, Loader, Severity};

fn input_files(dir: &Path) -> Vec<PathBuf> {
    let src = dir.join("source");
    let root = if src.exists() {
        dir.join(std::fs::read_to_string(&src).unwrap().trim())
    } else {
        return vec![dir.join("input.yaml")];
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

fn check(dir: &Path, name: &str, actual: &str, failures: &mut Vec<String>) {
    let path = dir.join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_default();
    if expected != actual {
        let line = expected
            .lines()
            .zip(actual.lines())
            .position(|(a, b)| a != b)
            .unwrap_or_else(|| expected.lines().count().min(actual.lines().count()));
        failures.push(format!(
            "{}: differs at line {}:\n  expected: {:?}\n  actual:   {:?}",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end>"),
            actual.lines().nth(line).unwrap_or("<end>"),
        ));
    }
}

#[test]
fn golden_outputs() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut failures = Vec::new();
    let mut cases = 0;
    for entry in std::fs::read_dir(&root).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        cases += 1;
        let mut loader = Loader::new();
        for f in input_files(&dir) {
            loader.add_text(&f.display().to_string(), &std::fs::read_to_string(&f).unwrap());
        }
        let (snap, diags) = loader.finish();
        assert!(
            diags.iter().all(|d| d.severity != Severity::Error),
            "{}: {diags:?}",
            dir.display()
        );
        let ir = compile(&snap, &CompileOptions::default());
        check(
            &dir,
            "all.nft",
            &nft::render(&ir, true).expect("a compiled IR is valid"),
            &mut failures,
        );
        check(&dir, "all.ipset", &iptables::render_ipset(&ir), &mut failures);
        check(
            &dir,
            "all.iptables",
            &iptables::render_iptables(&ir, Family::V4),
            &mut failures,
        );
        check(
            &dir,
            "all.ip6tables",
            &iptables::render_iptables(&ir, Family::V6),
            &mut failures,
        );
        check(
            &dir,
            "all.ir.json",
            &(serde_json::to_string_pretty(&ir).unwrap() + "\n"),
            &mut failures,
        );
        for (node, ir) in compile_all_nodes(&snap, &CompileOptions::default()) {
            check(
                &dir,
                &format!("node-{node}.nft"),
                &nft::render(&ir, true).expect("a compiled IR is valid"),
                &mut failures,
            );
        }
        let flannel = CompileOptions {
            attachment: AttachmentKind::Bridge { bridge: "cni0".into() },
            fail_closed: true,
            ports: snap
                .pods
                .keys()
                .map(|id| (id.clone(), interface_name("veth", id)))
                .collect(),
            ..CompileOptions::default()
        };
        for (node, ir) in compile_all_nodes(&snap, &flannel) {
            check(
                &dir,
                &format!("node-{node}.flannel.nft"),
                &nft::render(&ir, true).expect("a compiled IR is valid"),
                &mut failures,
            );
        }
    }
    assert!(cases >= 2, "golden cases missing");
    assert!(
        failures.is_empty(),
        "golden mismatches (UPDATE_GOLDEN=1 to accept):\n{}",
        failures.join("\n")
    );
}
