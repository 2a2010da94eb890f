//! The policy layer: the compiler's typed model of a policy set ([`model`]), the reference
//! evaluator that specifies what a set means ([`eval`]), and the decision partition the
//! programs look up ([`partition`]), computed with the evaluator's own decision logic.

pub mod eval;
pub mod model;
pub mod partition;
