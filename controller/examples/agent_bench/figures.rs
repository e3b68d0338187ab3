//! Percentiles and the tables the benchmark prints.

use super::*;

#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) what: String,
    pub(crate) samples: Vec<Sample>,
}

pub(crate) fn pct(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub(crate) fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}

pub(crate) fn print_latency(clock: &str, rows: &[Row]) {
    let debounce = Duration::from_millis(DEBOUNCE_MS);
    println!();
    println!("Latency: {clock}; agent debounce {DEBOUNCE_MS} ms; in ms");
    println!();
    println!(
        "| change | n | p50 | p99 | max | p50 − debounce | p99 − debounce | API request p50 | commits | anomalies |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        let mut l: Vec<Duration> = r.samples.iter().map(|s| s.latency).collect();
        l.sort();
        let mut q: Vec<Duration> = r.samples.iter().map(|s| s.request).collect();
        q.sort();
        if l.is_empty() {
            continue;
        }
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for s in &r.samples {
            *kinds.entry(s.commit).or_default() += 1;
        }
        let kind = match kinds.len() {
            1 => kinds.keys().next().expect("one kind").to_string(),
            _ => kinds
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
        };
        let mut anomalies = Vec::new();
        let unexpected = r.samples.iter().filter(|s| s.unexpected).count();
        let extra: usize = r.samples.iter().map(|s| s.extra_commits).sum();
        let early = r.samples.iter().filter(|s| s.before_ack).count();
        if unexpected > 0 {
            anomalies.push(format!("{unexpected} commits without the change"));
        }
        if extra > 0 {
            anomalies.push(format!("{extra} extra commits"));
        }
        if early > 0 {
            anomalies.push(format!("{early} committed before the ack"));
        }
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.what,
            l.len(),
            ms(pct(&l, 0.5)),
            ms(pct(&l, 0.99)),
            ms(*l.last().expect("not empty")),
            ms(pct(&l, 0.5).saturating_sub(debounce)),
            ms(pct(&l, 0.99).saturating_sub(debounce)),
            ms(pct(&q, 0.5)),
            kind,
            if anomalies.is_empty() {
                "none".to_string()
            } else {
                anomalies.join(", ")
            }
        );
    }
    for r in rows {
        let mut own: Vec<Duration> = r.samples.iter().filter_map(|s| s.agent_sync).collect();
        own.sort();
        if !own.is_empty() {
            println!(
                "  {}: the agent's own sync (sync_ms, debounce end → kernel answer): p50 {} ms, p99 {} ms",
                r.what,
                ms(pct(&own, 0.5)),
                ms(pct(&own, 0.99))
            );
        }
    }
    for r in rows {
        if let Some(line) = r.samples.iter().find_map(|s| s.structural.as_ref()) {
            let short: String = line.chars().take(140).collect();
            println!("  {}: first non-element object of a commit: `{short}`", r.what);
        }
    }
}

pub(crate) fn histogram_mean(
    m: &BTreeMap<String, f64>,
    before: &BTreeMap<String, f64>,
    name: &str,
) -> Option<Duration> {
    let get = |map: &BTreeMap<String, f64>, suffix: &str| map.get(&format!("{name}_{suffix}")).copied().unwrap_or(0.0);
    let n = get(m, "count") - get(before, "count");
    (n > 0.0).then(|| Duration::from_secs_f64((get(m, "sum") - get(before, "sum")) / n))
}
