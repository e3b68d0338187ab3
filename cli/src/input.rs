//! `-f PATH` handling: files, directories (recursively, .yaml/.yml/.json), `-` for stdin.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use policyc_compiler::{Diagnostic, Loader, Severity, Snapshot};

/// A loaded input: the snapshot, what went wrong, and how many objects were read.
#[derive(Debug)]
pub struct Input {
    pub snapshot: Snapshot,
    pub diagnostics: Vec<Diagnostic>,
    pub objects: usize,
}

impl Input {
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(|d| d.severity == Severity::Error)
    }

    /// Prints every diagnostic to stderr, one line each.
    pub fn report(&self, quiet_notes: bool) {
        for d in &self.diagnostics {
            if quiet_notes && d.severity == Severity::Note {
                continue;
            }
            eprintln!("{d}");
        }
    }
}

fn collect(path: &Path, out: &mut Vec<PathBuf>, loader: &mut Loader) {
    let shown = path.display().to_string();
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            loader.diag(Severity::Error, &shown, None, None, format!("cannot read: {e}"));
            return;
        }
    };
    if !meta.is_dir() {
        out.push(path.to_path_buf());
        return;
    }
    let mut entries: Vec<PathBuf> = match std::fs::read_dir(path) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).collect(),
        Err(e) => {
            loader.diag(
                Severity::Error,
                &shown,
                None,
                None,
                format!("cannot read directory: {e}"),
            );
            return;
        }
    };
    entries.sort();
    for p in entries {
        if p.is_dir() {
            collect(&p, out, loader);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml" | "json")) {
            out.push(p);
        }
    }
}

/// Reads every `-f` argument into one snapshot.
pub fn load(paths: &[PathBuf]) -> Input {
    let mut loader = Loader::new();
    let mut files = Vec::new();
    for p in paths {
        if p.as_os_str() == "-" {
            let mut text = String::new();
            match std::io::stdin().read_to_string(&mut text) {
                Ok(_) => loader.add_text("-", &text),
                Err(e) => loader.diag(Severity::Error, "-", None, None, format!("cannot read stdin: {e}")),
            }
        } else {
            collect(p, &mut files, &mut loader);
        }
    }
    for f in files {
        let shown = f.display().to_string();
        match std::fs::read_to_string(&f) {
            Ok(text) => loader.add_text(&shown, &text),
            Err(e) => loader.diag(Severity::Error, &shown, None, None, format!("cannot read: {e}")),
        }
    }
    let objects = loader.object_count();
    let (snapshot, diagnostics) = loader.finish();
    Input {
        snapshot,
        diagnostics,
        objects,
    }
}
