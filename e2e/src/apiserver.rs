//! A real Kubernetes API server for the lab: `kube-lab` (the upstream kube-apiserver with an
//! embedded etcd, built with kubectl and helm by `e2e/apiserver/build.sh` into `e2e/bin`).
//!
//! ```text
//!  ApiServer::start ── kube-lab serve --dir D --port P --exit-on-stdin-eof ── READY D/kubeconfig
//!       │                 (127.0.0.1 only; P is fixed for the server's life)
//!       ├── stop:  closes kube-lab's stdin; it shuts down cleanly, etcd data stays in D
//!       └── start_again: same D, same P: every kubeconfig written for it stays valid
//! ```
//!
//! The server listens on the host's loopback, never inside the lab's namespaces; agents reach it
//! from the host's network namespace, as a node's agent reaches its cluster's API server.

use std::fs::File;
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::Duration;

use crate::Error;

/// How long kube-lab may take to become ready (cold etcd and apiserver start on a busy machine).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// Where the lab's Kubernetes tools are: `kube-lab`, `kubectl`, `helm`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tools {
    pub bin: PathBuf,
}

impl Tools {
    /// `e2e/bin` of this repository.
    pub fn in_repo() -> Tools {
        Tools {
            bin: Path::new(env!("CARGO_MANIFEST_DIR")).join("bin"),
        }
    }

    pub fn path(&self, tool: &str) -> PathBuf {
        self.bin.join(tool)
    }

    /// Fails, naming the missing tool and how to build it, unless all three exist.
    pub fn check(&self) -> Result<(), Error> {
        for tool in ["kube-lab", "kubectl", "helm"] {
            if !self.path(tool).is_file() {
                return Err(Error::new(format!(
                    "{} is not built (bash e2e/apiserver/build.sh)",
                    self.path(tool).display()
                )));
            }
        }
        Ok(())
    }
}

/// Runs a program with `input` on its standard input; its standard output, or an error carrying
/// its standard error.
pub fn run(program: &Path, args: &[&str], input: Option<&str>) -> Result<String, Error> {
    let shown = || format!("{} {}", program.display(), args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::new(format!("cannot run {}: {e}", shown())))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::new(format!("writing to {}: {e}", shown())))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::new(format!("waiting for {}: {e}", shown())))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{}: {}",
            shown(),
            String::from_utf8_lossy(&out.stderr).trim().replace('\n', "; ")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after).
pub fn free_port() -> Result<u16, Error> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| Error::new(format!("no free port on 127.0.0.1: {e}")))
}

/// A running (or stopped) kube-lab. Dropping it stops the server; its directory stays for the
/// owner to remove.
#[derive(Debug)]
pub struct ApiServer {
    tools: Tools,
    dir: PathBuf,
    port: u16,
    kubeconfig: PathBuf,
    /// The server process and the pipe whose closing stops it.
    process: Option<(Child, ChildStdin)>,
}

impl ApiServer {
    /// Starts a server with its data in `dir` (created if missing) and waits until it is ready.
    pub fn start(tools: &Tools, dir: &Path) -> Result<ApiServer, Error> {
        tools.check()?;
        std::fs::create_dir_all(dir).map_err(|e| Error::new(format!("creating {}: {e}", dir.display())))?;
        let mut server = ApiServer {
            tools: tools.clone(),
            dir: dir.to_path_buf(),
            port: free_port()?,
            kubeconfig: dir.join("kubeconfig"),
            process: None,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the stopped server again on the same directory and port: the objects it stored and
    /// every kubeconfig written for it stay valid.
    pub fn start_again(&mut self) -> Result<(), Error> {
        if self.process.is_some() {
            return Ok(());
        }
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.dir.join("kube-lab.log"))
            .map_err(|e| Error::new(format!("kube-lab log: {e}")))?;
        let mut child = Command::new(self.tools.path("kube-lab"))
            .arg("serve")
            .arg("--dir")
            .arg(&self.dir)
            .args(["--port", &self.port.to_string(), "--exit-on-stdin-eof", "--"])
            // Open watches (the agents') are closed at shutdown instead of holding it up to
            // kube-lab's 30 s limit.
            .arg("--shutdown-watch-termination-grace-period=1s")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::new(format!("cannot run kube-lab: {e}")))?;
        let stdin = child.stdin.take().expect("piped stdin");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            // Ends at kube-lab's exit; READY comes once per start.
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("READY ") {
                    let _ = tx.send(());
                }
            }
        });
        if rx.recv_timeout(READY_TIMEOUT).is_err() {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::new(format!(
                "kube-lab did not become ready in {READY_TIMEOUT:?}; see {}",
                self.dir.join("kube-lab.log").display()
            )));
        }
        self.process = Some((child, stdin));
        Ok(())
    }

    /// Stops the server cleanly (kube-lab's stdin closes) and waits for it to exit.
    pub fn stop(&mut self) -> Result<(), Error> {
        let Some((mut child, stdin)) = self.process.take() else {
            return Ok(());
        };
        drop(stdin);
        child
            .wait()
            .map(|_| ())
            .map_err(|e| Error::new(format!("waiting for kube-lab: {e}")))
    }

    /// The port the server listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn is_running(&self) -> bool {
        self.process.is_some()
    }

    /// The administrator's kubeconfig.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Runs kubectl as the administrator.
    pub fn kubectl(&self, args: &[&str], input: Option<&str>) -> Result<String, Error> {
        let mut all = vec!["--kubeconfig", self.kubeconfig.to_str().unwrap_or_default()];
        all.extend_from_slice(args);
        run(&self.tools.path("kubectl"), &all, input)
    }

    /// Writes a kubeconfig at `out` for a client certificate of `user` in `groups`, signed by the
    /// server's CA. The user has the rights RBAC gives that name, nothing more.
    pub fn user_kubeconfig(&self, user: &str, groups: &[&str], out: &Path) -> Result<(), Error> {
        let dir = self.dir.to_string_lossy();
        let out = out.to_string_lossy();
        let mut args = vec!["kubeconfig", "--dir", &dir, "--user", user, "--out", &out];
        for g in groups {
            args.extend(["--group", g]);
        }
        run(&self.tools.path("kube-lab"), &args, None).map(|_| ())
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}
