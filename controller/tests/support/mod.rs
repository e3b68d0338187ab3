//! Test support: a real kube-apiserver (kube-lab) and the kubectl / helm built beside it.

#![allow(dead_code)]

use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tool `e2e/apiserver/build.sh` builds (kube-lab, kubectl, helm): from `POLICYC_E2E_BIN` when
/// set (e.g. another checkout's `e2e/bin`, to reuse its Go builds), else this checkout's `e2e/bin`.
pub fn e2e_bin(tool: &str) -> PathBuf {
    match std::env::var_os("POLICYC_E2E_BIN") {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir).join(tool),
        _ => repo().join("e2e/bin").join(tool),
    }
}

pub struct ApiServer {
    child: Child,
    pub kubeconfig: PathBuf,
    pub dir: PathBuf,
}

impl ApiServer {
    /// Starts kube-lab in a fresh directory; `None` (after printing why) when it is not built.
    pub fn start(tag: &str) -> Option<ApiServer> {
        let bin = e2e_bin("kube-lab");
        if !bin.exists() {
            policyc_testhost::skip("e2e/bin/kube-lab not built (bash e2e/apiserver/build.sh, or POLICYC_E2E_BIN=DIR)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("policyc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut child = Command::new(bin)
            .args(["serve", "--dir", dir.to_str().unwrap(), "--exit-on-stdin-eof"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(k) = line.strip_prefix("READY ") {
                    let _ = tx.send(PathBuf::from(k));
                }
            }
        });
        let kubeconfig = rx.recv_timeout(Duration::from_secs(180)).expect("kube-lab READY");
        Some(ApiServer { child, kubeconfig, dir })
    }

    /// Runs a tool from e2e/bin with this server's kubeconfig; panics on failure.
    pub fn tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> String {
        let (ok, out, err) = self.try_tool(tool, args, stdin);
        assert!(ok, "{tool} {args:?}: {err}");
        out
    }

    /// Runs a tool from e2e/bin; returns success, stdout and stderr.
    pub fn try_tool(&self, tool: &str, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        let mut child = Command::new(e2e_bin(tool))
            .arg("--kubeconfig")
            .arg(&self.kubeconfig)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(stdin.unwrap_or("").as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn kubectl(&self, args: &[&str], stdin: Option<&str>) -> String {
        self.tool("kubectl", args, stdin)
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `GET path` on 127.0.0.1:`port` (the agent's HTTP endpoints): status code and whole response.
pub fn http_get(port: u16, timeout: Duration, path: &str) -> Option<(u16, String)> {
    use std::io::Read as _;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(timeout)).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, text))
}

/// Installs policyc's CRD and the chart's RBAC, and writes a kubeconfig for the chart's
/// ServiceAccount (a client certificate for that user name is what RBAC's ServiceAccount
/// subjects match), so that an agent runs with exactly the chart's permissions.
pub fn agent_kubeconfig(api: &ApiServer) -> PathBuf {
    api.kubectl(
        &["apply", "-f", repo().join("crds/yaml/crds.yaml").to_str().unwrap()],
        None,
    );
    api.kubectl(
        &[
            "wait",
            "--for",
            "condition=established",
            "crd/nodepolicystatuses.policyc.dev",
        ],
        None,
    );
    let rbac = api.tool(
        "helm",
        &[
            "template",
            "policyc",
            repo().join("charts/policyc").to_str().unwrap(),
            "-n",
            "kube-system",
            "--show-only",
            "templates/rbac.yaml",
        ],
        None,
    );
    api.kubectl(&["apply", "-f", "-"], Some(&rbac));
    // KUBECONFIG is a colon-separated list: a file name without colons.
    let path = api.dir.join("agent.kubeconfig");
    let out = Command::new(e2e_bin("kube-lab"))
        .args([
            "kubeconfig",
            "--dir",
            api.dir.to_str().unwrap(),
            "--user",
            "system:serviceaccount:kube-system:policyc",
            "--group",
            "system:serviceaccounts",
            "--group",
            "system:authenticated",
            "--out",
        ])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    path
}
