//! Regenerates what is derived from code: the CRDs policyc owns (into `crds/yaml/` and the chart),
//! the admin policy CRDs (into `crds/yaml/` and the chart's opt-in template) and the chart README's
//! values table (from `values.yaml`). `crdgen -` prints policyc's CRDs, `crdgen admin` the admin
//! policy CRDs, instead.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let yaml = policyc_crds::crd_yaml();
    match std::env::args().nth(1).as_deref() {
        Some("-") => {
            print!("{yaml}");
            return Ok(());
        }
        Some("admin") => {
            print!("{}", policyc_crds::admin::crd_yaml());
            return Ok(());
        }
        _ => {}
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut outputs: Vec<(&str, String)> = policyc_crds::CRD_PATHS.iter().map(|p| (*p, yaml.clone())).collect();
    outputs.push((policyc_crds::admin::CRD_PATH, policyc_crds::admin::crd_yaml()));
    outputs.push((
        policyc_crds::admin::CHART_TEMPLATE_PATH,
        policyc_crds::admin::chart_template(),
    ));
    for (p, text) in outputs {
        std::fs::write(repo.join(p), text)?;
        eprintln!("wrote {p}");
    }
    let values = std::fs::read_to_string(repo.join("charts/policyc/values.yaml"))?;
    let readme_path = repo.join("charts/policyc/README.md");
    let readme = std::fs::read_to_string(&readme_path)?;
    let table = policyc_crds::values_table(&values);
    match policyc_crds::with_values_table(&readme, &table) {
        Some(new) => {
            std::fs::write(&readme_path, new)?;
            eprintln!("wrote charts/policyc/README.md values table");
        }
        None => eprintln!("charts/policyc/README.md has no values-table markers"),
    }
    Ok(())
}
