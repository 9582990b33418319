//! Which SIMD path the kernels take, decided once per process.
//!
//! The CPU's features are read at first use; `EDGELLM_ISA` (`scalar`, `avx2`, `avx512`,
//! `avx512vnni`, `neon`, `dotprod`) may lower the choice, never raise it above what the CPU
//! runs, so that CI on a VNNI machine can check the f32 AVX-512, AVX2 and portable paths
//! against the golden tokens too.

use std::sync::OnceLock;

/// A kernel path, from the most portable to the widest. Each one implies the ones before it on
/// its architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Isa {
    /// No fused kernel: tract's own ops, and the scalar references in tests.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C: the one-token 4-bit product, on activations rounded
    /// to 16 bits ([`Isa::rounds_activations`]).
    Avx2,
    /// x86_64 with AVX-512F on top of AVX2: every fused kernel, in f32.
    Avx512,
    /// AVX-512 with VNNI and VBMI: the 4-bit products (one token and prompt chunks) take the
    /// activations rounded to 16 bits per block of 32 (`vpdpwssd`); a rounding error within
    /// 1.5e-5 of the block's largest value, far below what moves a greedy token (the golden
    /// tests run on it). 8 bits (`vpdpbusd`, as llama.cpp) would round at 4e-3, which can
    /// change answers.
    Avx512Vnni,
    /// aarch64 with NEON (every aarch64 CPU): every fused kernel, in f32.
    Neon,
    /// aarch64 with the dot-product extension (`sdot`): detected and reported, and runs the
    /// NEON kernels. An `sdot` product would have to round the activations to 8 bits, which
    /// would change the answers against the golden tokens; it is not written.
    NeonDotprod,
}

impl Isa {
    /// The path in force: the CPU's best, or the lower one `EDGELLM_ISA` asks for.
    pub fn current() -> Isa {
        static CURRENT: OnceLock<Isa> = OnceLock::new();
        *CURRENT.get_or_init(|| {
            let detected = Isa::detected();
            match std::env::var("EDGELLM_ISA") {
                Ok(name) => match Isa::from_name(&name) {
                    Some(wanted) if detected.runs(wanted) => wanted,
                    _ => {
                        eprintln!(
                            "edgellm: EDGELLM_ISA={name:?} is not a path this CPU runs; using {}",
                            detected.name()
                        );
                        detected
                    }
                },
                Err(_) => detected,
            }
        })
    }

    /// The CPU's best path, ignoring any override.
    pub fn detected() -> Isa {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::is_x86_feature_detected!("avx2")
                && std::is_x86_feature_detected!("fma")
                && std::is_x86_feature_detected!("f16c");
            if avx2 && std::is_x86_feature_detected!("avx512f") {
                let vnni = std::is_x86_feature_detected!("avx512bw")
                    && std::is_x86_feature_detected!("avx512vnni")
                    && std::is_x86_feature_detected!("avx512vbmi");
                return if vnni { Isa::Avx512Vnni } else { Isa::Avx512 };
            }
            if avx2 {
                return Isa::Avx2;
            }
        }
        #[cfg(target_arch = "aarch64")]
        {
            if std::arch::is_aarch64_feature_detected!("dotprod") {
                return Isa::NeonDotprod;
            }
            return Isa::Neon;
        }
        #[allow(unreachable_code)]
        Isa::Scalar
    }

    /// Whether a CPU whose best path is `self` can run `other`.
    pub fn runs(self, other: Isa) -> bool {
        other == Isa::Scalar || (self.arch() == other.arch() && other <= self)
    }

    fn arch(self) -> u8 {
        match self {
            Isa::Scalar => 0,
            Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni => 1,
            Isa::Neon | Isa::NeonDotprod => 2,
        }
    }

    pub fn from_name(name: &str) -> Option<Isa> {
        Some(match name.trim().to_ascii_lowercase().as_str() {
            "scalar" | "portable" => Isa::Scalar,
            "avx2" => Isa::Avx2,
            "avx512" => Isa::Avx512,
            "avx512vnni" | "vnni" => Isa::Avx512Vnni,
            "neon" => Isa::Neon,
            "dotprod" | "neon-dotprod" => Isa::NeonDotprod,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512vnni",
            Isa::Neon => "neon",
            Isa::NeonDotprod => "dotprod",
        }
    }

    /// The one-token 4-bit product has a fused kernel.
    pub fn fused_q4_decode(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Neon | Isa::NeonDotprod)
    }

    /// Prompt chunks (several columns) have a fused 4-bit kernel.
    pub fn fused_q4_chunks(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Neon | Isa::NeonDotprod)
    }

    /// The one-token 4-bit product rounds the activations to 16 bits per block
    /// ([`crate::q4::Quantized`]): integer multiply-adds, twice as many per instruction as f32
    /// (AVX2's `vpmaddwd`, AVX-512's `vpdpwssd`), and no conversion of each nibble to f32.
    /// NEON's `smlal` would do no more per instruction than its f32 FMA.
    pub fn rounds_activations(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni)
    }

    /// Prompt chunks round their activations too (`vpdpwssd`), in place from tract's panels,
    /// with the offset folded into signed nibbles: about 1.9x the f32 tiles on an AMD EPYC
    /// (185-192 against 98-99 GMAC/s for 64 tokens, `paths_side_by_side`). AVX2 takes them
    /// with `vpmaddwd`, where tract's own f32 tiles took them before.
    pub fn rounds_chunk_activations(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512Vnni)
    }

    /// The fused attention has a kernel.
    pub fn fused_attention(self) -> bool {
        matches!(self, Isa::Avx2 | Isa::Avx512 | Isa::Avx512Vnni | Isa::Neon | Isa::NeonDotprod)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_lower_paths_are_runnable() {
        for isa in [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDotprod] {
            assert_eq!(Isa::from_name(isa.name()), Some(isa));
            assert!(isa.runs(Isa::Scalar));
            assert!(isa.runs(isa));
        }
        assert!(Isa::Avx512.runs(Isa::Avx2));
        assert!(Isa::Avx512Vnni.runs(Isa::Avx512) && !Isa::Avx512.runs(Isa::Avx512Vnni));
        assert!(!Isa::Avx2.runs(Isa::Avx512));
        assert!(!Isa::Avx512.runs(Isa::Neon));
        assert!(Isa::NeonDotprod.runs(Isa::Neon));
        assert!(!Isa::Scalar.runs(Isa::Avx2));
        assert_eq!(Isa::from_name("sse9"), None);
    }

    #[test]
    fn current_never_exceeds_the_cpu() {
        assert!(Isa::detected().runs(Isa::current()));
    }
}
