//! Regenerates what is derived from code: the CRDs policyc owns (into `crds/yaml/` and the chart)
//! and the chart README's values table (from `values.yaml`). `crdgen -` prints the CRDs instead.

use std::path::Path;

fn main() -> std::io::Result<()> {
    let yaml = policyc_crds::crd_yaml();
    if std::env::args().nth(1).as_deref() == Some("-") {
        print!("{yaml}");
        return Ok(());
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for p in policyc_crds::CRD_PATHS {
        std::fs::write(repo.join(p), &yaml)?;
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
