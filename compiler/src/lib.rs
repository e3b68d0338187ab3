//! policyc's compiler: cluster snapshot → canonical rule IR → nftables / iptables rulesets.
//!
//! ```text
//!  YAML / JSON / API objects ──load──► Snapshot ──compile(node)──► Ir ──┬─► render::nft
//!                                                                      ├─► render::iptables
//!                                                                      └─► eval (explain, matrix)
//! ```
//!
//! Pure and synchronous: no I/O, no clocks, no async. The same input, in any order, gives
//! byte-identical output.

pub mod cidr;
pub mod eval;
pub mod expect;
pub mod flows;
pub mod ir;
pub mod load;
pub mod model;
pub mod nft;
pub mod render;
pub mod scenario;
pub mod synth;
pub mod tiers;

pub use eval::{Evaluator, Flow, Matrix, Verdict};
pub use ir::{compile, compile_all_nodes, CompileOptions, Compiler, Ir, SelectorCache};
pub use load::{Diagnostic, Loader, Severity};
pub use model::{Direction, ObjectRef, Protocol, Snapshot};
