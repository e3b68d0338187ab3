//! Packets vs IR vs expectations.
//!
//! ```text
//!  for each step (one step for plain input):
//!    apply the step's changes ─► Lab::update (topology, every node's rules)
//!    for each port: probe all pairs ─► packets ─┐
//!                   Matrix::evaluate(IR) ───────┼─► cells that differ ─► re-probe each alone,
//!                   expectations (optional) ────┘   diff nft counters: the rule that decided
//! ```
//!
//! A report is text, JSON or JUnit XML; [`Report::exit_code`] is 0 when everything agrees,
//! 1 on any disagreement, 2 when something could not be checked.

use std::fmt::Write as _;
use std::path::Path;

use policyc_compiler::expect::Expectations;
use policyc_compiler::ir::Ir;
use policyc_compiler::scenario::{apply_object, PortExpectation, Scenario, Step};
use policyc_compiler::{Evaluator, Flow, Loader, Matrix, ObjectRef, Protocol, Severity, Snapshot, Verdict};
use serde::Serialize;

use crate::counters::RuleHit;
use crate::lab::Lab;
use crate::probe::Outcome;
use crate::Error;

/// How much to explain.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifyOptions {
    /// At most this many disagreeing cells per step are re-probed to find their rule.
    pub trace_limit: usize,
}

impl Default for VerifyOptions {
    fn default() -> Self {
        Self { trace_limit: 20 }
    }
}

/// One cell where packets, the IR and the expectations do not all agree.
#[derive(Clone, Debug, Serialize)]
pub struct Cell {
    pub src: String,
    pub dst: String,
    /// What the packets did.
    pub packets: bool,
    pub outcome: Outcome,
    /// What the IR says, and why.
    pub ir: bool,
    pub ir_reason: String,
    /// What the user expects, and the line of the expectations that says so.
    pub expected: Option<bool>,
    pub expect_line: Option<usize>,
    /// Re-probed alone: what it did then and which rules counted it.
    pub retrace: Option<Outcome>,
    pub rules: Vec<RuleHit>,
    pub trace_error: Option<String>,
}

/// One port of one step.
#[derive(Clone, Debug, Serialize)]
pub struct PortResult {
    pub port: u16,
    pub protocol: Protocol,
    pub packets: Matrix,
    pub ir: Matrix,
    pub expected: Option<Matrix>,
    pub disagreements: Vec<Cell>,
    /// Cells no packet could be sent for, and why (neither agreement nor disagreement).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unprobed: Vec<Unprobed>,
}

/// A cell that could not be probed.
#[derive(Clone, Debug, Serialize)]
pub struct Unprobed {
    pub src: String,
    pub dst: String,
    pub reason: String,
}

impl PortResult {
    pub fn ok(&self) -> bool {
        self.disagreements.is_empty()
    }

    pub fn label(&self) -> String {
        format!("{}/{}", self.port, self.protocol)
    }
}

/// One step (plain input: a single step).
#[derive(Clone, Debug, Serialize)]
pub struct StepResult {
    pub name: String,
    pub ports: Vec<PortResult>,
    /// The step could not be applied or checked.
    pub error: Option<String>,
}

impl StepResult {
    pub fn ok(&self) -> bool {
        self.error.is_none() && self.ports.iter().all(PortResult::ok)
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// What was verified: the scenario's name or the inputs.
    pub name: String,
    /// The lab's namespace prefix; for a live cluster, its API server.
    pub lab: String,
    /// Probed in a live cluster (`verify --cluster`) rather than in a lab.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cluster: bool,
    pub timeout_ms: u64,
    pub steps: Vec<StepResult>,
}

/// The ports to probe and what to expect on each.
#[derive(Clone, Debug)]
pub struct Check<'a> {
    pub port: u16,
    pub protocol: Protocol,
    pub expectations: Option<&'a Expectations>,
}

/// The ports a step's `expect` blocks check, each with its block's expectations.
pub fn checks(blocks: &[PortExpectation]) -> Vec<Check<'_>> {
    blocks
        .iter()
        .flat_map(|b| {
            b.ports.iter().map(|&(port, protocol)| Check {
                port,
                protocol,
                expectations: Some(&b.expectations),
            })
        })
        .collect()
}

/// Every container port of the endpoints, sorted.
pub fn container_ports(snapshot: &Snapshot) -> Vec<(u16, Protocol)> {
    let mut v: Vec<(u16, Protocol)> = snapshot
        .endpoints()
        .flat_map(|p| p.ports.iter().map(|c| (c.port, c.protocol)))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Parses `80/TCP,81/UDP` (protocol defaults to TCP).
pub fn parse_ports(s: &str) -> Result<Vec<(u16, Protocol)>, Error> {
    let mut v = Vec::new();
    for p in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        v.push(policyc_compiler::expect::parse_port(p).map_err(Error::new)?);
    }
    if v.is_empty() {
        return Err(Error::new("no port given"));
    }
    v.sort();
    v.dedup();
    Ok(v)
}

fn side_reason(v: &policyc_compiler::eval::SideVerdict) -> String {
    let who = v.endpoint.as_ref().map(ObjectRef::to_string).unwrap_or_default();
    let d = v.direction;
    if !v.isolated {
        return format!("{who} {d}: not isolated");
    }
    match &v.allowed_by {
        Some(r) => format!("{who} {d}: allowed by {r}"),
        None if v.allowed => format!("{who} {d}: allowed"),
        None => {
            let ps: Vec<String> = v.policies.iter().map(ObjectRef::to_string).collect();
            format!("{who} {d}: denied (selected by {}, no rule matches)", ps.join(", "))
        }
    }
}

/// A short account of the IR's verdict.
pub fn describe_verdict(v: &Verdict) -> String {
    if v.loopback {
        return "a pod reaching itself is always allowed".into();
    }
    format!("{}; {}", side_reason(&v.egress), side_reason(&v.ingress))
}

/// The IR's verdict on a probe from `src` to `dst` (`ns/name` of two endpoints).
pub fn ir_verdict(ir: &Ir, src: &str, dst: &str, protocol: Protocol, port: u16) -> Option<Verdict> {
    verdict_with(&Evaluator::new(ir), ir, src, dst, protocol, port)
}

/// [`ir_verdict`] with an evaluator made once for many cells.
pub fn verdict_with(
    ev: &Evaluator<'_>,
    ir: &Ir,
    src: &str,
    dst: &str,
    protocol: Protocol,
    port: u16,
) -> Option<Verdict> {
    let ep = |name: &str| ir.endpoints.iter().find(|e| e.pod.to_string() == name);
    let (s, d) = policyc_compiler::eval::flow_addresses(ep(src)?, ep(dst)?)?;
    Some(ev.evaluate(&Flow {
        src: s,
        dst: d,
        protocol,
        port,
    }))
}

/// Compares one port's cells: what the packets did (`outcome(i, j)`: `Err` names why the cell
/// could not be probed), what the IR says (`verdict(src, dst)`) and the expectations. Cells
/// that disagree come back without a retrace; the caller adds one where it can.
pub fn compare(
    pods: &[String],
    c: &Check<'_>,
    outcome: &dyn Fn(usize, usize) -> Result<Outcome, String>,
    verdict: &dyn Fn(&str, &str) -> Option<Verdict>,
) -> PortResult {
    let n = pods.len();
    let mut packets = Matrix {
        pods: pods.to_vec(),
        allowed: vec![vec![false; n]; n],
    };
    let mut ir = packets.clone();
    let expected = c.expectations.map(|e| e.matrix(pods, c.protocol, c.port));
    let mut disagreements = Vec::new();
    let mut unprobed = Vec::new();
    for (i, src) in pods.iter().enumerate() {
        for (j, dst) in pods.iter().enumerate() {
            let v = verdict(src, dst);
            // No common address family: nothing can connect, except a pod to itself.
            let want_ir = v.as_ref().map_or(src == dst, |v| v.allowed);
            ir.allowed[i][j] = want_ir;
            let o = match outcome(i, j) {
                Ok(o) => o,
                Err(reason) => {
                    unprobed.push(Unprobed {
                        src: src.clone(),
                        dst: dst.clone(),
                        reason,
                    });
                    continue;
                }
            };
            let got = o.reached();
            packets.allowed[i][j] = got;
            let want = c
                .expectations
                .and_then(|e| e.check(src, dst, c.protocol, c.port))
                .map(|(w, _)| w);
            if got == want_ir && want.is_none_or(|w| w == got) {
                continue;
            }
            disagreements.push(Cell {
                src: src.clone(),
                dst: dst.clone(),
                packets: got,
                outcome: o,
                ir: want_ir,
                ir_reason: v
                    .as_ref()
                    .map(describe_verdict)
                    .unwrap_or_else(|| "no common address family".into()),
                expected: want,
                expect_line: c.expectations.and_then(|e| e.expected(src, dst, c.protocol, c.port).1),
                retrace: None,
                rules: Vec::new(),
                trace_error: None,
            });
        }
    }
    PortResult {
        port: c.port,
        protocol: c.protocol,
        packets,
        ir,
        expected,
        disagreements,
        unprobed,
    }
}

/// Probes the given ports in the lab (all in parallel) and compares packets, the IR and the
/// expectations cell by cell; disagreeing cells are re-probed alone to name their rule.
pub fn check(lab: &Lab, checks: &[Check<'_>], opts: &VerifyOptions) -> Vec<PortResult> {
    let ports: Vec<(u16, Protocol)> = checks.iter().map(|c| (c.port, c.protocol)).collect();
    let observed = lab.probe_ports(&ports);
    let ir = lab.cluster_ir();
    let ev = Evaluator::new(&ir);
    let mut traced = 0usize;
    let mut out = Vec::new();
    for (c, probed) in checks.iter().zip(observed) {
        let mut result = compare(&probed.pods, c, &|i, j| Ok(probed.outcomes[i][j].clone()), &|s, d| {
            verdict_with(&ev, &ir, s, d, c.protocol, c.port)
        });
        for cell in &mut result.disagreements {
            if traced >= opts.trace_limit {
                cell.trace_error = Some(format!("not re-probed (more than {} cells)", opts.trace_limit));
                continue;
            }
            traced += 1;
            match lab.trace_cell(&parse_ref(&cell.src), &parse_ref(&cell.dst), c.protocol, c.port) {
                Ok((o, rules)) => {
                    cell.retrace = Some(o);
                    cell.rules = rules;
                }
                Err(e) => cell.trace_error = Some(e.to_string()),
            }
        }
        out.push(result);
    }
    out
}

fn parse_ref(s: &str) -> ObjectRef {
    let (ns, name) = s.split_once('/').unwrap_or(("", s));
    ObjectRef::new(ns, name)
}

// === Scenarios ===

/// Reads a scenario file and builds its initial snapshot on top of `base`: include files (paths
/// relative to the scenario; any error diagnostic fails), then the inline objects.
pub fn load_scenario(path: &Path, base: Snapshot) -> Result<(Scenario, Snapshot), Error> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| Error::new(format!("{shown}: {e}")))?;
    let scenario = Scenario::parse(&text).map_err(|e| Error::new(format!("{shown}: {e}")))?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut loader = Loader::new();
    for inc in &scenario.include {
        let p = dir.join(inc);
        let t =
            std::fs::read_to_string(&p).map_err(|e| Error::new(format!("{shown}: include {}: {e}", p.display())))?;
        loader.add_text(&p.display().to_string(), &t);
    }
    let (included, diagnostics) = loader.finish();
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .map(|d| d.to_string())
        .collect();
    if !errors.is_empty() {
        return Err(Error::new(format!("{shown}: {}", errors.join("; "))));
    }
    let mut snapshot = base;
    merge(&mut snapshot, included);
    for (i, obj) in scenario.objects.iter().enumerate() {
        apply_object(&mut snapshot, obj).map_err(|e| Error::new(format!("{shown}: objects[{i}]: {e}")))?;
    }
    Ok((scenario, snapshot))
}

fn merge(into: &mut Snapshot, from: Snapshot) {
    into.namespaces.extend(from.namespaces);
    into.nodes.extend(from.nodes);
    into.pods.extend(from.pods);
    into.policies.extend(from.policies);
}

pub fn step_label(index: usize, step: &Step) -> String {
    match &step.name {
        Some(n) => format!("step {} ({n})", index + 1),
        None => format!("step {}", index + 1),
    }
}

/// What brings a lab's kernels to each step of a scenario.
pub trait Enforcer {
    /// Brings the cluster to a scenario's starting point, before its first step.
    fn begin(&mut self, initial: &Snapshot) -> Result<(), Error>;
    /// Applies one step; `after` is the cluster once it is applied.
    fn apply_step(&mut self, step: &Step, after: &Snapshot) -> Result<(), Error>;
    /// The lab whose pods are probed.
    fn lab(&self) -> &Lab;
}

/// The lab loading every node's rules itself.
impl Enforcer for Lab {
    fn begin(&mut self, _initial: &Snapshot) -> Result<(), Error> {
        // The first step's update brings the lab to the scenario's cluster.
        Ok(())
    }

    fn apply_step(&mut self, _step: &Step, after: &Snapshot) -> Result<(), Error> {
        self.update(after)
    }

    fn lab(&self) -> &Lab {
        self
    }
}

/// Runs a scenario: the enforcer brings the lab to `initial` (its pods and rules), then each
/// step is applied and the ports of its `expect` blocks checked. Stops at the first step that
/// cannot be applied.
pub fn run_scenario<E: Enforcer + ?Sized>(
    enforcer: &mut E,
    scenario: &Scenario,
    initial: &Snapshot,
    opts: &VerifyOptions,
) -> Vec<StepResult> {
    let mut steps = Vec::new();
    if let Err(e) = enforcer.begin(initial) {
        steps.push(StepResult {
            name: "start".into(),
            ports: Vec::new(),
            error: Some(format!("bringing the cluster to the scenario's start: {e}")),
        });
        return steps;
    }
    let mut snapshot = initial.clone();
    for (i, step) in scenario.steps.iter().enumerate() {
        let name = step_label(i, step);
        let failed = |e: String| StepResult {
            name: name.clone(),
            ports: Vec::new(),
            error: Some(e),
        };
        if let Err(e) = step.apply_to(&mut snapshot) {
            steps.push(failed(format!("applying the step: {e}")));
            break;
        }
        let blocks = match step.expectations() {
            Ok(b) => b,
            Err(e) => {
                steps.push(failed(format!("bad expectations: {e}")));
                break;
            }
        };
        if let Err(e) = enforcer.apply_step(step, &snapshot) {
            steps.push(failed(format!("updating the lab: {e}")));
            break;
        }
        let checks = checks(&blocks);
        steps.push(StepResult {
            name,
            ports: check(enforcer.lab(), &checks, opts),
            error: None,
        });
    }
    steps
}

// === Reports ===

fn verdict_word(b: bool) -> &'static str {
    if b {
        "allow"
    } else {
        "deny"
    }
}

impl Report {
    pub fn ok(&self) -> bool {
        self.steps.iter().all(StepResult::ok)
    }

    pub fn has_errors(&self) -> bool {
        self.steps.iter().any(|s| s.error.is_some())
    }

    /// 0 everything agrees, 1 a disagreement, 2 something could not be checked.
    pub fn exit_code(&self) -> u8 {
        if self.has_errors() {
            2
        } else if self.ok() {
            0
        } else {
            1
        }
    }

    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "verify {} in {} {} (probe timeout {} ms)",
            self.name,
            if self.cluster { "cluster" } else { "lab" },
            self.lab,
            self.timeout_ms
        );
        let single = self.steps.len() == 1 && self.steps[0].name == "input";
        let (mut ports, mut bad) = (0, 0);
        for step in &self.steps {
            let indent = if single { "" } else { "  " };
            if !single {
                let _ = writeln!(out, "{}:", step.name);
            }
            if let Some(e) = &step.error {
                let _ = writeln!(out, "{indent}ERROR: {e}");
            }
            if step.ports.is_empty() && step.error.is_none() {
                let _ = writeln!(out, "{indent}(applied; nothing to check)");
            }
            for p in &step.ports {
                ports += 1;
                let all = p.packets.pods.len() * p.packets.pods.len();
                let cells = if p.unprobed.is_empty() {
                    format!("{all}")
                } else {
                    format!("{} of {all}", all - p.unprobed.len())
                };
                let what = if p.expected.is_some() {
                    "packets = IR = expected"
                } else {
                    "packets = IR"
                };
                if p.ok() {
                    let _ = writeln!(out, "{indent}{:<9} ok: {what} ({cells} cells)", p.label());
                    write_unprobed(&mut out, indent, p);
                    continue;
                }
                bad += 1;
                let _ = writeln!(
                    out,
                    "{indent}{:<9} FAIL: {} of {cells} cells disagree",
                    p.label(),
                    p.disagreements.len()
                );
                for c in &p.disagreements {
                    write_cell(&mut out, indent, c);
                }
                write_unprobed(&mut out, indent, p);
            }
        }
        let errors = self.steps.iter().filter(|s| s.error.is_some()).count();
        let _ = writeln!(
            out,
            "{}: {ports} port checks, {bad} with disagreements, {errors} errors",
            if self.ok() { "OK" } else { "FAILED" }
        );
        out
    }

    pub fn to_junit(&self) -> String {
        let mut cases = String::new();
        let (mut tests, mut failures, mut errors) = (0, 0, 0);
        for step in &self.steps {
            if let Some(e) = &step.error {
                tests += 1;
                errors += 1;
                let _ = writeln!(
                    cases,
                    "    <testcase classname=\"{}\" name=\"apply\">\n      <error message=\"{}\"/>\n    </testcase>",
                    xml(&step.name),
                    xml(e)
                );
            }
            for p in &step.ports {
                tests += 1;
                let _ = write!(
                    cases,
                    "    <testcase classname=\"{}\" name=\"{}\">",
                    xml(&step.name),
                    p.label()
                );
                if p.ok() {
                    cases.push_str("</testcase>\n");
                    continue;
                }
                failures += 1;
                let mut body = String::new();
                for c in &p.disagreements {
                    write_cell(&mut body, "", c);
                }
                let _ = writeln!(
                    cases,
                    "\n      <failure message=\"{} cells disagree\">{}</failure>\n    </testcase>",
                    p.disagreements.len(),
                    xml(&body)
                );
            }
        }
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<testsuites name=\"policyc verify\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">\n  <testsuite name=\"{}\" tests=\"{tests}\" failures=\"{failures}\" errors=\"{errors}\">\n{cases}  </testsuite>\n</testsuites>\n",
            xml(&self.name)
        )
    }
}

/// The cells of a port that could not be probed, grouped by why.
fn write_unprobed(out: &mut String, indent: &str, p: &PortResult) {
    let mut by_reason: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
    for u in &p.unprobed {
        by_reason
            .entry(&u.reason)
            .or_default()
            .push(format!("{} -> {}", u.src, u.dst));
    }
    for (reason, cells) in by_reason {
        let shown: Vec<&str> = cells.iter().take(6).map(String::as_str).collect();
        let more = if cells.len() > shown.len() {
            format!(", and {} more", cells.len() - shown.len())
        } else {
            String::new()
        };
        let _ = writeln!(
            out,
            "{indent}  not probed ({} cells): {reason}: {}{more}",
            cells.len(),
            shown.join(", ")
        );
    }
}

fn write_cell(out: &mut String, indent: &str, c: &Cell) {
    let expected = match c.expected {
        Some(e) => format!(
            ", expected {}{}",
            verdict_word(e),
            c.expect_line.map(|l| format!(" (line {l})")).unwrap_or_default()
        ),
        None => String::new(),
    };
    let _ = writeln!(
        out,
        "{indent}  {} -> {}: packets {} ({}), IR {}{expected}",
        c.src,
        c.dst,
        verdict_word(c.packets),
        c.outcome.describe(),
        verdict_word(c.ir),
    );
    let _ = writeln!(out, "{indent}      IR: {}", c.ir_reason);
    if let Some(o) = &c.retrace {
        if c.rules.is_empty() {
            let _ = writeln!(
                out,
                "{indent}      re-probed ({}): no policyc rule counted it (no isolated end on its path)",
                o.describe()
            );
        }
        for r in &c.rules {
            let _ = writeln!(out, "{indent}      re-probed ({}): {r}", o.describe());
        }
    }
    if let Some(e) = &c.trace_error {
        let _ = writeln!(out, "{indent}      {e}");
    }
}

fn xml(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn matrix(allowed: [[bool; 2]; 2]) -> Matrix {
        Matrix {
            pods: vec!["x/a".into(), "x/b".into()],
            allowed: allowed.iter().map(|r| r.to_vec()).collect(),
        }
    }

    fn report(cells: Vec<Cell>, error: Option<String>) -> Report {
        Report {
            name: "test".into(),
            lab: "pclab-1-0".into(),
            cluster: false,
            timeout_ms: 1000,
            steps: vec![StepResult {
                name: "step 1 (deny)".into(),
                ports: vec![PortResult {
                    port: 80,
                    protocol: Protocol::Tcp,
                    packets: matrix([[true, false], [true, true]]),
                    ir: matrix([[true, true], [true, true]]),
                    expected: Some(matrix([[true, true], [true, true]])),
                    disagreements: cells,
                    unprobed: Vec::new(),
                }],
                error,
            }],
        }
    }

    #[test]
    fn reports_name_cells_and_rules() {
        let cell = Cell {
            src: "x/a".into(),
            dst: "x/b".into(),
            packets: false,
            outcome: Outcome::Timeout,
            ir: true,
            ir_reason: "x/a egress: not isolated; x/b ingress: not isolated".into(),
            expected: Some(true),
            expect_line: Some(3),
            retrace: Some(Outcome::Timeout),
            rules: vec![RuleHit {
                node: "node-2".into(),
                chain: "ep_0_in".into(),
                comment: Some("x/b ingress denied: selected by x/deny".into()),
                verdict: "drop".into(),
                packets: 1,
            }],
            trace_error: None,
        };
        let r = report(vec![cell], None);
        assert_eq!(r.exit_code(), 1);
        let text = r.to_text();
        assert!(
            text.contains("x/a -> x/b: packets deny (timed out), IR allow, expected allow (line 3)"),
            "{text}"
        );
        assert!(
            text.contains("dropped by \"x/b ingress denied: selected by x/deny\" on node-2"),
            "{text}"
        );
        let junit = r.to_junit();
        assert!(junit.contains("tests=\"1\" failures=\"1\" errors=\"0\""), "{junit}");
        assert!(
            junit.contains("<testcase classname=\"step 1 (deny)\" name=\"80/TCP\">"),
            "{junit}"
        );
        assert!(junit.contains("&quot;x/b ingress denied"), "{junit}");

        let ok = report(Vec::new(), None);
        assert_eq!(ok.exit_code(), 0);
        assert!(ok.to_text().contains("80/TCP    ok: packets = IR = expected (4 cells)"));
        assert_eq!(report(Vec::new(), Some("boom".into())).exit_code(), 2);
    }

    #[test]
    fn port_lists() {
        assert_eq!(
            parse_ports("81/UDP, 80,80/TCP").unwrap(),
            vec![(80, Protocol::Tcp), (81, Protocol::Udp)]
        );
        assert!(parse_ports("80/ICMP").is_err());
        assert!(parse_ports("").is_err());
    }
}
