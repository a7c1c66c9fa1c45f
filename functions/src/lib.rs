//! The jetrun function API: the [`Event`] a function receives, the
//! [`Context`] of its delivery, the [`Outcome`] it returns, the [`Function`]
//! trait every handler kind implements, and the registry of built-in Rust
//! functions.

mod builtin;
mod event;
mod function;
mod outcome;

pub use builtin::{builtin, BUILTINS};
pub use event::Event;
pub use function::{each_alone, Context, Function, TraceContext};
pub use outcome::{Emit, Failure, FailureKind, Later, Outcome, Output};
