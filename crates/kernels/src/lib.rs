//! edgellm's compute kernels, apart from tract: the only crate where SIMD and `unsafe` code
//! live.
//!
//! - [`isa`]: the instruction set, detected once, with the `EDGELLM_ISA` override that lets a
//!   test or a benchmark force a lower path than the CPU has.
//! - [`q4`]: the fused 4-bit product over tract's packed Q4_0 panels (reference, AVX2,
//!   AVX-512), with the layout it reads.
//! - [`attention`]: one attention head, `softmax(q kᵀ · scale + mask) v` (reference, AVX-512).
//! - [`spin_team`]: helper threads that share out one product at a time.
//! - [`neighbours`]: whether the other processes that want the cores are of background
//!   priority, so that the team's pollers need not yield to them.
//!
//! The tract ops that call these kernels, and the graph passes that put them in a model, live
//! in `edgellm-engine`; this crate knows nothing of tract.

#![allow(unsafe_code)]

pub mod attention;
pub mod isa;
pub mod neighbours;
pub mod q4;
pub mod spin_team;

pub use isa::Isa;
