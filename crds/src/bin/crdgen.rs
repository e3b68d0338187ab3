//! Writes the CRDs policyc owns: to `crds/yaml/crds.yaml` (and every extra path given), or to
//! stdout with `-`.

fn main() -> std::io::Result<()> {
    let yaml = policyc_crds::crd_yaml();
    let mut targets: Vec<String> = std::env::args().skip(1).collect();
    if targets.is_empty() {
        targets.push(concat!(env!("CARGO_MANIFEST_DIR"), "/yaml/crds.yaml").to_string());
    }
    for t in targets {
        if t == "-" {
            print!("{yaml}");
        } else {
            std::fs::write(&t, &yaml)?;
            eprintln!("wrote {t}");
        }
    }
    Ok(())
}
